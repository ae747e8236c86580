//! The commit protocol (docs/exactly-once.md): how a task's batch becomes one Delta commit.
//!
//! The Delta log is the only source of truth about what was written. Every commit made by
//! a task carries Delta `txn` actions naming what it consumed:
//!
//! * ingest: [`AppId::Source`](crate::AppId), `version` = last offset;
//! * refine / aggregate: [`AppId::Upstream`](crate::AppId), `version` = upstream Delta version.
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
//! arbitrated store, [`crate::storage::ArbitratedLogStore`]), where `head` is the latest version and its txns
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
//! writer's table (dedupe, [`crate::log::refresh`]) bring it forward when they need it.
//! When the log holds anything this path does not check — a metadata or protocol change
//! since the snapshot, table features beyond writer version 2, an append-only table being
//! overwritten — the snapshot is refreshed and the commit goes through delta-rs's own commit
//! path and conflict checker instead ([`CommitPath`]). Both log stores a
//! [`TableStore`](crate::TableStore) opens tables with ([`LogKind`](crate::LogKind)) write a
//! commit entry's bytes atomically, which the lean path relies on.
//!
//! Files: [`files`] writes the data files, [`lean`] the log entry itself, [`delta_rs`] the
//! commit through delta-rs.

mod delta_rs;
mod files;
mod lean;
mod replace;
mod rewrite;
mod shape;
#[cfg(test)]
mod tests;

use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use deltalake::protocol::{DeltaOperation, SaveMode};

use tracing::Instrument as _;

use crate::app_id::AppId;
use crate::error::Retry;
use crate::failpoint::Failpoints;
use crate::heads::LogHeads;
use crate::location::LogKind;
use crate::lock::{CommitArbiter, HeldLock, LOCK_WAIT};
use crate::recent_files::RecentFiles;
use crate::{LakeError, Result};

pub use lean::CommitPath;
pub use replace::{REPLACED_KEY, replace_schema};
pub use rewrite::{DELETED_POSITIONS_KEY, Rewrite, RewriteOutcome, rewrite};

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
    pub app_id: AppId,
    /// The version the table must hold now (`None`: no txn for this app id yet).
    pub previous: Option<i64>,
    /// The version this commit records.
    pub version: i64,
}

impl TxnUpdate {
    /// A txn moving `app_id` from `previous` to `version`.
    pub fn new(app_id: &AppId, previous: Option<i64>, version: i64) -> Self {
        Self {
            app_id: app_id.clone(),
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
    /// How long commits and commit-lock waits take, per table (see [`crate::timings`]).
    pub timings: crate::timings::CommitTimings,
    /// Announces each committed version to the tasks downstream in this process (see
    /// [`crate::signals`]).
    pub signals: crate::signals::CommitSignals,
    /// How the tables' store makes a log write atomic (the [`TableStore`](crate::TableStore)'s
    /// [`log_kind`](crate::TableStore::log_kind)): on an arbitrated store every version is
    /// written through a claim (see [`crate::claims`]).
    pub log: LogKind,
}

/// How often a commit is attempted after failures that may pass (conflicts, lapsed locks,
/// transient storage errors) before it gives up.
const ATTEMPTS: usize = 5;

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
    let metadata = std::collections::HashMap::new();
    let write = Write {
        batches,
        mode,
        partition_by,
        txns,
        metadata: &metadata,
    };
    commit_write(table, name, write, env).await
}

/// One commit's data and what it records, for [`commit_write`].
pub struct Write<'a> {
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// Append or overwrite.
    pub mode: WriteMode,
    /// The table's partition columns.
    pub partition_by: &'a [String],
    /// The txn positions it moves.
    pub txns: Vec<TxnUpdate>,
    /// Entries for the commit's `commitInfo` (refine records the pass's data quality
    /// figures: [`QUALITY_KEY`]).
    pub metadata: &'a std::collections::HashMap<String, serde_json::Value>,
}

/// The `commitInfo` key under which refine records what a pass did to its rows: rows read,
/// written, quarantined and warned per rule, dropped, deduplicated. Kept in the log, the
/// figures survive restarts and any reader of the table sees them.
pub const QUALITY_KEY: &str = "smelter.quality";

