//! What a worker knows of each table's log past the snapshot it loaded: the head version,
//! the txn versions its commits check (compare-and-set positions and epochs, see
//! [`crate::commit`]), the live data files and whether the metadata moved — followed from
//! the commit entries, never by a delta-rs snapshot update.
//!
//! Why: a delta-rs snapshot update lists the log, replays the protocol and metadata, and
//! re-derives every file of the table with its statistics; delta-rs also answers "the
//! version of `appId`" by replaying every commit since the last checkpoint. After every
//! commit a writer did both, so one commit cost 9 ms of CPU on a fresh table and 30 ms a
//! hundred commits later, and a watcher paid the same for every table that moved. Here a
//! table's head is kept as of one version and carried forward by reading only the commit
//! entries after it; a writer applies its own commits as they land, so a table with one
//! writer reads nothing at all.
//!
//! Exactness: a [`Head`] starts from a loaded snapshot (its `base`): the snapshot's files,
//! and, the first time an app id is asked about, the snapshot's txns — all of them, read at
//! once ([`crate::txns`]), so that a files source asking about thousands of files pays one
//! read. Every later
//! commit entry is then applied in order: its `txn`s, its adds and removes, its metadata or
//! protocol. So at its version a head holds what a snapshot loaded at that version would,
//! for the things it tracks. A missing commit entry (log cleanup) or another table id (a
//! table recreated under the same name) starts the head over from a fresh snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deltalake::DeltaTable;
use deltalake::kernel::{Action, Add, DeletionVectorDescriptor, Remove};

use crate::app_id::AppId;
use crate::changes;
use crate::log::{self, txn_version};
use crate::{LakeError, Result};

/// One data file a table holds (paths as delta-rs keeps them: decoded).
#[derive(Debug, Clone)]
pub struct LiveFile {
    path: String,
    size: i64,
    partition_values: HashMap<String, Option<String>>,
    deletion_vector: Option<DeletionVectorDescriptor>,
    rows: Option<u64>,
    stats: Option<std::sync::Arc<str>>,
}

impl LiveFile {
    /// The file's path relative to the table root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's size in bytes.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// Rows in the file, when its statistics say.
    pub fn rows(&self) -> Option<u64> {
        self.rows
    }

    /// Its statistics (`numRecords`, bounds, null counts), as the log writes them.
    pub fn stats(&self) -> Option<&str> {
        self.stats.as_deref()
    }

    /// Its partition values, as the log writes them.
    pub fn partition_values(&self) -> &HashMap<String, Option<String>> {
        &self.partition_values
    }

    /// Whether some of its rows are deleted by a deletion vector (its rows are not the
    /// file's alone).
    pub fn has_deletion_vector(&self) -> bool {
        self.deletion_vector.is_some()
    }

    fn from_add(add: &Add) -> Self {
        #[derive(serde::Deserialize)]
        struct NumRecords {
            #[serde(rename = "numRecords")]
            num_records: Option<u64>,
        }
        let rows = add
            .stats
            .as_deref()
            .and_then(|stats| serde_json::from_str::<NumRecords>(stats).ok()?.num_records);
        Self {
            path: add.path.clone(),
            size: add.size,
            partition_values: add.partition_values.clone(),
            deletion_vector: add.deletion_vector.clone(),
            rows,
            stats: add.stats.as_deref().map(std::sync::Arc::from),
        }
    }

    /// The action that takes this file out of the table (`dataChange`: its rows go).
    pub fn remove(&self, timestamp_ms: i64) -> Remove {
        Remove {
            path: self.path.clone(),
            data_change: true,
            deletion_timestamp: Some(timestamp_ms),
            extended_file_metadata: Some(true),
            partition_values: Some(self.partition_values.clone()),
            size: Some(self.size),
            tags: None,
            deletion_vector: self.deletion_vector.clone(),
            base_row_id: None,
            default_row_commit_version: None,
        }
    }
}

/// A table's log as of one version.
#[derive(Debug, Clone)]
pub struct Head {
    /// The table's id: a table recreated under the same name starts over.
    table_id: String,
    /// The version of the snapshot this head started from.
    base: i64,
    version: i64,
    /// The newest txn version of each app id asked about or seen since `base` (`None`: the
    /// app id has no txn in the table).
    txns: HashMap<String, Option<i64>>,
    /// `txns` holds every app id of the table (read whole by [`crate::txns::all_txns`] and
    /// carried forward): an id it lacks has no txn.
    all_txns: bool,
    /// The table's data files, by path.
    files: HashMap<String, LiveFile>,
    /// The newest version after `base` whose commit changed the metadata or the protocol.
    metadata_changed: Option<i64>,
}

