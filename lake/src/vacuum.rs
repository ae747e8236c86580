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

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use datafusion::object_store::ObjectStoreExt;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use futures::TryStreamExt;

use crate::commit::CommitEnv;
use crate::{LakeError, Result, changes};

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

/// Deletes the files removed from `table` more than `retention` before `now_ms`, at or
/// before version `as_of` (the latest when `None`), and not live at the latest version
/// (see the module docs). A one-off vacuum: [`Tombstones::vacuum`] keeps what it read for
/// the next.
pub async fn vacuum(
    table: &mut DeltaTable,
    name: &str,
    retention: Duration,
    as_of: Option<i64>,
    now_ms: i64,
    env: &CommitEnv,
) -> Result<Vacuum> {
    Tombstones::default()
        .vacuum(table, name, retention, as_of, now_ms, env)
        .await
}

/// One file a commit took out and no later commit put back.
#[derive(Debug, Clone)]
struct Tombstone {
    /// The version that removed it; `None` for those of the snapshot the tombstones
    /// started from (removed at or before [`Tombstones::base`]).
    version: Option<i64>,
    /// When it was removed, milliseconds since the epoch.
    removed_ms: i64,
    size: Option<i64>,
}

/// The files a table's commits removed and no vacuum has deleted yet, followed from the
/// commit entries (see the module docs); kept by the maintenance task from one vacuum of a
/// table to the next.
#[derive(Debug, Default)]
pub struct Tombstones {
    /// `None` until the first vacuum starts them from a snapshot.
    state: Option<Followed>,
}

#[derive(Debug)]
struct Followed {
    table_id: String,
    /// The snapshot version they started from.
    base: i64,
    /// The last commit entry read.
    version: i64,
    /// By path (decoded, as the heads keep them).
    removed: HashMap<String, Tombstone>,
}

impl Tombstones {
    /// Deletes the files removed more than `retention` before `now_ms`, at or before
    /// version `as_of` (the latest when `None`), and not live at the latest version; reads
    /// only the commit entries since the last call.
    pub async fn vacuum(
        &mut self,
        table: &mut DeltaTable,
        name: &str,
        retention: Duration,
        as_of: Option<i64>,
        now_ms: i64,
        env: &CommitEnv,
    ) -> Result<Vacuum> {
        let head = env.heads.head(table, name).await?;
        let latest = head.version();
        let as_of = as_of.map_or(latest, |v| v.min(latest));
        let followed = self.follow(table, name, as_of, latest).await?;
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff_ms = now_ms.saturating_sub(retention_ms);
        let due: Vec<(String, Tombstone)> = followed
            .removed
            .iter()
            .filter(|(path, t)| {
                t.removed_ms < cutoff_ms
                    && t.version.map_or(followed.base <= as_of, |v| v <= as_of)
                    && head.file(path).is_none()
            })
            .map(|(path, t)| (path.clone(), t.clone()))
            .collect();
        let store = table.object_store();
        let mut outcome = Vacuum::default();
        let mut deleted = Vec::new();
        for (path, tombstone) in due {
            let location = deltalake::Path::from_url_path(&path)
                .map_err(|e| LakeError::generic(name, format!("bad path {path}: {e}")))?;
            let size = match tombstone.size {
                Some(size) => size.max(0) as u64,
                None => match store.head(&location).await {
                    Ok(meta) => meta.size,
                    Err(deltalake::ObjectStoreError::NotFound { .. }) => {
                        // Another vacuum got there first.
                        followed.removed.remove(&path);
                        continue;
                    }
                    Err(e) => return Err(LakeError::delta(name, e.into())),
                },
            };
            match store.delete(&location).await {
                Ok(()) => {
                    outcome.files_deleted += 1;
                    outcome.bytes_deleted += size;
                    deleted.push((path.clone(), tombstone.version));
                }
                // Another vacuum got there first (a local store's delete of a missing
                // file fails so; S3's succeeds, and counts it).
                Err(deltalake::ObjectStoreError::NotFound { .. }) => {}
                Err(e) => return Err(LakeError::delta(name, e.into())),
            }
            followed.removed.remove(&path);
        }
        if !deleted.is_empty() {
            outcome.readable_from = readable_from(table, name, followed.base, &deleted).await?;
            tracing::info!(
                table = name,
                files = outcome.files_deleted,
                bytes = outcome.bytes_deleted,
                readable_from = ?outcome.readable_from,
                "vacuumed"
            );
        }
        Ok(outcome)
    }

