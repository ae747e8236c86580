//! Schema inference (`smelter infer`): a foreign-shaped clickstream in NDJSON files —
//! nested objects, a list of objects, amounts that are sometimes integers, a field that
//! appears only after the sample, a field whose type conflicts within it — is sampled, the
//! printed schema pinned into a silver table, and the pipeline run to the end. The schema
//! must be what the records say (the conflicting field as its most common type), and every
//! record must end in silver (a later field kept in `_rescued_data`) or in the quarantine
//! (a value of the other type, with the field named): none lost. The expected schema and counts come from the test's own records.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use smelter_common::spec::SchemaSpec;
use smelter_lake::TableStore;
use smelter_tests::oracle;
use smelter_tests::processes::{smelter_up, wait_exit};
use smelter_tests::smelter_binary;

const RECORDS: usize = 2_000;
const SAMPLE: usize = 500;

/// Record `i`: a coupon from record 1,500 on (after the sample), a score that is a string
/// for every 40th record and a number otherwise.
fn record(i: usize) -> String {
    let amount = if i.is_multiple_of(2) {
        serde_json::json!(i % 90 + 10)
    } else {
        serde_json::json!((i % 90) as f64 + 0.5)
    };
    let mut record = serde_json::json!({
        "id": format!("r{i}"),
        "at": format!("2026-11-01T10:{:02}:{:02}Z", (i / 60) % 60, i % 60),
        "visitor": { "id": format!("v{}", i % 97), "geo": { "country": "fr", "city": "Lyon" } },
        "cart": [ { "sku": format!("s{}", i % 13), "qty": i % 4 + 1, "price": 9.99 } ],
        "amount": amount,
        "score": if i.is_multiple_of(40) { serde_json::json!("high") } else { serde_json::json!(i % 7) },
    });
    if i >= 1_500 {
        record["coupon"] = serde_json::json!("WINTER");
    }
    record.to_string()
}

fn write_source(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (file, range) in [("a.ndjson", 0..1_000), ("b.ndjson", 1_000..RECORDS)] {
        let lines: Vec<String> = range.map(record).collect();
        std::fs::write(dir.join(file), lines.join("\n") + "\n").unwrap();
    }
}

