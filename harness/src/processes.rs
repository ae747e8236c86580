//! Smelter's cluster roles as real child processes — `smelter coordinator` replicas and
//! `smelter worker`s — configured through `SMELTER__*` variables, for the suites that kill,
//! pause and restart them and for the benchmark's cluster run. Every child is stopped when
//! the [`ProcessCluster`] drops, however the test or run ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use smelter_sdk::AdminClient;
use tokio::time::Instant;

use crate::{free_port, wait_until};

/// How a [`ProcessCluster`] stops its children when dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPolicy {
    /// SIGKILL at once (tests: every test has its own store, nothing outlives it).
    Kill,
    /// SIGTERM, workers first, each given `grace` to drain before SIGKILL. On a store
    /// shared between runs (the benchmark's etcd) a killed coordinator would keep its
    /// leadership, and its workers their registrations, until their leases expired.
    Terminate {
        /// How long each child may take.
        grace: Duration,
    },
}

/// The `RUST_LOG` a cluster's processes get unless told otherwise: warnings, and not
/// delta-rs's own (it warns of conditions Smelter handles).
pub const QUIET_LOGS: &str = "warn,deltalake_core=error";

/// What a [`ProcessCluster`] runs.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `smelter` binary.
    pub binary: PathBuf,
    /// Coordinator replicas to start.
    pub coordinators: usize,
    /// etcd client URLs (comma-separated) of the shared coordination store; `None` keeps
    /// the store in the (single) coordinator's memory, and workers commit without locks.
    pub etcd: Option<String>,
    /// Where the tables live (`storage.root`); a temp dir when `None`.
    pub root: Option<String>,
    /// Extra `SMELTER__*` settings for every process (they come last and override).
    pub settings: Vec<(String, String)>,
    /// `RUST_LOG` of every process.
    pub log_filter: String,
    /// What dropping the cluster does to its children.
    pub stop: StopPolicy,
}

impl ClusterSpec {
    /// `coordinators` replicas of `binary` on etcd at `etcd` (if any), tables in a temp
    /// dir, quiet logs, killed on drop.
    pub fn new(binary: impl Into<PathBuf>, coordinators: usize, etcd: Option<&str>) -> Self {
        Self {
            binary: binary.into(),
            coordinators,
            etcd: etcd.map(str::to_string),
            root: None,
            settings: Vec::new(),
            log_filter: QUIET_LOGS.into(),
            stop: StopPolicy::Kill,
        }
    }

    /// With these extra `SMELTER__*` settings.
    pub fn with_settings(mut self, settings: &[(&str, &str)]) -> Self {
        self.settings
            .extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }
}

/// A cluster of separate processes sharing one table root and coordination store.
pub struct ProcessCluster {
    spec: ClusterSpec,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    coordinator_ports: Vec<u16>,
    /// The replicas' HTTP ports (`coordinator.http_listen`).
    http_ports: Vec<u16>,
    /// Coordinator replicas (`None` once killed).
    pub coordinators: Vec<Option<Child>>,
    /// Workers, in start order, with their names (`None` once killed or stopped).
    pub workers: Vec<Option<Child>>,
}

impl ProcessCluster {
    /// Starts the coordinator replicas of `spec` (workers come with [`Self::add_worker`]).
    pub fn start(spec: ClusterSpec) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let coordinator_ports = (0..spec.coordinators)
            .map(|_| free_port())
            .collect::<std::io::Result<Vec<u16>>>()?;
        let http_ports = (0..spec.coordinators)
            .map(|_| free_port())
            .collect::<std::io::Result<Vec<u16>>>()?;
        let endpoints: Vec<String> = coordinator_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let root = spec
            .root
            .clone()
            .unwrap_or_else(|| dir.path().join("tables").display().to_string());
        let mut env: Vec<(String, String)> = [
            ("SMELTER__COORDINATOR__ENDPOINT", endpoints.join(",")),
            ("SMELTER__WORKER__FLIGHT_LISTEN", "127.0.0.1:0".into()),
            ("SMELTER__STORAGE__ROOT", root),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(etcd) = &spec.etcd {
            env.push(("SMELTER__COORDINATOR__STORE".into(), "etcd".into()));
            env.push(("SMELTER__COORDINATOR__ETCD_ENDPOINTS".into(), etcd.clone()));
        }
        env.extend(spec.settings.iter().cloned());
        let mut cluster = Self {
            spec,
            dir,
            env,
            coordinator_ports,
            http_ports,
            coordinators: Vec::new(),
            workers: Vec::new(),
        };
        for i in 0..cluster.spec.coordinators {
            let child = cluster.spawn_coordinator(i)?;
            cluster.coordinators.push(Some(child));
        }
        Ok(cluster)
    }

    /// Every `SMELTER__*` setting the processes get (before per-process ones).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    fn spawn(&self, args: &[&str], extra: &[(String, String)]) -> std::io::Result<Child> {
        let mut command = Command::new(&self.spec.binary);
        command
            .args(args)
            .env("RUST_LOG", &self.spec.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in self.env.iter().chain(extra) {
            command.env(key, value);
        }
        command.spawn()
    }

