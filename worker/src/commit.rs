//! The commit protocol (design.md §5): how a task's batch becomes one Delta commit.
//!
//! The Delta log is the only source of truth about what was written. Every commit made by
//! a task carries Delta `txn` actions naming what it consumed:
//!
//! * ingest: `appId = "<pipeline>/<topic>/<partition>"`, `version` = last offset;
//! * refine / aggregate: `appId = "<table>/<upstream table>"`, `version` = upstream Delta version.
//!
//! [`commit`] is a compare-and-set on those versions: each [`TxnUpdate`] names the version
//! the writer *started from* (`previous`), and the commit goes ahead only if the table's
//! latest version still holds exactly that. Anything else means this batch, or an
//! overlapping one, is already in the table (invariant 3, strengthened: "my version or
//! later" alone would let a batch 100..200 land after another owner committed 100..150).
//! When a write fails in a way that leaves its outcome unknown, the table is re-read and
//! the txn versions decide (invariant 5) — never a blind retry.
//!
//! # Writing the log entry
//!
//! Data files are written first, outside the commit lock; a failed or superseded attempt
//! leaves them unreferenced (nothing reads them). The log entry is then written as
//! version `head + 1` with the store's put-if-absent (or under the etcd commit lock on an
//! arbitrated store, [`crate::storage`]), where `head` is the latest version and its txns
//! come from [`crate::heads`]: the commit reads the entries other writers added since it
//! last looked, checks its positions there, and on losing the race for the version reads
//! again — unless it holds the commit lock: then a taken version means another holder
//! wrote, i.e. this writer's lock lapsed, and the attempt fails (the epoch fencing of
//! [`crate::lock`]; the retry takes the lock again). An overwrite removes exactly the files
//! the head holds. Nothing in this path
//! loads a snapshot: delta-rs's commit path brings the writer's snapshot up to its own
//! commit, which re-derives every file of the table (9 ms of CPU per commit on a new table,
//! 30 ms a hundred commits later).
//!
//! The writer's loaded snapshot therefore falls behind its own commits; readers of a
//! writer's table (dedupe, [`crate::tables::refresh`]) bring it forward when they need it.
//! When the log holds anything this path does not check — a metadata or protocol change
//! since the snapshot, table features beyond writer version 2, an append-only table being
//! overwritten, a store that commits through temporary files — the snapshot is refreshed
//! and the commit goes through delta-rs's own commit path and conflict checker instead.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::compute::kernels::cmp::not_distinct;
use arrow::record_batch::RecordBatch;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitData, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::logstore::CommitOrBytes;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

use indexmap::IndexMap;

use crate::failpoint::Failpoints;
use crate::heads::{Head, LogHeads};
use crate::lock::{CommitArbiter, EPOCH_APP_ID};
use crate::recent_files::RecentFiles;
use crate::tables::{LOCK_WAIT, refresh, version};
use crate::{Result, WorkerError};

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

/// What commits need besides the table: the commit lock, when the coordination store is
/// shared with the other writers, the fault-test hooks, and what this worker knows of the
/// tables' logs.
#[derive(Default)]
pub struct CommitEnv {
    /// Table commit locks (none: the txn compare-and-set alone decides).
    pub arbiter: Option<CommitArbiter>,
    /// Crash hooks (unarmed by default).
    pub failpoints: Failpoints,
    /// The tables' heads: latest versions, txn versions and files (see [`crate::heads`]).
    pub heads: LogHeads,
    /// The rows of the files this worker committed lately (see [`crate::recent_files`]).
    pub recent: RecentFiles,
}