async fn count(tables: &TableStore, sql: &str) -> i64 {
    let batches = oracle::sql(tables, sql).await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inferred_schema_pinned_into_silver_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_source(&input);
    let pipeline = dir.path().join("pipeline.yaml");
    let head = format!(
        "pipeline: foreign\nsources:\n  clicks: {{ files: {{ path: {} }} }}\ntables:\n  bronze.clicks: {{ from: clicks }}\n",
        input.display()
    );
    std::fs::write(&pipeline, &head).unwrap();

    let out = Command::new(smelter_binary())
        .args([
            "infer",
            "--source",
            "clicks",
            "--sample",
            &SAMPLE.to_string(),
            "--idle-secs",
            "2",
        ])
        .arg("--pipeline")
        .arg(&pipeline)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.starts_with(&format!(
            "# inferred from {SAMPLE} records of source `clicks`"
        )),
        "{printed}"
    );
    assert!(
        printed.contains("# `score` was seen as long (487) and string (13): declared long"),
        "{printed}"
    );
    let parse: serde_yaml::Value = serde_yaml::from_str(
        &printed
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let schema: SchemaSpec = serde_yaml::from_value(parse["parse"]["schema"].clone()).unwrap();
    let expected: SchemaSpec = serde_yaml::from_str(
        // In the records' order (serde_json writes keys sorted).
        "amount: double\nat: timestamp\ncart: [ { price: double, qty: long, sku: string } ]\n\
         id: string\nscore: long\nvisitor: { geo: { city: string, country: string }, id: string }\n",
    )
    .unwrap();
    assert_eq!(
        serde_yaml::to_string(&schema).unwrap(),
        serde_yaml::to_string(&expected).unwrap(),
        "the coupon comes after the sample; the rest is what the records say"
    );

    // Pinned into silver, run to the end.
    let block: String = printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("    {l}\n"))
        .collect();
    let text = format!("{head}  silver.clicks:\n    from: bronze.clicks\n{block}");
    std::fs::write(&pipeline, &text).unwrap();
    let data = dir.path().join("data");
    let mut up = smelter_up(&data, &pipeline, &["--exit-when-done"], &[]);
    let status = wait_exit(&mut up, Duration::from_secs(180)).await.unwrap();
    assert!(status.success(), "smelter up finished ({status})");

    let tables = TableStore::new(data.join("tables")).unwrap();
    let text_scores = (0..RECORDS).filter(|i| i.is_multiple_of(40)).count() as i64;
    let silver = count(&tables, "SELECT count(*) FROM silver.clicks").await;
    let quarantined = count(&tables, "SELECT count(*) FROM silver.clicks_quarantine").await;
    assert_eq!(
        silver + quarantined,
        RECORDS as i64,
        "every record in silver or quarantined"
    );
    assert_eq!(
        count(
            &tables,
            "SELECT count(*) FROM silver.clicks_quarantine WHERE rule = '_schema' \
             AND reason LIKE '%`score`: expected long%'"
        )
        .await,
        text_scores,
        "a score of the other type quarantines its record, naming the field"
    );
    // The records past the sample keep their coupon in `_rescued_data`.
    let batches = oracle::sql(
        &tables,
        "SELECT id, _rescued_data, cart[1]['qty'] AS qty FROM silver.clicks",
    )
    .await
    .unwrap();
    let mut ids = BTreeSet::new();
    for batch in &batches {
        let id = arrow::compute::cast(batch.column(0), &DataType::Utf8).unwrap();
        let rescued = arrow::compute::cast(batch.column(1), &DataType::Utf8).unwrap();
        let qty = batch.column(2).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let id = id.as_string::<i32>().value(row).to_string();
            let i: usize = id[1..].parse().unwrap();
            assert_ne!(i % 40, 0, "{id}: a text score is quarantined");
            assert_eq!(
                qty.value(row),
                (i % 4 + 1) as i64,
                "{id}: the list of objects"
            );
            if i >= 1_500 {
                assert_eq!(
                    rescued.as_string::<i32>().value(row),
                    r#"{"coupon":"WINTER"}"#,
                    "{id}"
                );
            } else {
                assert!(rescued.is_null(row), "{id}");
            }
            ids.insert(i);
        }
    }
    assert_eq!(ids.len() as i64, silver);
}

/// Record `i` of the run-time inference test: [`record`], with a nested `visitor.geo.zip`
/// from record 1,200 on and a `channel` from record 2,000 on (the second run's file).
fn growing(i: usize) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&record(i)).unwrap();
    if i >= 1_200 {
        value["visitor"]["geo"]["zip"] = serde_json::json!(format!("69{:03}", i % 1000));
    }
    if i >= RECORDS {
        value["channel"] = serde_json::json!("email");
    }
    value.to_string()
}

/// `parse: { schema: infer }` at run time, over the records above: the table is created
/// with the schema of the first 500 records, grows as `visitor.geo.zip` and `coupon` appear
/// (each evolving commit only adds), keeps a score of the other type in `_rescued_data`
/// with its row, and after a restart reads its schema back from the table and grows again
/// (`channel`). Every record ends in silver exactly once, nothing quarantined, and gold
/// planned over the inferred columns agrees with the test's own sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inferred_pipeline_grows_its_schema_and_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let place = |file: &str, range: std::ops::Range<usize>| {
        let lines: Vec<String> = range.map(growing).collect();
        let staged = input.join(format!(".{file}"));
        std::fs::write(&staged, lines.join("\n") + "\n").unwrap();
        std::fs::rename(&staged, input.join(file)).unwrap();
    };
    place("a.ndjson", 0..1_000);
    place("b.ndjson", 1_000..RECORDS);
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "pipeline: inferred\nsources:\n  clicks: {{ files: {{ path: {} }} }}\ntables:\n  \
             bronze.clicks: {{ from: clicks }}\n  silver.clicks:\n    from: bronze.clicks\n    \
             parse: {{ format: json, schema: infer, sample: {SAMPLE} }}\n  gold.totals:\n    \
             from: silver.clicks\n    sql: SELECT count(*) AS clicks, sum(score) AS score, \
             count(coupon) AS coupons FROM silver.clicks\n",
            input.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let run = || async {
        let mut up = smelter_up(&data, &pipeline, &["--exit-when-done"], &[]);
        let status = wait_exit(&mut up, Duration::from_secs(180)).await.unwrap();
        assert!(status.success(), "smelter up finished ({status})");
    };
    run().await;
    let tables = TableStore::new(data.join("tables")).unwrap();
    check_inferred(&tables, RECORDS).await;
    let silver = tables.open("silver.clicks").await.unwrap();
    let schema = smelter_lake::log::arrow_schema(&silver, "silver.clicks").unwrap();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names[..7],
        [
            "amount",
            "at",
            "cart",
            "id",
            "score",
            "visitor",
            "_rescued_data"
        ],
        "created with the first records' fields (serde_json writes keys sorted): {names:?}"
    );
    assert_eq!(
        names.last(),
        Some(&"coupon"),
        "added after the table's columns"
    );
    assert_eq!(
        schema.field_with_name("score").unwrap().data_type(),
        &DataType::Int64,
        "the type most of the sample had"
    );

    // A restart reads the schema back from the table and grows it again.
    place("c.ndjson", RECORDS..RECORDS + 500);
    run().await;
    check_inferred(&tables, RECORDS + 500).await;
    let silver = tables.open("silver.clicks").await.unwrap();
    let history = smelter_lake::history::commits(&silver, "silver.clicks")
        .await
        .unwrap();
    let evolved: Vec<String> = history
        .iter()
        .filter_map(|c| c.smelter_info.get(smelter_lake::commit::EVOLVED_KEY))
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let added: BTreeSet<&str> = evolved
        .iter()
        .flat_map(|e| {
            e.strip_prefix("added ")
                .unwrap_or_else(|| panic!("only additions: {e}"))
                .split(", ")
        })
        .collect();
    assert_eq!(
        added,
        BTreeSet::from(["visitor.geo.zip", "coupon", "channel"]),
        "{evolved:?}"
    );
}