/// [`commit`], with entries for the commit's `commitInfo`.
pub async fn commit_write(
    table: &mut DeltaTable,
    name: &str,
    write: Write<'_>,
    env: &CommitEnv,
) -> Result<CommitOutcome> {
    let Write {
        batches,
        mode,
        partition_by,
        txns,
        metadata,
    } = write;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    for _ in 0..PLANS {
        // Rows shaped as the table, or the table's schema evolving with them (see
        // `crate::evolve`): planned from the metadata this writer last saw.
        let shaped = shape::shape(table, name, &batches, mode, env).await?;
        let writing = std::time::Instant::now();
        let files::Written {
            mut files,
            file_schema,
            partition_columns,
        } = files::write_files_as(table, name, &shaped.batches, shaped.schema.as_ref()).await?;
        let new_files = files.len();
        // The rows of a one-file commit, kept for the tasks downstream and offered to
        // other workers in the file's add action (see `crate::exchange`).
        let kept = match new_files {
            1 => env
                .recent
                .stored_rows(&file_schema, &partition_columns, &shaped.batches),
            _ => None,
        };
        let mut messages = None;
        if let Some(rows) = &kept
            && let Some((offer, encoded)) = crate::exchange::offer(&env.recent, &file_schema, rows)
        {
            files[0].tags = Some(offer.tags());
            messages = Some(encoded);
        }
        for group in &shaped.rewritten {
            let written = files::write_files_as(table, name, group, shaped.schema.as_ref()).await?;
            files.extend(written.files.into_iter().map(|mut add| {
                add.data_change = false;
                add
            }));
        }
        let paths = || {
            let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            format!("table={name} files={}", paths.join(","))
        };
        env.failpoints.hit("commit.after_files", paths);
        if shaped.table_metadata.is_some() {
            env.failpoints.hit("commit.evolving", paths);
        }
        let mut metadata = metadata.clone();
        crate::timings::record_stages(&mut metadata, &[("write", writing.elapsed())]);
        if let Some(summary) = &shaped.summary {
            metadata.insert(EVOLVED_KEY.to_string(), summary.clone().into());
        }
        let payload = Payload {
            files: &files,
            mode,
            partition_by,
            changes: &[],
            removes: &shaped.removes,
            removes_data: false,
            operation: None,
            metadata: Some(&metadata),
            table_metadata: shaped.table_metadata.as_ref(),
        };
        // One span per commit, a root of its own trace: which table, how many files and
        // rows, and the version it became (or that the txns showed it was already in).
        let span = tracing::info_span!(
            "commit",
            table = name,
            files = files.len(),
            rows,
            version = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let outcome = match attempts(table, name, &payload, &txns, env)
            .instrument(span.clone())
            .await
        {
            Ok(outcome) => outcome,
            // The schema change was planned from metadata (or files) another commit changed
            // since: plan again from the table as it is now.
            Err(LakeError::Superseded { path, .. }) if shaped.table_metadata.is_some() => {
                tracing::info!(table = name, %path, "schema evolution superseded; planning again");
                crate::log::refresh(table, name).await?;
                continue;
            }
            Err(error) => return Err(error),
        };
        match &outcome {
            CommitOutcome::Committed { version } => {
                span.record("version", version);
                span.record("outcome", "committed");
                env.signals.announce(table.table_url().as_str(), *version);
                if let Some(summary) = &shaped.summary {
                    tracing::info!(table = name, version, evolved = %summary, "table schema evolved");
                    // The writer's snapshot follows the metadata it just wrote.
                    crate::log::refresh(table, name).await?;
                }
            }
            CommitOutcome::AlreadyCommitted => {
                span.record("outcome", "already committed");
            }
        }
        if let (CommitOutcome::Committed { .. }, Some(rows)) = (&outcome, kept) {
            env.recent
                .keep_rows(table.table_url().as_str(), &files[0].path, rows, messages);
        }
        return Ok(outcome);
    }
    Err(LakeError::CommitConflict {
        table: name.to_string(),
        message: format!("other commits changed the table's schema {PLANS} times in a row"),
    })
}

/// How often an evolving commit plans again after another commit changed the table's
/// metadata or files under it.
const PLANS: usize = 3;

/// The `commitInfo` key under which a commit that evolved the table's schema says how
/// (`added user.device; widened quantity int to long`).
pub const EVOLVED_KEY: &str = "smelter.schemaEvolved";

/// [`attempt_until_decided`], timed into [`CommitEnv::timings`] when it decides.
async fn attempts(
    table: &mut DeltaTable,
    name: &str,
    payload: &Payload<'_>,
    txns: &[TxnUpdate],
    env: &CommitEnv,
) -> Result<CommitOutcome> {
    let started = std::time::Instant::now();
    let outcome = attempt_until_decided(table, name, payload, txns, env).await;
    if outcome.is_ok() {
        env.timings.commit(name, started.elapsed());
    }
    outcome
}

/// Writes the log entry of `payload`, attempt after attempt, each under the commit lock
/// when there is an arbiter, until it lands, the txn versions show it is already in, or an
/// error retrying cannot help (or [`ATTEMPTS`] ran out).
async fn attempt_until_decided(
    table: &mut DeltaTable,
    name: &str,
    payload: &Payload<'_>,
    txns: &[TxnUpdate],
    env: &CommitEnv,
) -> Result<CommitOutcome> {
    let arbiter = env.arbiter.as_ref();
    let mut last_error = None;
    // Time spent waiting for the commit lock over every attempt so far.
    let mut lock_wait = std::time::Duration::ZERO;
    for attempt in 0..ATTEMPTS {
        // Held for the log write only; dropping it (this future dropped mid-way included)
        // hands it to the arbiter's session task, which deletes it.
        let lock = match arbiter {
            Some(arbiter) => {
                let asked = std::time::Instant::now();
                let lock = arbiter.acquire(name, LOCK_WAIT).await?;
                env.timings.lock_wait(name, asked.elapsed());
                lock_wait += asked.elapsed();
                Some(lock)
            }
            None => None,
        };
        let this_attempt = Attempt {
            name,
            payload,
            txns,
            lock: lock.as_ref(),
            lock_wait,
            env,
        };
        let result = lean::commit_once(table, this_attempt).await;
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
            // A rewrite whose files another rewrite took: the caller plans again.
            Err(error @ LakeError::Superseded { .. }) => return Err(error),
            Err(error) => {
                // Outcome unknown (or lost a race, or fenced): the txn versions decide on
                // the next pass.
                tracing::warn!(table = name, attempt, error = %error, "commit failed; re-reading the log to decide from txn versions");
                env.timings.attempt_failed(name);
                if error.retry() == Retry::Permanent {
                    return Err(error);
                }
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| LakeError::CommitConflict {
        table: name.to_string(),
        message: "gave up".into(),
    }))
}

/// What one commit writes.
struct Payload<'a> {
    /// The data files, already in storage.
    files: &'a [Add],
    /// Overwrites also remove every file the table holds.
    mode: WriteMode,
    partition_by: &'a [String],
    /// Change data files (`_change_data/`) of a merge on a table with the change data feed.
    changes: &'a [deltalake::kernel::AddCDCFile],
    /// Files a rewrite takes out (paths as the table's head holds them); each must still
    /// be in the table at the version the commit follows, or the commit is
    /// [`LakeError::Superseded`].
    removes: &'a [String],
    /// Whether the removed files' rows leave the table (`dataChange`; not so for a
    /// compaction, or the rewrite of a schema change: the same rows in other files).
    removes_data: bool,
    /// The operation a rewrite records (appends and overwrites record a write).
    operation: Option<(DeltaOperation, bool)>,
    /// What a rewrite adds to the commit's `commitInfo`.
    metadata: Option<&'a std::collections::HashMap<String, serde_json::Value>>,
    /// The table's new metadata action (a description or properties changed), written
    /// only after the metadata the caller derived it from: if another metadata change
    /// landed since, the commit is [`LakeError::Superseded`] and the caller derives again.
    table_metadata: Option<&'a deltalake::kernel::Metadata>,
}

