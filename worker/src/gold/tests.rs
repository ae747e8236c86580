//! Incremental gold against the query recomputed in full over the same silver version,
//! through appends, compaction and a rewrite, on a partitioned table with nulls.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::Refresher;
use crate::serve::query::QueryEngine;
use smelter_lake::testing::commit_for_test;
use smelter_lake::{TableStore, WriteMode, log};

pub(super) const SILVER: &str = "silver.events";

/// Queries that fold incrementally.
pub(super) const INCREMENTAL: &[&str] = &[
    "SELECT date_trunc('hour', ts) AS hour, event_type, count(*) AS events, \
       count(DISTINCT user_id) AS users, \
       sum(CASE WHEN event_type = 'purchase' THEN price * quantity ELSE 0 END) AS revenue \
     FROM silver.events GROUP BY 1, 2",
    "SELECT CAST(date_trunc('day', ts) AS DATE) AS day, count(*) AS events, \
       count(DISTINCT user_id) AS users, count(DISTINCT region) AS regions \
     FROM silver.events GROUP BY 1",
    "SELECT user_id, count(*) AS events, max(ts) AS last_seen, min(event_type) AS first_type, \
       CASE WHEN sum(price) >= 50 THEN 'vip' ELSE 'other' END AS segment \
     FROM silver.events WHERE user_id IS NOT NULL GROUP BY user_id",
    "SELECT region, avg(price) AS mean_price, count(price) AS priced, sum(quantity) AS units \
     FROM silver.events GROUP BY region HAVING count(*) > 2 ORDER BY region LIMIT 2",
    "SELECT count(*) AS events, count(DISTINCT user_id) AS users, sum(quantity) AS units \
     FROM silver.events",
    // min and max alone: DataFusion may give such an aggregate a dynamic filter, and the
    // fold's plans are kept across refreshes.
    "SELECT min(price) AS cheapest, max(ts) AS latest FROM silver.events",
    "SELECT e.event_type, count(*) AS n FROM (SELECT event_type FROM silver.events \
     WHERE quantity > 1) e GROUP BY e.event_type",
];

/// Queries that must be recomputed in full every time.
const FULL: &[&str] = &[
    "SELECT user_id, count(*) AS n FROM silver.events \
     WHERE ts > now() - INTERVAL '30 days' GROUP BY user_id",
    "SELECT user_id, sum(DISTINCT quantity) AS n FROM silver.events GROUP BY user_id",
    "SELECT a.user_id, count(*) AS n FROM silver.events a \
     JOIN silver.events b ON a.user_id = b.user_id GROUP BY a.user_id",
];

pub(super) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, true),
        Field::new("event_type", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("price", DataType::Float64, true),
        Field::new("quantity", DataType::Int64, true),
        Field::new("region", DataType::Utf8, true),
    ]))
}

/// Event time of row 0: twelve days before the test runs, on the hour. The rows span under
/// eleven days (row `i` is `i` quarter-hours later), so a trailing window on `now()` such
/// as the last 30 days holds all of them whatever the date, and the boundary is days away
/// from any row while a query runs.
fn first_event_micros() -> i64 {
    const HOUR: i64 = 3_600_000_000;
    let now = chrono::Utc::now().timestamp_micros();
    now - now.rem_euclid(HOUR) - 12 * 24 * HOUR
}

/// `n` rows numbered from `first`, with nulls sprinkled in; `region` is the partition.
fn rows(first: i64, n: i64) -> RecordBatch {
    let start = first_event_micros();
    let ids = first..first + n;
    let types = ["view", "click", "add_to_cart", "purchase"];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter(
            ids.clone()
                .map(|i| (i % 11 != 0).then(|| format!("u{}", i % 7))),
        )),
        Arc::new(StringArray::from_iter_values(
            ids.clone().map(|i| types[(i % 4) as usize]),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                ids.clone().map(|i| start + i * 900_000_000),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter(
            ids.clone().map(|i| (i % 5 != 0).then_some(i as f64 * 1.25)),
        )),
        Arc::new(Int64Array::from_iter(
            ids.clone().map(|i| (i % 6 != 0).then_some(i % 3)),
        )),
        Arc::new(StringArray::from_iter(ids.map(|i| {
            (i % 9 != 0).then(|| ["eu", "us", "apac"][(i % 3) as usize])
        }))),
    ];
    RecordBatch::try_new(schema(), columns).unwrap()
}

