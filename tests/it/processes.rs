//! The cluster roles as separate processes — `smelter coordinator`, `smelter worker` and
//! `smelter apply` — configured through `SMELTER__*` variables. A worker killed with
//! SIGKILL loses its lease and its tasks move to the survivor; the tables stay exact.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smelter_tests::oracle::{check_bronze, check_gold, check_log, check_silver, generator_truth};
use smelter_tests::{bounded_demo, smelter_binary};
use smelter_worker::tables::TableStore;
use tokio::time::Instant;

/// A port that was free a moment ago (the coordinator must be told its address up front).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn role(args: &[&str], env: &[(&str, String)]) -> Child {
    let mut command = Command::new(smelter_binary());
    command
        .args(args)
        .env("RUST_LOG", "warn,deltalake_core=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn smelter role")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_as_processes_survive_a_killed_worker() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tables");
    let port = free_port();
    let env = vec![
        ("SMELTER__COORDINATOR__LISTEN", format!("127.0.0.1:{port}")),
        (
            "SMELTER__COORDINATOR__ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("SMELTER__COORDINATOR__LEASE_TTL_MS", "2000".to_string()),
        (
            "SMELTER__COORDINATOR__HEARTBEAT_INTERVAL_MS",
            "400".to_string(),
        ),
        ("SMELTER__WORKER__FLIGHT_LISTEN", "127.0.0.1:0".to_string()),
        ("SMELTER__WORKER__BATCH_MAX_WAIT_MS", "300".to_string()),
        ("SMELTER__STORAGE__ROOT", root.display().to_string()),
    ];
    let mut processes = Killed(vec![role(&["coordinator"], &env)]);
    processes.0.push(role(&["worker"], &env));
    processes.0.push(role(&["worker"], &env));

    let pipeline = dir.path().join("pipeline.yaml");
    let text = bounded_demo(30_000, 4).replace("      rate: null\n", "      rate: 6000\n");
    std::fs::write(&pipeline, &text).unwrap();
    // `apply` retries until the coordinator listens: it is a fresh process too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = Command::new(smelter_binary())
            .args([
                "apply",
                pipeline.to_str().unwrap(),
                "--coordinator",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "smelter apply never succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let tables = TableStore::new(&root).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tables.exists("bronze.events")
        || smelter_worker::tables::row_count(&tables.open("bronze.events").await.unwrap()) < 5_000
    {
        assert!(Instant::now() < deadline, "ingest never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGKILL one worker mid-stream: no drain, no deregistration; only its lease expires.
    let mut victim = processes.0.remove(1);
    victim.kill().unwrap();
    victim.wait().unwrap();

    let spec = smelter_common::spec::PipelineSpec::parse(&text, "pipeline.yaml").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !smelter_worker::tasks::drained::pipeline_drained(&tables, &spec)
        .await
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "the surviving worker did not finish the pipeline"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let truth = generator_truth(&spec);
    check_bronze(&tables, "bronze.events", &truth)
        .await
        .unwrap();
    check_silver(&tables, "silver.events", &truth)
        .await
        .unwrap();
    check_gold(&tables, &spec).await.unwrap();
    for table in tables.list() {
        check_log(&tables, &table).unwrap();
    }

    // `smelter status` tells the same story: one worker left, owning everything, and each
    // partition's committed offset at its last event (reports arrive once a second).
    let expected: Vec<serde_json::Value> = (0..4)
        .map(|p| serde_json::json!(30_000 / 4 - 1 + i64::from(p < 30_000 % 4)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(smelter_binary())
            .args([
                "status",
                "--output",
                "json",
                "--coordinator",
                &format!("127.0.0.1:{port}"),
            ])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
        let offsets: Vec<serde_json::Value> = tasks
            .iter()
            .filter(|t| t["kind"] == "ingest")
            .map(|t| t["committed_offset"].clone())
            .collect();
        let one_worker = status["workers"].as_array().map(Vec::len) == Some(1);
        let all_owned = tasks
            .iter()
            .all(|t| t["worker_id"] == status["workers"][0]["worker_id"]);
        if one_worker && all_owned && offsets == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the final state: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
