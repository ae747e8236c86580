//! SIGKILL `smelter up` mid-stream and start it again on the same data directory: no bronze
//! record is lost or duplicated, and silver and gold end up exact. `smelter verify` then
//! reports every table clean, and catches a data file removed behind its back.

use std::process::Command;
use std::time::Duration;

use smelter_harness::wait_until;
use smelter_lake::TableStore;
use smelter_tests::oracle::{check_pipeline, generator_truth};
use smelter_tests::processes::{smelter_up, wait_exit};
use smelter_tests::{bounded_demo, bronze_rows, smelter_binary};

fn up(data: &std::path::Path, pipeline: &std::path::Path, extra: &[&str]) -> std::process::Child {
    smelter_up(data, pipeline, extra, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.yaml");
    // Paced so the kill lands mid-stream: 40k events at 8k/s.
    let text = bounded_demo(40_000, 4).replace("      rate: null\n", "      rate: 8000\n");
    std::fs::write(&pipeline, &text).unwrap();
    let data = dir.path().join("data");
    let tables = TableStore::new(data.join("tables")).unwrap();

    let mut first = up(&data, &pipeline, &[]);
    wait_until(
        Duration::from_secs(60),
        "bronze reaching 8,000 rows",
        async || {
            assert!(
                first.try_wait().unwrap().is_none(),
                "smelter up exited early"
            );
            bronze_rows(&tables).await >= 8_000
        },
    )
    .await
    .unwrap();
    first.kill().unwrap(); // SIGKILL: no draining, no clean shutdown
    first.wait().unwrap();
    let at_kill = smelter_lake::log::row_count(&tables.open("bronze.events").await.unwrap());
    assert!(
        at_kill < 40_000,
        "the kill must land mid-stream (bronze had {at_kill})"
    );

    let mut second = up(&data, &pipeline, &["--exit-when-done"]);
    let status = wait_exit(&mut second, Duration::from_secs(180))
        .await
        .unwrap();
    assert!(status.success(), "restart exited with {status}");

    let spec = smelter_common::spec::PipelineSpec::parse(&text, "pipeline.yaml").unwrap();
    let truth = generator_truth(&spec);
    check_pipeline(&tables, &spec, &truth).await.unwrap();

    let verify = || {
        Command::new(smelter_binary())
            .args(["verify", "--output", "json", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let clean = verify();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(
        reports.len(),
        tables.list().await.len(),
        "every table is verified"
    );
    let bronze = reports
        .iter()
        .find(|r| r["table"] == "bronze.events")
        .unwrap();
    assert_eq!(bronze["partitions"].as_object().unwrap().len(), 4);

    // A data file lost from storage is a finding, and exit code 1.
    let silver_dir = tables.path("silver.events");
    let lost = std::fs::read_dir(&silver_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .expect("silver has data files");
    std::fs::remove_file(&lost).unwrap();
    let dirty = verify();
    assert_eq!(dirty.status.code(), Some(1));
    let reports: serde_json::Value = serde_json::from_slice(&dirty.stdout).unwrap();
    let silver = reports
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["table"] == "silver.events")
        .unwrap();
    let name = lost.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        silver["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "file_missing" && f["message"].as_str().unwrap().contains(&name)),
        "{silver}"
    );
}