impl Head {
    /// A head at the snapshot `table` has loaded.
    fn loaded(table: &DeltaTable, name: &str) -> Result<Self> {
        let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
        let files = snapshot
            .log_data()
            .iter()
            .map(|file| {
                let live = LiveFile {
                    path: file.path().into_owned(),
                    size: file.size(),
                    partition_values: file.partition_values_map(),
                    deletion_vector: file.deletion_vector_descriptor(),
                    rows: file.num_records().map(|n| n as u64),
                    stats: file.stats().map(std::sync::Arc::from),
                };
                (live.path.clone(), live)
            })
            .collect();
        Ok(Self {
            table_id: snapshot.metadata().id().to_string(),
            base: log::version(table),
            version: log::version(table),
            txns: HashMap::new(),
            all_txns: false,
            files,
            metadata_changed: None,
        })
    }

    /// The version this head describes.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The data file at `path`, if the table holds it.
    pub fn file(&self, path: &str) -> Option<&LiveFile> {
        self.files.get(path)
    }

    /// Rows in the table, when every file's statistics say.
    pub fn rows(&self) -> Option<u64> {
        self.files.values().map(|f| f.rows).sum()
    }

    /// The table's data files.
    pub fn files(&self) -> impl Iterator<Item = &LiveFile> {
        self.files.values()
    }

    /// Whether a snapshot loaded at `loaded` has the metadata and protocol of this head (a
    /// writer's data files and commit checks follow the loaded snapshot's).
    pub fn metadata_as_of(&self, loaded: i64) -> bool {
        loaded >= self.base && self.metadata_changed.is_none_or(|v| v <= loaded)
    }

    /// Applies commit `version`'s actions, the commit right after this head.
    fn apply(&mut self, version: i64, actions: &[Action]) {
        for action in actions {
            match action {
                Action::Txn(txn) => {
                    self.txns.insert(txn.app_id.clone(), Some(txn.version));
                }
                Action::Add(add) => {
                    self.files.insert(add.path.clone(), LiveFile::from_add(add));
                }
                Action::Remove(remove) => {
                    self.files.remove(&remove.path);
                }
                Action::Metadata(metadata) => {
                    self.table_id = metadata.id().to_string();
                    self.metadata_changed = Some(version);
                }
                Action::Protocol(_) => self.metadata_changed = Some(version),
                _ => {}
            }
        }
        self.version = version;
    }
}

/// Per table (by name), the newest [`Head`] any task on this worker saw.
#[derive(Debug, Default)]
pub struct LogHeads {
    tables: Mutex<HashMap<String, Arc<Head>>>,
}

impl LogHeads {
    /// The head of `table`'s log (named `name`): its latest version, found by probing for
    /// the commits after the newest version known here, with everything up to it applied.
    /// `table`'s snapshot is only read, never updated, unless a commit entry is missing
    /// (log cleanup): then it is brought up to date and the head starts over from it.
    pub async fn head(&self, table: &mut DeltaTable, name: &str) -> Result<Arc<Head>> {
        let head = self.advanced(table, name).await?;
        Ok(self.store(name, head))
    }

    /// The head of `table`'s log and the txn versions of `app_ids` at it.
    pub async fn txns(
        &self,
        table: &mut DeltaTable,
        name: &str,
        app_ids: &[AppId],
    ) -> Result<(Arc<Head>, Vec<Option<i64>>)> {
        let keys: Vec<String> = app_ids.iter().map(AppId::to_string).collect();
        let mut head = self.advanced(table, name).await?;
        let unknown = !head.all_txns && keys.iter().any(|a| !head.txns.contains_key(a));
        if unknown && log::version(table) < head.base {
            // The snapshot's answer for an app id holds at the head only if no commit after
            // the snapshot is unread: start this head from the older snapshot instead.
            head = Head::loaded(table, name)?;
            self.read_forward(table, name, &mut head).await?;
        }
        if unknown {
            // Not in any commit after `base`: the loaded snapshot (at or after `base`, at
            // or before the head) knows their newest txns. Read them all at once, so that
            // the next id asked about (the next file of a files source) costs nothing.
            match crate::txns::all_txns(table, name).await {
                Ok(all) => {
                    for (key, version) in all {
                        // Ids seen in commits after the snapshot keep their newer value.
                        head.txns.entry(key).or_insert(Some(version));
                    }
                    head.all_txns = true;
                }
                Err(error) => {
                    // An unusual log (a checkpoint format not read here): ask for each id.
                    tracing::warn!(table = name, %error, "reading all txns failed; asking one id at a time");
                    for (app_id, key) in app_ids.iter().zip(&keys) {
                        if !head.txns.contains_key(key) {
                            let version = txn_version(table, app_id).await?;
                            head.txns.insert(key.clone(), version);
                        }
                    }
                }
            }
        }
        let versions = keys
            .iter()
            .map(|key| head.txns.get(key).copied().flatten())
            .collect();
        Ok((self.store(name, head), versions))
    }

