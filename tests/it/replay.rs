//! Quarantine replay (`smelter replay`, the worker's `refine::replay`): the demo runs with
//! a rule that is too strict (`product_price < 480` quarantines about 5% of the events);
//! the rule is fixed in the spec, and the quarantined records are replayed — the first
//! replay aborted on purpose between its silver commit and the quarantine's (the
//! `replay.after_silver` failpoint: its line in the log, silver holding the replay's txn,
//! the quarantine not), the second finishing that replay, a third finding nothing. Then
//! the pipeline runs on, and the whole oracle must hold for the fixed spec: silver gained
//! each fixed record exactly once, the quarantine holds exactly the records the fixed spec
//! rejects, gold equals its recomputation, every log replays clean.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use smelter_common::spec::PipelineSpec;
use smelter_lake::{AppId, TableStore};
use smelter_tests::oracle::{self, check_pipeline, generator_truth};
use smelter_tests::processes::{smelter_up, wait_exit};
use smelter_tests::smelter_binary;

const STRICT: &str =
    "      - { name: price_cap, expr: \"product_price < 480\", on_violation: quarantine }\n";

fn replay(data: &Path, pipeline: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(smelter_binary())
        .args([
            "--log-json",
            "replay",
            "silver.events_quarantine",
            "--rule",
            "price_cap",
        ])
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--data-dir")
        .arg(data)
        .args(["--output", "json"])
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

async fn count(tables: &TableStore, sql: &str) -> i64 {
    let batches = oracle::sql(tables, sql).await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

async fn run_to_the_end(data: &Path, pipeline: &Path) {
    let mut up = smelter_up(data, pipeline, &["--exit-when-done"], &[]);
    let status = wait_exit(&mut up, Duration::from_secs(180)).await.unwrap();
    assert!(status.success(), "smelter up finished ({status})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_fixed_rule_through_a_crash_refines_each_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pipeline = dir.path().join("pipeline.yaml");
    let fixed = smelter_cli::workload::bounded_demo(10_000, 2, None);
    let anchor = "      - { name: known_type,";
    assert!(fixed.contains(anchor));
    let strict = fixed.replacen(anchor, &format!("{STRICT}{anchor}"), 1);
    std::fs::write(&pipeline, &strict).unwrap();
    run_to_the_end(&data, &pipeline).await;
    let tables = TableStore::new(data.join("tables")).unwrap();
    let capped = count(
        &tables,
        "SELECT count(*) FROM silver.events_quarantine WHERE rule = 'price_cap'",
    )
    .await;
    assert!(
        (300..=800).contains(&capped),
        "about 5% of 10,000 events quarantined by the strict rule: {capped}"
    );
    let silver_before = count(&tables, "SELECT count(*) FROM silver.events").await;

    // The rule fixed; the first replay aborted between its two commits.
    std::fs::write(&pipeline, &fixed).unwrap();
    let crashed = replay(
        &data,
        &pipeline,
        &[("SMELTER__WORKER__FAILPOINT", "replay.after_silver:1")],
    );
    assert_eq!(crashed.status.signal(), Some(6), "died of SIGABRT");
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("\"failpoint\":\"replay.after_silver\"")),
        "the hook's line in the log: {stderr}"
    );
    let app_id = AppId::Replay {
        quarantine: "silver.events_quarantine".into(),
    };
    let silver = tables.open("silver.events").await.unwrap();
    let quarantine = tables.open("silver.events_quarantine").await.unwrap();
    let done = smelter_lake::log::txn_version(&silver, &app_id)
        .await
        .unwrap();
    let marked = smelter_lake::log::txn_version(&quarantine, &app_id)
        .await
        .unwrap();
    assert!(
        done.is_some() && marked.is_none(),
        "silver replayed, quarantine not marked"
    );
    let gained = count(&tables, "SELECT count(*) FROM silver.events").await - silver_before;
    assert!(gained > 0, "the replay's silver commit landed");
    assert_eq!(
        count(
            &tables,
            "SELECT count(*) FROM silver.events_quarantine WHERE rule = 'price_cap'"
        )
        .await,
        capped,
        "the quarantine still holds every replayed record"
    );

    // The second replay finishes that one (no second silver commit), the third finds none.
    let finished = replay(&data, &pipeline, &[]);
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&finished.stdout).unwrap();
    assert_eq!(report["resumed"], true, "{report}");
    assert_eq!(report["replayed"], capped, "{report}");
    assert_eq!(
        report["silver_version"],
        serde_json::Value::Null,
        "{report}"
    );
    assert_eq!(
        count(&tables, "SELECT count(*) FROM silver.events").await - silver_before,
        gained,
        "silver gained the fixed records once"
    );
    let again = replay(&data, &pipeline, &[]);
    assert!(again.status.success());
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["replayed"], 0, "nothing left to replay: {report}");
    assert_eq!(report["resumed"], false, "{report}");

    // Bad requests are clear errors, exit 2.
    let bad = Command::new(smelter_binary())
        .args(["replay", "silver.events", "--pipeline"])
        .arg(&pipeline)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a quarantine table"));
    let bad = Command::new(smelter_binary())
        .args([
            "replay",
            "silver.events_quarantine",
            "--where",
            "nope > 1",
            "--pipeline",
        ])
        .arg(&pipeline)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // The pipeline runs on (gold folds the replayed rows); the fixed spec's oracle holds.
    run_to_the_end(&data, &pipeline).await;
    let spec = PipelineSpec::parse(&fixed, "pipeline.yaml").unwrap();
    check_pipeline(&tables, &spec, &generator_truth(&spec))
        .await
        .unwrap();
}
