//! Layered configuration: built-in defaults -> `smelter.toml` -> `SMELTER__SECTION__KEY`
//! environment variables -> CLI flags (applied by the binary on the returned struct).
//!
//! There is no global config: the loaded [`SmelterConfig`] is passed down explicitly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Prefix of environment variables that override configuration values.
pub const ENV_PREFIX: &str = "SMELTER__";

/// The complete configuration of a Smelter process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SmelterConfig {
    /// Control plane.
    pub coordinator: CoordinatorConfig,
    /// Workers.
    pub worker: WorkerConfig,
    /// Where tables live.
    pub storage: StorageConfig,
    /// Limits on client queries.
    pub query: QueryConfig,
    /// TLS and access control.
    pub security: crate::security::SecurityConfig,
    /// Where traces go.
    pub telemetry: TelemetryConfig,
}

/// OpenTelemetry traces: spans of commits, rewrites, refine passes and client queries,
/// exported over OTLP/HTTP (JSON) to a collector.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans are posted to
    /// `/v1/traces` under it. Unset: `OTEL_EXPORTER_OTLP_ENDPOINT`, else no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans (default `smelter`).
    pub service_name: Option<String>,
}

/// Coordinator settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address the gRPC control service binds.
    pub listen: String,
    /// Address the HTTP surface binds (`/health`, `/ready`, `/metrics`); unset: none.
    pub http_listen: Option<String>,
    /// URLs workers and the CLI dial to reach the coordinator, comma-separated: every
    /// replica, in any order (they find the leader among them).
    pub endpoint: String,
    /// URL of this replica as others should dial it (stored in the leader key); defaults
    /// to `http://<bound address>`.
    pub advertise: Option<String>,
    /// A worker that has not heartbeated for this long loses its tasks.
    pub lease_ttl_ms: u64,
    /// How often workers heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Coordination store: `memory` (one process, forgotten on restart) or `etcd`.
    pub store: StoreKind,
    /// etcd client URLs, comma-separated (`http://etcd-0:2379,http://etcd-1:2379`).
    pub etcd_endpoints: String,
    /// How often Kafka topics are asked for their partition count (new partitions get tasks).
    pub discovery_interval_ms: u64,
    /// How long a revoked task may take to drain before its new owner starts anyway.
    pub handoff_timeout_ms: u64,
}

/// Which coordination store the coordinator uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process's memory: `smelter up` and tests.
    #[default]
    Memory,
    /// An etcd cluster: pipelines and membership survive coordinator restarts.
    Etcd,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            http_listen: None,
            endpoint: "http://127.0.0.1:7070".into(),
            lease_ttl_ms: 10_000,
            heartbeat_interval_ms: 2_000,
            store: StoreKind::Memory,
            etcd_endpoints: "http://127.0.0.1:2379".into(),
            advertise: None,
            discovery_interval_ms: 10_000,
            handoff_timeout_ms: 8_000,
        }
    }
}

impl CoordinatorConfig {
    /// The etcd endpoints as a list.
    pub fn etcd_endpoint_list(&self) -> Vec<String> {
        split_list(&self.etcd_endpoints)
    }

    /// The coordinator endpoints as a list.
    pub fn endpoint_list(&self) -> Vec<String> {
        split_list(&self.endpoint)
    }

    /// Kafka partition discovery interval as a duration.
    pub fn discovery_interval(&self) -> std::time::Duration {
        Duration::from_millis(self.discovery_interval_ms.max(100))
    }

    /// Hand-off timeout as a duration.
    pub fn handoff_timeout(&self) -> Duration {
        Duration::from_millis(self.handoff_timeout_ms)
    }

