//! The lean commit path: the log entry written as exactly the version after the head this
//! writer followed — with put-if-absent, or on an arbitrated store through a claim on the
//! version ([`crate::claims`]) — see the module docs of [`crate::commit`].

use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitData, TransactionError};
use deltalake::kernel::{Action, Transaction};
use deltalake::logstore::CommitOrBytes;
use deltalake::table::config::TablePropertiesExt as _;

use super::{Attempt, CommitOutcome, Payload, TxnUpdate, WriteMode};
use crate::app_id::AppId;
use crate::claims::{Claims, Refused};
use crate::heads::Head;
use crate::location::LogKind;
use crate::log::{refresh, version};
use crate::{LakeError, Result};

/// How often the log entry is attempted when other writers keep taking the next version.
const VERSION_RACES: usize = 20;

/// One attempt: find the head, check the txn positions and the epoch, write the log entry.
pub(super) async fn commit_once(
    table: &mut DeltaTable,
    attempt: Attempt<'_>,
) -> Result<CommitOutcome> {
    let Attempt {
        name,
        payload,
        txns,
        lock,
        env,
        ..
    } = attempt;
    let epoch = attempt.epoch();
    let objects = table.log_store().object_store(None);
    let claims = match (env.log, lock, &env.arbiter) {
        (LogKind::PutIfAbsent, _, _) => None,
        (LogKind::Arbitrated, Some(lock), Some(arbiter)) => Some(Claims {
            store: arbiter.store(),
            guard: lock.guard(),
            table: name,
            objects: objects.as_ref(),
            failpoints: &env.failpoints,
        }),
        (LogKind::Arbitrated, _, _) => {
            return Err(LakeError::Unsupported {
                location: name.to_string(),
                message: "a store without put-if-absent is written only under the commit \
                          locks, and this writer has none"
                    .into(),
            });
        }
    };
    if let Some(claims) = &claims {
        // Versions other holders claimed but did not write come first (see `claims`).
        claims.complete_pending().await?;
    }
    let app_ids = attempt.app_ids();
    for _ in 0..VERSION_RACES {
        let (head, current) = env.heads.txns(table, name, &app_ids).await?;
        if !head.metadata_as_of(version(table)) {
            if payload.table_metadata.is_some() {
                // Derived from metadata that is no longer the table's.
                return Err(LakeError::Superseded {
                    table: name.to_string(),
                    path: "metaData".into(),
                });
            }
            // A metadata change since this writer's snapshot: its files follow the loaded
            // metadata, so the snapshot comes forward first; what it holds decides the path.
            refresh(table, name).await?;
        }
        if CommitPath::choose(table, payload.mode) == CommitPath::DeltaRs {
            refresh(table, name).await?;
            return super::delta_rs::commit(table, attempt).await;
        }
        let Some(txn_actions) = txn_actions(txns, epoch, &current) else {
            return Ok(CommitOutcome::AlreadyCommitted);
        };
        let data = CommitData::new(
            actions(name, payload, &head)?,
            payload.operation(),
            attempt.app_metadata(),
            txn_actions,
        );
        let bytes = data
            .get_bytes()
            .map_err(|e| LakeError::delta(name, e.into()))?;
        let next = head.version() + 1;
        let written = match &claims {
            Some(claims) => match claims.write(next, bytes).await? {
                None => Written::Landed,
                Some(Refused::Taken) => Written::Taken,
                Some(Refused::LockLost) => Written::LockLost,
            },
            None => match table
                .log_store()
                .write_commit_entry(
                    next as u64,
                    CommitOrBytes::LogBytes(bytes),
                    uuid::Uuid::new_v4(),
                )
                .await
            {
                Ok(()) => Written::Landed,
                Err(TransactionError::VersionAlreadyExists(_)) => Written::Taken,
                Err(e) => Written::Failed(LakeError::delta(name, e.into())),
            },
        };
        env.failpoints.hit("commit.after_log", || {
            format!("table={name} version={next}")
        });
        match written {
            Written::Landed => {
                env.heads.committed(name, next, &data.actions);
                checkpoint_if_due(table, name, next).await;
                return Ok(CommitOutcome::Committed { version: next });
            }
            Written::Taken if epoch.is_some() => {
                // Under the commit lock nobody else writes the log: another holder did, so
                // this writer's lock lapsed (paused past its lease). The attempt fails; the
                // next one takes the lock again and decides from the txn versions.
                count_fenced(env);
                return Err(LakeError::CommitConflict {
                    table: name.to_string(),
                    message: format!(
                        "version {next} was written by another holder of the commit lock"
                    ),
                });
            }
            Written::LockLost => {
                count_fenced(env);
                return Err(LakeError::CommitConflict {
                    table: name.to_string(),
                    message: format!(
                        "the commit lock lapsed before version {next} was claimed; nothing written"
                    ),
                });
            }
            Written::Taken => {
                tracing::debug!(
                    table = name,
                    version = next,
                    "another writer took the version; reading its commit"
                );
            }
            Written::Failed(error) => return Err(error),
        }
    }
    Err(LakeError::CommitConflict {
        table: name.to_string(),
        message: format!("other writers took the next version {VERSION_RACES} times in a row"),
    })
}

/// Counts an attempt its lapsed lock fenced off.
fn count_fenced(env: &super::CommitEnv) {
    if let Some(arbiter) = &env.arbiter {
        arbiter.count_fenced();
    }
}