/// Commits `batches` with the given txn actions, following the protocol in the module docs.
/// With an arbiter, the log write happens under the table's commit lock and carries the
/// lock's epoch (see [`crate::lock`]).
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
    let Written {
        files,
        file_schema,
        partition_columns,
    } = write_files(table, name, &batches).await?;
    env.failpoints.hit("commit.after_files");
    let payload = Payload {
        files: &files,
        mode,
        partition_by,
    };
    let mut last_error = None;
    for attempt in 0..ATTEMPTS {
        let lock = match arbiter {
            Some(arbiter) => Some(arbiter.acquire(name, LOCK_WAIT).await?),
            None => None,
        };
        let epoch = lock.as_ref().map(|l| l.epoch);
        let this_attempt = Attempt {
            name,
            payload: &payload,
            txns: &txns,
            epoch,
            env,
        };
        let result = commit_once(table, this_attempt).await;
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
            Ok(outcome) => {
                if let (CommitOutcome::Committed { .. }, [file]) = (&outcome, files.as_slice()) {
                    env.recent.keep(
                        table.table_url().as_str(),
                        &file.path,
                        &file_schema,
                        &partition_columns,
                        &batches,
                    );
                }
                return Ok(outcome);
            }
            Err(error) => {
                // Outcome unknown (or lost a race, or fenced): the txn versions decide on
                // the next pass.
                tracing::warn!(table = name, attempt, error = %error, "commit failed; re-reading the log to decide from txn versions");
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

/// Data files written for one commit.
struct Written {
    files: Vec<Add>,
    /// The schema the files were encoded with (the table's, less partition columns).
    file_schema: arrow::datatypes::SchemaRef,
    partition_columns: Vec<String>,
}

/// Writes `batches` as data files of `table` (not yet referenced by its log).
async fn write_files(table: &DeltaTable, name: &str, batches: &[RecordBatch]) -> Result<Written> {
    let mut writer = RecordBatchWriter::for_table(table)
        .map_err(|e| WorkerError::delta(name, e))?
        .with_writer_properties(crate::file_format::writer_properties());
    let partition_by = table
        .snapshot()
        .map_err(|e| WorkerError::delta(name, e))?
        .metadata()
        .partition_columns()
        .to_vec();
    let table_schema = writer.arrow_schema();
    let file_fields: Vec<usize> = (0..table_schema.fields().len())
        .filter(|&i| !partition_by.contains(table_schema.field(i).name()))
        .collect();
    let file_schema = Arc::new(table_schema.project(&file_fields)?);
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let written = match single_partition(batch, &partition_by)? {
            Some(values) => writer
                .write_partition(
                    batch.clone(),
                    &values,
                    deltalake::writer::WriteMode::Default,
                )
                .await
                .map(drop),
            None => writer.write(batch.clone()).await,
        };
        written.map_err(|e| WorkerError::delta(name, e))?;
    }
    let files = writer
        .flush()
        .await
        .map_err(|e| WorkerError::delta(name, e))?;
    Ok(Written {
        files,
        file_schema,
        partition_columns: partition_by,
    })
}

/// The partition values of `batch` when all its rows share them (the usual case: bronze
/// rows of one day), so that the writer takes the batch as it is. delta-rs's own split
/// sorts and copies every column of every batch.
/// (Generic over the kernel's `Scalar`, which deltalake does not re-export.)
fn single_partition<Scalar: ScalarExt>(
    batch: &RecordBatch,
    partition_by: &[String],
) -> Result<Option<IndexMap<String, Scalar>>> {
    if partition_by.is_empty() {
        return Ok(None);
    }
    let mut values = IndexMap::with_capacity(partition_by.len());
    for name in partition_by {
        let Some(column) = batch.column_by_name(name) else {
            return Ok(None);
        };
        let first = arrow::array::Scalar::new(column.slice(0, 1));
        if not_distinct(column, &first)?.true_count() != column.len() {
            return Ok(None);
        }
        let Some(value) = Scalar::from_array(column.as_ref(), 0) else {
            return Ok(None);
        };
        values.insert(name.clone(), value);
    }
    Ok(Some(values))
}

/// What one commit writes.
struct Payload<'a> {
    /// The data files, already in storage.
    files: &'a [Add],
    /// Overwrites also remove every file the table holds.
    mode: WriteMode,
    partition_by: &'a [String],
}

impl Payload<'_> {
    fn operation(&self) -> DeltaOperation {
        DeltaOperation::Write {
            mode: match self.mode {
                WriteMode::Append => SaveMode::Append,
                WriteMode::Overwrite => SaveMode::Overwrite,
            },
            partition_by: (!self.partition_by.is_empty()).then(|| self.partition_by.to_vec()),
            predicate: None,
        }
    }
}

/// How often the log entry is attempted when other writers keep taking the next version.
const VERSION_RACES: usize = 20;

/// What one attempt commits, and under which lock epoch.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    name: &'a str,
    payload: &'a Payload<'a>,
    txns: &'a [TxnUpdate],
    epoch: Option<i64>,
    env: &'a CommitEnv,
}

