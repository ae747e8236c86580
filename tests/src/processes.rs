//! Smelter's cluster roles as real child processes — `smelter coordinator` replicas and
//! `smelter worker`s — configured through `SMELTER__*` variables, for the suites that kill,
//! pause and restart them. Every child is killed when the [`ProcessCluster`] drops, however
//! the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smelter_client::sdk::AdminClient;
use tokio::time::Instant;

use crate::services::free_port;
use crate::{TestResult, smelter_binary};

/// A cluster of separate processes sharing one table root and coordination store.
pub struct ProcessCluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    coordinator_ports: Vec<u16>,
    /// Coordinator replicas (`None` once killed).
    pub coordinators: Vec<Option<Child>>,
    /// Workers, in start order (`None` once killed or stopped).
    pub workers: Vec<Option<Child>>,
}

impl ProcessCluster {
    /// Starts `coordinators` replicas on etcd at `etcd_endpoint`; `settings` are extra
    /// `SMELTER__*` variables for every process (lease TTL, batch sizes, ...).
    pub fn start(coordinators: usize, etcd_endpoint: &str, settings: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let coordinator_ports: Vec<u16> = (0..coordinators).map(|_| free_port()).collect();
        let endpoints: Vec<String> = coordinator_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let mut env: Vec<(String, String)> = vec![
            ("SMELTER__COORDINATOR__ENDPOINT".into(), endpoints.join(",")),
            ("SMELTER__COORDINATOR__STORE".into(), "etcd".into()),
            (
                "SMELTER__COORDINATOR__ETCD_ENDPOINTS".into(),
                etcd_endpoint.into(),
            ),
            (
                "SMELTER__WORKER__FLIGHT_LISTEN".into(),
                "127.0.0.1:0".into(),
            ),
            (
                "SMELTER__STORAGE__ROOT".into(),
                dir.path().join("tables").display().to_string(),
            ),
        ];
        env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut cluster = Self {
            dir,
            env,
            coordinator_ports,
            coordinators: Vec::new(),
            workers: Vec::new(),
        };
        for i in 0..coordinators {
            let child = cluster.spawn_coordinator(i);
            cluster.coordinators.push(Some(child));
        }
        cluster
    }

    fn spawn(&self, args: &[&str], extra: &[(String, String)]) -> Child {
        let mut command = Command::new(smelter_binary());
        command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SMELTER_TEST_LOG")
                    .unwrap_or_else(|_| "warn,deltalake_core=error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in self.env.iter().chain(extra) {
            command.env(key, value);
        }
        command.spawn().expect("spawn a smelter role")
    }

    fn spawn_coordinator(&self, i: usize) -> Child {
        let port = self.coordinator_ports[i];
        self.spawn(
            &["coordinator"],
            &[
                (
                    "SMELTER__COORDINATOR__LISTEN".into(),
                    format!("127.0.0.1:{port}"),
                ),
                (
                    "SMELTER__COORDINATOR__ADVERTISE".into(),
                    format!("http://127.0.0.1:{port}"),
                ),
            ],
        )
    }

