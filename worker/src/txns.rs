//! The txn versions a commit checks (its compare-and-set positions and the latest epoch,
//! see [`crate::tables`]), followed from the commit entries instead of replayed by
//! delta-rs.
//!
//! delta-rs answers "the version of `appId` at this snapshot" by replaying the log segment
//! since the last checkpoint, reading every commit file in it (up to a thousand at a time)
//! each time it is asked; a commit asks once per position and once for the epoch. Over a
//! run that grows with the square of the commits. Here each table's versions are kept as of
//! one table version and carried forward by reading only the commit entries after it,
//! which for a table with one writer is none at all (the writer's own commits are applied
//! as they land).
//!
//! Exactness: an entry holds the newest `txn` of each of its app ids as of its version,
//! taken from delta-rs itself the first time an app id is asked for and then from every
//! later commit entry, in order. A missing commit entry (log cleanup) or a table recreated
//! under the same name (another table id) starts the entry over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deltalake::DeltaTable;
use deltalake::kernel::Action;

use crate::changes;
use crate::tables::{self, txn_version};
use crate::{Result, WorkerError};

/// Txn versions of some app ids as of one table version.
#[derive(Debug, Clone, Default)]
struct TxnsAt {
    /// The table's id: a table recreated under the same name starts over.
    table_id: String,
    version: i64,
    /// `None`: the app id has no txn in the table at `version`.
    txns: HashMap<String, Option<i64>>,
}

/// Per table (by name), the txn versions its commits check, as of the latest version a
/// commit on this worker saw.
#[derive(Debug, Default)]
pub struct TxnCache {
    tables: Mutex<HashMap<String, Arc<TxnsAt>>>,
}

impl TxnCache {
    /// The versions of `app_ids` in `table` (named `name`) at its loaded version.
    pub async fn versions(
        &self,
        table: &DeltaTable,
        name: &str,
        app_ids: &[&str],
    ) -> Result<Vec<Option<i64>>> {
        let target = tables::version(table);
        let table_id = table_id(table, name)?;
        let cached = self.entry(name);
        let mut at = match cached {
            Some(c) if c.table_id == table_id && c.version <= target => (*c).clone(),
            _ => TxnsAt {
                table_id,
                version: target,
                txns: HashMap::new(),
            },
        };
        if at.version < target {
            match txns_between(table, name, at.version + 1, target).await? {
                Some(found) => {
                    for (app_id, version) in found {
                        at.txns.insert(app_id, Some(version));
                    }
                }
                None => at.txns.clear(),
            }
            at.version = target;
        }
        for app_id in app_ids {
            if !at.txns.contains_key(*app_id) {
                let version = txn_version(table, app_id).await?;
                at.txns.insert(app_id.to_string(), version);
            }
        }
        let versions = app_ids.iter().map(|a| at.txns[*a]).collect();
        self.store(name, at);
        Ok(versions)
    }

    /// Records a commit that landed at `version` carrying `txns`, made on the snapshot at
    /// `version - 1`: the entry moves forward without reading the commit back.
    pub fn committed(&self, name: &str, version: i64, txns: &[(String, i64)]) {
        let Some(cached) = self.entry(name) else {
            return;
        };
        if cached.version != version - 1 {
            return;
        }
        let mut at = (*cached).clone();
        for (app_id, v) in txns {
            at.txns.insert(app_id.clone(), Some(*v));
        }
        at.version = version;
        self.store(name, at);
    }

    fn entry(&self, name: &str) -> Option<Arc<TxnsAt>> {
        self.lock().get(name).cloned()
    }

    /// Keeps `at` unless the entry already reflects a later version of the same table.
    fn store(&self, name: &str, at: TxnsAt) {
        let mut tables = self.lock();
        let newer = tables
            .get(name)
            .is_some_and(|c| c.table_id == at.table_id && c.version > at.version);
        if !newer {
            tables.insert(name.to_string(), Arc::new(at));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TxnsAt>>> {
        // A panic while holding the lock cannot leave an entry half-written (entries are
        // replaced whole), so a poisoned map is still exact.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn table_id(table: &DeltaTable, name: &str) -> Result<String> {
    let snapshot = table.snapshot().map_err(|e| WorkerError::delta(name, e))?;
    Ok(snapshot.metadata().id().to_string())
}

/// The `txn` actions of commits `from..=to`, in order; `None` if a commit entry is gone.
async fn txns_between(
    table: &DeltaTable,
    name: &str,
    from: i64,
    to: i64,
) -> Result<Option<Vec<(String, i64)>>> {
    let mut found = Vec::new();
    for version in from..=to {
        let Some(actions) = changes::commit_actions(table, name, version).await? else {
            return Ok(None);
        };
        found.extend(actions.into_iter().filter_map(|action| match action {
            Action::Txn(txn) => Some((txn.app_id, txn.version)),
            _ => None,
        }));
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{CommitEnv, CommitOutcome, TestTable, TxnUpdate, WriteMode, commit};

    /// Two writers of one table, each with its own cache (two workers): each sees the
    /// other's txns, and agrees with delta-rs's own replay at every version.
    #[tokio::test]
    async fn commits_see_foreign_txns_and_agree_with_log_replay() {
        let (env_a, env_b) = (CommitEnv::default(), CommitEnv::default());
        let t = TestTable::create("bronze.t", &env_a).await;
        let mut a = t.store.open("bronze.t").await.unwrap();
        let mut b = t.store.open("bronze.t").await.unwrap();
        let put = async |table: &mut DeltaTable, env: &CommitEnv, app: &str, from, to| {
            let txns = vec![TxnUpdate::new(app, from, to)];
            commit(
                table,
                "bronze.t",
                vec![t.batch(to)],
                WriteMode::Append,
                &[],
                txns,
                env,
            )
            .await
            .unwrap()
        };
        let landed = |outcome| matches!(outcome, CommitOutcome::Committed { .. });

        // Writer a takes partition p from nothing to 10, then 20.
        assert!(landed(put(&mut a, &env_a, "p", None, 10).await));
        assert!(landed(put(&mut a, &env_a, "p", Some(10), 20).await));
        // Writer b, which last saw p at 10, must not commit over a's 20.
        let stale = put(&mut b, &env_b, "p", Some(10), 30).await;
        assert!(matches!(stale, CommitOutcome::AlreadyCommitted));
        // b takes over from 20; a, whose cache last saw its own 20, must see b's 30.
        assert!(landed(put(&mut b, &env_b, "p", Some(20), 30).await));
        assert!(landed(put(&mut b, &env_b, "q", None, 5).await));
        let stale = put(&mut a, &env_a, "p", Some(20), 40).await;
        assert!(matches!(stale, CommitOutcome::AlreadyCommitted));

        for (table, env) in [(&mut a, &env_a), (&mut b, &env_b)] {
            tables::refresh(table, "bronze.t").await.unwrap();
            let cached = env
                .txns
                .versions(table, "bronze.t", &["p", "q", "r"])
                .await
                .unwrap();
            let replayed = vec![
                txn_version(table, "p").await.unwrap(),
                txn_version(table, "q").await.unwrap(),
                txn_version(table, "r").await.unwrap(),
            ];
            assert_eq!(cached, replayed);
            assert_eq!(cached, vec![Some(30), Some(5), None]);
        }
    }
}
