//! Rewrites: commits that take files out of a table and may put others in their place —
//! delete, compaction, restore. They go through the same attempts as appends (under the
//! commit lock when there is an arbiter, with the writer's epoch, on arbitrated stores
//! through a claim), so a rewrite never races a streaming writer's log write.
//!
//! Invariant: a rewrite removes only files the table still holds at the version it is
//! written after. Planned from an earlier version, it checks each file against the head it
//! follows; if another rewrite took one meanwhile (a compaction under a delete), nothing is
//! written and the caller plans again ([`RewriteOutcome::Superseded`]). Appends that landed
//! meanwhile are untouched: they only added files the rewrite does not name.

use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::protocol::DeltaOperation;
use tracing::Instrument as _;

use super::{CommitEnv, CommitOutcome, Payload, TxnUpdate, WriteMode, attempts, files};
use crate::{LakeError, Result};

/// What a rewrite commits.
pub struct Rewrite {
    /// Files taken out (paths as [`crate::heads::Head`] and delta-rs snapshots give them).
    pub removes: Vec<String>,
    /// Rows of the files put in their place: each group is written as its own file(s).
    pub groups: Vec<Vec<RecordBatch>>,
    /// Files written already (a compaction's copied row groups, see [`crate::concat`]),
    /// added with the rewrite's `dataChange`.
    pub copied: Vec<deltalake::kernel::Add>,
    /// Files the table held before, put back as they were (a restore).
    pub readds: Vec<deltalake::kernel::Add>,
    /// Change data files written for the commit (see [`crate::change_data`]).
    pub changes: Vec<deltalake::kernel::AddCDCFile>,
    /// The operation the log records.
    pub operation: DeltaOperation,
    /// Whether rows change (`false` for compaction: the same rows in other files, which
    /// readers of new data skip).
    pub data_change: bool,
    /// Txn positions the rewrite moves (a restore puts them back), compared and set as for
    /// any commit.
    pub txns: Vec<TxnUpdate>,
    /// Entries for the commit's `commitInfo` (a delete records the source positions it
    /// took out of a table that has them: [`DELETED_POSITIONS_KEY`]).
    pub metadata: std::collections::HashMap<String, serde_json::Value>,
    /// The table's new metadata action, if the rewrite changes it (see
    /// [`crate::describe`]): derived from the metadata of the caller's snapshot, and
    /// [`RewriteOutcome::Superseded`] if another change of metadata landed since.
    pub table_metadata: Option<deltalake::kernel::Metadata>,
}

/// The `commitInfo` key under which a delete records the source positions it removed:
/// `{"topic/partition": [[first, last], ...]}`, runs of offsets. `smelter verify` counts
/// them as accounted for, not as gaps.
pub const DELETED_POSITIONS_KEY: &str = "smelter.deletedPositions";

/// What [`rewrite`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteOutcome {
    /// Committed as this version, with this many files added.
    Committed {
        /// The table version of the rewrite.
        version: i64,
        /// Files written in place of the removed ones.
        files_added: usize,
    },
    /// A file to remove is gone (another rewrite took it): nothing was written.
    Superseded {
        /// The file that went away.
        path: String,
    },
    /// A txn position the rewrite started from has moved: nothing was written.
    AlreadyCommitted,
}

/// Writes the new files, then commits the rewrite (see the module docs).
pub async fn rewrite(
    table: &mut DeltaTable,
    name: &str,
    rewrite: Rewrite,
    env: &CommitEnv,
) -> Result<RewriteOutcome> {
    let mut added = Vec::new();
    for group in &rewrite.groups {
        let written = files::write_files(table, name, group).await?;
        added.extend(written.files);
    }
    added.extend(rewrite.copied.iter().cloned());
    for add in &mut added {
        add.data_change = rewrite.data_change;
    }
    added.extend(rewrite.readds.iter().cloned().map(|mut add| {
        add.data_change = true;
        add
    }));
    env.failpoints.hit("rewrite.after_files", || {
        format!("table={name} files={}", added.len())
    });
    let payload = Payload {
        files: &added,
        changes: &rewrite.changes,
        mode: WriteMode::Append,
        partition_by: &[],
        removes: &rewrite.removes,
        removes_data: rewrite.data_change,
        operation: Some((rewrite.operation.clone(), rewrite.data_change)),
        metadata: Some(&rewrite.metadata),
        table_metadata: rewrite.table_metadata.as_ref(),
    };
    let span = tracing::info_span!(
        "rewrite",
        table = name,
        operation = rewrite.operation.name(),
        files_removed = rewrite.removes.len(),
        files_added = added.len(),
    );
    match attempts(table, name, &payload, &rewrite.txns, env)
        .instrument(span)
        .await
    {
        Ok(CommitOutcome::Committed { version }) => Ok(RewriteOutcome::Committed {
            version,
            files_added: added.len(),
        }),
        Ok(CommitOutcome::AlreadyCommitted) => Ok(RewriteOutcome::AlreadyCommitted),
        Err(LakeError::Superseded { path, .. }) => Ok(RewriteOutcome::Superseded { path }),
        Err(error) => Err(error),
    }
}
