//! The commit lock's lifetimes: a lock lives while its holder does and no longer, every
//! lock of an arbiter shares one lease, and a lapsed lease is replaced.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;

use async_trait::async_trait;
use smelter_common::store::{KeyValue, MemoryStore};

use super::*;

/// A real in-memory store that counts the calls made to it, and can be told to fail the
/// next guarded deletes as an unreachable store would.
#[derive(Default)]
struct Counted {
    inner: MemoryStore,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    failing_deletes: AtomicU32,
}

impl Counted {
    fn count(&self, call: &'static str) {
        *self.calls.lock().unwrap().entry(call).or_default() += 1;
    }

    fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl CoordinationStore for Counted {
    async fn grant_lease(&self, ttl: Duration) -> smelter_common::Result<LeaseId> {
        self.count("grant_lease");
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> smelter_common::Result<()> {
        self.count("keep_alive");
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> smelter_common::Result<()> {
        self.count("revoke_lease");
        self.inner.revoke_lease(lease).await
    }
    async fn get(&self, key: &str) -> smelter_common::Result<Option<KeyValue>> {
        self.count("get");
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> smelter_common::Result<Vec<KeyValue>> {
        self.count("list");
        self.inner.list(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> smelter_common::Result<i64> {
        self.count("put");
        self.inner.put(key, value, lease).await
    }
    async fn put_if(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> smelter_common::Result<Option<i64>> {
        self.count("put_if");
        self.inner.put_if(key, expect, value, lease).await
    }
    async fn delete(&self, key: &str) -> smelter_common::Result<()> {
        self.count("delete");
        self.inner.delete(key).await
    }
    async fn put_guarded(
        &self,
        guard: &Guard,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> smelter_common::Result<i64> {
        self.count("put_guarded");
        self.inner.put_guarded(guard, key, value, lease).await
    }
    async fn delete_guarded(&self, guard: &Guard, key: &str) -> smelter_common::Result<()> {
        self.count("delete_guarded");
        let failing = self
            .failing_deletes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(smelter_common::Error::StoreUnavailable {
                message: "connection refused (test)".into(),
            });
        }
        self.inner.delete_guarded(guard, key).await
    }
    async fn create_guarded(
        &self,
        guard: &Guard,
        key: &str,
        value: Vec<u8>,
    ) -> smelter_common::Result<Option<i64>> {
        self.count("create_guarded");
        self.inner.create_guarded(guard, key, value).await
    }
}

/// Polls `check` every 10 ms until it holds or `within` has passed.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The lease the arbiter's locks are bound to now, if it has one.
async fn current_lease(arbiter: &CommitArbiter) -> Option<LeaseId> {
    arbiter.session.lock().await.as_ref().map(|s| s.lease)
}

/// An arbiter dropped with a lock it never released (its worker's commit future and
/// the arbiter itself gone, as when the task is aborted) frees the lock within the lease
/// TTL: the session task that renewed the lease ended with the arbiter.
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
            // A commit that never finishes: the task is aborted below, dropping the lock
            // and its arbiter together.
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

/// A lock dropped unreleased while its arbiter lives (a commit future dropped mid-way) is
/// deleted by the session task, not left for the lease to take: the lease lives on, so
/// the arbiter's other locks are still held.
#[tokio::test]
async fn a_lock_dropped_unreleased_is_deleted_while_the_lease_lives() {
    let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
    let ttl = Duration::from_millis(300);
    let mine = CommitArbiter::new(store.clone(), ttl, "mine".into());
    let other = CommitArbiter::new(store.clone(), ttl, "other".into());
    let kept = mine.acquire("gold.kept", LOCK_WAIT).await.unwrap();
    let dropped = mine.acquire("silver.t", LOCK_WAIT).await.unwrap();
    let lease = current_lease(&mine).await;
    drop(dropped);
    let freed = other
        .acquire("silver.t", ttl * 10)
        .await
        .expect("the dropped lock is deleted");
    other.release(freed).await;
    // Several TTLs on, the lease is the same one and still holds the other lock.
    tokio::time::sleep(ttl * 3).await;
    assert!(matches!(
        other.acquire("gold.kept", ttl / 3).await,
        Err(LakeError::CommitConflict { .. })
    ));
    assert_eq!(current_lease(&mine).await, lease);
    mine.release(kept).await;
}

/// Every lock of an arbiter is bound to one lease, granted once: a lock taken and
/// released costs two store calls (create, guarded delete), not four.
#[tokio::test]
async fn locks_share_one_lease_and_cost_two_store_calls() {
    let counted = Arc::new(Counted::default());
    let store: Arc<dyn CoordinationStore> = counted.clone();
    let arbiter = CommitArbiter::new(store, Duration::from_secs(30), "w".into());
    let tables = ["bronze.events", "silver.events", "gold.hourly"];
    let mut epochs = Vec::new();
    for _ in 0..10 {
        for table in tables {
            let held = arbiter.acquire(table, LOCK_WAIT).await.unwrap();
            epochs.push(held.epoch);
            arbiter.release(held).await;
        }
    }
    let calls = counted.calls();
    assert_eq!(calls.get("grant_lease"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("put_if"), Some(&30), "{calls:?}");
    assert_eq!(calls.get("delete_guarded"), Some(&30), "{calls:?}");
    assert_eq!(calls.get("revoke_lease"), None, "{calls:?}");
    assert!(
        epochs.windows(2).all(|w| w[0] < w[1]),
        "every holder gets a higher epoch: {epochs:?}"
    );
}

/// A lease that lapsed (the process stalled past its TTL; here revoked behind the
/// arbiter's back) is replaced at the next lock, which still gets a higher epoch.
#[tokio::test]
async fn a_lapsed_lease_is_replaced_at_the_next_lock() {
    let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
    let arbiter = CommitArbiter::new(store.clone(), Duration::from_secs(30), "w".into());
    let first = arbiter.acquire("silver.t", LOCK_WAIT).await.unwrap();
    let epoch = first.epoch;
    arbiter.release(first).await;
    let lapsed = current_lease(&arbiter).await.expect("a lease");
    store.revoke_lease(lapsed).await.unwrap();
    let second = arbiter.acquire("silver.t", LOCK_WAIT).await.unwrap();
    let renewed = current_lease(&arbiter).await.expect("a lease");
    assert_ne!(renewed, lapsed, "the lapsed lease was replaced");
    assert!(second.epoch > epoch);
    let bound = store.get(&keys::commit_lock("silver.t")).await.unwrap();
    assert_eq!(bound.and_then(|kv| kv.lease), Some(renewed));
    arbiter.release(second).await;
}

/// A release whose delete fails (the store unreachable for a moment) leaves the key for
/// the session task, which deletes it once the store answers; the lease was never at
/// risk, so nothing waited for it to lapse.
#[tokio::test]
async fn a_failed_release_is_retried_by_the_session() {
    let counted = Arc::new(Counted::default());
    let store: Arc<dyn CoordinationStore> = counted.clone();
    let ttl = Duration::from_secs(1);
    let arbiter = CommitArbiter::new(store.clone(), ttl, "w".into());
    let held = arbiter.acquire("silver.t", LOCK_WAIT).await.unwrap();
    let lease = current_lease(&arbiter).await;
    // The release and the session's first attempt both fail.
    counted.failing_deletes.store(2, Ordering::SeqCst);
    arbiter.release(held).await;
    let key = keys::commit_lock("silver.t");
    assert!(
        store.get(&key).await.unwrap().is_some(),
        "the failed release left the key"
    );
    let gone = eventually(ttl * 10, async || store.get(&key).await.unwrap().is_none()).await;
    assert!(gone, "the session deleted the key: {:?}", counted.calls());
    assert!(
        counted.calls().get("delete_guarded").copied().unwrap_or(0) >= 3,
        "two failed deletes, then one that landed: {:?}",
        counted.calls()
    );
    assert_eq!(
        current_lease(&arbiter).await,
        lease,
        "the same lease throughout"
    );
}
