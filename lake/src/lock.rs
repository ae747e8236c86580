//! The table commit lock (docs/exactly-once.md): serializes the *log writes* of one table across
//! workers, and numbers its holders.
//!
//! A holder creates `/smelter/locks/<table>` bound to its arbiter's lease; the key's create
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
//! **One lease per arbiter.** Every lock an arbiter (a worker process) takes is bound to
//! one lease, granted at its first lock and renewed every third of its TTL by the
//! arbiter's session task. A lock then costs two store round trips (create, guarded
//! delete) instead of four (grant, create, delete, revoke): at a quarter-second cadence a
//! worker commits tens of times a second whatever the event rate. The lease is what
//! fences: if the process stalls past the TTL, the lease lapses and takes every lock of
//! the process with it, exactly as a lock's own lease did. A lease found lapsed is
//! replaced by a fresh one at the next lock.
//!
//! Lifetime: a [`HeldLock`] released deletes its key at once (guarded, so only if it is
//! still ours). One dropped without a release (a commit future dropped or panicking
//! mid-way) hands its key to the session task, which deletes it; a release whose delete
//! failed does the same, and the task retries on every renewal. Neither can outlive the
//! lease, and the lease cannot outlive the arbiter: dropping the arbiter aborts its
//! session task, so the lease — and every lock under it — lapses within its TTL instead
//! of living as long as the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use smelter_common::store::{CoordinationStore, Expect, Guard, LeaseId, keys};
use tokio::sync::mpsc;
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
    /// The lease every lock is bound to, and the task keeping it; granted at the first
    /// lock, replaced when found lapsed.
    session: tokio::sync::Mutex<Option<Session>>,
}

/// One lease of an arbiter and the task that renews it and deletes orphaned locks.
struct Session {
    lease: LeaseId,
    /// Locks to delete: dropped without a release, or whose release failed.
    orphans: mpsc::UnboundedSender<Guard>,
    /// False once the task stopped renewing (a renewal failed): the lease lapses, or has.
    alive: Arc<AtomicBool>,
    _task: AbortOnDropHandle<()>,
}

/// A held commit lock; release it with [`CommitArbiter::release`]. Dropping it instead
/// has the arbiter's session task delete it (see the module docs).
pub struct HeldLock {
    guard: Guard,
    /// The writer epoch: the lock key's create revision.
    pub epoch: i64,
    /// Where the lock goes if dropped unreleased; `None` once released.
    orphans: Option<mpsc::UnboundedSender<Guard>>,
}

impl HeldLock {
    /// Proof of holding the lock: writes guarded by it land only while it is held.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(orphans) = self.orphans.take() {
            // The session task is gone only if its lease is, and the key with it.
            let _ = orphans.send(self.guard.clone());
        }
    }
}

impl CommitArbiter {
    /// Who takes the locks (host, process, Flight address), as stored in the lock keys and
    /// in each commit's `commitInfo` (`smelter.writer`).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Locks on `store`, bound to a lease of `ttl` kept alive while the arbiter lives.
    pub fn new(store: Arc<dyn CoordinationStore>, ttl: Duration, holder: String) -> Self {
        Self {
            store,
            ttl,
            holder,
            fenced: Default::default(),
            session: Default::default(),
        }
    }

    /// How many commit attempts under these locks were refused because the lock had
    /// lapsed while the writer held it — a successor took the table meanwhile, and the
    /// writer decided again from the log. Each is a fence doing its job.
    pub fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Counts one refused attempt (see [`Self::fenced`]).
    pub fn count_fenced(&self) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
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
        let mut pause = Duration::from_millis(2);
        loop {
            let (lease, orphans) = self.lease().await?;
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
                    return Ok(HeldLock {
                        guard: Guard {
                            key,
                            revision: epoch,
                        },
                        epoch,
                        orphans: Some(orphans),
                    });
                }
                Ok(None) => {}
                // The lease lapsed (the process stalled, or the store lost it): take a
                // fresh one and try again at once.
                Err(smelter_common::Error::LeaseNotFound { .. }) => {
                    self.lease_lost(lease).await;
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
            if Instant::now() >= deadline {
                return Err(LakeError::CommitConflict {
                    table: table.to_string(),
                    message: format!("commit lock still held by another writer after {wait:?}"),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Lets go of a lock (deleting the key only if it is still ours). If the store cannot
    /// be reached, the session task keeps trying; the lease bounds how long the key stays.
    pub async fn release(&self, mut held: HeldLock) {
        let orphans = held.orphans.take();
        match self
            .store
            .delete_guarded(&held.guard, &held.guard.key)
            .await
        {
            Ok(()) | Err(smelter_common::Error::GuardLost { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, key = %held.guard.key, "commit lock release failed; retrying in the background");
                if let Some(orphans) = orphans {
                    let _ = orphans.send(held.guard.clone());
                }
            }
        }
    }

    /// The current lease, granting one (and starting its session task) if there is none
    /// or the last one stopped being renewed.
    async fn lease(&self) -> Result<(LeaseId, mpsc::UnboundedSender<Guard>)> {
        let mut session = self.session.lock().await;
        if let Some(current) = session.as_ref()
            && current.alive.load(Ordering::Acquire)
        {
            return Ok((current.lease, current.orphans.clone()));
        }
        let lease = self.store.grant_lease(self.ttl).await?;
        let (orphans, found) = mpsc::unbounded_channel();
        let alive = Arc::new(AtomicBool::new(true));
        let task = AbortOnDropHandle::new(tokio::spawn(keep_session(
            self.store.clone(),
            lease,
            self.ttl,
            found,
            alive.clone(),
        )));
        *session = Some(Session {
            lease,
            orphans: orphans.clone(),
            alive,
            _task: task,
        });
        Ok((lease, orphans))
    }

    /// Forgets `lease` if it is still the current one (found lapsed by a lock attempt).
    async fn lease_lost(&self, lease: LeaseId) {
        let mut session = self.session.lock().await;
        if session.as_ref().is_some_and(|s| s.lease == lease) {
            *session = None;
        }
    }
}

/// Renews `lease` every third of its TTL, and deletes the locks handed to it, until a
/// renewal fails (lost: a successor may take the locks, and its higher epochs fence this
/// arbiter's writers) or the arbiter owning this task is dropped. Each renewal gets one
/// TTL to answer: a store that hangs must not leave the locks looking kept. A delete that
/// fails is retried at the next renewal; the keys lapse with the lease in any case.
async fn keep_session(
    store: Arc<dyn CoordinationStore>,
    lease: LeaseId,
    ttl: Duration,
    mut orphans: mpsc::UnboundedReceiver<Guard>,
    alive: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    let mut pending: Vec<Guard> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match tokio::time::timeout(ttl, store.keep_alive(lease)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => {
                        alive.store(false, Ordering::Release);
                        return;
                    }
                }
                let mut retry = Vec::new();
                for guard in pending.drain(..) {
                    if !delete_orphan(store.as_ref(), &guard).await {
                        retry.push(guard);
                    }
                }
                pending = retry;
            }
            Some(guard) = orphans.recv() => {
                if !delete_orphan(store.as_ref(), &guard).await {
                    pending.push(guard);
                }
            }
        }
    }
}

/// Deletes a lock nobody released; false if the store could not be reached.
async fn delete_orphan(store: &dyn CoordinationStore, guard: &Guard) -> bool {
    match store.delete_guarded(guard, &guard.key).await {
        Ok(()) | Err(smelter_common::Error::GuardLost { .. }) => true,
        Err(error) => {
            tracing::warn!(%error, key = %guard.key, "deleting an unreleased commit lock failed; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests;
