//! Restore: a table brought back to an earlier version by a new commit — the files it held
//! then re-added, the files added since removed, and its txn positions put back to what
//! they were (or to what the caller says), in one [`rewrite`](crate::commit::rewrite)
//! recorded as a Delta `RESTORE`.
//!
//! Why the positions move too: a Smelter table is a function of what it consumed. Put back
//! to version N, a silver table's upstream position is bronze's version at N, so refine
//! consumes again what came after — under the spec as it is now — and a bronze table's
//! source offsets are those of N, so ingest reads the undone records again from the
//! source. Which versions downstream tables go back to, so that the layers stay one
//! consistent cut, is the caller's plan (`smelter restore`); a restore runs while the
//! pipeline's tasks are paused, so no writer races it, but it is still a compare-and-set
//! on the positions it read (a writer that was not paused makes it plan again).
//!
//! Invariants: the restored version's files must all still be in storage (not vacuumed),
//! or nothing is written; the epoch is never put back (epochs only grow).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use datafusion::object_store::ObjectStoreExt;
use deltalake::DeltaTable;
use deltalake::kernel::{Action, Add};
use deltalake::protocol::DeltaOperation;

use crate::app_id::AppId;
use crate::commit::{CommitEnv, Rewrite, RewriteOutcome, TxnUpdate, rewrite};
use crate::history::read_log;
use crate::log::{refresh, txn_version};
use crate::{LakeError, Result};

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    /// The version the table was brought back to.
    pub restored_to: i64,
    /// The table's latest version before the restore.
    pub was_at: i64,
    /// The restore's own version, if a commit was needed.
    pub version: Option<i64>,
    /// Files taken out (added after `restored_to`).
    pub files_removed: u64,
    /// Files put back (removed after `restored_to`).
    pub files_added: u64,
    /// Positions moved: `appId=old->new`.
    pub positions: Vec<String>,
}

/// How many times a restore plans again after a writer moved under it.
const PLANS: usize = 5;

/// The txn version of `app_id` at every version of `table` still in its log, oldest first
/// (`None` before its first txn).
pub async fn txn_history(
    table: &DeltaTable,
    name: &str,
    app_id: &AppId,
) -> Result<Vec<(i64, Option<i64>)>> {
    let log = read_log(table, name).await?;
    let Some(first) = log.first().map(|(v, _)| *v) else {
        return Ok(Vec::new());
    };
    // The value before the first kept entry, from the snapshot there.
    let mut current = if first > 0 {
        let mut at = table.clone();
        at.load_version(first as u64 - 1)
            .await
            .map_err(|e| LakeError::delta(name, e))?;
        txn_version(&at, app_id).await?
    } else {
        None
    };
    let wanted = app_id.to_string();
    let mut out = Vec::with_capacity(log.len());
    for (version, actions) in log {
        for action in actions.into_iter().flatten() {
            if let Action::Txn(txn) = action
                && txn.app_id == wanted
            {
                current = Some(txn.version);
            }
        }
        out.push((version, current));
    }
    Ok(out)
}