/// One attempt: find the head, check the txn positions and the epoch, write the log entry.
async fn commit_once(table: &mut DeltaTable, attempt: Attempt<'_>) -> Result<CommitOutcome> {
    let Attempt {
        name,
        payload,
        txns,
        epoch,
        env,
    } = attempt;
    let app_ids = attempt.app_ids();
    for _ in 0..VERSION_RACES {
        let (head, current) = env.heads.txns(table, name, &app_ids).await?;
        if !head.metadata_as_of(version(table)) || !writes_lean(table, payload.mode) {
            refresh(table, name).await?;
            return through_delta_rs(table, attempt).await;
        }
        let Some(txn_actions) = txn_actions(txns, epoch, &current) else {
            return Ok(CommitOutcome::AlreadyCommitted);
        };
        let data = CommitData::new(
            actions(payload, &head),
            payload.operation(),
            HashMap::new(),
            txn_actions,
        );
        let bytes = data
            .get_bytes()
            .map_err(|e| WorkerError::delta(name, e.into()))?;
        let next = head.version() + 1;
        let written = table
            .log_store()
            .write_commit_entry(
                next as u64,
                CommitOrBytes::LogBytes(bytes),
                uuid::Uuid::new_v4(),
            )
            .await;
        env.failpoints.hit("commit.after_log");
        match written {
            Ok(()) => {
                env.heads.committed(name, next, &data.actions);
                checkpoint_if_due(table, name, next).await;
                return Ok(CommitOutcome::Committed { version: next });
            }
            Err(TransactionError::VersionAlreadyExists(_)) if epoch.is_some() => {
                // Under the commit lock nobody else writes the log: another holder did, so
                // this writer's lock lapsed (paused past its lease). The attempt fails; the
                // next one takes the lock again and decides from the txn versions.
                return Err(WorkerError::CommitConflict {
                    table: name.to_string(),
                    message: format!(
                        "version {next} was written by another holder of the commit lock"
                    ),
                });
            }
            Err(TransactionError::VersionAlreadyExists(_)) => {
                tracing::debug!(
                    table = name,
                    version = next,
                    "another writer took the version; reading its commit"
                );
            }
            Err(e) => return Err(WorkerError::delta(name, e.into())),
        }
    }
    Err(WorkerError::CommitConflict {
        table: name.to_string(),
        message: format!("other writers took the next version {VERSION_RACES} times in a row"),
    })
}

impl<'a> Attempt<'a> {
    /// The app ids whose positions the commit checks: its txns, then the epoch under a lock.
    fn app_ids(&self) -> Vec<&'a str> {
        let mut app_ids: Vec<&str> = self.txns.iter().map(|t| t.app_id.as_str()).collect();
        if self.epoch.is_some() {
            app_ids.push(EPOCH_APP_ID);
        }
        app_ids
    }
}

