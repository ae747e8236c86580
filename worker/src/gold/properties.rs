//! Incremental gold, proven by property: random histories of silver (with its change data
//! feed) — appends with NULLs and negative numbers, empty appends, compactions, deletes and
//! updates (written with their change data), overwrites and restores to an earlier version
//! — and after every step each refresh equals the query recomputed in full over the same
//! version, and says what it did: an append folds exactly the rows it added, a compaction
//! folds none, a delete or an update folds exactly its change data (or, for a query whose
//! retraction cannot be subtracted, rebuilds), an overwrite or a restore rebuilds the state
//! from the whole table.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::{filter_record_batch, not};
use arrow::datatypes::Int64Type;
use deltalake::DeltaTable;
use deltalake::protocol::DeltaOperation;
use proptest::prelude::*;
use smelter_lake::change_data::{self, ChangeType, tagged};
use smelter_lake::commit::{Rewrite, RewriteOutcome, rewrite};
use smelter_lake::delete::SqlPredicate;
use smelter_lake::describe::Description;
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
    /// Deletes one user's rows.
    Delete(u8),
    /// Adds one to one user's quantities (NULL becomes 1), with pre- and post-images.
    Update(u8),
    /// Adds rows as a merge that only inserts does: no file removed, the rows recorded as
    /// inserts in the commit's change data.
    Insert(Vec<Row>),
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
        2 => (0u8..6).prop_map(Step::Delete),
        2 => (0u8..6).prop_map(Step::Update),
        1 => proptest::collection::vec(row(), 1..20).prop_map(Step::Insert),
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

/// A silver table partitioned by region, with its change data feed, in a temporary store
/// (kept while the directory is).
async fn silver_with_change_feed() -> (tempfile::TempDir, TableStore, DeltaTable) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = TableStore::new(dir.path()).expect("store");
    let described = Description {
        change_data_feed: true,
        ..Description::default()
    };
    let by = ["region".to_string()];
    let silver = store
        .open_or_create_described(SILVER, &schema(), &by, &described, &Default::default())
        .await
        .expect("silver");
    (dir, store, silver)
}

