//! Test harness for Smelter's integration suites.
//!
//! [`TestCluster`] starts the same code `smelter up` runs — a coordinator and N workers
//! over loopback gRPC — on free ports with its own temp directory, so suites run in
//! parallel. [`oracle`] checks the tables against ground truth computed independently of
//! the pipeline (docs/testing.md, "The oracle").

pub mod cdc;
pub mod certs;
pub mod kafka;
pub mod oracle;
pub mod processes;
pub mod proxy;
pub mod scram;
pub mod services;

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use smelter_cli::local::LocalCluster;
use smelter_common::config::SmelterConfig;
use smelter_common::spec::PipelineSpec;
use smelter_harness::wait_until;
use smelter_lake::TableStore;
use smelter_sdk::{AdminClient, QueryClient};

/// Result type of harness helpers: failures are test failures with a message.
pub type TestResult<T> = Result<T, String>;

/// The demo pipeline text.
pub const DEMO: &str = include_str!("../../examples/clickstream.yaml");

/// Every table the demo pipeline writes, its silver table's quarantine included.
pub const DEMO_TABLES: [&str; 6] = [
    "bronze.events",
    "silver.events",
    "silver.events_quarantine",
    "gold.hourly_metrics",
    "gold.daily_summary",
    "gold.user_segments",
];

/// The demo pipeline with a bounded, unpaced generator: `count` events over `partitions`.
pub fn bounded_demo(count: u64, partitions: u32) -> String {
    smelter_cli::workload::bounded_demo(count, partitions, None)
}

/// Installs test logging once (quiet unless RUST_LOG is set).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A cluster in this process with its own temp directory and ports.
pub struct TestCluster {
    dir: tempfile::TempDir,
    /// The configuration the cluster runs with.
    pub config: SmelterConfig,
    /// The pipeline it runs.
    pub spec: PipelineSpec,
    /// The tables it writes.
    pub tables: TableStore,
    cluster: Option<LocalCluster>,
}

impl TestCluster {
    /// Starts `workers` workers running `pipeline` (YAML text).
    pub async fn start(workers: usize, pipeline: &str) -> TestResult<TestCluster> {
        Self::start_with(workers, pipeline, |_| {}).await
    }

    /// [`Self::start`], with the configuration adjusted by `adjust` first (storage, ...).
    pub async fn start_with(
        workers: usize,
        pipeline: &str,
        adjust: impl FnOnce(&mut SmelterConfig),
    ) -> TestResult<TestCluster> {
        init_logging();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut config = SmelterConfig::default();
        config.coordinator.listen = "127.0.0.1:0".into();
        config.coordinator.lease_ttl_ms = 3_000;
        config.coordinator.heartbeat_interval_ms = 500;
        config.coordinator.discovery_interval_ms = 500;
        config.worker.flight_listen = "127.0.0.1:0".into();
        config.worker.batch_max_records = 5_000;
        config.worker.batch_max_wait_ms = 300;
        config.worker.poll_interval_ms = 100;
        config.worker.gold_min_interval_ms = 200;
        config.storage.root = dir.path().join("tables");
        adjust(&mut config);
        let spec = PipelineSpec::parse(pipeline, "test.yaml").map_err(|e| e.to_string())?;
        let tables = TableStore::from_config(&config.storage).map_err(|e| e.to_string())?;
        let mut cluster = TestCluster {
            dir,
            config,
            spec,
            tables,
            cluster: None,
        };
        cluster.launch(workers, pipeline).await?;
        Ok(cluster)
    }

    async fn launch(&mut self, workers: usize, pipeline: &str) -> TestResult<()> {
        let cluster = LocalCluster::start(self.config.clone(), workers)
            .await
            .map_err(|e| e.to_string())?;
        let credentials =
            smelter_cli::commands::credentials(&self.config.security).map_err(|e| e.to_string())?;
        let mut admin = AdminClient::connect_with(&cluster.coordinator_endpoint, &credentials)
            .await
            .map_err(|e| e.to_string())?;
        admin
            .apply(pipeline, "test.yaml")
            .await
            .map_err(|e| e.to_string())?;
        self.cluster = Some(cluster);
        Ok(())
    }

    /// The temp directory (tables live in `<dir>/tables`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Flight SQL endpoints of the workers.
    pub fn flight_endpoints(&self) -> Vec<String> {
        self.cluster
            .as_ref()
            .map(|c| c.flight_endpoints.clone())
            .unwrap_or_default()
    }

    /// The coordinator's gRPC endpoint.
    pub fn coordinator_endpoint(&self) -> String {
        self.cluster
            .as_ref()
            .map(|c| c.coordinator_endpoint.clone())
            .unwrap_or_default()
    }

