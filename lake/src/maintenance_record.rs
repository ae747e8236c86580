//! What automatic maintenance did to a table, kept next to the table's log in
//! `_smelter/maintenance.json` — so `smelter maintenance status` answers from storage alone
//! (no cluster, local or S3), after restarts and hand-offs of the maintenance task.
//!
//! Why a file of its own and not a commit: a vacuum writes nothing to the log (see
//! [`crate::vacuum`]), and a pass that found nothing to do should not add versions. Delta
//! readers ignore paths that start with `_`, and vacuum deletes only tombstoned data files,
//! so the record never disturbs the table. Compactions are in the log as well (`OPTIMIZE`
//! commits in `smelter history`); the record adds when passes ran, what vacuums freed and
//! the last failure.
//!
//! One maintenance task owns a pipeline's tables at a time, so a read-modify-write is
//! enough; during a hand-off two may briefly overlap and one pass's figures can be lost,
//! never a table's data.

use datafusion::object_store::{ObjectStoreExt, PutPayload};
use deltalake::DeltaTable;
use serde::{Deserialize, Serialize};

use crate::compact::Compaction;
use crate::vacuum::Vacuum;
use crate::{LakeError, Result};

/// Where the record lives, relative to the table root.
pub const RECORD_PATH: &str = "_smelter/maintenance.json";

/// The maintenance history of one table, cumulative since its first pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaintenanceRecord {
    /// When the last pass ended (Unix ms).
    pub last_pass_unix_ms: i64,
    /// Passes run.
    pub passes: u64,
    /// The size under which a file counted as small in the last pass.
    pub target_file_bytes: u64,
    /// Compaction commits made.
    pub compactions: u64,
    /// Small files those compactions replaced...
    pub files_compacted: u64,
    /// ...by this many files.
    pub files_written: u64,
    /// The latest compaction.
    pub last_compaction: Option<CompactionRun>,
    /// Data files vacuums deleted, and their bytes.
    pub files_vacuumed: u64,
    /// Bytes of those files.
    pub bytes_vacuumed: u64,
    /// The latest vacuum that deleted files.
    pub last_vacuum: Option<VacuumRun>,
    /// The oldest version whose data files are all still there: vacuums deleted files
    /// versions before it need (time travel refuses them, naming this one).
    pub readable_from: Option<i64>,
    /// Rows data retention deleted, all passes together.
    pub rows_expired: u64,
    /// The latest data-retention delete.
    pub last_expiry: Option<ExpiryRun>,
    /// Log entries past the history retention deleted (`crate::log_cleanup`), all
    /// passes together.
    pub log_entries_deleted: u64,
    /// The latest pass's failure, cleared by a pass that succeeds.
    pub last_error: Option<String>,
}

/// One compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRun {
    /// When (Unix ms).
    pub unix_ms: i64,
    /// The version it committed.
    pub version: i64,
    /// Small files replaced.
    pub files_removed: u64,
    /// Files written in their place.
    pub files_added: u64,
}

/// One vacuum that deleted files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VacuumRun {
    /// When (Unix ms).
    pub unix_ms: i64,
    /// Files deleted.
    pub files_deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
}

/// One data-retention delete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryRun {
    /// When (Unix ms).
    pub unix_ms: i64,
    /// The version of the delete.
    pub version: i64,
    /// Rows deleted: those older than `before_unix_ms` in the retention's column.
    pub rows_deleted: u64,
    /// The cut.
    pub before_unix_ms: i64,
}

impl MaintenanceRecord {
    /// Adds one data-retention delete.
    pub fn add_expiry(&mut self, expiry: ExpiryRun) {
        self.rows_expired += expiry.rows_deleted;
        self.last_expiry = Some(expiry);
    }

