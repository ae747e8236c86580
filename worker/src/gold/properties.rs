//! Incremental gold, proven by property: random histories of silver — appends with NULLs
//! and negative numbers, empty appends, compactions, overwrites and restores to an earlier
//! version — and after every step each refresh equals the query recomputed in full over
//! the same version, and says what it did: an append folds exactly the rows it added, a
//! compaction folds none, a rewrite rebuilds the state from the whole table.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::DeltaTable;
use proptest::prelude::*;
use smelter_lake::testing::commit_for_test;
use smelter_lake::{TableStore, WriteMode, log};

use super::tests::{INCREMENTAL, SILVER, render, schema};
use super::{RefreshKind, Refresher};
use crate::serve::query::QueryEngine;

/// One silver row, every column optional.
#[derive(Debug, Clone)]
struct Row {
    user: Option<u8>,
    event_type: usize,
    hour: u8,
    price: Option<i32>,
    quantity: Option<i8>,
    region: Option<usize>,
}

/// What happens to silver in one step.
#[derive(Debug, Clone)]
enum Step {
    Append(Vec<Row>),
    Compact,
    Overwrite(Vec<Row>),
    /// Back to the version this many steps ago (or the first).
    Restore(u8),
}

fn row() -> impl Strategy<Value = Row> {
    (
        proptest::option::of(0u8..6),
        0usize..4,
        0u8..48,
        proptest::option::of(-500i32..5_000),
        proptest::option::of(-2i8..4),
        proptest::option::of(0usize..3),
    )
        .prop_map(|(user, event_type, hour, price, quantity, region)| Row {
            user,
            event_type,
            hour,
            price,
            quantity,
            region,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => proptest::collection::vec(row(), 0..40).prop_map(Step::Append),
        1 => Just(Step::Compact),
        1 => proptest::collection::vec(row(), 1..20).prop_map(Step::Overwrite),
        1 => (1u8..4).prop_map(Step::Restore),
    ]
}

fn batch(rows: &[Row]) -> RecordBatch {
    const TYPES: [&str; 4] = ["view", "click", "add_to_cart", "purchase"];
    const REGIONS: [&str; 3] = ["eu", "us", "apac"];
    // A fixed day: none of the incremental queries compares with the clock.
    let base = 1_767_225_600_000_000i64; // 2026-01-01T00:00:00Z
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.user.map(|u| format!("u{u}"))),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| TYPES[r.event_type]),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rows.iter()
                    .map(|r| base + i64::from(r.hour) * 3_600_000_000),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.price.map(|p| f64::from(p) / 4.0)),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| r.quantity.map(i64::from)),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.region.map(|i| REGIONS[i])),
        )),
    ];
    RecordBatch::try_new(schema(), columns).expect("a batch of the silver schema")
}

/// Runs `steps` and checks every refresh against full recomputation and its own report.
async fn check(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = TableStore::new(dir.path()).expect("store");
    let by = vec!["region".to_string()];
    let mut silver = store
        .open_or_create(SILVER, &schema(), &by, &Default::default())
        .await
        .expect("silver");
    let engine = QueryEngine::new(store.clone(), Default::default());
    let mut refreshers: Vec<Refresher> = INCREMENTAL
        .iter()
        .map(|sql| Refresher::new(engine.clone(), sql, SILVER))
        .collect();
    let mut follower = store.open(SILVER).await.expect("follower");
    let mut versions = vec![log::version(&silver)];
    for (i, step) in steps.iter().enumerate() {
        let empty_before = log::row_count(&silver) == 0;
        let appended = match step {
            Step::Append(rows) => {
                if !rows.is_empty() {
                    commit_for_test(&mut silver, SILVER, batch(rows), WriteMode::Append, &by).await;
                }
                Some(rows.len() as u64)
            }
            Step::Compact => {
                smelter_lake::compact::compact(
                    &mut silver,
                    SILVER,
                    Default::default(),
                    &Default::default(),
                )
                .await
                .expect("compaction");
                Some(0)
            }
            Step::Overwrite(rows) => {
                commit_for_test(&mut silver, SILVER, batch(rows), WriteMode::Overwrite, &by).await;
                None
            }
            Step::Restore(back) => {
                let to = versions[versions.len().saturating_sub(usize::from(*back) + 1)];
                if to < log::version(&silver) {
                    restore(&mut silver, to).await;
                    None
                } else {
                    // Nothing committed since: nothing to restore, nothing to fold.
                    Some(0)
                }
            }
        };
        silver.update_state().await.expect("reload silver");
        let version = log::version(&silver);
        versions.push(version);
        for (refresher, sql) in refreshers.iter_mut().zip(INCREMENTAL) {
            let got = render(
                &refresher
                    .refresh(&mut follower, version)
                    .await
                    .expect("refresh"),
            );
            let expected = render(
                &engine
                    .plan(sql, Some((SILVER, version)))
                    .await
                    .expect("plan")
                    .collect()
                    .await
                    .expect("recompute"),
            );
            prop_assert_eq!(&got, &expected, "step {} ({:?}): {}", i, step, sql);
            // What the refresh says it did: an append or a compaction is folded (exactly
            // the rows it added), a rewrite or a restore rebuilds from the whole table.
            let report = refresher.last_refresh();
            if i == 0 {
                prop_assert!(
                    matches!(report, RefreshKind::Built { .. }),
                    "first refresh builds: {:?}",
                    report
                );
            } else {
                match appended {
                    Some(rows) => prop_assert_eq!(
                        report,
                        RefreshKind::Folded { rows },
                        "step {} ({:?}): {}",
                        i,
                        step,
                        sql
                    ),
                    // A rewrite of an empty table removes nothing: folding what it added
                    // is as right as building again (a restore carries the metadata too).
                    None if empty_before => prop_assert!(
                        [
                            RefreshKind::Folded {
                                rows: log::row_count(&silver)
                            },
                            RefreshKind::Built {
                                rows: log::row_count(&silver)
                            }
                        ]
                        .contains(&report),
                        "step {} ({:?}): {}: {:?}",
                        i,
                        step,
                        sql,
                        report
                    ),
                    None => prop_assert_eq!(
                        report,
                        RefreshKind::Built {
                            rows: log::row_count(&silver)
                        },
                        "step {} ({:?}): {}",
                        i,
                        step,
                        sql
                    ),
                }
            }
        }
    }
    Ok(())
}

/// Restores `table` to `version` (a new commit removing and re-adding files, with
/// `dataChange`), through delta-rs.
async fn restore(table: &mut DeltaTable, version: i64) {
    let (restored, _) = table
        .clone()
        .restore()
        .with_version_to_restore(version.max(0) as u64)
        .await
        .expect("restore");
    *table = restored;
}

/// Histories per run: 24 in the test suite, `PROPTEST_CASES` for a longer search.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn incremental_refreshes_equal_full_recomputation_through_any_history(
        steps in proptest::collection::vec(step(), 1..7)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(check(steps))?;
    }
}
