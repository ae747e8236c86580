//! Compaction: small files rewritten into larger ones in a maintenance commit.

use deltalake::DeltaTable;

use crate::location::LogKind;
use crate::log::version;
use crate::{LakeError, Result};

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
/// `log` is how the table's store makes log writes atomic: compaction writes the log
/// through delta-rs, outside the commit lock, so arbitrated stores refuse it.
pub async fn compact(table: &mut DeltaTable, name: &str, log: LogKind) -> Result<Compaction> {
    if log == LogKind::Arbitrated {
        return Err(LakeError::Unsupported {
            location: name.to_string(),
            message: "compaction is not available on stores arbitrated by commit locks yet \
                      (it would write the log outside the lock)"
                .into(),
        });
    }
    table
        .update_state()
        .await
        .map_err(|e| LakeError::delta(name, e))?;
    let before = version(table);
    let (compacted, metrics) = table
        .clone()
        .optimize()
        .with_writer_properties(crate::file_format::writer_properties())
        .await
        .map_err(|e| LakeError::delta(name, e))?;
    let after = version(&compacted);
    *table = compacted;
    Ok(Compaction {
        version: (after > before).then_some(after),
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
    })
}