/// The first `records` records of [`growing`], each once in the inferred silver table with
/// every value where it belongs, none quarantined; gold's totals as the test sums them.
async fn check_inferred(tables: &TableStore, records: usize) {
    assert_eq!(
        count(tables, "SELECT count(*) FROM silver.clicks_quarantine").await,
        0
    );
    let channel = if records > RECORDS { "channel" } else { "NULL" };
    let batches = oracle::sql(
        tables,
        &format!(
            "SELECT id, score, coupon, visitor['geo']['zip'] AS zip, _rescued_data, {channel} \
             FROM silver.clicks"
        ),
    )
    .await
    .unwrap();
    let mut seen = BTreeSet::new();
    for batch in &batches {
        let text = |c: usize| arrow::compute::cast(batch.column(c), &DataType::Utf8).unwrap();
        let (id, coupon, zip, rescued, channel) = (text(0), text(2), text(3), text(4), text(5));
        let score = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let i: usize = id.as_string::<i32>().value(row)[1..].parse().unwrap();
            assert!(seen.insert(i), "r{i} once");
            let value = |a: &arrow::array::ArrayRef| {
                a.is_valid(row)
                    .then(|| a.as_string::<i32>().value(row).to_string())
            };
            if i.is_multiple_of(40) {
                assert!(score.is_null(row), "r{i}");
                assert_eq!(
                    value(&rescued).as_deref(),
                    Some(r#"{"score":"high"}"#),
                    "r{i}"
                );
            } else {
                assert_eq!(score.value(row), (i % 7) as i64, "r{i}");
                assert_eq!(value(&rescued), None, "r{i}");
            }
            let expected = (i >= 1_500).then(|| "WINTER".to_string());
            assert_eq!(value(&coupon), expected, "r{i}");
            let expected = (i >= 1_200).then(|| format!("69{:03}", i % 1000));
            assert_eq!(value(&zip), expected, "r{i}");
            let expected = (i >= RECORDS).then(|| "email".to_string());
            assert_eq!(value(&channel), expected, "r{i}");
        }
    }
    assert_eq!(seen, (0..records).collect(), "every record in silver");
    let totals = oracle::sql(tables, "SELECT clicks, score, coupons FROM gold.totals")
        .await
        .unwrap();
    let int = |c: usize| totals[0].column(c).as_primitive::<Int64Type>().value(0);
    let scores: i64 = (0..records)
        .filter(|i| !i.is_multiple_of(40))
        .map(|i| (i % 7) as i64)
        .sum();
    assert_eq!(
        (int(0), int(1), int(2)),
        (records as i64, scores, (1_500..records).count() as i64)
    );
}
