//! A table's commit history, read back from its `_delta_log` version by version.
//!
//! The verifier replays the raw actions to check the commit protocol; the benchmark reads
//! the summaries ([`Commit`]) to learn when each version landed, which txn versions it
//! carried (so which upstream positions it covers) and how many files and bytes it added.
//! Both read the log itself, never the writers' bookkeeping.

use deltalake::DeltaTable;
use deltalake::kernel::Action;

use crate::{LakeError, Result};
use crate::{changes, log};

/// The actions of one log version, or `None` where the version is missing from the log.
pub type LogEntry = (i64, Option<Vec<Action>>);

/// Every version from the first one still kept (older ones may have been cleaned up) to
/// the table's latest, in order.
pub async fn read_log(table: &DeltaTable, name: &str) -> Result<Vec<LogEntry>> {
    let delta = |e| LakeError::delta(name, e);
    let latest = log::version(table);
    let log_store = table.log_store();
    let mut first = 0;
    while first <= latest
        && log_store
            .read_commit_entry(first as u64)
            .await
            .map_err(delta)?
            .is_none()
    {
        first += 1;
    }
    let mut entries = Vec::with_capacity((latest - first + 1).max(0) as usize);
    for version in first..=latest {
        entries.push((
            version,
            changes::commit_actions(table, name, version).await?,
        ));
    }
    Ok(entries)
}

/// What one commit did, in brief.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    /// Log version.
    pub version: i64,
    /// The writer's commit time (commitInfo), milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// The operation (`WRITE`, `OPTIMIZE`, ...).
    pub operation: Option<String>,
    /// Txn actions: (appId, version).
    pub txns: Vec<(String, i64)>,
    /// Data files added with `dataChange = true`.
    pub files_added: usize,
    /// Their bytes.
    pub bytes_added: u64,
}

/// The summaries of every kept version of `table`.
pub async fn commits(table: &DeltaTable, name: &str) -> Result<Vec<Commit>> {
    let log = read_log(table, name).await?;
    Ok(log
        .into_iter()
        .filter_map(|(version, actions)| {
            let mut commit = Commit {
                version,
                ..Commit::default()
            };
            for action in actions? {
                match action {
                    Action::CommitInfo(info) => {
                        commit.timestamp_ms = info.timestamp;
                        commit.operation = info.operation;
                    }
                    Action::Txn(txn) => commit.txns.push((txn.app_id, txn.version)),
                    Action::Add(add) if add.data_change => {
                        commit.files_added += 1;
                        commit.bytes_added += add.size.max(0) as u64;
                    }
                    _ => {}
                }
            }
            Some(commit)
        })
        .collect())
}
