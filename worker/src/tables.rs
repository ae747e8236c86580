//! Where tables live and how they are opened, created, followed and compacted. Commits
//! go through [`crate::commit`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use crate::{Result, WorkerError};

/// How long a writer waits for another's commit lock.
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
pub use crate::commit::commit_for_test;
pub use crate::commit::{CommitEnv, CommitOutcome, TxnUpdate, WriteMode, commit};

/// Maps `layer.name` table names to storage locations under one root: a local directory,
/// or an S3-compatible bucket (`s3://bucket/prefix`, see [`crate::storage`]).
#[derive(Debug, Clone)]
pub struct TableStore {
    root: PathBuf,
    remote: Option<Remote>,
}

#[derive(Clone)]
struct Remote {
    base: Url,
    options: HashMap<String, String>,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("base", &self.base.as_str())
            .finish()
    }
}

impl TableStore {
    /// Tables live under `root`: a local directory (created if missing) or `s3://bucket/prefix`
    /// (store settings from the `AWS_*` environment).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        Self::with_options(root, HashMap::new())
    }

    /// Tables under the configured `storage.root`, with its S3 settings.
    pub fn from_config(config: &smelter_common::config::StorageConfig) -> Result<Self> {
        Self::with_options(config.root.clone(), config.s3_options())
    }

    fn with_options(root: impl Into<PathBuf>, options: HashMap<String, String>) -> Result<Self> {
        let root = root.into();
        if let Some(text) = root.to_str().filter(|t| t.starts_with("s3://")) {
            crate::storage::register_s3();
            let location = format!("{}/", text.trim_end_matches('/'));
            let base = Url::parse(&location).map_err(|e| WorkerError::Storage {
                location: location.clone(),
                message: e.to_string(),
            })?;
            let store = crate::storage::s3_store(&base, &options)?;
            let prefix =
                ObjectPath::from_url_path(base.path()).map_err(|e| WorkerError::Storage {
                    location: location.clone(),
                    message: e.to_string(),
                })?;
            return Ok(Self {
                root,
                remote: Some(Remote {
                    base,
                    options,
                    store,
                    prefix,
                }),
            });
        }
        std::fs::create_dir_all(&root).map_err(|source| WorkerError::Io {
            context: format!("create {}", root.display()),
            source,
        })?;
        let root = root.canonicalize().map_err(|source| WorkerError::Io {
            context: format!("resolve {}", root.display()),
            source,
        })?;
        Ok(Self { root, remote: None })
    }

    /// Whether log writes are arbitrated by the commit locks (`storage.commit_arbitration`).
    pub fn arbitrated(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| {
            r.options
                .get(crate::storage::ARBITRATED_OPTION)
                .is_some_and(|v| v == "true")
        })
    }

    /// Design.md §5.6: a store that cannot put-if-absent could let two writers both
    /// "create" one log version. Such a store is refused, unless commits are arbitrated by
    /// the etcd commit locks (`storage.commit_arbitration`) and this process has them
    /// (`has_locks`). Local directories always can put-if-absent.
    pub async fn check_commit_safety(&self, has_locks: bool) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let refuse = |message: &str| WorkerError::Storage {
            location: remote.base.to_string(),
            message: message.to_string(),
        };
        if self.arbitrated() {
            return if has_locks {
                tracing::warn!(location = %remote.base, "commits arbitrated by the etcd commit locks, not by the store");
                Ok(())
            } else {
                Err(refuse(
                    "storage.commit_arbitration needs a shared coordination store (etcd) for \
                     its commit locks, and this process has none",
                ))
            };
        }
        if crate::storage::probe(remote.store.as_ref(), &remote.prefix).await? {
            Ok(())
        } else {
            Err(refuse(
                "the store does not refuse a second create of one key (no put-if-absent / \
                 conditional write), so Delta commits could overwrite each other; Smelter \
                 will not run on it unless storage.commit_arbitration = true (etcd commit locks)",
            ))
        }
    }

    /// Whether tables live in a local directory (not an object store).
    pub fn is_local(&self) -> bool {
        self.remote.is_none()
    }

    /// The root as configured (a directory, or the `s3://` location).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of a local table: `silver.events` -> `<root>/silver/events`.
    pub fn path(&self, table: &str) -> PathBuf {
        let (layer, name) = split(table);
        self.root.join(layer).join(name)
    }

    /// URL of a table's location.
    pub fn url(&self, table: &str) -> Result<Url> {
        if let Some(remote) = &self.remote {
            let (layer, name) = split(table);
            return remote.base.join(&format!("{layer}/{name}/")).map_err(|e| {
                WorkerError::Storage {
                    location: remote.base.to_string(),
                    message: e.to_string(),
                }
            });
        }
        let path = self.path(table);
        std::fs::create_dir_all(&path).map_err(|source| WorkerError::Io {
            context: format!("create {}", path.display()),
            source,
        })?;
        Url::from_directory_path(&path).map_err(|()| WorkerError::Io {
            context: format!("table path {}", path.display()),
            source: std::io::Error::other("not absolute"),
        })
    }

    fn storage_options(&self) -> HashMap<String, String> {
        self.remote
            .as_ref()
            .map(|r| r.options.clone())
            .unwrap_or_default()
    }

    /// Whether the table has a Delta log yet.
    pub async fn exists(&self, table: &str) -> bool {
        let Some(remote) = &self.remote else {
            return self.path(table).join("_delta_log").is_dir();
        };
        let (layer, name) = split(table);
        let log = remote
            .prefix
            .clone()
            .join(layer)
            .join(name)
            .join("_delta_log");
        // A commit file, not just anything (an in-flight commit's temporary file).
        let mut entries = remote.store.list(Some(&log));
        while let Some(Ok(entry)) = entries.next().await {
            if entry.location.filename().is_some_and(|f| {
                !f.starts_with('_') && (f.ends_with(".json") || f.ends_with(".parquet"))
            }) {
                return true;
            }
        }
        false
    }

    /// Opens the latest version of an existing table.
    pub async fn open(&self, table: &str) -> Result<DeltaTable> {
        let url = self.url(table)?;
        let builder = DeltaTableBuilder::from_url(url)
            .map_err(|e| WorkerError::delta(table, e))?
            .with_storage_options(self.storage_options());
        builder
            .load()
            .await
            .map_err(|e| WorkerError::delta(table, e))
    }

    /// Opens one version of an existing table.
    pub async fn open_version(&self, table: &str, version: i64) -> Result<DeltaTable> {
        let url = self.url(table)?;
        let builder = DeltaTableBuilder::from_url(url)
            .map_err(|e| WorkerError::delta(table, e))?
            .with_storage_options(self.storage_options());
        builder
            .with_version(version.max(0) as u64)
            .load()
            .await
            .map_err(|e| WorkerError::delta(table, e))
    }

    /// Opens the table, creating it empty with `schema` if it does not exist. Concurrent
    /// creators race on version 0; the loser simply opens what the winner made.
    pub async fn open_or_create(
        &self,
        table: &str,
        schema: &SchemaRef,
        partition_by: &[String],
        commits: &CommitEnv,
    ) -> Result<DeltaTable> {
        if self.exists(table).await {
            return self.open(table).await;
        }
        // On an arbitrated store, version 0 is a log write like any other: under the lock.
        let lock = match (&commits.arbiter, self.arbitrated()) {
            (Some(arbiter), true) => Some(arbiter.acquire(table, LOCK_WAIT).await?),
            (None, true) => {
                return Err(WorkerError::Storage {
                    location: table.to_string(),
                    message: "an arbitrated store needs the commit locks to create a table".into(),
                });
            }
            _ => None,
        };
        let result = self.create(table, schema, partition_by).await;
        if let (Some(arbiter), Some(lock)) = (&commits.arbiter, lock) {
            arbiter.release(lock).await;
        }
        result
    }

    async fn create(
        &self,
        table: &str,
        schema: &SchemaRef,
        partition_by: &[String],
    ) -> Result<DeltaTable> {
        if self.exists(table).await {
            return self.open(table).await;
        }
        let delta_schema = StructType::try_from_arrow(schema.as_ref()).map_err(|e| {
            WorkerError::delta(
                table,
                DeltaTableError::Generic(format!("schema not representable in Delta: {e}")),
            )
        })?;
        let created = deltalake::operations::create::CreateBuilder::new()
            .with_location(self.url(table)?.to_string())
            .with_storage_options(self.storage_options())
            .with_table_name(table)
            .with_columns(delta_schema.fields().cloned())
            .with_partition_columns(partition_by.to_vec())
            .with_save_mode(SaveMode::Ignore)
            .await;
        match created {
            Ok(t) => Ok(t),
            Err(e) => {
                tracing::debug!(table, error = %e, "create lost a race; opening");
                self.open(table).await
            }
        }
    }
}

