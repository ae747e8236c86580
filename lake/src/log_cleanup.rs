//! Log cleanup: deleting the commit entries (and checkpoints) of a table's `_delta_log`
//! older than its history retention (`delta.logRetentionDuration`, 30 days unless the spec's
//! `retention.history` says), so that the log, and what listing it costs, stays bounded.
//!
//! Delta's writers clean up at their checkpoints, by age alone. Smelter's do not (the
//! commit paths in [`crate::commit`] write checkpoints only): the maintenance task cleans
//! up instead, and only up to the version every reader of the table has consumed. A
//! downstream task reads each new upstream version's commit entry for the files it
//! added ([`crate::changes`]); one that lags — stopped, or behind a long outage — by more
//! than the history would otherwise find the entries it still needs deleted, and stop
//! for good ("commit N is missing from the log"). So the invariant: **an entry after the
//! version every reader has consumed is never deleted**, whatever its age. Entries are
//! deleted only below a checkpoint at or before that version (Delta's rule, kept by
//! delta-rs's `cleanup_expired_logs_for`), so the table still opens at every version from
//! that checkpoint on; time travel is bounded by the retention anyway
//! (`crate::history::oldest_available`).

use deltalake::DeltaTable;
use deltalake::table::config::TablePropertiesExt as _;

use crate::{LakeError, Result};

/// Deletes the log entries of `table` older than its history retention at `now_ms`, below
/// the latest checkpoint at or before version `keep` (the version every reader has
/// consumed); returns how many (see the module docs).
pub async fn clean_up(table: &DeltaTable, name: &str, keep: i64, now_ms: i64) -> Result<usize> {
    if keep < 0 {
        return Ok(0);
    }
    let retention = history_retention(table, name)?;
    let cutoff_ms = now_ms.saturating_sub(retention.as_millis().min(i64::MAX as u128) as i64);
    deltalake::checkpoints::cleanup_expired_logs_for(
        keep as u64,
        table.log_store().as_ref(),
        cutoff_ms,
        None,
    )
    .await
    .map_err(|e| LakeError::delta(name, e))
}

/// How long `table`'s log keeps entries (`delta.logRetentionDuration`, 30 days unless
/// set), as its loaded snapshot says.
pub fn history_retention(table: &DeltaTable, name: &str) -> Result<std::time::Duration> {
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    Ok(snapshot.table_config().log_retention_duration())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::{commit_actions, range};
    use crate::commit::{CommitEnv, WriteMode};
    use crate::describe::{Description, describe};
    use crate::testing::{TestTable, commit_for_test};

    /// Long after every entry was written, whatever the retention.
    fn far_future_ms() -> i64 {
        i64::MAX / 2
    }

    #[tokio::test]
    async fn entries_a_reader_still_needs_are_kept_however_old() {
        let env = CommitEnv::default();
        let test = TestTable::create("t", &env).await;
        let mut table = test.store.open("t").await.unwrap();
        let history = Description {
            history: Some(std::time::Duration::from_secs(1)),
            ..Description::default()
        };
        describe(&mut table, "t", &history, &env).await.unwrap();
        let (mut checkpoint_at, mut latest) = (0, 0);
        for n in 0..12 {
            let version =
                commit_for_test(&mut table, "t", test.batch(n), WriteMode::Append, &[]).await;
            latest = version;
            if n == 5 {
                table.load_version(version as u64).await.unwrap();
                deltalake::checkpoints::create_checkpoint(&table, None)
                    .await
                    .unwrap();
                checkpoint_at = version;
            }
        }
        table.load_version(latest as u64).await.unwrap();
        deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .unwrap();

        // A reader has consumed up to just past the first checkpoint: entries below that
        // checkpoint go, every one after the reader's version stays.
        let reader_at = checkpoint_at + 2;
        let deleted = clean_up(&table, "t", reader_at, far_future_ms())
            .await
            .unwrap();
        assert!(deleted > 0, "the old entries were deleted");
        assert!(commit_actions(&table, "t", 0).await.unwrap().is_none());
        assert!(
            commit_actions(&table, "t", checkpoint_at)
                .await
                .unwrap()
                .is_some()
        );
        let next = range(&table, "t", reader_at + 1, latest).await.unwrap();
        assert_eq!(next.added.len() as i64, latest - reader_at);
        let reopened = test.store.open("t").await.unwrap();
        assert_eq!(crate::log::version(&reopened), latest);

        // Nothing newer than the retention is deleted, whoever has read it.
        assert_eq!(clean_up(&table, "t", latest, 0).await.unwrap(), 0);

        // Cleaned up to the latest version (by age alone, as Delta's writers do), the
        // entries that reader still needs are gone: what the bound prevents.
        clean_up(&table, "t", latest, far_future_ms())
            .await
            .unwrap();
        let error = range(&table, "t", reader_at + 1, latest)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing from the log"), "{error}");
    }
}