    /// The tombstones up to `latest`: carried forward from the last call through the
    /// commit entries since, or started from a snapshot at `as_of` (the first time, after
    /// a missing entry, or for another table id).
    async fn follow(
        &mut self,
        table: &DeltaTable,
        name: &str,
        as_of: i64,
        latest: i64,
    ) -> Result<&mut Followed> {
        if let Some(followed) = &mut self.state
            && followed.read_forward(table, name, latest).await?
        {
            return Ok(self.state.as_mut().expect("followed above"));
        }
        let mut followed = Followed::at(table, name, as_of).await?;
        if !followed.read_forward(table, name, latest).await? {
            return Err(LakeError::generic(
                name,
                format!(
                    "the log changed while vacuum read it from version {as_of}; trying again next time"
                ),
            ));
        }
        Ok(self.state.insert(followed))
    }
}

impl Followed {
    /// The tombstones of `table`'s snapshot at `version`.
    async fn at(table: &DeltaTable, name: &str, version: i64) -> Result<Self> {
        let delta = |e| LakeError::delta(name, e);
        let mut at = table.clone();
        if crate::log::version(&at) != version {
            at.load_version(version as u64).await.map_err(delta)?;
        }
        let snapshot = at.snapshot().map_err(delta)?;
        let table_id = snapshot.metadata().id().to_string();
        let removed = snapshot
            .all_tombstones(at.log_store().as_ref())
            .map_ok(|t| {
                let tombstone = Tombstone {
                    version: None,
                    removed_ms: t.deletion_timestamp().unwrap_or(0),
                    size: t.size(),
                };
                (t.path().into_owned(), tombstone)
            })
            .try_collect()
            .await
            .map_err(delta)?;
        Ok(Self {
            table_id,
            base: version,
            version,
            removed,
        })
    }

    /// Applies the commit entries after the last one read up to `latest`; `false` when one
    /// is missing or belongs to another table (start over).
    async fn read_forward(&mut self, table: &DeltaTable, name: &str, latest: i64) -> Result<bool> {
        for version in self.version + 1..=latest {
            let Some(actions) = changes::commit_actions(table, name, version).await? else {
                return Ok(false);
            };
            for action in actions {
                match action {
                    Action::Remove(remove) => {
                        let tombstone = Tombstone {
                            version: Some(version),
                            removed_ms: remove.deletion_timestamp.unwrap_or(0),
                            size: remove.size,
                        };
                        self.removed.insert(remove.path, tombstone);
                    }
                    // Put back (a restore): live again, until a later commit takes it out.
                    Action::Add(add) => {
                        self.removed.remove(&add.path);
                    }
                    Action::Metadata(metadata) if metadata.id() != self.table_id => {
                        return Ok(false);
                    }
                    _ => {}
                }
            }
            self.version = version;
        }
        Ok(true)
    }
}

