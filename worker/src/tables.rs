//! Where tables live and how they are opened, created and committed to.
//!
//! # The commit protocol (design.md §5)
//!
//! The Delta log is the only source of truth about what was written. Every commit made by
//! a task carries Delta `txn` actions naming what it consumed:
//!
//! * ingest: `appId = "<pipeline>/<topic>/<partition>"`, `version` = last offset;
//! * refine / aggregate: `appId = "<table>/<upstream table>"`, `version` = upstream Delta version.
//!
//! [`commit`] is a compare-and-set on those versions: each [`TxnUpdate`] names the version
//! the writer *started from* (`previous`), and after refreshing the snapshot the commit goes
//! ahead only if the table still holds exactly that. Anything else means this batch, or an
//! overlapping one, is already in the table (invariant 3, strengthened: "my version or
//! later" alone would let a batch 100..200 land after another owner committed 100..150).
//! A racing commit carrying the same appId is rejected by delta-rs's conflict checker.
//! When a write fails in a way that leaves its outcome unknown, the table is reloaded and
//! the txn versions decide (invariant 5) — never a blind retry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use crate::failpoint::Failpoints;
use crate::lock::{CommitArbiter, EPOCH_APP_ID};
use crate::txns::TxnCache;
use crate::{Result, WorkerError};

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

/// How a commit changes the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Add rows.
    Append,
    /// Replace all rows.
    Overwrite,
}

/// What [`commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The batch is now in the table at this version.
    Committed {
        /// Table version of the commit.
        version: i64,
    },
    /// The table no longer holds the `previous` version of some txn: this batch or an
    /// overlapping one is already in. Nothing was written; the caller must re-read its
    /// positions from the table.
    AlreadyCommitted,
}

/// One txn action of a commit, with the version it expects to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnUpdate {
    /// The application id.
    pub app_id: String,
    /// The version the table must hold now (`None`: no txn for this app id yet).
    pub previous: Option<i64>,
    /// The version this commit records.
    pub version: i64,
}

