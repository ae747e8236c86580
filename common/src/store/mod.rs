//! The coordination store: one trait, with an in-memory implementation (`smelter up`,
//! unit tests) and an etcd implementation (cluster mode).
//!
//! The model is etcd's: a revisioned key-value map, leases that expire unless kept
//! alive, and keys bound to a lease that vanish with it. Worker liveness is exactly
//! "its registry key still exists". All key names are built in [`keys`].

pub mod conformance;
mod etcd;
pub mod keys;
mod memory;

use std::time::Duration;

use async_trait::async_trait;

pub use etcd::EtcdStore;
pub use memory::MemoryStore;

use crate::Result;

/// Id of a lease.
pub type LeaseId = i64;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Store revision at which the key was created.
    pub create_revision: i64,
    /// Store revision of the last write to the key.
    pub mod_revision: i64,
    /// Lease the key is bound to, if any.
    pub lease: Option<LeaseId>,
}

/// Condition for [`CoordinationStore::put_if`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this mod revision.
    ModRevision(i64),
}

/// Proof of holding a key (a leadership or lock key): the key and the revision that created
/// it. A guarded write lands only while that very key still exists — a successor who
/// re-created it has another create revision — so a deposed leader cannot write (docs/architecture.md, "Control plane").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The held key.
    pub key: String,
    /// Its create revision when it was taken.
    pub revision: i64,
}

/// The operations Smelter needs from a coordination store.
#[async_trait]
pub trait CoordinationStore: Send + Sync + 'static {
    /// Grants a lease that expires after `ttl` unless kept alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews a lease for another TTL. Fails with `LeaseNotFound` once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Ends a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Reads every key with this prefix, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>>;
    /// Writes a key (bound to `lease` if given) and returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64>;
    /// Writes a key only if `expect` holds; returns the new revision, or `None` if it did not hold.
    async fn put_if(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>>;
    /// Deletes a key; deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// [`put`](Self::put), but only while `guard` holds; `Error::GuardLost` otherwise.
    async fn put_guarded(
        &self,
        guard: &Guard,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64>;
    /// [`delete`](Self::delete), but only while `guard` holds; `Error::GuardLost` otherwise.
    async fn delete_guarded(&self, guard: &Guard, key: &str) -> Result<()>;
    /// Creates `key` only if it does not exist, and only while `guard` holds, in one atomic
    /// step: the new revision, `None` if the key exists (guard held, nothing written), or
    /// `Error::GuardLost` if the guard is gone (nothing written).
    async fn create_guarded(&self, guard: &Guard, key: &str, value: Vec<u8>)
    -> Result<Option<i64>>;
}