/// The commit's txn actions, or `None` when the table no longer holds a position the
/// commit started from. `current` holds the positions at the head, then the latest epoch
/// when the commit carries one.
fn txn_actions(
    txns: &[TxnUpdate],
    epoch: Option<i64>,
    current: &[Option<i64>],
) -> Option<Vec<Transaction>> {
    for (txn, current) in txns.iter().zip(current) {
        if *current != txn.previous {
            tracing::debug!(app_id = %txn.app_id, ?current, previous = ?txn.previous, "txn position moved");
            return None;
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
    Some(actions)
}

/// The data actions: the new files, and for an overwrite the removal of every file the
/// table holds at `head`.
fn actions(payload: &Payload<'_>, head: &Head) -> Vec<Action> {
    let mut actions: Vec<Action> = payload.files.iter().cloned().map(Action::Add).collect();
    if payload.mode == WriteMode::Overwrite {
        let now = chrono::Utc::now().timestamp_millis();
        actions.extend(head.files().map(|f| Action::Remove(f.remove(now))));
    }
    actions
}

/// Whether this module may write the log entry itself (see the module docs).
fn writes_lean(table: &DeltaTable, mode: WriteMode) -> bool {
    let Ok(snapshot) = table.snapshot() else {
        return false;
    };
    let protocol = snapshot.protocol();
    let store = table.log_store().name();
    ["DefaultLogStore", "SmelterArbitratedLogStore"].contains(&store.as_str())
        && protocol.min_reader_version() == 1
        && protocol.min_writer_version() <= 2
        && !(mode == WriteMode::Overwrite && snapshot.table_config().append_only())
}

/// Every `checkpointInterval` versions, a checkpoint (and, where enabled, the cleanup of
/// expired log entries, which lists the whole log). The commit has landed either way: a
/// failure here is logged, and the next due version tries again.
async fn checkpoint_if_due(table: &mut DeltaTable, name: &str, committed: i64) {
    let Ok(snapshot) = table.snapshot() else {
        return;
    };
    let config = snapshot.table_config();
    if !((committed + 1) as u64).is_multiple_of(config.checkpoint_interval().get()) {
        return;
    }
    let cleanup = config.enable_expired_log_cleanup();
    let result = async {
        table.load_version(committed as u64).await?;
        deltalake::checkpoints::create_checkpoint(table, None).await?;
        if cleanup {
            deltalake::checkpoints::cleanup_metadata(table, None).await?;
        }
        Ok::<_, DeltaTableError>(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(table = name, version = committed, "checkpoint written"),
        Err(error) => {
            tracing::warn!(table = name, version = committed, %error, "checkpoint failed")
        }
    }
}

/// The commit through delta-rs, on a snapshot brought up to date: for what the lean path
/// does not check itself (see the module docs).
async fn through_delta_rs(table: &mut DeltaTable, attempt: Attempt<'_>) -> Result<CommitOutcome> {
    let (name, payload) = (attempt.name, attempt.payload);
    let app_ids = attempt.app_ids();
    let mut current = Vec::with_capacity(app_ids.len());
    for app_id in app_ids {
        current.push(crate::tables::txn_version(table, app_id).await?);
    }
    let Some(txn_actions) = txn_actions(attempt.txns, attempt.epoch, &current) else {
        return Ok(CommitOutcome::AlreadyCommitted);
    };
    let mut actions: Vec<Action> = payload.files.iter().cloned().map(Action::Add).collect();
    if payload.mode == WriteMode::Overwrite {
        let snapshot = table.snapshot().map_err(|e| WorkerError::delta(name, e))?;
        actions.extend(
            snapshot
                .log_data()
                .iter()
                .map(|file| Action::Remove(file.remove_action(true))),
        );
    }
    let snapshot = table.snapshot().map_err(|e| WorkerError::delta(name, e))?;
    // Expired log entries are cleaned up only by the commits that write a checkpoint (the
    // only ones after which there is anything to clean): the cleanup lists the whole log.
    let cleanup = {
        let config = snapshot.table_config();
        config.enable_expired_log_cleanup()
            && ((version(table) + 1) as u64).is_multiple_of(config.checkpoint_interval().get())
    };
    let properties = CommitProperties::default()
        .with_application_transactions(txn_actions)
        .with_cleanup_expired_logs(Some(cleanup));
    let committed = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), payload.operation())
        .await;
    attempt.env.failpoints.hit("commit.after_log");
    let committed = committed.map_err(|e| WorkerError::delta(name, e))?;
    let version = committed.version() as i64;
    // The commit carried the snapshot forward to its own version.
    table.state = Some(committed.snapshot());
    Ok(CommitOutcome::Committed { version })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{TestTable, compact, latest_version, row_count};

    async fn put(
        table: &mut DeltaTable,
        t: &TestTable,
        n: i64,
        mode: WriteMode,
        env: &CommitEnv,
    ) -> i64 {
        let outcome = commit(table, "silver.t", vec![t.batch(n)], mode, &[], vec![], env)
            .await
            .unwrap();
        let CommitOutcome::Committed { version } = outcome else {
            panic!("expected a commit, got {outcome:?}");
        };
        version
    }

    /// A batch of one partition is written as it is, a batch of several is split by
    /// delta-rs: both land in the same partition directories, readable by their values.
    #[tokio::test]
    async fn batches_of_one_partition_land_where_split_batches_do() {
        use arrow::array::{Date32Array, Int64Array};
        use arrow::datatypes::{DataType, Field, Schema};
        let env = CommitEnv::default();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::tables::TableStore::new(dir.path()).unwrap();
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("day", DataType::Date32, true),
        ]));
        let by = ["day".to_string()];
        let mut table = store
            .open_or_create("bronze.t", &schema, &by, &env)
            .await
            .unwrap();
        let batch = |n: Vec<i64>, days: Vec<i32>| {
            let columns: Vec<arrow::array::ArrayRef> = vec![
                std::sync::Arc::new(Int64Array::from(n)),
                std::sync::Arc::new(Date32Array::from(days)),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        };
        // 20778 is 2026-11-21, 20779 the day after.
        let one_day = batch(vec![1, 2, 3], vec![20778; 3]);
        let two_days = batch(vec![4, 5], vec![20778, 20779]);
        for b in [one_day, two_days] {
            commit(
                &mut table,
                "bronze.t",
                vec![b],
                WriteMode::Append,
                &by,
                vec![],
                &env,
            )
            .await
            .unwrap();
        }
        let head = env.heads.head(&mut table, "bronze.t").await.unwrap();
        let mut dirs: Vec<String> = head
            .files()
            .map(|f| f.path().split('/').next().unwrap().to_string())
            .collect();
        dirs.sort();
        assert_eq!(dirs, ["day=2026-11-21", "day=2026-11-21", "day=2026-11-22"]);
        refresh(&mut table, "bronze.t").await.unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        let rows = ctx
            .sql("SELECT CAST(day AS VARCHAR) AS day, sum(n) AS n FROM t GROUP BY day ORDER BY day")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string();
        assert!(text.contains("| 2026-11-21 | 10 |"), "{text}");
        assert!(text.contains("| 2026-11-22 | 5  |"), "{text}");
    }

    #[tokio::test]
    async fn commits_move_the_head_not_the_loaded_snapshot() {
        let env = CommitEnv::default();
        let t = TestTable::create("silver.t", &env).await;
        let mut writer = t.store.open("silver.t").await.unwrap();
        let mut follower = t.store.open("silver.t").await.unwrap();
        let start = version(&follower);
        for n in 0..3 {
            let committed = put(&mut writer, &t, n, WriteMode::Append, &env).await;
            assert_eq!(committed, start + n + 1);
            // The head follows the commit without reading it back; the snapshot stays.
            let head = env.heads.head(&mut writer, "silver.t").await.unwrap();
            assert_eq!(head.version(), committed);
            assert_eq!(head.rows(), Some(n as u64 + 1));
            assert_eq!(version(&writer), start);
        }
        // A follower sees the new versions by probing, and a refresh loads them.
        assert_eq!(
            latest_version(&follower, "silver.t", start).await.unwrap(),
            start + 3
        );
        assert_eq!(version(&follower), start);
        assert_eq!(refresh(&mut follower, "silver.t").await.unwrap(), start + 3);
        assert_eq!(row_count(&follower), 3);
        assert_eq!(refresh(&mut follower, "silver.t").await.unwrap(), start + 3);
    }

    /// An overwrite removes exactly the files the log holds at its version, including
    /// those other writers added and a compaction (through delta-rs) put in place of them.
    #[tokio::test]
    async fn overwrites_remove_what_other_writers_and_compaction_left() {
        let (env_a, env_b) = (CommitEnv::default(), CommitEnv::default());
        let t = TestTable::create("silver.t", &env_a).await;
        let mut a = t.store.open("silver.t").await.unwrap();
        let mut b = t.store.open("silver.t").await.unwrap();
        for n in 0..3 {
            put(&mut a, &t, n, WriteMode::Append, &env_a).await;
        }
        put(&mut b, &t, 3, WriteMode::Append, &env_b).await;
        let mut maintenance = t.store.open("silver.t").await.unwrap();
        let compaction = compact(&mut maintenance, "silver.t").await.unwrap();
        assert_eq!(compaction.files_removed, 4);
        put(&mut a, &t, 10, WriteMode::Overwrite, &env_a).await;

        let reader = t.store.open("silver.t").await.unwrap();
        assert_eq!(row_count(&reader), 1);
        let head = env_a.heads.head(&mut a, "silver.t").await.unwrap();
        assert_eq!(head.rows(), Some(1));
        assert_eq!(head.version(), version(&reader));
        let files: Vec<String> = reader
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|f| f.path().into_owned())
            .collect();
        let head_files: Vec<&str> = head.files().map(|f| f.path()).collect();
        assert_eq!(head_files, files);
    }
}