/// Brings `table` back to version `to` in one commit (see the module docs). `positions`
/// overrides the txn versions the restore sets (others go back to their values at `to`).
pub async fn restore(
    table: &mut DeltaTable,
    name: &str,
    to: i64,
    positions: &BTreeMap<AppId, i64>,
    env: &CommitEnv,
) -> Result<Restored> {
    for _ in 0..PLANS {
        let latest = refresh(table, name).await?;
        let oldest = crate::history::oldest_version(table, name).await?;
        if to > latest || to < oldest {
            return Err(LakeError::Invalid {
                table: name.to_string(),
                message: format!(
                    "cannot restore to version {to}: the versions kept are {oldest} to {latest}"
                ),
            });
        }
        let mut at = table.clone();
        at.load_version(to as u64)
            .await
            .map_err(|e| LakeError::delta(name, e))?;
        let snapshot = at.snapshot().map_err(|e| LakeError::delta(name, e))?;
        #[allow(deprecated)] // re-adding a file takes its add action as the log holds it
        let then: Vec<Add> = snapshot.log_data().iter().map(|f| f.add_action()).collect();
        let head = env.heads.head(table, name).await?;
        let live: HashSet<&str> = head.files().map(|f| f.path()).collect();
        let kept: HashSet<&str> = then.iter().map(|a| a.path.as_str()).collect();
        let removes: Vec<String> = live
            .iter()
            .filter(|p| !kept.contains(**p))
            .map(|p| p.to_string())
            .collect();
        let readds: Vec<Add> = then
            .iter()
            .filter(|a| !live.contains(a.path.as_str()))
            .cloned()
            .collect();
        let store = table.object_store();
        for add in &readds {
            let path = deltalake::Path::from_url_path(&add.path)
                .map_err(|e| LakeError::generic(name, format!("bad path {}: {e}", add.path)))?;
            if store.head(&path).await.is_err() {
                return Err(LakeError::Invalid {
                    table: name.to_string(),
                    message: format!(
                        "version {to} can no longer be restored: its file {} was vacuumed",
                        add.path
                    ),
                });
            }
        }
        let txns = positions_to_set(table, &at, name, positions).await?;
        let moved: Vec<String> = txns
            .iter()
            .map(|t| {
                let from = t.previous.map_or("none".into(), |v| v.to_string());
                format!("{}={from}->{}", t.app_id, t.version)
            })
            .collect();
        if removes.is_empty() && readds.is_empty() && txns.is_empty() {
            return Ok(Restored {
                restored_to: to,
                was_at: latest,
                ..Default::default()
            });
        }
        let (files_removed, files_added) = (removes.len() as u64, readds.len() as u64);
        let outcome = rewrite(
            table,
            name,
            Rewrite {
                removes,
                groups: Vec::new(),
                copied: Vec::new(),
                readds,
                changes: Vec::new(),
                operation: DeltaOperation::Restore {
                    version: Some(to as u64),
                    datetime: None,
                },
                data_change: true,
                txns,
                metadata: Default::default(),
                table_metadata: None,
            },
            env,
        )
        .await?;
        match outcome {
            RewriteOutcome::Committed { version, .. } => {
                tracing::info!(table = name, version, restored_to = to, "restored");
                return Ok(Restored {
                    restored_to: to,
                    was_at: latest,
                    version: Some(version),
                    files_removed,
                    files_added,
                    positions: moved,
                });
            }
            RewriteOutcome::Superseded { path } => {
                tracing::info!(table = name, %path, "restore superseded by another rewrite; planning again");
            }
            RewriteOutcome::AlreadyCommitted => {
                tracing::info!(
                    table = name,
                    "a writer moved a position under the restore; planning again"
                );
            }
        }
    }
    Err(LakeError::CommitConflict {
        table: name.to_string(),
        message: format!("writers moved the table under {PLANS} restore plans in a row"),
    })
}