impl Payload<'_> {
    fn operation(&self) -> DeltaOperation {
        if let Some((operation, _)) = &self.operation {
            return operation.clone();
        }
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

/// What one attempt commits, and under which lock.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    name: &'a str,
    payload: &'a Payload<'a>,
    txns: &'a [TxnUpdate],
    lock: Option<&'a HeldLock>,
    /// How long this commit has waited for the lock, this attempt's wait included.
    lock_wait: std::time::Duration,
    env: &'a CommitEnv,
}

/// The `commitInfo` key naming the writer of a commit.
pub const WRITER_KEY: &str = "smelter.writer";

impl Attempt<'_> {
    /// What the commit's `commitInfo` says besides Delta's fields: its writer, if known,
    /// and how long it waited for the lock (with the writer's stage timings).
    fn app_metadata(&self) -> std::collections::HashMap<String, serde_json::Value> {
        let mut metadata = self.payload.metadata.cloned().unwrap_or_default();
        if let Some(arbiter) = &self.env.arbiter {
            metadata.insert(WRITER_KEY.to_string(), arbiter.holder().into());
            crate::timings::record_stages(&mut metadata, &[("lockWait", self.lock_wait)]);
        }
        metadata
    }

    /// The epoch of the held lock, if any.
    fn epoch(&self) -> Option<i64> {
        self.lock.map(|l| l.epoch)
    }

    /// The app ids whose positions the commit checks: its txns, then the epoch under a lock.
    fn app_ids(&self) -> Vec<AppId> {
        let mut app_ids: Vec<AppId> = self.txns.iter().map(|t| t.app_id.clone()).collect();
        if self.lock.is_some() {
            app_ids.push(AppId::Epoch);
        }
        app_ids
    }
}