    /// The shared temp directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Root of the tables.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("tables")
    }

    /// Every coordinator endpoint, comma-separated (what workers and the CLI are given).
    pub fn endpoints(&self) -> String {
        self.coordinator_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The control-plane URL of replica `i`.
    pub fn coordinator_endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.coordinator_ports[i])
    }

    /// Starts one more worker, with hostname `worker-<index>` (see [`Self::worker_id`]);
    /// returns its index.
    pub fn add_worker(&mut self) -> usize {
        let hostname = format!("worker-{}", self.workers.len());
        let child = self.spawn(&["worker"], &[("HOSTNAME".into(), hostname)]);
        self.workers.push(Some(child));
        self.workers.len() - 1
    }

    /// SIGKILLs worker `i`: no drain, no deregistration.
    pub fn kill_worker(&mut self, i: usize) {
        kill(self.workers[i].take());
    }

    /// SIGTERMs worker `i` and waits for it to drain and exit; returns its exit status.
    pub async fn stop_worker(&mut self, i: usize) -> TestResult<std::process::ExitStatus> {
        let child = self.workers[i].take().ok_or("worker already gone")?;
        terminate(child).await
    }

    /// SIGKILLs coordinator replica `i`.
    pub fn kill_coordinator(&mut self, i: usize) {
        kill(self.coordinators[i].take());
    }

    /// Starts coordinator replica `i` again (same port).
    pub fn restart_coordinator(&mut self, i: usize) {
        let child = self.spawn_coordinator(i);
        self.coordinators[i] = Some(child);
    }

    /// `smelter apply FILE --coordinator <all replicas>`, retried until a leader accepts it.
    pub async fn apply(&self, pipeline: &Path) -> TestResult<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(smelter_binary())
                .arg("apply")
                .arg(pipeline)
                .args(["--coordinator", &self.endpoints()])
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "smelter apply never succeeded: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Applies the demo pipeline reading `topic` on `brokers`; returns its spec and the
    /// tables it writes.
    pub async fn apply_kafka_demo(
        &self,
        brokers: &str,
        topic: &str,
    ) -> TestResult<(
        smelter_common::spec::PipelineSpec,
        smelter_worker::tables::TableStore,
    )> {
        let text = crate::kafka::kafka_demo(brokers, topic);
        let pipeline = self.dir().join("pipeline.yaml");
        std::fs::write(&pipeline, &text).map_err(|e| e.to_string())?;
        self.apply(&pipeline).await?;
        let spec = smelter_common::spec::PipelineSpec::parse(&text, "pipeline.yaml")
            .map_err(|e| e.to_string())?;
        // The tables as the processes see them (local, or the S3 store of the settings).
        let config = smelter_common::config::SmelterConfig::load(None, self.env.clone())
            .map_err(|e| e.to_string())?;
        let tables = smelter_worker::tables::TableStore::from_config(&config.storage)
            .map_err(|e| e.to_string())?;
        Ok((spec, tables))
    }

    /// `smelter status --output json`, as the CLI prints it.
    pub fn status(&self) -> TestResult<serde_json::Value> {
        let out = Command::new(smelter_binary())
            .args([
                "status",
                "--output",
                "json",
                "--coordinator",
                &self.endpoints(),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "smelter status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Polls `smelter status` until `predicate` holds; returns that status and how long it took.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> TestResult<(serde_json::Value, Duration)> {
        let started = Instant::now();
        let mut last = serde_json::Value::Null;
        while started.elapsed() < timeout {
            // The SDK directly: polling through the CLI costs a process per round.
            if let Ok(mut admin) = AdminClient::connect(&self.endpoints()).await
                && let Ok(status) = admin.status().await
            {
                last = smelter_client::commands::admin::status_json(&status);
                // (connect may itself wait out an election: judge the time taken, too)
                if predicate(&last) && started.elapsed() <= timeout {
                    return Ok((last, started.elapsed()));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "{what}: not within {timeout:?}; last status: {last}"
        ))
    }
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

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain(self.coordinators.iter_mut()) {
            kill(child.take());
        }
    }
}

fn kill(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `smelter up --workers 2 --data-dir DATA --pipeline PIPELINE [extra]` on free ports, with
/// extra environment variables (`SMELTER__*` settings).
pub fn smelter_up(data: &Path, pipeline: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
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
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn smelter up")
}

/// Waits (up to `timeout`) for a child to exit; kills it and fails otherwise.
pub async fn wait_exit(
    child: &mut Child,
    timeout: Duration,
) -> TestResult<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("process still running after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then wait (up to 60 s) for a clean exit.
pub async fn terminate(mut child: Child) -> TestResult<std::process::ExitStatus> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("process did not exit within 60 s of SIGTERM".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
