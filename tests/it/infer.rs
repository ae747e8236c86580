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