    /// Lease TTL as a duration.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// Worker settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address the Flight SQL service binds.
    pub flight_listen: String,
    /// host:port clients should dial for this worker's Flight service; defaults to the bound address.
    pub advertise_flight: Option<String>,
    /// An ingest batch is committed when it holds this many records...
    pub batch_max_records: usize,
    /// ...or this many payload bytes...
    pub batch_max_bytes: usize,
    /// ...or at the next multiple of this many milliseconds since the Unix epoch (at
    /// least a quarter of it after the batch opened): every worker closes its batches on
    /// the same grid, so their bronze commits land together and downstream takes them in
    /// one pass. Short by default (a quarter second) for freshness: readers see a record
    /// within about a second of its production, and the maintenance task compacts the
    /// small files this makes behind the stream.
    pub batch_max_wait_ms: u64,
    /// How often downstream tasks look for new upstream versions. A look is one `HEAD` of
    /// the next commit file (on S3: one request per task per interval).
    pub poll_interval_ms: u64,
    /// Most upstream versions a refine task folds into one commit (each bronze version holds
    /// up to `batch_max_records` rows, and a pass holds its rows in memory).
    pub refine_max_versions: u64,
    /// A gold table refreshes at most once per slot of this grid: the multiples of it since
    /// the Unix epoch, like the batches' (each refresh is a gold version; an incremental
    /// refresh costs about the new silver rows plus the table's groups).
    pub gold_min_interval_ms: u64,
    /// Memory for the rows of data files this worker committed lately, which tasks
    /// downstream on the same worker then read without going to storage (0: none). The
    /// workers of one process (`smelter up`) share one budget.
    pub recent_files_mb: u64,
    /// Whether this worker offers the rows of the files it commits (those it keeps in
    /// `recent_files_mb`) to the other workers over Flight, and takes theirs instead of
    /// reading and decoding the files (the exchange; docs/architecture.md). A fetched
    /// batch is used only if it matches the checksum its commit recorded. Unset: on when
    /// the tables are on an object store (it saves a GET and a Parquet decode per file, at
    /// the price of moving the rows uncompressed), off on a local or mounted directory,
    /// where reading the file costs less CPU. `smelter up` turns it off: its workers share
    /// one memory.
    pub flight_exchange: Option<bool>,
    /// How long a downstream task waits for another worker's rows before it reads the
    /// file instead.
    pub exchange_timeout_ms: u64,
    /// Fault tests only: this worker's answers to exchange fetches have one byte changed,
    /// which the fetching workers must refuse (and read the file). Off in production.
    pub exchange_forge: bool,
    /// Lease TTL of a held table commit lock (kept alive while held; a paused holder
    /// loses it after this long and is fenced by its successor's epoch).
    pub commit_lock_ttl_ms: u64,
    /// Fault tests only: `<name>:<n>` aborts the process at the n-th pass through a
    /// crash hook (see the worker's `failpoint` module). Unset in production.
    pub failpoint: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            flight_listen: "127.0.0.1:8815".into(),
            advertise_flight: None,
            batch_max_records: 50_000,
            batch_max_bytes: 32 * 1024 * 1024,
            batch_max_wait_ms: 250,
            poll_interval_ms: 50,
            refine_max_versions: 8,
            gold_min_interval_ms: 250,
            recent_files_mb: 64,
            flight_exchange: None,
            exchange_timeout_ms: 1_000,
            exchange_forge: false,
            commit_lock_ttl_ms: 5_000,
            failpoint: None,
        }
    }
}

/// Storage settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Root of all tables: a local directory, or `s3://bucket/prefix` on an S3-compatible
    /// store. Table `silver.events` lives at `<root>/silver/events`.
    pub root: PathBuf,
    /// S3 endpoint URL for S3-compatible stores (MinIO, SeaweedFS, ...); unset for AWS.
    pub s3_endpoint: Option<String>,
    /// S3 region.
    pub s3_region: Option<String>,
    /// Allow plain-HTTP endpoints (local test stores).
    pub s3_allow_http: bool,
    /// Access key id; unset: the `AWS_ACCESS_KEY_ID` variable (or the instance's role).
    pub s3_access_key_id: Option<String>,
    /// Secret access key; unset: the `AWS_SECRET_ACCESS_KEY` variable.
    pub s3_secret_access_key: Option<String>,
    /// Whether the store supports conditional writes (`If-None-Match`); set false for
    /// stores that do not, which then need `commit_arbitration`.
    pub s3_conditional_put: bool,
    /// Arbitrate log writes through the etcd commit locks instead of the store's
    /// put-if-absent (for stores without it). Every writer must then share the etcd.
    pub commit_arbitration: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("data/tables"),
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: false,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_conditional_put: true,
            commit_arbitration: false,
        }
    }
}

impl StorageConfig {
    /// Whether the tables live on an object store (`s3://...`) rather than in a directory.
    pub fn is_object_store(&self) -> bool {
        self.root.to_string_lossy().contains("://")
    }

    /// The S3 settings as object-store options (unset credentials come from `AWS_*` variables).
    pub fn s3_options(&self) -> std::collections::HashMap<String, String> {
        let mut options = std::collections::HashMap::new();
        if let Some(endpoint) = &self.s3_endpoint {
            options.insert("aws_endpoint".to_string(), endpoint.clone());
        }
        if let Some(region) = &self.s3_region {
            options.insert("aws_region".to_string(), region.clone());
        }
        if self.s3_allow_http {
            options.insert("aws_allow_http".to_string(), "true".to_string());
        }
        if let Some(key) = &self.s3_access_key_id {
            options.insert("aws_access_key_id".to_string(), key.clone());
        }
        if let Some(secret) = &self.s3_secret_access_key {
            options.insert("aws_secret_access_key".to_string(), secret.clone());
        }
        if !self.s3_conditional_put {
            options.insert("aws_conditional_put".to_string(), "disabled".to_string());
        }
        if self.commit_arbitration {
            // Read by the worker's storage module (`ARBITRATED_OPTION`), not by S3.
            options.insert("smelter_commit_arbitration".to_string(), "true".to_string());
        }
        options
    }
}

