//! Refiner on hand-made bronze rows: every expectation action, rescue and dedupe.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use smelter_common::spec::PipelineSpec;

use super::{BronzeRows, Refiner};
use crate::WorkerError;
use crate::source::SourceRecord;
use crate::tasks::ingest::bronze_batch;
use crate::tasks::schemas;
use smelter_lake::TableStore;

const SPEC: &str = r#"
pipeline: t
sources: { s: { files: { path: /nonexistent } } }
tables:
  bronze.raw: { from: s }
  silver.rows:
    from: bronze.raw
    parse: { format: json, schema: { id: string, n: long } }
    dedupe: { keys: [id] }
    expectations:
      - { name: small, expr: "n < 100", on_violation: warn }
      - { name: not_negative, expr: "n >= 0", on_violation: quarantine }
      - { name: not_seven, expr: "n <> 7", on_violation: drop }
"#;

fn records(lines: &[&str]) -> BronzeRows {
    let records: Vec<SourceRecord> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| SourceRecord {
            topic: Arc::from("f.ndjson"),
            partition: 0,
            offset: i as i64,
            key: None,
            timestamp_us: None,
            headers: None,
            payload: Some(line.as_bytes().to_vec()),
            error: None,
            ends_topic: false,
        })
        .collect();
    // Two rows per batch, as bronze rows arrive in several batches (one or more per file).
    let batches = records
        .chunks(2)
        .map(|chunk| bronze_batch("s", chunk).unwrap())
        .collect();
    BronzeRows::from_batches(batches)
}

/// Silver's rows as one batch.
fn silver_rows(refined: &super::Refined) -> arrow::record_batch::RecordBatch {
    arrow::compute::concat_batches(&refined.silver[0].schema(), &refined.silver).unwrap()
}