impl TxnUpdate {
    /// A txn moving `app_id` from `previous` to `version`.
    pub fn new(app_id: impl Into<String>, previous: Option<i64>, version: i64) -> Self {
        Self {
            app_id: app_id.into(),
            previous,
            version,
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

/// What commits need besides the table: the commit lock, when the coordination store is
/// shared with the other writers, and the fault-test hooks.
#[derive(Default)]
pub struct CommitEnv {
    /// Table commit locks (none: the txn compare-and-set alone decides).
    pub arbiter: Option<CommitArbiter>,
    /// Crash hooks (unarmed by default).
    pub failpoints: Failpoints,
    /// The txn versions commits check, followed from the log (see [`crate::txns`]).
    pub txns: TxnCache,
}

/// Commits `batches` with the given txn actions, following the protocol in the module docs.
/// With an arbiter, the log write happens under the table's commit lock and carries the
/// lock's epoch (see [`crate::lock`]); appended data files are written before the lock.
pub async fn commit(
    table: &mut DeltaTable,
    name: &str,
    batches: Vec<RecordBatch>,
    mode: WriteMode,
    partition_by: &[String],
    txns: Vec<TxnUpdate>,
    env: &CommitEnv,
) -> Result<CommitOutcome> {
    let arbiter = env.arbiter.as_ref();
    const ATTEMPTS: usize = 5;
    // Appends: data files first, outside the lock. A failed or superseded attempt leaves
    // them unreferenced (nothing reads them); a retry commits the same files.
    let files = match mode {
        WriteMode::Append => Some(write_files(table, name, &batches).await?),
        WriteMode::Overwrite => None,
    };
    env.failpoints.hit("commit.after_files");
    let mut last_error = None;
    for attempt in 0..ATTEMPTS {
        let lock = match arbiter {
            Some(arbiter) => Some(arbiter.acquire(name, LOCK_WAIT).await?),
            None => None,
        };
        let epoch = lock.as_ref().map(|l| l.epoch);
        let payload = Payload {
            batches: &batches,
            files: files.as_deref(),
            partition_by,
        };
        let result = commit_once(table, name, &payload, &txns, epoch, env).await;
        if let (Some(arbiter), Some(lock)) = (arbiter, lock) {
            arbiter.release(lock).await;
        }
        match result {
            Ok(CommitOutcome::AlreadyCommitted) if attempt > 0 => {
                // Whether an earlier attempt of ours landed or another writer got there
                // first, the data is in; the caller re-reads its positions from the table.
                tracing::info!(
                    table = name,
                    "txn found after a failed attempt; not writing again"
                );
                return Ok(CommitOutcome::AlreadyCommitted);
            }
            Ok(outcome) => return Ok(outcome),
            Err(error) => {
                // Outcome unknown (or lost a race, or fenced): the txn versions decide on
                // the next pass.
                tracing::warn!(table = name, attempt, error = %error, "commit failed; reloading to decide from txn versions");
                if !error.is_retryable()
                    || matches!(&error, WorkerError::Delta { source, .. } if is_permanent(source))
                {
                    return Err(error);
                }
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| WorkerError::CommitConflict {
        table: name.to_string(),
        message: "gave up".into(),
    }))
}

/// How long a writer waits for another's commit lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes `batches` as data files of `table` (not yet referenced by its log).
async fn write_files(table: &DeltaTable, name: &str, batches: &[RecordBatch]) -> Result<Vec<Add>> {
    let mut writer =
        RecordBatchWriter::for_table(table).map_err(|e| WorkerError::delta(name, e))?;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        writer
            .write(batch.clone())
            .await
            .map_err(|e| WorkerError::delta(name, e))?;
    }
    writer
        .flush()
        .await
        .map_err(|e| WorkerError::delta(name, e))
}

/// What one commit writes: appended files already in storage, or batches to overwrite with.
struct Payload<'a> {
    batches: &'a [RecordBatch],
    /// Appends: the data files written before the lock. `None`: overwrite with `batches`.
    files: Option<&'a [Add]>,
    partition_by: &'a [String],
}

/// One attempt: refresh, check the txn positions and the epoch, write the log entry.
async fn commit_once(
    table: &mut DeltaTable,
    name: &str,
    payload: &Payload<'_>,
    txns: &[TxnUpdate],
    epoch: Option<i64>,
    env: &CommitEnv,
) -> Result<CommitOutcome> {
    let failpoints = &env.failpoints;
    refresh(table, name).await?;
    // The positions, and the latest epoch when this commit carries one, at the refreshed
    // version.
    let mut app_ids: Vec<&str> = txns.iter().map(|t| t.app_id.as_str()).collect();
    if epoch.is_some() {
        app_ids.push(EPOCH_APP_ID);
    }
    let current = env.txns.versions(table, name, &app_ids).await?;
    for (txn, current) in txns.iter().zip(&current) {
        if *current != txn.previous {
            tracing::debug!(app_id = %txn.app_id, ?current, previous = ?txn.previous, "txn position moved");
            return Ok(CommitOutcome::AlreadyCommitted);
        }
    }
    let mut actions: Vec<Transaction> = txns
        .iter()
        .map(|t| Transaction::new(&t.app_id, t.version))
        .collect();
    if let Some(lock_revision) = epoch {
        // Above the lock's revision and above every epoch already in the table: epochs
        // strictly increase in log order even if the store's revisions started over
        // (a restarted in-process store, a rebuilt etcd).
        let latest = current[txns.len()];
        let epoch = lock_revision.max(latest.map_or(0, |e| e + 1));
        actions.push(Transaction::new(EPOCH_APP_ID, epoch));
    }
    let written: Vec<(String, i64)> = actions
        .iter()
        .map(|t| (t.app_id.clone(), t.version))
        .collect();
    // Expired log entries are cleaned up only by the commits that write a checkpoint (the
    // only ones after which there is anything to clean): the cleanup lists the whole log.
    let cleanup = {
        let config = table
            .snapshot()
            .map_err(|e| WorkerError::delta(name, e))?
            .table_config();
        config.enable_expired_log_cleanup()
            && ((version(table) + 1) as u64).is_multiple_of(config.checkpoint_interval().get())
    };
    let properties = CommitProperties::default()
        .with_application_transactions(actions)
        .with_cleanup_expired_logs(Some(cleanup));
    let partition_by = payload.partition_by;
    match payload.files {
        Some(files) => {
            let snapshot = table.snapshot().map_err(|e| WorkerError::delta(name, e))?;
            let operation = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: (!partition_by.is_empty()).then(|| partition_by.to_vec()),
                predicate: None,
            };
            let committed = CommitBuilder::from(properties)
                .with_actions(files.iter().cloned().map(Action::Add).collect())
                .build(Some(snapshot), table.log_store(), operation)
                .await;
            failpoints.hit("commit.after_log");
            let committed = committed.map_err(|e| WorkerError::delta(name, e))?;
            let version = committed.version() as i64;
            // The commit already carried the snapshot forward to its own version.
            table.state = Some(committed.snapshot());
            env.txns.committed(name, version, &written);
            Ok(CommitOutcome::Committed { version })
        }
        None => {
            // Overwrites (gold) replace every file, so they are written under the lock.
            let written_txns = written;
            let written = table
                .clone()
                .write(payload.batches.to_vec())
                .with_save_mode(SaveMode::Overwrite)
                .with_partition_columns(partition_by.to_vec())
                .with_commit_properties(properties)
                .await;
            failpoints.hit("commit.after_log");
            let written = written.map_err(|e| WorkerError::delta(name, e))?;
            let version = self::version(&written);
            *table = written;
            env.txns.committed(name, version, &written_txns);
            Ok(CommitOutcome::Committed { version })
        }
    }
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

fn is_permanent(error: &DeltaTableError) -> bool {
    matches!(
        error,
        DeltaTableError::SchemaMismatch { .. }
            | DeltaTableError::Arrow { .. }
            | DeltaTableError::InvalidData { .. }
            | DeltaTableError::Generic(_)
            | DeltaTableError::NotATable(_)
    )
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

/// Tests: commits `batch` without txn actions or a lock, and returns the new version.
#[cfg(test)]
pub async fn commit_for_test(
    table: &mut DeltaTable,
    name: &str,
    batch: RecordBatch,
    mode: WriteMode,
    partition_by: &[String],
) -> i64 {
    let outcome = commit(
        table,
        name,
        vec![batch],
        mode,
        partition_by,
        vec![],
        &CommitEnv::default(),
    )
    .await
    .unwrap();
    let CommitOutcome::Committed { version } = outcome else {
        panic!("{name}: expected a commit, got {outcome:?}");
    };
    version
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
    pub fn batch(&self, n: i64) -> RecordBatch {
        let column = Arc::new(arrow::array::Int64Array::from(vec![n]));
        RecordBatch::try_new(self.schema.clone(), vec![column]).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_probe_and_commits_carry_their_snapshot() {
        let t = TestTable::create("silver.t", &CommitEnv::default()).await;
        let mut writer = t.store.open("silver.t").await.unwrap();
        let mut follower = t.store.open("silver.t").await.unwrap();
        let start = version(&follower);
        for n in 0..3 {
            let committed =
                commit_for_test(&mut writer, "silver.t", t.batch(n), WriteMode::Append, &[]).await;
            // The writer's snapshot is the commit's, without a reload.
            assert_eq!(version(&writer), committed);
            assert_eq!(row_count(&writer), n as u64 + 1);
        }
        // The follower sees the new versions by probing; its snapshot stays where it was.
        assert_eq!(
            latest_version(&follower, "silver.t", start).await.unwrap(),
            start + 3
        );
        assert_eq!(version(&follower), start);
        // A refresh loads them, and a second one finds nothing new.
        assert_eq!(refresh(&mut follower, "silver.t").await.unwrap(), start + 3);
        assert_eq!(row_count(&follower), 3);
        assert_eq!(refresh(&mut follower, "silver.t").await.unwrap(), start + 3);
    }
}