/// The version time travel can read from once `deleted` are gone: the version that
/// removed the last of them (a version at or after it no longer needs any). Those removed
/// before the snapshot the tombstones started from (`base`) are looked up in the log,
/// newest entry first, as far as it goes.
async fn readable_from(
    table: &DeltaTable,
    name: &str,
    base: i64,
    deleted: &[(String, Option<i64>)],
) -> Result<Option<i64>> {
    let mut last = deleted.iter().filter_map(|(_, v)| *v).max();
    let mut unknown: HashSet<&str> = deleted
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(p, _)| p.as_str())
        .collect();
    let mut version = base;
    while !unknown.is_empty() && version >= 0 && last.is_none_or(|l| l < version) {
        let Some(actions) = changes::commit_actions(table, name, version).await? else {
            break;
        };
        for action in &actions {
            if let Action::Remove(remove) = action
                && unknown.remove(remove.path.as_str())
            {
                last = last.max(Some(version));
            }
        }
        version -= 1;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::commit::WriteMode;
    use crate::compact::{CompactOptions, compact};
    use crate::testing::{TestTable, commit_for_test};

    /// Long after every file was removed, whatever the retention.
    const LATER: i64 = i64::MAX / 2;

    /// A table of three one-row commits (versions 1 to 3) compacted into one file at
    /// version 4: the three files removed there, their paths.
    async fn compacted(test: &TestTable, env: &CommitEnv) -> (DeltaTable, Vec<String>) {
        let mut table = test.store.open("t").await.unwrap();
        for n in 0..3 {
            commit_for_test(&mut table, "t", test.batch(n), WriteMode::Append, &[]).await;
        }
        let before: Vec<String> = env
            .heads
            .head(&mut table, "t")
            .await
            .unwrap()
            .files()
            .map(|f| f.path().to_string())
            .collect();
        let options = CompactOptions::default();
        let done = compact(&mut table, "t", options, env).await.unwrap();
        assert_eq!((done.version, done.files_removed), (Some(4), 3));
        (table, before)
    }

    fn on_disk(test: &TestTable, paths: &[String]) -> usize {
        let root = test.store.path("t");
        paths.iter().filter(|p| root.join(p).exists()).count()
    }

    #[tokio::test]
    async fn files_removed_after_what_readers_consumed_are_kept_however_old() {
        let env = CommitEnv::default();
        let test = TestTable::create("t", &env).await;
        let (mut table, removed) = compacted(&test, &env).await;
        let mut tombstones = Tombstones::default();
        let zero = Duration::ZERO;

        // Readers have consumed version 3: the files version 4 removed are still theirs.
        let kept = tombstones
            .vacuum(&mut table, "t", zero, Some(3), LATER, &env)
            .await
            .unwrap();
        assert_eq!(kept, Vacuum::default());
        assert_eq!(on_disk(&test, &removed), 3);

        // Not yet past the retention (they were removed moments ago, by the clock the
        // commit read; an hour before that is before any of them).
        let young = tombstones
            .vacuum(&mut table, "t", Duration::from_secs(3_600), None, 0, &env)
            .await
            .unwrap();
        assert_eq!(young.files_deleted, 0);

        // Once every reader is at version 4 and the retention has passed: deleted, and
        // time travel reads from version 4 on. The same tombstones went on from the
        // commits after the last vacuum's.
        let gone = tombstones
            .vacuum(&mut table, "t", zero, Some(4), LATER, &env)
            .await
            .unwrap();
        assert_eq!((gone.files_deleted, gone.readable_from), (3, Some(4)));
        assert!(gone.bytes_deleted > 0);
        assert_eq!(on_disk(&test, &removed), 0);
        // Nothing is deleted twice.
        let again = tombstones
            .vacuum(&mut table, "t", zero, None, LATER, &env)
            .await
            .unwrap();
        assert_eq!(again, Vacuum::default());
        // The table still reads whole.
        let reopened = test.store.open("t").await.unwrap();
        assert_eq!(crate::log::row_count(&reopened), 3);
    }

    #[tokio::test]
    async fn a_first_vacuum_starts_from_the_tombstones_of_a_snapshot() {
        let env = CommitEnv::default();
        let test = TestTable::create("t", &env).await;
        let (_, removed) = compacted(&test, &env).await;
        // Another process (a restarted maintenance task) whose table opens after the
        // compaction: the removals are in its snapshot, not in commits it reads.
        let mut table = test.store.open("t").await.unwrap();
        let done = vacuum(&mut table, "t", Duration::ZERO, None, LATER, &env)
            .await
            .unwrap();
        assert_eq!((done.files_deleted, done.readable_from), (3, Some(4)));
        assert_eq!(on_disk(&test, &removed), 0);
    }

    #[tokio::test]
    async fn files_put_back_are_never_deleted() {
        let env = CommitEnv::default();
        let test = TestTable::create("t", &env).await;
        let (mut table, removed) = compacted(&test, &env).await;
        let mut tombstones = Tombstones::default();
        let zero = Duration::ZERO;
        // Followed from before the restore on.
        tombstones
            .vacuum(&mut table, "t", zero, Some(3), LATER, &env)
            .await
            .unwrap();
        // Back to version 3: the three files are live again, the compacted one is out.
        let restored = crate::restore::restore(&mut table, "t", 3, &BTreeMap::new(), &env)
            .await
            .unwrap();
        assert_eq!(restored.version, Some(5));
        let done = tombstones
            .vacuum(&mut table, "t", zero, None, LATER, &env)
            .await
            .unwrap();
        assert_eq!((done.files_deleted, done.readable_from), (1, Some(5)));
        assert_eq!(on_disk(&test, &removed), 3);
        // A fresh start from the latest snapshot agrees: nothing left to delete.
        let fresh = vacuum(&mut table, "t", zero, None, LATER, &env)
            .await
            .unwrap();
        assert_eq!(fresh, Vacuum::default());
        let reopened = test.store.open("t").await.unwrap();
        assert_eq!(crate::log::row_count(&reopened), 3);
    }
}
