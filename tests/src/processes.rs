//! The suites' side of [`smelter_harness::ProcessCluster`] (the launcher the benchmark
//! uses too): clusters of this build's `smelter` binary on a test etcd, the Kafka demo
//! applied to one, reading status documents, and `smelter up` as a child process.

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub use smelter_harness::{ClusterSpec, ProcessCluster, signal, terminate, wait_exit};

use crate::{TestResult, smelter_binary};

/// Starts `coordinators` replicas of this build's `smelter` on etcd at `etcd_endpoint`;
/// `settings` are extra `SMELTER__*` variables for every process (lease TTL, batch sizes,
/// ...). `SMELTER_TEST_LOG` sets the processes' `RUST_LOG`.
pub fn start(
    coordinators: usize,
    etcd_endpoint: &str,
    settings: &[(&str, &str)],
) -> ProcessCluster {
    start_on(coordinators, Some(etcd_endpoint), settings)
}

/// [`start`], on etcd or (`None`) on the coordinator's in-memory store.
pub fn start_on(
    coordinators: usize,
    etcd_endpoint: Option<&str>,
    settings: &[(&str, &str)],
) -> ProcessCluster {
    let mut spec =
        ClusterSpec::new(smelter_binary(), coordinators, etcd_endpoint).with_settings(settings);
    if let Ok(filter) = std::env::var("SMELTER_TEST_LOG") {
        spec.log_filter = filter;
    }
    ProcessCluster::start(spec).expect("start the coordinator processes")
}

/// Applies the demo pipeline reading `topic` on `brokers`; returns its spec and the
/// tables it writes, as the processes see them (local, or the S3 store of the settings).
pub async fn apply_kafka_demo(
    cluster: &ProcessCluster,
    brokers: &str,
    topic: &str,
) -> TestResult<(smelter_common::spec::PipelineSpec, smelter_lake::TableStore)> {
    let text = crate::kafka::kafka_demo(brokers, topic);
    cluster.apply(&text, "pipeline.yaml").await?;
    let spec = smelter_common::spec::PipelineSpec::parse(&text, "pipeline.yaml")
        .map_err(|e| e.to_string())?;
    let config = smelter_common::config::SmelterConfig::load(None, cluster.env().to_vec())
        .map_err(|e| e.to_string())?;
    let tables =
        smelter_lake::TableStore::from_config(&config.storage).map_err(|e| e.to_string())?;
    Ok((spec, tables))
}

/// A process cluster running the Kafka demo on `topic`: `coordinators` replicas and
/// `workers` workers on etcd at `etcd_endpoint` with `settings`; returns it with the
/// pipeline's spec and tables.
pub async fn kafka_cluster(
    coordinators: usize,
    workers: usize,
    etcd_endpoint: &str,
    brokers: &str,
    topic: &str,
    settings: &[(&str, &str)],
) -> (
    ProcessCluster,
    smelter_common::spec::PipelineSpec,
    smelter_lake::TableStore,
) {
    let mut cluster = start(coordinators, etcd_endpoint, settings);
    for _ in 0..workers {
        cluster.add_worker().expect("start a worker");
    }
    let (spec, tables) = apply_kafka_demo(&cluster, brokers, topic)
        .await
        .expect("apply the Kafka demo");
    (cluster, spec, tables)
}

/// Settings for cluster tests: lease `lease_ms` with a heartbeat every `heartbeat_ms`,
/// partition discovery every second, small batches, short polls and gold refreshed every
/// half second, so faults land on work in progress. `extra` comes last and overrides.
pub fn quick_settings<'a>(
    lease_ms: &'a str,
    heartbeat_ms: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut settings = vec![
        ("SMELTER__COORDINATOR__LEASE_TTL_MS", lease_ms),
        ("SMELTER__COORDINATOR__HEARTBEAT_INTERVAL_MS", heartbeat_ms),
        ("SMELTER__COORDINATOR__DISCOVERY_INTERVAL_MS", "1000"),
        ("SMELTER__WORKER__BATCH_MAX_WAIT_MS", "300"),
        ("SMELTER__WORKER__POLL_INTERVAL_MS", "100"),
        ("SMELTER__WORKER__GOLD_MIN_INTERVAL_MS", "500"),
    ];
    settings.extend_from_slice(extra);
    settings
}

