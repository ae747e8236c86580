//! The cluster roles as separate processes — `smelter coordinator`, `smelter worker` and
//! `smelter apply` — configured through `SMELTER__*` variables. A worker killed with
//! SIGKILL loses its lease and its tasks move to the survivor; on etcd, a coordinator killed
//! with SIGKILL comes back with its pipelines and the workers rejoin it. Tables stay exact.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smelter_tests::oracle::{check_pipeline, generator_truth};
use smelter_tests::services::Etcd;
use smelter_tests::{bounded_demo, smelter_binary};
use smelter_worker::tables::TableStore;
use tokio::time::Instant;

const EVENTS: u64 = 30_000;

/// A port that was free a moment ago (the coordinator must be told its address up front).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Child processes, killed when the test ends however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
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

fn kill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

async fn bronze_rows_at_least(tables: &TableStore, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tables.exists("bronze.events").await
        || smelter_worker::tables::row_count(&tables.open("bronze.events").await.unwrap()) < rows
    {
        assert!(
            Instant::now() < deadline,
            "bronze never reached {rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the clickstream pipeline over separate processes, killing a worker mid-stream and,
/// if `etcd` is given, the coordinator too; then checks every table with the oracle.
async fn survive_kills(etcd: Option<&Etcd>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tables");
    let port = free_port();
    let mut env = vec![
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
    if let Some(etcd) = etcd {
        env.push(("SMELTER__COORDINATOR__STORE", "etcd".to_string()));
        env.push((
            "SMELTER__COORDINATOR__ETCD_ENDPOINTS",
            etcd.endpoint.clone(),
        ));
    }
    let mut processes = Processes(vec![
        role(&["coordinator"], &env),
        role(&["worker"], &env),
        role(&["worker"], &env),
    ]);

    let pipeline = dir.path().join("pipeline.yaml");
    let text = bounded_demo(EVENTS, 4).replace("      rate: null\n", "      rate: 6000\n");
    std::fs::write(&pipeline, &text).unwrap();
    // `apply` retries until the coordinator listens: it is a fresh process too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = Command::new(smelter_binary())
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
        if applied.success() {
            break;
        }
        assert!(Instant::now() < deadline, "smelter apply never succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let tables = TableStore::new(&root).unwrap();
    bronze_rows_at_least(&tables, 5_000).await;
    // SIGKILL one worker mid-stream: no drain, no deregistration; only its lease expires.
    kill(&mut processes.0[1]);
    if etcd.is_some() {
        // Then the coordinator: its replacement finds the pipeline in etcd, and the workers
        // (one survivor) re-register with it. Nobody applies anything again.
        bronze_rows_at_least(&tables, 12_000).await;
        kill(&mut processes.0[0]);
        processes.0[0] = role(&["coordinator"], &env);
    }

    let spec = smelter_common::spec::PipelineSpec::parse(&text, "pipeline.yaml").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut drain = smelter_worker::tasks::drained::DrainWatch::new(tables.clone(), spec.clone());
    while !drain.drained().await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "the surviving worker did not finish the pipeline"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the final state: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
