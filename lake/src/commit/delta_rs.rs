//! The commit through delta-rs's own commit path and conflict checker, on a snapshot
//! brought up to date: for what the lean path does not check itself.

use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};

use super::{Attempt, CommitOutcome, WriteMode};
use crate::location::LogKind;
use crate::log::txn_version;
use crate::{LakeError, Result};

/// The commit through delta-rs, on a snapshot brought up to date: for what the lean path
/// does not check itself (see the module docs).
pub(super) async fn commit(table: &mut DeltaTable, attempt: Attempt<'_>) -> Result<CommitOutcome> {
    let (name, payload) = (attempt.name, attempt.payload);
    if attempt.env.log == LogKind::Arbitrated {
        // delta-rs writes the log without a claim; see `crate::claims`.
        return Err(LakeError::Unsupported {
            location: name.to_string(),
            message: "this commit needs delta-rs's own commit path (a metadata or protocol \
                      change, or table features beyond writer version 2), which cannot fence \
                      its log write on a store without put-if-absent"
                .into(),
        });
    }
    let app_ids = attempt.app_ids();
    let mut current = Vec::with_capacity(app_ids.len());
    for app_id in &app_ids {
        current.push(txn_version(table, app_id).await?);
    }
    let Some(txn_actions) = super::lean::txn_actions(attempt.txns, attempt.epoch(), &current)
    else {
        return Ok(CommitOutcome::AlreadyCommitted);
    };
    let mut actions: Vec<Action> = payload.files.iter().cloned().map(Action::Add).collect();
    actions.extend(payload.changes.iter().cloned().map(Action::Cdc));
    actions.extend(payload.table_metadata.cloned().map(Action::Metadata));
    if payload.mode == WriteMode::Overwrite {
        let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
        actions.extend(
            snapshot
                .log_data()
                .iter()
                .map(|file| Action::Remove(file.remove_action(true))),
        );
    }
    if !payload.removes.is_empty() {
        let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
        let live: std::collections::HashMap<String, _> = snapshot
            .log_data()
            .iter()
            .map(|file| (file.path().into_owned(), file))
            .collect();
        for path in payload.removes {
            let file = live.get(path).ok_or_else(|| LakeError::Superseded {
                table: name.to_string(),
                path: path.clone(),
            })?;
            actions.push(Action::Remove(file.remove_action(payload.removes_data)));
        }
    }
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    // No cleanup of expired log entries by age: maintenance cleans up, sparing what a
    // lagging reader still needs (`crate::log_cleanup`).
    let properties = CommitProperties::default()
        .with_metadata(attempt.app_metadata())
        .with_application_transactions(txn_actions)
        .with_cleanup_expired_logs(Some(false));
    let committed = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), payload.operation())
        .await;
    attempt.env.failpoints.hit("commit.after_log", || {
        format!("table={name} (delta-rs path)")
    });
    let committed = committed.map_err(|e| LakeError::delta(name, e))?;
    let version = committed.version() as i64;
    // The commit carried the snapshot forward to its own version.
    table.state = Some(committed.snapshot());
    Ok(CommitOutcome::Committed { version })
}