/// The id of worker `index` (by its hostname) in a status document.
pub fn worker_id(status: &serde_json::Value, index: usize) -> Option<String> {
    let hostname = format!("worker-{index}");
    status["workers"]
        .as_array()?
        .iter()
        .find(|w| w["hostname"] == hostname.as_str())
        .and_then(|w| w["worker_id"].as_str())
        .map(str::to_string)
}

/// The tasks of a status document.
pub fn tasks(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["tasks"].as_array().cloned().unwrap_or_default()
}

/// `smelter up --workers 2 --data-dir DATA --pipeline PIPELINE [extra]` on free ports, with
/// extra environment variables (`SMELTER__*` settings).
pub fn smelter_up(data: &Path, pipeline: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    up(data, pipeline, extra, env, Stdio::inherit())
}

/// [`smelter_up`] with its log (stderr, as JSON lines) in the file `log`.
pub fn smelter_up_logging(
    data: &Path,
    pipeline: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    log: &Path,
) -> Child {
    let file = std::fs::File::create(log).expect("a log file");
    let mut args = vec!["--log-json"];
    args.extend_from_slice(extra);
    up(data, pipeline, &args, env, Stdio::from(file))
}

fn up(data: &Path, pipeline: &Path, extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Child {
    let mut command = Command::new(smelter_binary());
    command
        .args([
            "up",
            "--workers",
            "2",
            "--flight-addr",
            "127.0.0.1:0",
            "--coordinator-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--pipeline")
        .arg(pipeline)
        .args(extra)
        .env("RUST_LOG", "warn,deltalake_core=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn smelter up")
}

/// The pid in a commit-lock holder record (`<host> pid <pid> flight <addr>`).
pub fn holder_pid(value: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(value);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "pid")?;
    words.next()?.parse().ok()
}

/// Settings that put every table under `s3://lake/tables` on the S3-compatible store at
/// `endpoint` (moto, with its fixed credentials).
pub fn s3_settings(endpoint: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("SMELTER__STORAGE__ROOT", "s3://lake/tables"),
        ("SMELTER__STORAGE__S3_ENDPOINT", endpoint),
        ("SMELTER__STORAGE__S3_REGION", "us-east-1"),
        ("SMELTER__STORAGE__S3_ALLOW_HTTP", "true"),
        ("SMELTER__STORAGE__S3_ACCESS_KEY_ID", "smelter"),
        ("SMELTER__STORAGE__S3_SECRET_ACCESS_KEY", "smelter"),
    ]
}

/// The latest version of `table` (-1 before it exists).
/// The first version of `table` after `after` that was not written under `epoch` (the
/// `smelter/epoch` txn): a successor's commit. Versions between carry `epoch` themselves:
/// a log write in flight when its writer was stopped, or a version it claimed that a
/// successor completed for it (arbitrated stores); those were decided under its lock.
/// `None` until there is such a version.
pub async fn successor_commit(
    tables: &smelter_lake::TableStore,
    table: &str,
    after: i64,
    epoch: i64,
) -> Option<i64> {
    let log = tables.open(table).await.ok()?;
    let latest = smelter_lake::log::version(&log);
    for version in after + 1..=latest {
        let actions = smelter_lake::changes::commit_actions(&log, table, version)
            .await
            .ok()??;
        let written_under = actions.iter().find_map(|action| match action {
            deltalake::kernel::Action::Txn(txn) if txn.app_id == smelter_lake::app_id::EPOCH => {
                Some(txn.version)
            }
            _ => None,
        });
        if written_under != Some(epoch) {
            return Some(version);
        }
    }
    None
}

/// A table's latest version (-1 while it does not exist or cannot be read).
pub async fn table_version(tables: &smelter_lake::TableStore, table: &str) -> i64 {
    match tables.open(table).await {
        Ok(table) => smelter_lake::log::version(&table),
        Err(_) => -1,
    }
}