fn strings(batch: &arrow::record_batch::RecordBatch, column: &str) -> Vec<String> {
    let column = arrow::compute::cast(
        batch.column_by_name(column).unwrap(),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let column = column.as_string::<i32>();
    (0..column.len())
        .map(|i| {
            if column.is_null(i) {
                "NULL".into()
            } else {
                column.value(i).to_string()
            }
        })
        .collect()
}

/// Commits `rows` to `table` (`silver.rows` in `store`), opens it again and runs `sql`
/// over it as `t`: what any Delta reader gets back.
async fn commit_and_query(
    store: &TableStore,
    table: &mut deltalake::DeltaTable,
    rows: Vec<arrow::record_batch::RecordBatch>,
    sql: &str,
) -> arrow::record_batch::RecordBatch {
    smelter_lake::commit(
        table,
        "silver.rows",
        rows,
        smelter_lake::WriteMode::Append,
        &[],
        vec![],
        &Default::default(),
    )
    .await
    .unwrap();
    let table = store.open("silver.rows").await.unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

async fn refine(spec_text: &str, lines: &[&str]) -> Result<super::Refined, WorkerError> {
    let spec = PipelineSpec::parse(spec_text, "t.yaml").unwrap();
    let table = &spec.tables["silver.rows"];
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path()).unwrap();
    let mut silver = store
        .open_or_create(
            "silver.rows",
            &schemas::silver(table),
            &[],
            &Default::default(),
        )
        .await
        .unwrap();
    let version = smelter_lake::log::version(&silver);
    let mut at = super::SilverAt {
        table: &mut silver,
        name: "silver.rows",
        version,
    };
    Refiner::new("silver.rows", table, "t.yaml")?
        .refine(&records(lines), &mut at, &mut Default::default())
        .await
}

#[tokio::test]
async fn each_action_does_what_it_says() {
    let refined = refine(
        SPEC,
        &[
            r#"{"id":"a","n":1}"#,
            r#"{"id":"b","n":500}"#,
            r#"{"id":"c","n":-1}"#,
            r#"{"id":"d","n":7}"#,
            r#"{"id":"a","n":1}"#,
            r#"{"id":"e","n":2,"x":true}"#,
            r#"{"id":"f"}"#,
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        strings(&silver_rows(&refined), "id"),
        vec!["a", "b", "e", "f"],
        "warned b kept, c quarantined, d dropped, second a deduped, f (every rule NULL) kept"
    );
    assert_eq!(
        strings(&silver_rows(&refined), "_rescued_data"),
        vec!["NULL", "NULL", r#"{"x":true}"#, "NULL"]
    );
    assert_eq!(refined.warned, vec![("small".to_string(), 1)]);
    assert_eq!((refined.dropped, refined.deduplicated), (1, 1));
    assert_eq!(strings(&refined.quarantine, "rule"), vec!["not_negative"]);
    assert_eq!(
        strings(&refined.quarantine, "reason"),
        vec!["violates `n >= 0`"]
    );
    assert_eq!(
        refined
            .quarantine
            .column_by_name("offset")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        2
    );
}

#[tokio::test]
async fn fail_stops_the_batch_naming_the_rule_and_position() {
    let spec = SPEC.replace("on_violation: drop", "on_violation: fail");
    let lines = [
        r#"{"id":"a","n":1}"#,
        r#"{"id":"b","n":2}"#,
        r#"{"id":"d","n":7}"#,
    ];
    let err = refine(&spec, &lines).await.unwrap_err();
    assert!(
        matches!(err, WorkerError::ExpectationFailed { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("not_seven") && message.contains("f.ndjson/0@2"),
        "{message}"
    );
    assert!(
        !err.is_retryable(),
        "a failed expectation must stop the task, not loop"
    );
}

/// Dedupe against rows already committed: answered from the key cache while it follows
/// the task's own commits, and from the table once a foreign commit invalidated it — the
/// same answer both ways.
#[tokio::test]
async fn dedupe_against_the_table_with_and_without_the_key_cache() {
    use smelter_lake::WriteMode;
    use smelter_lake::testing::commit_for_test;

    let spec = PipelineSpec::parse(SPEC, "t.yaml").unwrap();
    let table = &spec.tables["silver.rows"];
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path()).unwrap();
    let env = Default::default();
    let mut silver = store
        .open_or_create("silver.rows", &schemas::silver(table), &[], &env)
        .await
        .unwrap();
    let refiner = Refiner::new("silver.rows", table, "t.yaml").unwrap();
    let mut cache = super::KeyCache::default();
    // The writer's snapshot stays where it was loaded; the head follows the commits.
    let heads = smelter_lake::heads::LogHeads::default();
    let mut round = async |lines: &[&str], cache: &mut super::KeyCache| {
        let head = heads.head(&mut silver, "silver.rows").await.unwrap();
        let mut at = super::SilverAt {
            table: &mut silver,
            name: "silver.rows",
            version: head.version(),
        };
        let mut refined = refiner
            .refine(&records(lines), &mut at, cache)
            .await
            .unwrap();
        let kept = strings(&silver_rows(&refined), "id");
        let keys = std::mem::take(&mut refined.new_keys);
        let version = commit_for_test(
            &mut silver,
            "silver.rows",
            silver_rows(&refined),
            WriteMode::Append,
            &[],
        )
        .await;
        cache.committed(version, keys, None);
        kept
    };
    assert_eq!(
        round(&[r#"{"id":"a","n":1}"#, r#"{"id":"b","n":2}"#], &mut cache).await,
        ["a", "b"]
    );
    // From the cache: it followed the commit above.
    assert_eq!(
        round(&[r#"{"id":"a","n":1}"#, r#"{"id":"c","n":3}"#], &mut cache).await,
        ["c"]
    );
    // A fresh cache (a restarted task) loads the table's keys first.
    let mut fresh = super::KeyCache::default();
    assert_eq!(
        round(&[r#"{"id":"b","n":2}"#, r#"{"id":"d","n":4}"#], &mut fresh).await,
        ["d"]
    );
    // The first cache missed that commit: it must not answer from stale keys.
    assert_eq!(
        round(&[r#"{"id":"d","n":4}"#, r#"{"id":"e","n":5}"#], &mut cache).await,
        ["e"]
    );
}

/// A rule is evaluated as if the rows earlier rules took out were gone: `10 / n` is never
/// computed for the `n = 0` row the first rule quarantined (DataFusion fails a division by
/// zero).
#[tokio::test]
async fn a_rule_does_not_see_rows_an_earlier_rule_took_out() {
    let spec = SPEC
        .replace("\"n < 100\"", "\"n <> 0\"")
        .replace("on_violation: warn", "on_violation: quarantine")
        .replace("\"n >= 0\"", "\"10 / n >= 1\"");
    let refined = refine(
        &spec,
        &[
            r#"{"id":"a","n":1}"#,
            r#"{"id":"b","n":0}"#,
            r#"{"id":"c","n":20}"#,
            r#"{"id":"d","n":7}"#,
            r#"{"id":"e","n":2}"#,
            r#"{"id":"f"}"#,
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        strings(&silver_rows(&refined), "id"),
        vec!["a", "e", "f"],
        "f: NULL passes every rule"
    );
    assert_eq!(
        strings(&refined.quarantine, "rule"),
        vec!["small", "not_negative"],
        "b (n = 0) by the first rule, c by the second"
    );
    assert_eq!(refined.dropped, 1, "d");
}

/// Maps and bytes: `map(long)` from objects (values checked), `binary` from base64 text,
/// usable in expectations, written to a Delta table and read back with SQL.
#[tokio::test]
async fn maps_and_binary_decode_check_and_commit() {
    let spec = r#"
pipeline: t
sources: { s: { files: { path: /nonexistent } } }
tables:
  bronze.raw: { from: s }
  silver.rows:
    from: bronze.raw
    parse: { format: json, schema: { id: string, counts: map(long), blob: binary, tags: "map(map(string))" } }
    expectations:
      - { name: has_clicks, expr: "counts['clicks'] IS NOT NULL", on_violation: quarantine }
"#;
    let refined = refine(
        spec,
        &[
            r#"{"id":"a","counts":{"clicks":3,"views":10},"blob":"aGVsbG8=","tags":{"x":{"k":"v"}}}"#,
            r#"{"id":"b","counts":{"clicks":"many"}}"#,
            r#"{"id":"c","counts":{"views":1}}"#,
            r#"{"id":"d","counts":{"clicks":1},"blob":"not base64!"}"#,
            r#"{"id":"e","counts":{"clicks":0},"blob":null}"#,
        ],
    )
    .await
    .unwrap();
    let rows = silver_rows(&refined);
    assert_eq!(strings(&rows, "id"), vec!["a", "e"]);
    let blob = rows.column_by_name("blob").unwrap().as_binary::<i32>();
    assert_eq!(blob.value(0), b"hello");
    assert!(blob.is_null(1));
    assert_eq!(
        strings(&refined.quarantine, "rule"),
        vec!["_schema", "has_clicks", "_schema"]
    );
    let reasons = strings(&refined.quarantine, "reason");
    assert!(
        reasons[0].contains("`counts.clicks`: expected long"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("`blob`: expected base64 bytes"),
        "{reasons:?}"
    );

    // Committed to a Delta table and read back: map access in SQL.
    let parsed = PipelineSpec::parse(spec, "t.yaml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path()).unwrap();
    let schema = schemas::silver(&parsed.tables["silver.rows"]);
    let mut table = store
        .open_or_create("silver.rows", &schema, &[], &Default::default())
        .await
        .unwrap();
    let batch = commit_and_query(
        &store,
        &mut table,
        refined.silver,
        "SELECT id, counts['views'] AS views, tags['x']['k'] AS k FROM t ORDER BY id",
    )
    .await;
    assert_eq!(strings(&batch, "views"), vec!["10", "NULL"]);
    assert_eq!(strings(&batch, "k"), vec!["v", "NULL"]);
}

#[tokio::test]
async fn record_keys_headers_and_times_become_columns_rules_and_keys_can_use() {
    let text = r#"
pipeline: t
sources: { s: { files: { path: /nonexistent } } }
tables:
  bronze.raw: { from: s }
  silver.rows:
    from: bronze.raw
    parse: { format: json, schema: { n: long }, metadata: [key, headers, timestamp] }
    dedupe: { keys: [_key] }
    expectations:
      - { name: traced, expr: "_headers['trace'] IS NOT NULL", on_violation: quarantine }
"#;
    let record = |i: i64, key: Option<&str>, headers: Option<&str>| SourceRecord {
        topic: Arc::from("events"),
        partition: 0,
        offset: i,
        key: key.map(str::to_string),
        timestamp_us: Some(1_767_225_600_000_000 + i * 1_000_000),
        headers: headers.map(str::to_string),
        payload: Some(format!(r#"{{"n":{i}}}"#).into_bytes()),
        error: None,
        ends_topic: false,
    };
    let records = [
        record(0, Some("k1"), Some(r#"{"trace":"t0","empty":null}"#)),
        record(1, Some("k2"), Some(r#"{"other":"x"}"#)),
        record(2, Some("k1"), Some(r#"{"trace":"t2"}"#)),
        record(3, None, Some(r#"{"trace":"t3"}"#)),
    ];
    let rows = BronzeRows::from_batches(vec![bronze_batch("s", &records).unwrap()]);
    let spec = PipelineSpec::parse(text, "t.yaml").unwrap();
    let table = &spec.tables["silver.rows"];
    let schema = schemas::silver(table);
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path()).unwrap();
    let env = smelter_lake::CommitEnv::default();
    let mut silver = store
        .open_or_create("silver.rows", &schema, &[], &env)
        .await
        .unwrap();
    let version = smelter_lake::log::version(&silver);
    let mut at = super::SilverAt {
        table: &mut silver,
        name: "silver.rows",
        version,
    };
    let refiner = Refiner::new("silver.rows", table, "t.yaml").unwrap();
    assert_eq!(
        refiner.extra_bronze_columns(),
        ["key", "headers", "timestamp"]
    );
    let refined = refiner
        .refine(&rows, &mut at, &mut Default::default())
        .await
        .unwrap();
    // Offset 1 has no trace header; offset 2 repeats key k1; offset 3 has no key.
    let kept = silver_rows(&refined);
    assert_eq!(strings(&kept, "n"), ["0", "3"]);
    assert_eq!(strings(&kept, "_key"), ["k1", "NULL"]);
    assert_eq!(
        strings(&kept, "_timestamp"),
        ["2026-01-01T00:00:00Z", "2026-01-01T00:00:03Z"]
    );
    assert_eq!(strings(&refined.quarantine, "rule"), ["traced"]);
    assert_eq!(refined.deduplicated, 1);

    // Committed and read back with SQL: a header by name, a header without a value NULL.
    let batch = commit_and_query(
        &store,
        &mut silver,
        refined.silver,
        "SELECT n, _headers['trace'] AS trace, _headers['empty'] AS empty, \
         cardinality(_headers) AS headers FROM t ORDER BY n",
    )
    .await;
    assert_eq!(strings(&batch, "trace"), ["t0", "t3"]);
    assert_eq!(strings(&batch, "empty"), ["NULL", "NULL"]);
    assert_eq!(strings(&batch, "headers"), ["2", "1"]);
}