/// Limits applied to every client query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Results are cut off (with an error) past this many rows.
    pub max_rows: usize,
    /// A query running longer than this is cancelled.
    pub timeout_ms: u64,
    /// Memory a single query may use, in MiB.
    pub memory_limit_mb: usize,
    /// Memory all client queries of one worker may use together, in MiB; a query that
    /// would pass it fails with `RESOURCE_EXHAUSTED` (the pipeline's own work is not
    /// counted).
    pub worker_memory_limit_mb: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            timeout_ms: 60_000,
            memory_limit_mb: 1024,
            worker_memory_limit_mb: 2048,
        }
    }
}

impl SmelterConfig {
    /// Loads defaults, then the file (if given), then `SMELTER__*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut merged =
            toml::Value::try_from(SmelterConfig::default()).map_err(|e| Error::Config {
                source_name: "defaults".into(),
                message: e.to_string(),
            })?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let value: toml::Value = toml::from_str(&text).map_err(|e| Error::Config {
                source_name: path.display().to_string(),
                message: e.to_string(),
            })?;
            merge(&mut merged, value);
        }
        let mut overrides: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in env {
            if let Some(rest) = key.strip_prefix(ENV_PREFIX) {
                overrides.insert(rest.to_ascii_lowercase(), value);
            }
        }
        for (path, raw) in overrides {
            let parts: Vec<&str> = path.split("__").collect();
            let value = raw
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| raw.parse::<bool>().map(toml::Value::Boolean))
                .unwrap_or(toml::Value::String(raw.clone()));
            set_path(&mut merged, &parts, value).map_err(|message| Error::Config {
                source_name: format!("{ENV_PREFIX}{}", path.to_ascii_uppercase()),
                message,
            })?;
        }
        merged
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config {
                source_name: file
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "environment".into()),
                message: e.to_string(),
            })
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

fn set_path(root: &mut toml::Value, parts: &[&str], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = parts.split_last() else {
        return Err("empty key".into());
    };
    let mut cursor = root;
    for part in parents {
        cursor = cursor
            .as_table_mut()
            .and_then(|t| t.get_mut(*part))
            .ok_or_else(|| format!("unknown section `{part}`"))?;
    }
    let table = cursor
        .as_table_mut()
        .ok_or_else(|| "not a section".to_string())?;
    // Strings that look like numbers stay strings when the field is a string.
    let value = match (table.get(*last), value) {
        (Some(toml::Value::String(_)), v @ (toml::Value::Integer(_) | toml::Value::Boolean(_))) => {
            toml::Value::String(v.to_string())
        }
        (_, v) => v,
    };
    table.insert((*last).to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smelter.toml");
        std::fs::write(
            &file,
            "[worker]\nbatch_max_records = 10\nflight_listen = \"0.0.0.0:1\"\n",
        )
        .unwrap();
        let env = vec![
            (
                "SMELTER__WORKER__FLIGHT_LISTEN".to_string(),
                "127.0.0.1:9".to_string(),
            ),
            ("SMELTER__QUERY__MAX_ROWS".to_string(), "7".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let config = SmelterConfig::load(Some(&file), env).unwrap();
        assert_eq!(config.worker.batch_max_records, 10);
        assert_eq!(config.worker.flight_listen, "127.0.0.1:9");
        assert_eq!(config.query.max_rows, 7);
        assert_eq!(config.coordinator, CoordinatorConfig::default());
    }

    /// The exchange is unset by default (on for object stores, off in directories) and
    /// takes `true`/`false` from the environment.
    #[test]
    fn the_exchange_follows_the_store_unless_set() {
        let config = SmelterConfig::load(None, vec![]).unwrap();
        assert_eq!(config.worker.flight_exchange, None);
        assert!(!config.storage.is_object_store());
        let s3 = SmelterConfig::load(
            None,
            vec![
                ("SMELTER__STORAGE__ROOT".into(), "s3://lake/tables".into()),
                ("SMELTER__WORKER__FLIGHT_EXCHANGE".into(), "false".into()),
            ],
        )
        .unwrap();
        assert!(s3.storage.is_object_store());
        assert_eq!(s3.worker.flight_exchange, Some(false));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smelter.toml");
        std::fs::write(&file, "[worker]\nbatch_max_recs = 10\n").unwrap();
        let err = SmelterConfig::load(Some(&file), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_max_recs"), "{err}");
        let err =
            SmelterConfig::load(None, vec![("SMELTER__NOPE__X".into(), "1".into())]).unwrap_err();
        assert!(err.to_string().contains("SMELTER__NOPE__X"), "{err}");
    }
}