/// The highest committed txn version of `app_id`, if any.
pub async fn txn_version(table: &DeltaTable, app_id: &str) -> Result<Option<i64>> {
    let name = table_name(table);
    let snapshot = table.snapshot().map_err(|e| WorkerError::delta(&name, e))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(|e| WorkerError::delta(&name, e))
}

/// The table's loaded version, `-1` before the first commit.
pub fn version(table: &DeltaTable) -> i64 {
    table.version().map_or(-1, |v| v as i64)
}

/// The latest version in `table`'s log, at least `known`, found by probing for the commit
/// files after `known` one by one. Nothing is loaded: a follower that only needs to know
/// whether its upstream moved (and then reads the new commit entries itself, see
/// [`crate::changes::range`]) polls with a `HEAD` per poll instead of a snapshot update,
/// which lists the log and replays the new actions over every file of the table.
pub async fn latest_version(table: &DeltaTable, name: &str, known: i64) -> Result<i64> {
    let log_store = table.log_store();
    let store = log_store.object_store(None);
    let mut latest = known;
    loop {
        let next = log_store
            .log_path()
            .clone()
            .join(format!("{:020}.json", latest + 1));
        match store.head(&next).await {
            Ok(_) => latest += 1,
            Err(object_store::Error::NotFound { .. }) => return Ok(latest),
            Err(e) => return Err(WorkerError::delta(name, e.into())),
        }
    }
}