    /// Records a commit of this worker that landed at `version` with `actions`: a head at
    /// the version before moves forward without reading the commit back.
    pub fn committed(&self, name: &str, version: i64, actions: &[Action]) {
        let Some(cached) = self.entry(name) else {
            return;
        };
        if cached.version != version - 1 {
            return;
        }
        let mut head = (*cached).clone();
        head.apply(version, actions);
        self.store(name, head);
    }

    /// The cached head, checked against `table`'s id, at least at its loaded version and
    /// carried forward to the latest commit.
    async fn advanced(&self, table: &mut DeltaTable, name: &str) -> Result<Head> {
        let table_id = table_id(table, name)?;
        let mut head = match self.entry(name) {
            Some(cached) if cached.table_id == table_id => (*cached).clone(),
            _ => Head::loaded(table, name)?,
        };
        if head.version < log::version(table) {
            // This snapshot is newer than anything seen here: start from it.
            head = Head::loaded(table, name)?;
        }
        self.read_forward(table, name, &mut head).await?;
        Ok(head)
    }

    /// Applies the commits after `head` up to the latest one.
    async fn read_forward(
        &self,
        table: &mut DeltaTable,
        name: &str,
        head: &mut Head,
    ) -> Result<()> {
        let latest = log::latest_version(table, name, head.version).await?;
        for version in head.version + 1..=latest {
            match changes::commit_actions(table, name, version).await? {
                Some(actions) => head.apply(version, &actions),
                None => {
                    tracing::info!(
                        table = name,
                        version,
                        "commit entry gone; reloading the table"
                    );
                    log::refresh(table, name).await?;
                    *head = Head::loaded(table, name)?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn entry(&self, name: &str) -> Option<Arc<Head>> {
        self.lock().get(name).cloned()
    }

    /// Keeps `head` (and returns it) unless the entry already describes a later version of
    /// the same table. The caller's answer is always the head it computed: versions and
    /// files read at one version, never mixed with another task's newer entry.
    fn store(&self, name: &str, head: Head) -> Arc<Head> {
        let head = Arc::new(head);
        let mut tables = self.lock();
        let newer = tables
            .get(name)
            .is_some_and(|c| c.table_id == head.table_id && c.version > head.version);
        if !newer {
            tables.insert(name.to_string(), head.clone());
        }
        head
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Head>>> {
        // A panic while holding the lock cannot leave an entry half-written (entries are
        // replaced whole), so a poisoned map is still exact.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn table_id(table: &DeltaTable, name: &str) -> Result<String> {
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    Ok(snapshot.metadata().id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::{CommitEnv, CommitOutcome, TxnUpdate, WriteMode, commit};
    use crate::testing::TestTable;

    /// Two writers of one table, each with its own cache (two workers): each sees the
    /// other's txns, and agrees with delta-rs's own replay at every version.
    #[tokio::test]
    async fn commits_see_foreign_txns_and_agree_with_log_replay() {
        let (env_a, env_b) = (CommitEnv::default(), CommitEnv::default());
        let t = TestTable::create("bronze.t", &env_a).await;
        let mut a = t.store.open("bronze.t").await.unwrap();
        let mut b = t.store.open("bronze.t").await.unwrap();
        let [p, q, r] = [0, 1, 2].map(|partition| AppId::source("pl", "events", partition));
        let put = async |table: &mut DeltaTable, env: &CommitEnv, app: &AppId, from, to| {
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
        assert!(landed(put(&mut a, &env_a, &p, None, 10).await));
        assert!(landed(put(&mut a, &env_a, &p, Some(10), 20).await));
        // Writer b, which last saw p at 10, must not commit over a's 20.
        let stale = put(&mut b, &env_b, &p, Some(10), 30).await;
        assert!(matches!(stale, CommitOutcome::AlreadyCommitted));
        // b takes over from 20; a, whose cache last saw its own 20, must see b's 30.
        assert!(landed(put(&mut b, &env_b, &p, Some(20), 30).await));
        assert!(landed(put(&mut b, &env_b, &q, None, 5).await));
        let stale = put(&mut a, &env_a, &p, Some(20), 40).await;
        assert!(matches!(stale, CommitOutcome::AlreadyCommitted));

        for (table, env) in [(&mut a, &env_a), (&mut b, &env_b)] {
            log::refresh(table, "bronze.t").await.unwrap();
            let (_, cached) = env
                .heads
                .txns(table, "bronze.t", &[p.clone(), q.clone(), r.clone()])
                .await
                .unwrap();
            let replayed = vec![
                txn_version(table, &p).await.unwrap(),
                txn_version(table, &q).await.unwrap(),
                txn_version(table, &r).await.unwrap(),
            ];
            assert_eq!(cached, replayed);
            assert_eq!(cached, vec![Some(30), Some(5), None]);
        }
    }
}