/// The txn updates of a restore: every app id the table's kept log names (the epoch
/// aside) back to its value in `at`, or to `overrides`; an app id `at` does not have goes
/// to -1 (nothing consumed: ingest starts at the first offset, a reader at version 0).
async fn positions_to_set(
    table: &mut DeltaTable,
    at: &DeltaTable,
    name: &str,
    overrides: &BTreeMap<AppId, i64>,
) -> Result<Vec<TxnUpdate>> {
    let mut app_ids: BTreeSet<AppId> = overrides.keys().cloned().collect();
    for (_, actions) in read_log(table, name).await? {
        for action in actions.into_iter().flatten() {
            if let Action::Txn(txn) = action
                && let Some(app_id) = AppId::parse(&txn.app_id)
                && app_id != AppId::Epoch
            {
                app_ids.insert(app_id);
            }
        }
    }
    let mut updates = Vec::new();
    for app_id in app_ids {
        let now = txn_version(table, &app_id).await?;
        let then = match overrides.get(&app_id) {
            Some(v) => Some(*v),
            None => txn_version(at, &app_id).await?,
        };
        let target = then.unwrap_or(-1);
        if now != Some(target) && !(now.is_none() && then.is_none()) {
            updates.push(TxnUpdate::new(&app_id, now, target));
        }
    }
    Ok(updates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::{CommitOutcome, WriteMode, commit};
    use crate::testing::TestTable;

    async fn append(
        table: &mut DeltaTable,
        t: &TestTable,
        app: &AppId,
        previous: Option<i64>,
        n: i64,
    ) {
        let outcome = commit(
            table,
            "silver.t",
            vec![t.batch(n)],
            WriteMode::Append,
            &[],
            vec![TxnUpdate::new(app, previous, n)],
            &CommitEnv::default(),
        )
        .await
        .unwrap();
        assert!(
            matches!(outcome, CommitOutcome::Committed { .. }),
            "{outcome:?}"
        );
    }

    /// Appends, a compaction and a delete, then a restore to before the delete: the rows
    /// and the position of that version are back, readers see a rewrite, the chain goes on
    /// from the restored position, and the verifier accepts the rewound log. A version
    /// whose files were vacuumed cannot be restored.
    #[tokio::test]
    async fn a_restore_brings_back_rows_and_positions_and_the_chain_goes_on() {
        let env = CommitEnv::default();
        let t = TestTable::create("silver.t", &env).await;
        let mut table = t.store.open("silver.t").await.unwrap();
        let app = AppId::upstream("silver.t", "bronze.t");
        for n in 0..4 {
            append(&mut table, &t, &app, (n > 0).then_some(n - 1), n).await; // v1..v4
        }
        crate::compact::compact(&mut table, "silver.t", Default::default(), &env)
            .await
            .unwrap(); // v5
        let schema = crate::log::arrow_schema(&table, "silver.t").unwrap();
        let predicate = crate::delete::SqlPredicate::new("n >= 1", &schema, "silver.t").unwrap();
        crate::delete::delete(&mut table, "silver.t", &predicate, &env)
            .await
            .unwrap(); // v6
        append(&mut table, &t, &app, Some(3), 4).await; // v7
        refresh(&mut table, "silver.t").await.unwrap();
        assert_eq!(crate::log::row_count(&table), 2, "rows 0 and 4");

        let restored = restore(&mut table, "silver.t", 3, &BTreeMap::new(), &env)
            .await
            .unwrap();
        assert_eq!(restored.version, Some(8));
        assert_eq!(restored.positions, ["silver.t/bronze.t=4->2"]);
        let mut reader = t.store.open("silver.t").await.unwrap();
        crate::log::refresh(&mut reader, "silver.t").await.unwrap();
        assert_eq!(
            crate::log::row_count(&reader),
            3,
            "rows 0, 1, 2 as at version 3"
        );
        assert_eq!(txn_version(&reader, &app).await.unwrap(), Some(2));
        let range = crate::changes::range(&reader, "silver.t", 8, 8)
            .await
            .unwrap();
        assert!(range.rewritten && range.added.is_empty(), "{range:?}");
        let history = txn_history(&reader, "silver.t", &app).await.unwrap();
        assert_eq!(history.last(), Some(&(8, Some(2))));

        // The writer continues from the restored position; re-committing 3 is not a repeat.
        append(&mut table, &t, &app, Some(2), 3).await; // v9
        let report = crate::verify::verify(&t.store, "silver.t").await.unwrap();
        assert!(report.is_clean(), "{:?}", report.findings);

        // A restore to version 5 after its compacted file was vacuumed (the delete at v6
        // took it out). Version 1's file, back in the table since v8, was kept.
        crate::vacuum::vacuum(
            &mut table,
            "silver.t",
            std::time::Duration::ZERO,
            None,
            i64::MAX / 2,
            &env,
        )
        .await
        .unwrap();
        let error = restore(&mut table, "silver.t", 5, &BTreeMap::new(), &env)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("was vacuumed"), "{error}");
        let back = restore(&mut table, "silver.t", 1, &BTreeMap::new(), &env)
            .await
            .unwrap();
        assert_eq!((back.files_added, back.version), (0, Some(10)));
        let error = restore(&mut table, "silver.t", 99, &BTreeMap::new(), &env)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("versions kept are 0 to 10"),
            "{error}"
        );
    }
}