/// Runs `steps` and checks every refresh against full recomputation and its own report.
async fn check(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let (_dir, store, mut silver) = silver_with_change_feed().await;
    let by = vec!["region".to_string()];
    let engine = QueryEngine::new(store.clone(), Default::default());
    let mut refreshers: Vec<Refresher> = INCREMENTAL
        .iter()
        .map(|sql| Refresher::new(engine.clone(), sql, SILVER))
        .collect();
    let mut follower = store.open(SILVER).await.expect("follower");
    let mut versions = vec![log::version(&silver)];
    for (i, step) in steps.iter().enumerate() {
        let empty_before = log::row_count(&silver) == 0;
        let mut changed = None;
        let appended = match step {
            Step::Delete(user) => {
                changed = Some(delete(&mut silver, *user).await);
                None
            }
            Step::Update(user) => {
                changed = Some(update(&mut silver, *user).await);
                None
            }
            Step::Insert(rows) => {
                let inserted = batch(rows);
                let changes = vec![tagged(&inserted, ChangeType::Insert).expect("tag")];
                rewrite_with_changes(&mut silver, vec![], vec![inserted], changes, "true").await;
                Some(rows.len() as u64)
            }
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
            if i > 0
                && let Some(rows) = changed
            {
                // Counts, distinct counts and integer sums always subtract; the others may
                // meet a min/max or a float sum they cannot subtract and rebuild.
                let folded = RefreshKind::Folded { rows };
                let built = RefreshKind::Built {
                    rows: log::row_count(&silver),
                };
                if SUBTRACTED.contains(sql) {
                    prop_assert_eq!(report, folded, "step {} ({:?}): {}", i, step, sql);
                } else {
                    prop_assert!(
                        report == folded || report == built,
                        "step {} ({:?}): {}: {:?}",
                        i,
                        step,
                        sql,
                        report
                    );
                }
            } else if i == 0 {
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

/// The incremental queries whose every retraction subtracts (counts, distinct counts and
/// integer sums, no min/max, no float sum).
const SUBTRACTED: [&str; 3] = [INCREMENTAL[1], INCREMENTAL[4], INCREMENTAL[6]];

/// The predicate picking one user's rows.
fn user_rows(user: u8) -> String {
    format!("user_id = 'u{user}'")
}

/// Deletes `user`'s rows through the engine's delete (which writes their change data);
/// returns the rows of change data written.
async fn delete(table: &mut DeltaTable, user: u8) -> u64 {
    let schema = smelter_lake::log::arrow_schema(table, SILVER).expect("schema");
    let predicate = SqlPredicate::new(&user_rows(user), &schema, SILVER).expect("predicate");
    let deletion = smelter_lake::delete::delete(table, SILVER, &predicate, &Default::default())
        .await
        .expect("delete");
    deletion.rows_deleted
}

/// Adds one to `user`'s quantities in one commit that rewrites their files and records
/// each changed row's pre- and post-image; returns the rows of change data written.
async fn update(table: &mut DeltaTable, user: u8) -> u64 {
    let schema = schema();
    let mut removes = Vec::new();
    let mut kept = Vec::new();
    let mut changes = Vec::new();
    let mut matched = 0u64;
    let wanted = format!("u{user}");
    for file in smelter_lake::changes::snapshot(table, SILVER).expect("files") {
        let mut rows = Vec::new();
        for batch in smelter_lake::changes::read(table, SILVER, &file, None, &Default::default())
            .await
            .expect("read")
        {
            rows.push(smelter_lake::changes::conform(&batch, &file, &schema).expect("conform"));
        }
        let rows = arrow::compute::concat_batches(&schema, &rows).expect("concat");
        let users = rows.column(0).as_string::<i32>();
        let mine: BooleanArray = users
            .iter()
            .map(|u| Some(u == Some(wanted.as_str())))
            .collect();
        if mine.true_count() == 0 {
            continue;
        }
        matched += mine.true_count() as u64;
        removes.push(file.path.clone());
        let before = filter_record_batch(&rows, &mine).expect("filter");
        let quantities = before.column(4).as_primitive::<Int64Type>();
        let bumped: Int64Array = quantities
            .iter()
            .map(|q| Some(q.unwrap_or(0) + 1))
            .collect();
        let mut columns = before.columns().to_vec();
        columns[4] = Arc::new(bumped);
        let after = RecordBatch::try_new(schema.clone(), columns).expect("updated rows");
        kept.push(filter_record_batch(&rows, &not(&mine).expect("not")).expect("filter"));
        kept.push(after.clone());
        changes.push(tagged(&before, ChangeType::UpdatePreimage).expect("tag"));
        changes.push(tagged(&after, ChangeType::UpdatePostimage).expect("tag"));
    }
    if removes.is_empty() {
        return 0;
    }
    rewrite_with_changes(table, removes, kept, changes, &user_rows(user)).await;
    2 * matched
}

/// Commits an update of `table` that takes out `removes`, writes `rows` and records
/// `changes` (tagged rows) as its change data.
async fn rewrite_with_changes(
    table: &mut DeltaTable,
    removes: Vec<String>,
    rows: Vec<RecordBatch>,
    changes: Vec<RecordBatch>,
    predicate: &str,
) {
    let changes = change_data::write(table, SILVER, &changes)
        .await
        .expect("change data");
    let outcome = rewrite(
        table,
        SILVER,
        Rewrite {
            removes,
            groups: vec![rows],
            copied: Vec::new(),
            readds: Vec::new(),
            changes: changes.into_iter().collect(),
            operation: DeltaOperation::Update {
                predicate: Some(predicate.to_string()),
            },
            data_change: true,
            txns: Vec::new(),
            metadata: Default::default(),
            table_metadata: None,
        },
        &Default::default(),
    )
    .await
    .expect("update");
    assert!(
        matches!(outcome, RewriteOutcome::Committed { .. }),
        "{outcome:?}"
    );
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

/// The cases a random history rarely meets, spelled out: a sum whose values are all
/// retracted is NULL again (not zero), a group whose rows are all retracted is gone, and a
/// retraction that takes out a group's max rebuilds the state.
#[tokio::test]
async fn retractions_leave_null_sums_and_drop_emptied_groups() {
    let (_dir, store, mut silver) = silver_with_change_feed().await;
    let by = vec!["region".to_string()];
    let row = |user: u8, quantity: Option<i8>, region: usize| Row {
        user: Some(user),
        event_type: 0,
        hour: 0,
        price: None,
        quantity,
        region: Some(region),
    };
    // eu (0): u1 with 3, u2 with NULL; us (1): u3 with 2.
    let rows = [row(1, Some(3), 0), row(2, None, 0), row(3, Some(2), 1)];
    commit_for_test(&mut silver, SILVER, batch(&rows), WriteMode::Append, &by).await;
    let engine = QueryEngine::new(store.clone(), Default::default());
    let sums = "SELECT region, count(*) AS n, sum(quantity) AS units FROM silver.events \
                GROUP BY region ORDER BY region";
    let maxima = "SELECT region, max(quantity) AS most FROM silver.events GROUP BY region \
                  ORDER BY region";
    let mut follower = store.open(SILVER).await.expect("follower");
    let mut refreshers = [sums, maxima].map(|sql| Refresher::new(engine.clone(), sql, SILVER));
    let mut refresh = async |refresher: &mut Refresher, silver: &mut DeltaTable| {
        silver.update_state().await.expect("reload silver");
        let version = log::version(silver);
        let rows = render(
            &refresher
                .refresh(&mut follower, version)
                .await
                .expect("refresh"),
        );
        (rows, refresher.last_refresh())
    };
    let (got, _) = refresh(&mut refreshers[0], &mut silver).await;
    assert_eq!(got, ["eu | 2 | 3", "us | 1 | 2"]);
    let (got, _) = refresh(&mut refreshers[1], &mut silver).await;
    assert_eq!(got, ["eu | 3", "us | 2"]);

    assert_eq!(delete(&mut silver, 1).await, 1);
    let (got, kind) = refresh(&mut refreshers[0], &mut silver).await;
    assert_eq!(got, ["eu | 1 | NULL", "us | 1 | 2"]);
    assert_eq!(kind, RefreshKind::Folded { rows: 1 });
    let (got, kind) = refresh(&mut refreshers[1], &mut silver).await;
    assert_eq!(got, ["eu | NULL", "us | 2"]);
    assert_eq!(kind, RefreshKind::Built { rows: 2 }, "u1's 3 was eu's max");

    assert_eq!(delete(&mut silver, 3).await, 1);
    let (got, kind) = refresh(&mut refreshers[0], &mut silver).await;
    assert_eq!(got, ["eu | 1 | NULL"]);
    assert_eq!(kind, RefreshKind::Folded { rows: 1 });
}