    /// Runs SQL through the first worker's Flight SQL service.
    pub async fn query(&self, sql: &str) -> TestResult<Vec<RecordBatch>> {
        let endpoint = self
            .flight_endpoints()
            .first()
            .cloned()
            .ok_or("cluster not running")?;
        let mut client = QueryClient::connect_with(&endpoint, &self.credentials()?)
            .await
            .map_err(|e| e.to_string())?;
        client.query(sql).await.map_err(|e| e.to_string())
    }

    /// What a client with this cluster's configuration presents (CA, certificate, token).
    pub fn credentials(&self) -> TestResult<smelter_sdk::Credentials> {
        smelter_cli::commands::credentials(&self.config.security).map_err(|e| e.to_string())
    }

    /// Waits until the pipeline has processed all bounded input through gold.
    pub async fn wait_drained(&self, timeout: Duration) -> TestResult<()> {
        let mut drain =
            smelter_worker::tasks::drained::DrainWatch::new(self.tables.clone(), self.spec.clone());
        let drained = wait_until(timeout, "the pipeline draining", async || {
            drain
                .drained()
                .await
                .map_err(|e| e.to_string())?
                .then_some(())
                .ok_or_else(String::new)
        })
        .await;
        if let Err(why) = drained {
            let credentials = self.credentials()?;
            let status =
                match AdminClient::connect_with(&self.coordinator_endpoint(), &credentials).await {
                    Ok(mut admin) => admin
                        .status()
                        .await
                        .map(|s| smelter_sdk::status_json(&s).to_string())
                        .unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
            return Err(format!("{why}; status: {status}"));
        }
        Ok(())
    }

    /// Waits until `sql`, run directly over the tables, returns exactly `expected`
    /// (rows as [`oracle::rows`] formats them).
    pub async fn wait_for_rows(
        &self,
        timeout: Duration,
        sql: &str,
        expected: &[&str],
    ) -> TestResult<()> {
        wait_until(
            timeout,
            &format!("`{sql}` to return {expected:?}"),
            async || {
                let rows = oracle::sql(&self.tables, sql)
                    .await
                    .and_then(|b| oracle::rows(&b))?;
                if rows == expected {
                    Ok(())
                } else {
                    Err(format!("{rows:?}"))
                }
            },
        )
        .await
    }

    /// Checks every table against the truth of the pipeline's generator (the oracle).
    pub async fn check_generated(&self) -> TestResult<()> {
        oracle::check_pipeline(
            &self.tables,
            &self.spec,
            &oracle::generator_truth(&self.spec),
        )
        .await
    }

    /// Stops the cluster (draining workers) but keeps the directory.
    pub async fn stop(&mut self) -> TestResult<()> {
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Starts the cluster again on the same directory.
    pub async fn restart(&mut self, workers: usize, pipeline: &str) -> TestResult<()> {
        self.stop().await?;
        self.launch(workers, pipeline).await
    }
}

/// Rows in `bronze.events` under `tables` (0 before it exists or while it cannot be read).
pub async fn bronze_rows(tables: &TableStore) -> u64 {
    if !tables.exists("bronze.events").await {
        return 0;
    }
    match tables.open("bronze.events").await {
        Ok(table) => smelter_lake::log::row_count(&table),
        Err(_) => 0,
    }
}

/// Waits until `bronze.events` holds at least `rows` rows.
pub async fn wait_bronze_rows(tables: &TableStore, rows: u64, timeout: Duration) -> TestResult<()> {
    wait_until(
        timeout,
        &format!("bronze reaching {rows} rows"),
        async || {
            let now = bronze_rows(tables).await;
            if now >= rows {
                Ok(())
            } else {
                Err(format!("{now} rows"))
            }
        },
    )
    .await
}

/// Runs the `smelter` binary with `args` on the tables of `data_dir` (`--data-dir`), for
/// the verbs that read storage directly; panics unless it succeeds, and returns what it
/// printed as JSON (`--output json` is added).
pub fn smelter_json(args: &[&str], data_dir: &Path) -> serde_json::Value {
    let out = std::process::Command::new(smelter_binary())
        .args(args)
        .args(["--output", "json", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run smelter");
    assert!(
        out.status.success(),
        "smelter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("smelter printed JSON")
}

/// Path of the `smelter` binary built next to this test binary.
pub fn smelter_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/it-<hash> -> target/<profile>/smelter
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let binary = dir.join("smelter");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p smelter-cli` first (the README test command does)",
        binary.display()
    );
    binary
}
