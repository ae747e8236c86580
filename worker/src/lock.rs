//! The table commit lock (design.md §5.4): serializes the *log writes* of one table across
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

use std::sync::Arc;
use std::time::Duration;

use smelter_common::store::{CoordinationStore, Expect, Guard, LeaseId, keys};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Result, WorkerError};

/// The txn appId of the writer epoch.
pub const EPOCH_APP_ID: &str = "smelter/epoch";

/// Hands out commit locks on one coordination store.
pub struct CommitArbiter {
    store: Arc<dyn CoordinationStore>,
    ttl: Duration,
    /// Who holds a lock, as stored in its key (worker identity and pid, for operators).
    holder: String,
}

/// A held commit lock; release it with [`CommitArbiter::release`].
pub struct HeldLock {
    guard: Guard,
    lease: LeaseId,
    /// The writer epoch: the lock key's create revision.
    pub epoch: i64,
    keeper: CancellationToken,
}

impl CommitArbiter {
    /// Locks on `store`, each bound to a lease of `ttl` kept alive while held.
    pub fn new(store: Arc<dyn CoordinationStore>, ttl: Duration, holder: String) -> Self {
        Self { store, ttl, holder }
    }

    /// Takes the lock of `table`, waiting at most `wait` for the current holder.
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
                    let keeper = CancellationToken::new();
                    tokio::spawn(keep_alive(
                        self.store.clone(),
                        lease,
                        self.ttl,
                        keeper.clone(),
                    ));
                    return Ok(HeldLock {
                        guard: Guard {
                            key,
                            revision: epoch,
                        },
                        lease,
                        epoch,
                        keeper,
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
                return Err(WorkerError::CommitConflict {
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
        held.keeper.cancel();
        let _ = self
            .store
            .delete_guarded(&held.guard, &held.guard.key)
            .await;
        let _ = self.store.revoke_lease(held.lease).await;
    }
}

async fn keep_alive(
    store: Arc<dyn CoordinationStore>,
    lease: LeaseId,
    ttl: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if store.keep_alive(lease).await.is_err() {
                    // Lost: a successor may take the lock; its higher epoch fences us.
                    return;
                }
            }
        }
    }
}
