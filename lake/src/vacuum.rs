//! Vacuum: deleting the data files that rewrites (compaction, delete, restore) took out of
//! a table, once they have been out longer than the table's retention.
//!
//! Only tombstoned files are deleted (delta-rs's "lite" mode): a file some writer wrote
//! but has not committed yet is never in the log, so it is never a candidate — however
//! long its writer is paused. Files of attempts that never landed are left behind (they
//! are unreferenced and harmless). No log entry is written: delta-rs's own vacuum records
//! a start and an end commit through its commit path, which an arbitrated store cannot
//! fence; deleting files needs no commit, and the log already records when each was
//! removed. What a vacuum deleted bounds time travel: it reports the oldest version that
//! still has all its files ([`Vacuum::readable_from`]), which the maintenance record keeps
//! and time travel refuses to go past (`crate::history::oldest_available`).
//!
//! Readers downstream read the files each version *added*, possibly long after it was
//! committed: a refine task behind its bronze table still needs files a compaction has
//! since taken out. So a vacuum looks only at the files removed up to a version every
//! reader has consumed (`as_of`): a file removed at version r ≤ c was added before r, so a
//! reader at c has read it — whatever the clocks say. Files live at the table's latest
//! version are never deleted, whatever an older snapshot says of them.

use std::collections::HashSet;
use std::time::Duration;

use datafusion::object_store::ObjectStoreExt;
use deltalake::DeltaTable;
use deltalake::operations::vacuum::VacuumMode;

use crate::commit::CommitEnv;
use crate::log::refresh;
use crate::{LakeError, Result};

/// What a vacuum did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Vacuum {
    /// Files deleted from storage.
    pub files_deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// The oldest version that still has every file it needs: one past the latest version
    /// that removed a deleted file (`None` when nothing was deleted).
    pub readable_from: Option<i64>,
}

/// Deletes the files removed from `table` more than `retention` ago, at or before version
/// `as_of` (the latest when `None`), and not live at the latest version (see the module
/// docs).
pub async fn vacuum(
    table: &mut DeltaTable,
    name: &str,
    retention: Duration,
    as_of: Option<i64>,
    env: &CommitEnv,
) -> Result<Vacuum> {
    let latest = refresh(table, name).await?;
    let live: HashSet<String> = env
        .heads
        .head(table, name)
        .await?
        .files()
        .map(|f| f.path().to_string())
        .collect();
    let mut at = table.clone();
    if let Some(version) = as_of.filter(|v| *v < latest) {
        at.load_version(version as u64)
            .await
            .map_err(|e| LakeError::delta(name, e))?;
    }
    let retention = chrono::Duration::from_std(retention)
        .map_err(|e| LakeError::generic(name, format!("retention {retention:?}: {e}")))?;
    let (_, plan) = at
        .vacuum()
        .with_mode(VacuumMode::Lite)
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_dry_run(true)
        .await
        .map_err(|e| LakeError::delta(name, e))?;
    let store = table.object_store();
    let mut deleted = 0;
    let mut bytes = 0;
    for path in &plan.files_deleted {
        if live.contains(path) {
            continue;
        }
        let path = deltalake::Path::parse(path)
            .map_err(|e| LakeError::generic(name, format!("bad path {path}: {e}")))?;
        let size = match store.head(&path).await {
            Ok(meta) => meta.size,
            // Another vacuum got there first.
            Err(deltalake::ObjectStoreError::NotFound { .. }) => continue,
            Err(e) => return Err(LakeError::delta(name, e.into())),
        };
        match store.delete(&path).await {
            Ok(()) => {
                deleted += 1;
                bytes += size;
            }
            // Another vacuum got there first.
            Err(deltalake::ObjectStoreError::NotFound { .. }) => {}
            Err(e) => return Err(LakeError::delta(name, e.into())),
        }
    }
    let mut readable_from = None;
    if deleted > 0 {
        readable_from = removed_by(table, name, &plan.files_deleted, &live).await?;
        tracing::info!(
            table = name,
            files = deleted,
            bytes,
            ?readable_from,
            "vacuumed"
        );
    }
    Ok(Vacuum {
        files_deleted: deleted,
        bytes_deleted: bytes,
        readable_from,
    })
}

/// The version time travel can read from once `deleted` are gone: the version that
/// removed the last of them (a version at or after it no longer needs any).
async fn removed_by(
    table: &DeltaTable,
    name: &str,
    deleted: &[String],
    live: &HashSet<String>,
) -> Result<Option<i64>> {
    let deleted: HashSet<&str> = deleted
        .iter()
        .map(String::as_str)
        .filter(|p| !live.contains(*p))
        .collect();
    let mut last = None;
    for (version, actions) in crate::history::read_log(table, name).await? {
        let removes = actions.iter().flatten().any(|action| {
            matches!(action, deltalake::kernel::Action::Remove(r) if deleted.contains(r.path.as_str()))
        });
        if removes {
            last = Some(version);
        }
    }
    Ok(last)
}
