//! In-memory coordination store for `smelter up` and tests: etcd's semantics (revisions,
//! leases, lease-bound keys) in one process. Expired leases are reaped lazily on every
//! call, so no background task is needed and time is read in one place.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{CoordinationStore, Expect, Guard, KeyValue, LeaseId};
use crate::{Error, Result};

#[derive(Default)]
struct State {
    revision: i64,
    next_lease: LeaseId,
    keys: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, (Duration, Instant)>,
}

impl State {
    fn check(&self, guard: &Guard) -> Result<()> {
        match self.keys.get(&guard.key) {
            Some(kv) if kv.create_revision == guard.revision => Ok(()),
            _ => Err(Error::GuardLost {
                key: guard.key.clone(),
                revision: guard.revision,
            }),
        }
    }

    fn remove(&mut self, key: &str) {
        if self.keys.remove(key).is_some() {
            self.revision += 1;
        }
    }

    fn reap(&mut self, now: Instant) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for lease in expired {
            self.drop_lease(lease);
        }
    }

    fn drop_lease(&mut self, lease: LeaseId) {
        self.leases.remove(&lease);
        let before = self.keys.len();
        self.keys.retain(|_, kv| kv.lease != Some(lease));
        if self.keys.len() != before {
            self.revision += 1;
        }
    }

    fn write(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64> {
        if let Some(id) = lease
            && !self.leases.contains_key(&id)
        {
            return Err(Error::LeaseNotFound { lease: id });
        }
        self.revision += 1;
        let revision = self.revision;
        let create_revision = self
            .keys
            .get(key)
            .map(|kv| kv.create_revision)
            .unwrap_or(revision);
        self.keys.insert(
            key.to_string(),
            KeyValue {
                key: key.to_string(),
                value,
                create_revision,
                mod_revision: revision,
                lease,
            },
        );
        Ok(revision)
    }
}

/// A coordination store that lives in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        // A poisoned lock means a panic mid-update; the map itself is still consistent
        // because every update is a single insert/remove.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.reap(Instant::now());
        f(&mut state)
    }
}

#[async_trait]
impl CoordinationStore for MemoryStore {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.with(|s| {
            s.next_lease += 1;
            let id = s.next_lease;
            s.leases.insert(id, (ttl, Instant::now() + ttl));
            Ok(id)
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.with(|s| match s.leases.get_mut(&lease) {
            Some((ttl, deadline)) => {
                *deadline = Instant::now() + *ttl;
                Ok(())
            }
            None => Err(Error::LeaseNotFound { lease }),
        })
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.with(|s| {
            s.drop_lease(lease);
            Ok(())
        })
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.with(|s| Ok(s.keys.get(key).cloned()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.with(|s| {
            Ok(s.keys
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect())
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64> {
        self.with(|s| s.write(key, value, lease))
    }

    async fn put_if(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>> {
        self.with(|s| {
            let holds = match (expect, s.keys.get(key)) {
                (Expect::Absent, None) => true,
                (Expect::ModRevision(rev), Some(kv)) => kv.mod_revision == rev,
                _ => false,
            };
            if holds {
                s.write(key, value, lease).map(Some)
            } else {
                Ok(None)
            }
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.with(|s| {
            s.remove(key);
            Ok(())
        })
    }

    async fn put_guarded(
        &self,
        guard: &Guard,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64> {
        self.with(|s| {
            s.check(guard)?;
            s.write(key, value, lease)
        })
    }

    async fn create_guarded(
        &self,
        guard: &Guard,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Option<i64>> {
        self.with(|s| {
            s.check(guard)?;
            if s.keys.contains_key(key) {
                return Ok(None);
            }
            s.write(key, value, None).map(Some)
        })
    }

    async fn delete_guarded(&self, guard: &Guard, key: &str) -> Result<()> {
        self.with(|s| {
            s.check(guard)?;
            s.remove(key);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conforms() {
        super::super::conformance::check_store(&MemoryStore::new(), "/conformance/").await;
    }

    #[tokio::test]
    async fn lease_bound_keys_expire() {
        let store = MemoryStore::new();
        let lease = store.grant_lease(Duration::from_millis(30)).await.unwrap();
        store.put("/w/1", b"a".to_vec(), Some(lease)).await.unwrap();
        store.put("/w/2", b"b".to_vec(), None).await.unwrap();
        assert_eq!(store.list("/w/").await.unwrap().len(), 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.get("/w/1").await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "lease never expired");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(
            store.keep_alive(lease).await,
            Err(Error::LeaseNotFound { .. })
        ));
        assert!(store.get("/w/2").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn put_if_compares_revisions() {
        let store = MemoryStore::new();
        let rev = store
            .put_if("/k", Expect::Absent, b"1".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store
                .put_if("/k", Expect::Absent, b"2".to_vec(), None)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .put_if("/k", Expect::ModRevision(rev + 7), b"2".to_vec(), None)
                .await
                .unwrap(),
            None
        );
        let rev2 = store
            .put_if("/k", Expect::ModRevision(rev), b"3".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        let kv = store.get("/k").await.unwrap().unwrap();
        assert_eq!(
            (kv.value, kv.create_revision, kv.mod_revision),
            (b"3".to_vec(), rev, rev2)
        );
    }
}