/// Brings `table`'s snapshot up to the latest version, skipping the snapshot update (a log
/// listing and a replay) when a probe finds no new commit; returns the version.
pub async fn refresh(table: &mut DeltaTable, name: &str) -> Result<i64> {
    let loaded = version(table);
    if latest_version(table, name, loaded).await? > loaded {
        table
            .update_state()
            .await
            .map_err(|e| WorkerError::delta(name, e))?;
    }
    Ok(version(table))
}

/// Rows in the table's current snapshot (from the add actions' statistics).
pub fn row_count(table: &DeltaTable) -> u64 {
    match table.snapshot() {
        Ok(snapshot) => snapshot
            .log_data()
            .iter()
            .map(|f| f.num_records().unwrap_or(0) as u64)
            .sum(),
        Err(_) => 0,
    }
}

fn table_name(table: &DeltaTable) -> String {
    table.table_url().to_string()
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Compaction {
    /// The table version of the compaction commit, if one was made.
    pub version: Option<i64>,
    /// Small files replaced.
    pub files_removed: u64,
    /// Files written in their place.
    pub files_added: u64,
}

/// Rewrites the table's small files into larger ones, in a maintenance commit
/// (`dataChange = false`: readers of new data skip it). It may race with appends: it
/// carries no txn, and delta-rs's conflict checker lets appends that only add files land
/// on either side of it, while a concurrent compaction of the same files loses cleanly.
pub async fn compact(table: &mut DeltaTable, name: &str) -> Result<Compaction> {
    if table.log_store().name() == "SmelterArbitratedLogStore" {
        return Err(WorkerError::Storage {
            location: name.to_string(),
            message: "compaction is not available on stores arbitrated by commit locks yet \
                      (it would write the log outside the lock)"
                .into(),
        });
    }
    table
        .update_state()
        .await
        .map_err(|e| WorkerError::delta(name, e))?;
    let before = self::version(table);
    let (compacted, metrics) = table
        .clone()
        .optimize()
        .with_writer_properties(crate::file_format::writer_properties())
        .await
        .map_err(|e| WorkerError::delta(name, e))?;
    let after = self::version(&compacted);
    *table = compacted;
    Ok(Compaction {
        version: (after > before).then_some(after),
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
    })
}

/// Convenience: the schema of a table's current snapshot as Arrow.
pub fn arrow_schema(table: &DeltaTable, name: &str) -> Result<SchemaRef> {
    let snapshot = table.snapshot().map_err(|e| WorkerError::delta(name, e))?;
    let schema = snapshot.snapshot().arrow_schema();
    Ok(Arc::clone(&schema))
}

impl TableStore {
    /// Every table under the root (`<layer>/<name>` with a `_delta_log`), as sorted
    /// `layer.name` names.
    pub async fn list(&self) -> Vec<String> {
        let mut names = Vec::new();
        for layer in ["bronze", "silver", "gold"] {
            let candidates: Vec<String> = match &self.remote {
                None => std::fs::read_dir(self.root.join(layer))
                    .map(|entries| {
                        entries
                            .flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
                Some(remote) => remote
                    .store
                    .list_with_delimiter(Some(&remote.prefix.clone().join(layer)))
                    .await
                    .map(|listing| {
                        listing
                            .common_prefixes
                            .iter()
                            .filter_map(|p| p.filename().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            for name in candidates {
                let table = format!("{layer}.{name}");
                if self.exists(&table).await {
                    names.push(table);
                }
            }
        }
        names.sort();
        names
    }
}

fn split(table: &str) -> (&str, &str) {
    table.split_once('.').unwrap_or(("default", table))
}

/// Tests: a table `name` of one `n: Int64` column in a temporary directory, created with
/// `env`; open it with [`Self::store`] for each writer or follower.
#[cfg(test)]
pub struct TestTable {
    /// Kept for the table's lifetime.
    pub dir: tempfile::TempDir,
    /// The store holding it.
    pub store: TableStore,
    schema: SchemaRef,
}

#[cfg(test)]
impl TestTable {
    /// Creates the table.
    pub async fn create(name: &str, env: &CommitEnv) -> Self {
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let store = TableStore::new(dir.path()).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        store.open_or_create(name, &schema, &[], env).await.unwrap();
        Self { dir, store, schema }
    }

    /// One row holding `n`.
    pub fn batch(&self, n: i64) -> arrow::record_batch::RecordBatch {
        let column = Arc::new(arrow::array::Int64Array::from(vec![n]));
        arrow::record_batch::RecordBatch::try_new(self.schema.clone(), vec![column]).unwrap()
    }
}