    /// Adds one pass: what it compacted and vacuumed, or why it failed.
    pub fn add_pass(
        &mut self,
        unix_ms: i64,
        target_file_bytes: u64,
        outcome: std::result::Result<(Compaction, Vacuum), String>,
    ) {
        self.last_pass_unix_ms = unix_ms;
        self.passes += 1;
        self.target_file_bytes = target_file_bytes;
        match outcome {
            Ok((compaction, vacuum)) => {
                self.last_error = None;
                if let Some(version) = compaction.version {
                    self.compactions += compaction.commits.max(1);
                    self.files_compacted += compaction.files_removed;
                    self.files_written += compaction.files_added;
                    self.last_compaction = Some(CompactionRun {
                        unix_ms,
                        version,
                        files_removed: compaction.files_removed,
                        files_added: compaction.files_added,
                    });
                }
                self.readable_from = self.readable_from.max(vacuum.readable_from);
                if vacuum.files_deleted > 0 {
                    self.files_vacuumed += vacuum.files_deleted;
                    self.bytes_vacuumed += vacuum.bytes_deleted;
                    self.last_vacuum = Some(VacuumRun {
                        unix_ms,
                        files_deleted: vacuum.files_deleted,
                        bytes_deleted: vacuum.bytes_deleted,
                    });
                }
            }
            Err(error) => self.last_error = Some(error),
        }
    }
}

/// Reads the record of `table`; `None` if maintenance never ran on it.
pub async fn read(table: &DeltaTable, name: &str) -> Result<Option<MaintenanceRecord>> {
    let store = table.object_store();
    let path = deltalake::Path::from(RECORD_PATH);
    let bytes = match store.get(&path).await {
        Ok(got) => got
            .bytes()
            .await
            .map_err(|e| LakeError::delta(name, e.into()))?,
        Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(LakeError::delta(name, e.into())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LakeError::generic(name, format!("{RECORD_PATH} does not parse: {e}")))
}

/// Replaces the record of `table`.
pub async fn write(table: &DeltaTable, name: &str, record: &MaintenanceRecord) -> Result<()> {
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| LakeError::generic(name, format!("maintenance record: {e}")))?;
    table
        .object_store()
        .put(&deltalake::Path::from(RECORD_PATH), PutPayload::from(body))
        .await
        .map_err(|e| LakeError::delta(name, e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_accumulate_and_a_success_clears_the_error() {
        let mut record = MaintenanceRecord::default();
        record.add_pass(1, 100, Err("store down".into()));
        assert_eq!(record.last_error.as_deref(), Some("store down"));
        let compaction = Compaction {
            version: Some(7),
            commits: 2,
            files_removed: 20,
            files_added: 2,
        };
        let vacuum = Vacuum {
            files_deleted: 5,
            bytes_deleted: 500,
            readable_from: Some(12),
        };
        record.add_pass(2, 100, Ok((compaction, vacuum)));
        record.add_pass(3, 100, Ok((Compaction::default(), Vacuum::default())));
        assert_eq!(record.passes, 3);
        assert_eq!(record.last_error, None);
        assert_eq!(
            (
                record.compactions,
                record.files_compacted,
                record.files_written
            ),
            (2, 20, 2)
        );
        assert_eq!(
            record
                .last_compaction
                .as_ref()
                .map(|c| (c.unix_ms, c.version)),
            Some((2, 7))
        );
        assert_eq!((record.files_vacuumed, record.bytes_vacuumed), (5, 500));
        assert_eq!(record.last_vacuum.as_ref().map(|v| v.unix_ms), Some(2));
        assert_eq!(record.last_pass_unix_ms, 3);
        assert_eq!(
            record.readable_from,
            Some(12),
            "a later pass never lowers it"
        );
        record.add_expiry(ExpiryRun {
            unix_ms: 4,
            version: 13,
            rows_deleted: 40,
            before_unix_ms: 1,
        });
        assert_eq!(record.rows_expired, 40);
        assert_eq!(record.last_expiry.as_ref().map(|e| e.version), Some(13));
    }
}
