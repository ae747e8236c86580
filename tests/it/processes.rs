//! The cluster roles as separate processes — `smelter coordinator`, `smelter worker` and
//! `smelter apply` — configured through `SMELTER__*` variables. A worker killed with
//! SIGKILL loses its lease and its tasks move to the survivor; on etcd, a coordinator killed
//! with SIGKILL comes back with its pipelines and the workers rejoin it. Tables stay exact.

use std::process::{Command, Stdio};
use std::time::Duration;

use smelter_harness::wait_until;
use smelter_tests::oracle::{check_pipeline, generator_truth};
use smelter_tests::processes;
use smelter_tests::services::Etcd;
use smelter_tests::{bounded_demo, smelter_binary, wait_bronze_rows};

const EVENTS: u64 = 30_000;

/// Runs the clickstream pipeline over separate processes, killing a worker mid-stream and,
/// if `etcd` is given, the coordinator too; then checks every table with the oracle. The
/// pipeline is applied and the status read with the `smelter` CLI, as an operator would.
async fn survive_kills(etcd: Option<&Etcd>) {
    let settings = [
        ("SMELTER__COORDINATOR__LEASE_TTL_MS", "2000"),
        ("SMELTER__COORDINATOR__HEARTBEAT_INTERVAL_MS", "400"),
        ("SMELTER__WORKER__BATCH_MAX_WAIT_MS", "300"),
    ];
    let mut cluster = processes::start_on(1, etcd.map(|e| e.endpoint.as_str()), &settings);
    cluster.add_worker().unwrap();
    cluster.add_worker().unwrap();
    let endpoint = cluster.coordinator_endpoint(0);

    let pipeline = cluster.dir().join("pipeline.yaml");
    let text = bounded_demo(EVENTS, 4).replace("      rate: null\n", "      rate: 6000\n");
    std::fs::write(&pipeline, &text).unwrap();
    // `apply` is retried until the coordinator listens: it is a fresh process too.
    wait_until(
        Duration::from_secs(30),
        "smelter apply to succeed",
        async || {
            Command::new(smelter_binary())
                .arg("apply")
                .arg(&pipeline)
                .args(["--coordinator", &endpoint])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        },
    )
    .await
    .unwrap();

    let config = smelter_common::config::SmelterConfig::load(None, cluster.env().to_vec()).unwrap();
    let tables = smelter_lake::TableStore::from_config(&config.storage).unwrap();
    wait_bronze_rows(&tables, 5_000, Duration::from_secs(60))
        .await
        .unwrap();
    // SIGKILL one worker mid-stream: no drain, no deregistration; only its lease expires.
    cluster.kill_worker(0).unwrap();
    if etcd.is_some() {
        // Then the coordinator: its replacement finds the pipeline in etcd, and the workers
        // (one survivor) re-register with it. Nobody applies anything again.
        wait_bronze_rows(&tables, 12_000, Duration::from_secs(60))
            .await
            .unwrap();
        cluster.kill_coordinator(0).unwrap();
        cluster.restart_coordinator(0).unwrap();
    }

    let spec = smelter_common::spec::PipelineSpec::parse(&text, "pipeline.yaml").unwrap();
    let mut drain = smelter_worker::tasks::drained::DrainWatch::new(tables.clone(), spec.clone());
    wait_until(
        Duration::from_secs(120),
        "the surviving worker finishing the pipeline",
        async || drain.drained().await.unwrap(),
    )
    .await
    .unwrap();
    let truth = generator_truth(&spec);
    check_pipeline(&tables, &spec, &truth).await.unwrap();

    // `smelter status` tells the same story: one worker left, owning everything, and each
    // partition's committed offset at its last event (reports arrive once a second).
    let mut last: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    for (_, partition, offset) in &truth.bronze {
        let entry = last.entry(*partition).or_insert(*offset);
        *entry = (*entry).max(*offset);
    }
    let expected: Vec<serde_json::Value> = last.values().map(|o| serde_json::json!(o)).collect();
    wait_until(
        Duration::from_secs(30),
        "status showing the final state",
        async || {
            let out = Command::new(smelter_binary())
                .args(["status", "--output", "json", "--coordinator", &endpoint])
                .output()
                .unwrap();
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
            let offsets: Vec<serde_json::Value> = tasks
                .iter()
                .filter(|t| t["kind"] == "ingest")
                .map(|t| t["committed_offset"].clone())
                .collect();
            let one_worker = status["workers"].as_array().map(Vec::len) == Some(1);
            let all_owned = !tasks.is_empty()
                && tasks
                    .iter()
                    .all(|t| t["worker_id"] == status["workers"][0]["worker_id"]);
            if one_worker && all_owned && offsets == expected {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_as_processes_survive_a_killed_worker() {
    survive_kills(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_on_etcd_survives_sigkill() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    survive_kills(Some(&etcd)).await;
}