/// Rows as sorted strings, floats to 6 decimals.
pub(super) fn render(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Float64 => {
                    let values = c.as_any().downcast_ref::<Float64Array>().unwrap();
                    Arc::new(StringArray::from_iter(
                        values.iter().map(|v| v.map(|v| format!("{v:.6}"))),
                    )) as ArrayRef
                }
                _ => c.clone(),
            })
            .collect();
        let formatters: Vec<_> = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            out.push(cells.join(" | "));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn incremental_results_equal_full_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path()).unwrap();
    let env = Default::default();
    let partition_by = vec!["region".to_string()];
    let mut silver = store
        .open_or_create(SILVER, &schema(), &partition_by, &env)
        .await
        .unwrap();
    let engine = QueryEngine::new(store.clone(), Default::default());
    let mut refreshers: Vec<Refresher> = INCREMENTAL
        .iter()
        .chain(FULL)
        .map(|sql| Refresher::new(engine.clone(), sql, SILVER))
        .collect();
    // The refreshers' handle on silver is only followed (as the aggregate task does): it
    // stays at the version it was opened at unless a refresh needs the whole table.
    let mut follower = store.open(SILVER).await.unwrap();
    let mut first = 0;
    // Appends, one compaction (adds nothing), more appends, then a rewrite.
    for step in 0..7 {
        match step {
            3 => {
                smelter_lake::compact::compact(
                    &mut silver,
                    SILVER,
                    Default::default(),
                    &Default::default(),
                )
                .await
                .unwrap();
            }
            5 => {
                commit_for_test(
                    &mut silver,
                    SILVER,
                    rows(1000, 40),
                    WriteMode::Overwrite,
                    &partition_by,
                )
                .await;
            }
            _ => {
                let batch = rows(first, 25 + step * 10);
                commit_for_test(&mut silver, SILVER, batch, WriteMode::Append, &partition_by).await;
                first += 25 + step * 10;
            }
        }
        silver.update_state().await.unwrap();
        let version = log::version(&silver);
        for (refresher, sql) in refreshers.iter_mut().zip(INCREMENTAL.iter().chain(FULL)) {
            let got = render(&refresher.refresh(&mut follower, version).await.unwrap());
            let frame = engine.plan(sql, Some((SILVER, version))).await.unwrap();
            let expected = render(&frame.collect().await.unwrap());
            assert!(!expected.is_empty(), "{sql}: nothing to compare");
            assert_eq!(got, expected, "step {step}, version {version}: {sql}");
        }
    }
    for (refresher, sql) in refreshers.iter().zip(INCREMENTAL.iter().chain(FULL)) {
        assert_eq!(
            refresher.incremental(),
            INCREMENTAL.contains(sql),
            "{sql}: incremental"
        );
    }
}

#[tokio::test]
async fn outgrown_distinct_sets_fall_back_to_full_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path()).unwrap();
    let env = Default::default();
    let mut silver = store
        .open_or_create(SILVER, &schema(), &[], &env)
        .await
        .unwrap();
    let engine = QueryEngine::new(store.clone(), Default::default());
    let sql = INCREMENTAL[0];
    let mut roomy = Refresher::new(engine.clone(), sql, SILVER).with_max_distinct_values(1_000);
    let mut tight = Refresher::new(engine.clone(), sql, SILVER).with_max_distinct_values(40);
    for round in 0..3 {
        let batch = rows(round * 30, 30);
        commit_for_test(&mut silver, SILVER, batch, WriteMode::Append, &[]).await;
        silver.update_state().await.unwrap();
        let version = log::version(&silver);
        let expected = render(
            &engine
                .plan(sql, Some((SILVER, version)))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap(),
        );
        let (roomy_result, tight_result) = (
            roomy.refresh(&mut silver, version).await.unwrap(),
            tight.refresh(&mut silver, version).await.unwrap(),
        );
        assert_eq!(render(&roomy_result), expected);
        assert_eq!(render(&tight_result), expected);
        assert!(roomy.incremental(), "round {round}: within its bound");
    }
    assert!(!tight.incremental(), "40 distinct values exceeded");
}