/// What became of one log write.
enum Written {
    /// The entry is the version.
    Landed,
    /// Another writer has the version.
    Taken,
    /// This writer's commit lock lapsed before it claimed the version (arbitrated stores).
    LockLost,
    /// The write failed; its outcome is unknown.
    Failed(LakeError),
}

/// The commit's txn actions, or `None` when the table no longer holds a position the
/// commit started from. `current` holds the positions at the head, then the latest epoch
/// when the commit carries one.
pub(super) fn txn_actions(
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
        .map(|t| Transaction::new(t.app_id.to_string(), t.version))
        .collect();
    if let Some(lock_revision) = epoch {
        // Above the lock's revision and above every epoch already in the table: epochs
        // strictly increase in log order even if the store's revisions started over
        // (a restarted in-process store, a rebuilt etcd).
        let latest = current[txns.len()];
        let epoch = lock_revision.max(latest.map_or(0, |e| e + 1));
        actions.push(Transaction::new(AppId::Epoch.to_string(), epoch));
    }
    Some(actions)
}

/// The data actions: the new files, for an overwrite the removal of every file the table
/// holds at `head`, and for a rewrite the removal of its files — each still in the table at
/// `head`, or the rewrite is [`LakeError::Superseded`].
fn actions(name: &str, payload: &Payload<'_>, head: &Head) -> Result<Vec<Action>> {
    let mut actions: Vec<Action> = payload.files.iter().cloned().map(Action::Add).collect();
    actions.extend(payload.changes.iter().cloned().map(Action::Cdc));
    actions.extend(payload.table_metadata.cloned().map(Action::Metadata));
    let now = chrono::Utc::now().timestamp_millis();
    if payload.mode == WriteMode::Overwrite {
        actions.extend(head.files().map(|f| Action::Remove(f.remove(now))));
    }
    for path in payload.removes {
        let file = head.file(path).ok_or_else(|| LakeError::Superseded {
            table: name.to_string(),
            path: path.clone(),
        })?;
        let mut remove = file.remove(now);
        remove.data_change = payload.removes_data;
        actions.push(Action::Remove(remove));
    }
    Ok(actions)
}

/// Which code writes a commit's log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPath {
    /// This crate, from the head it followed (see the module docs of [`crate::commit`]).
    Lean,
    /// delta-rs's commit path and conflict checker, on a refreshed snapshot: for what the
    /// lean path does not check itself.
    DeltaRs,
}

impl CommitPath {
    /// The path for a commit of `mode` to `table` as loaded: the lean one unless the
    /// protocol asks for features it does not write (reader version above 1, writer
    /// version above 4 or constraints; of the named table features, all but `timestampNtz`)
    /// or an append-only table would be overwritten.
    pub fn choose(table: &DeltaTable, mode: WriteMode) -> CommitPath {
        let Ok(snapshot) = table.snapshot() else {
            return CommitPath::DeltaRs;
        };
        let protocol = snapshot.protocol();
        // Writer version 3 adds check constraints and 4 generated columns and the change
        // data feed. This path writes no constraints or generated columns' tables (the
        // metadata has none), and the change data of merges comes in their payload.
        let metadata = snapshot.metadata();
        let constrained = metadata
            .configuration()
            .keys()
            .any(|k| k.starts_with("delta.constraints."))
            || metadata
                .schema_string()
                .contains("delta.generationExpression");
        // Table features (reader 3, writer 7) this path writes as it writes the others: a
        // `timestamp_ntz` column asks nothing of a writer but its files' types.
        let featured = protocol.min_reader_version() == 3
            && protocol.min_writer_version() == 7
            && only(protocol.reader_features(), &["timestampNtz"])
            && only(
                protocol.writer_features(),
                &["timestampNtz", "appendOnly", "changeDataFeed"],
            );
        let lean = ((protocol.min_reader_version() == 1
            && (protocol.min_writer_version() <= 2
                || (protocol.min_writer_version() <= 4 && !constrained)))
            || (featured && !constrained))
            && !(mode == WriteMode::Overwrite && snapshot.table_config().append_only());
        if lean {
            CommitPath::Lean
        } else {
            CommitPath::DeltaRs
        }
    }
}

/// Whether every feature listed (if the protocol lists them) is one of `allowed`.
fn only<F: std::fmt::Display>(features: Option<&[F]>, allowed: &[&str]) -> bool {
    features.is_none_or(|features| {
        features
            .iter()
            .all(|f| allowed.contains(&f.to_string().as_str()))
    })
}

/// Every `checkpointInterval` versions, a checkpoint. No cleanup of expired log entries:
/// by age alone it could delete entries a lagging reader still needs; maintenance cleans
/// up instead (`crate::log_cleanup`). The commit has landed either way: a failure here is
/// logged, and the next due version tries again.
async fn checkpoint_if_due(table: &mut DeltaTable, name: &str, committed: i64) {
    let Ok(snapshot) = table.snapshot() else {
        return;
    };
    let config = snapshot.table_config();
    if !((committed + 1) as u64).is_multiple_of(config.checkpoint_interval().get()) {
        return;
    }
    let result = async {
        table.load_version(committed as u64).await?;
        deltalake::checkpoints::create_checkpoint(table, None).await
    }
    .await;
    match result {
        Ok(()) => tracing::info!(table = name, version = committed, "checkpoint written"),
        Err(error) => {
            tracing::warn!(table = name, version = committed, %error, "checkpoint failed")
        }
    }
}