    fn spawn_coordinator(&self, i: usize) -> std::io::Result<Child> {
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
                (
                    "SMELTER__COORDINATOR__HTTP_LISTEN".into(),
                    format!("127.0.0.1:{}", self.http_ports[i]),
                ),
            ],
        )
    }

    /// The cluster's temp directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

    /// The HTTP surface (REST API, status page, metrics) of replica `i`.
    pub fn http_endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.http_ports[i])
    }

    /// Starts one more worker, with hostname `worker-<index>` and `extra` settings; returns
    /// its index.
    pub fn add_worker_with(&mut self, extra: &[(&str, &str)]) -> std::io::Result<usize> {
        let mut env = vec![(
            "HOSTNAME".to_string(),
            format!("worker-{}", self.workers.len()),
        )];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let child = self.spawn(&["worker"], &env)?;
        self.workers.push(Some(child));
        Ok(self.workers.len() - 1)
    }

    /// Starts one more worker (see [`Self::add_worker_with`]).
    pub fn add_worker(&mut self) -> std::io::Result<usize> {
        self.add_worker_with(&[])
    }

    /// The process ids of the running children, named `coordinator-<i>` and `worker-<i>`.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let named = |kind: &str, children: &[Option<Child>]| -> Vec<(String, u32)> {
            children
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((format!("{kind}-{i}"), c.as_ref()?.id())))
                .collect()
        };
        let mut pids = named("coordinator", &self.coordinators);
        pids.extend(named("worker", &self.workers));
        pids
    }

    /// SIGKILLs worker `i`: no drain, no deregistration. Fails if it was not running.
    pub fn kill_worker(&mut self, i: usize) -> std::io::Result<ExitStatus> {
        kill(self.workers[i].take())
    }

    /// SIGTERMs worker `i` and waits for it to drain and exit; returns its exit status.
    pub async fn stop_worker(&mut self, i: usize) -> Result<ExitStatus, String> {
        let child = self.workers[i].take().ok_or("worker already gone")?;
        terminate(child, Duration::from_secs(60)).await
    }

    /// SIGKILLs coordinator replica `i`. Fails if it was not running.
    pub fn kill_coordinator(&mut self, i: usize) -> std::io::Result<ExitStatus> {
        kill(self.coordinators[i].take())
    }

    /// Starts coordinator replica `i` again (same port).
    pub fn restart_coordinator(&mut self, i: usize) -> std::io::Result<()> {
        let child = self.spawn_coordinator(i)?;
        self.coordinators[i] = Some(child);
        Ok(())
    }

    /// Declares `pipeline` (YAML text) on the cluster, retried until a leader accepts it.
    pub async fn apply(&self, pipeline: &str, origin: &str) -> Result<(), String> {
        wait_until(
            Duration::from_secs(60),
            "a leader accepting the pipeline",
            async || {
                AdminClient::connect(&self.endpoints())
                    .await
                    .map_err(|e| e.to_string())?
                    .apply(pipeline, origin)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await
    }

    /// The cluster status as `smelter status --output json` prints it.
    pub async fn status(&self) -> Result<serde_json::Value, String> {
        let mut admin = AdminClient::connect(&self.endpoints())
            .await
            .map_err(|e| e.to_string())?;
        let status = admin.status().await.map_err(|e| e.to_string())?;
        Ok(smelter_sdk::status_json(&status))
    }

    /// Polls the status until `predicate` holds; returns that status and how long it took.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<(serde_json::Value, Duration), String> {
        let started = Instant::now();
        let status = wait_until(timeout, what, async || {
            let status = self.status().await?;
            if predicate(&status) {
                Ok(status)
            } else {
                Err(format!("status {status}"))
            }
        })
        .await?;
        Ok((status, started.elapsed()))
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        let children = self
            .workers
            .iter_mut()
            .rev()
            .chain(self.coordinators.iter_mut())
            .filter_map(Option::take);
        for mut child in children {
            match self.spec.stop {
                StopPolicy::Kill => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                StopPolicy::Terminate { grace } => stop_blocking(&mut child, grace),
            }
        }
    }
}

/// SIGTERM, then up to `grace` for the child to exit, then SIGKILL (blocking: for drops).
fn stop_blocking(child: &mut Child, grace: Duration) {
    let asked = signal(child.id(), "TERM").is_ok();
    let deadline = std::time::Instant::now() + grace;
    while asked && std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            _ => break,
        }
    }
    if !matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// SIGKILLs a running child and reaps it; an error if there was none, or it had already
/// exited (the kill did not land).
fn kill(child: Option<Child>) -> std::io::Result<ExitStatus> {
    let mut child = child.ok_or_else(|| std::io::Error::other("no such process"))?;
    if let Some(status) = child.try_wait()? {
        return Err(std::io::Error::other(format!(
            "already exited ({status}) before the kill"
        )));
    }
    child.kill()?;
    child.wait()
}

/// Sends `SIG<name>` (`TERM`, `STOP`, `CONT`, `KILL`, ...) to process `pid`.
pub fn signal(pid: u32, name: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .map_err(|e| format!("kill -{name} {pid}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {pid}: {status}"))
    }
}

/// Waits up to `timeout` for a child to exit; kills it and fails otherwise.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let waited = wait_until(timeout, "the process to exit", async || {
        child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(String::new)
    })
    .await;
    if waited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    waited
}

/// SIGTERM, then up to `timeout` for a clean exit (killed otherwise).
pub async fn terminate(mut child: Child, timeout: Duration) -> Result<ExitStatus, String> {
    signal(child.id(), "TERM")?;
    wait_exit(&mut child, timeout).await
}
