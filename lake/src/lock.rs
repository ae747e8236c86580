//! The table commit lock (docs/exactly-once.md): serializes the *log writes* of one table across
//! workers, and numbers its holders.
//!
//! A holder creates `/smelter/locks/<table>` bound to a fresh lease; the key's create
//! revision is the holder's **epoch**, higher for every later holder. Every commit carries
//! `txn(appId = "smelter/epoch", version = epoch)`, where the epoch is raised above the
//! latest one in the refreshed snapshot if the store's revisions ever started over (an
//! in-process store after a restart, a rebuilt etcd). A commit under the lock is written as
//! exactly the version after the head it read under the lock ([`crate::commit`]); if that
//! version is taken, another holder wrote and the attempt fails (on delta-rs's own commit
//! path the shared appId makes its conflict checker refuse the same). So a writer paused
//! past its lease (its lock taken over) either lands before its successor's first commit
//! or not at all, never on a stale base, and epochs strictly increase in log order
//! (`smelter verify` checks it). Data files are written
//! before the lock is taken; only the log write happens under it.
//!
//! Correctness never depends on the lock alone: the txn compare-and-set of
//! [`crate::commit::commit`] decides what is already in the table. The lock turns racing
//! commits (and their retries) into a queue, and fences stale writers.
//!
//! Lifetime: a [`HeldLock`] owns the task that keeps its lease alive. Released, the key is
//! deleted and the lease revoked at once; dropped without a release (a commit future
//! dropped or panicking mid-way), the keep-alive task is aborted with it, so the lease — and
//! the lock — lapses within its TTL instead of living as long as the process.

use std::sync::Arc;
use std::time::Duration;

use smelter_common::store::{CoordinationStore, Expect, Guard, LeaseId, keys};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::{LakeError, Result};

/// How long a writer waits for another's commit lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Hands out commit locks on one coordination store.
pub struct CommitArbiter {
    store: Arc<dyn CoordinationStore>,
    ttl: Duration,
    /// Who holds a lock, as stored in its key (worker identity and pid, for operators).
    holder: String,
    /// Commit attempts refused because their lock had lapsed (see [`Self::fenced`]).
    fenced: std::sync::atomic::AtomicU64,
}

/// A held commit lock; release it with [`CommitArbiter::release`]. Dropping it stops the
/// lease's keep-alive (see the module docs).
pub struct HeldLock {
    guard: Guard,
    lease: LeaseId,
    /// The writer epoch: the lock key's create revision.
    pub epoch: i64,
    _keeper: AbortOnDropHandle<()>,
}

impl HeldLock {
    /// Proof of holding the lock: writes guarded by it land only while it is held.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }
}

impl CommitArbiter {
    /// Who takes the locks (host, process, Flight address), as stored in the lock keys and
    /// in each commit's `commitInfo` (`smelter.writer`).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Locks on `store`, each bound to a lease of `ttl` kept alive while held.
    pub fn new(store: Arc<dyn CoordinationStore>, ttl: Duration, holder: String) -> Self {
        Self {
            store,
            ttl,
            holder,
            fenced: Default::default(),
        }
    }

    /// How many commit attempts under these locks were refused because the lock had
    /// lapsed while the writer held it — a successor took the table meanwhile, and the
    /// writer decided again from the log. Each is a fence doing its job.
    pub fn fenced(&self) -> u64 {
        self.fenced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one refused attempt (see [`Self::fenced`]).
    pub fn count_fenced(&self) {
        self.fenced
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The coordination store the locks live in.
    pub fn store(&self) -> &dyn CoordinationStore {
        self.store.as_ref()
    }

    /// Takes the lock of `table`, waiting at most `wait` for the current holder.
    #[tracing::instrument(name = "lock_wait", skip(self, wait), level = "info")]
    pub async fn acquire(&self, table: &str, wait: Duration) -> Result<HeldLock> {
        let key = keys::commit_lock(table);
        let deadline = Instant::now() + wait;
        let mut lease = self.store.grant_lease(self.ttl).await?;
        let mut pause = Duration::from_millis(2);
        loop {
            match self
                .store
                .put_if(
                    &key,
                    Expect::Absent,
                    self.holder.clone().into_bytes(),
                    Some(lease),
                )
                .await
            {
                Ok(Some(epoch)) => {
                    let keeper = AbortOnDropHandle::new(tokio::spawn(keep_alive(
                        self.store.clone(),
                        lease,
                        self.ttl,
                    )));
                    return Ok(HeldLock {
                        guard: Guard {
                            key,
                            revision: epoch,
                        },
                        lease,
                        epoch,
                        _keeper: keeper,
                    });
                }
                Ok(None) => {}
                // The lease ran out while we waited: take a fresh one and keep waiting.
                Err(smelter_common::Error::LeaseNotFound { .. }) => {
                    lease = self.store.grant_lease(self.ttl).await?;
                    continue;
                }
                Err(error) => {
                    let _ = self.store.revoke_lease(lease).await;
                    return Err(error.into());
                }
            }
            if Instant::now() >= deadline {
                let _ = self.store.revoke_lease(lease).await;
                return Err(LakeError::CommitConflict {
                    table: table.to_string(),
                    message: format!("commit lock still held by another writer after {wait:?}"),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Lets go of a lock (deleting the key only if it is still ours).
    pub async fn release(&self, held: HeldLock) {
        let _ = self
            .store
            .delete_guarded(&held.guard, &held.guard.key)
            .await;
        let _ = self.store.revoke_lease(held.lease).await;
    }
}

/// Renews `lease` every third of its TTL until a renewal fails (lost: a successor may take
/// the lock, and its higher epoch fences this holder) or the [`HeldLock`] owning this task
/// is released or dropped. Each renewal gets one TTL to answer: a store that hangs must not
/// leave the lock looking kept.
async fn keep_alive(store: Arc<dyn CoordinationStore>, lease: LeaseId, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        match tokio::time::timeout(ttl, store.keep_alive(lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use smelter_common::store::MemoryStore;

    use super::*;

    /// A lock whose holder's future is dropped mid-way (no release) is free again within
    /// the lease TTL: the keep-alive ended with the guard. Before, the detached keep-alive
    /// kept it until the process exited.
    #[tokio::test]
    async fn a_dropped_holder_frees_the_lock_within_the_ttl() {
        let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
        let ttl = Duration::from_millis(500);
        let arbiter = CommitArbiter::new(store.clone(), ttl, "test".into());
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let holder = {
            let arbiter = CommitArbiter::new(store.clone(), ttl, "holder".into());
            tokio::spawn(async move {
                let _held = arbiter.acquire("silver.t", LOCK_WAIT).await.expect("lock");
                let _ = held_tx.send(());
                // A commit that never finishes: the task is aborted below.
                std::future::pending::<()>().await;
            })
        };
        held_rx.await.expect("the holder took the lock");
        // The lock is held (and kept alive) for well past its TTL while the holder lives.
        let taken = arbiter.acquire("silver.t", ttl * 4).await;
        assert!(
            matches!(taken, Err(LakeError::CommitConflict { .. })),
            "the lock must still be held while its holder lives"
        );
        holder.abort();
        let _ = holder.await;
        let dropped = Instant::now();
        let held = arbiter
            .acquire("silver.t", ttl * 3)
            .await
            .expect("lock free after the holder was dropped");
        assert!(
            dropped.elapsed() <= ttl * 2,
            "freed after {:?}, TTL {ttl:?}",
            dropped.elapsed()
        );
        arbiter.release(held).await;
    }
}
