//! The coordination store on etcd (cluster mode): the same trait as [`super::MemoryStore`],
//! with etcd's own revisions and leases, so semantics carry over one to one.
//!
//! Conditional writes are etcd transactions (`compare create_revision == 0` for
//! [`Expect::Absent`], `compare mod_revision == r` otherwise). Every etcd failure maps to
//! [`Error::StoreUnavailable`] (retryable) except an unknown lease, which is
//! [`Error::LeaseNotFound`] so callers can re-register instead of retrying.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::{CoordinationStore, Expect, Guard, KeyValue, LeaseId};
use crate::{Error, Result};

/// A coordination store backed by an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

fn unavailable(error: etcd_client::Error) -> Error {
    Error::StoreUnavailable {
        message: error.to_string(),
    }
}

fn lease_error(lease: LeaseId, error: etcd_client::Error) -> Error {
    if error.to_string().contains("lease not found") {
        Error::LeaseNotFound { lease }
    } else {
        unavailable(error)
    }
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, None).await
    }

    /// Connects over TLS when `tls` is given (`https://` endpoints, the etcd CA, and a
    /// client certificate when etcd requires one).
    pub async fn connect_with(
        endpoints: &[String],
        tls: Option<etcd_client::TlsOptions>,
    ) -> Result<Self> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(Self { client })
    }

    fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
        lease.map(|id| PutOptions::new().with_lease(id))
    }

    /// Runs `op` in a txn that first compares the guard key's create revision.
    async fn guarded(&self, guard: &Guard, op: TxnOp, lease: Option<LeaseId>) -> Result<i64> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                guard.key.as_str(),
                CompareOp::Equal,
                guard.revision,
            )])
            .and_then([op]);
        let response = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| match lease {
                Some(id) => lease_error(id, e),
                None => unavailable(e),
            })?;
        if response.succeeded() {
            Ok(response.header().map_or(0, |h| h.revision()))
        } else {
            Err(Error::GuardLost {
                key: guard.key.clone(),
                revision: guard.revision,
            })
        }
    }
}

#[async_trait]
impl CoordinationStore for EtcdStore {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let seconds = ttl.as_secs().max(1) as i64;
        Ok(self
            .client
            .clone()
            .lease_grant(seconds, None)
            .await
            .map_err(unavailable)?
            .id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let (mut keeper, mut responses) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| lease_error(lease, e))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| lease_error(lease, e))?;
        match responses
            .message()
            .await
            .map_err(|e| lease_error(lease, e))?
        {
            Some(response) if response.ttl() > 0 => Ok(()),
            _ => Err(Error::LeaseNotFound { lease }),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) => match lease_error(lease, e) {
                Error::LeaseNotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let response = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(unavailable)?;
        Ok(response.kvs().first().map(convert))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let response = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)?;
        Ok(response.kvs().iter().map(convert).collect())
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64> {
        let response = self
            .client
            .clone()
            .put(key, value, Self::put_options(lease))
            .await
            .map_err(|e| match lease {
                Some(id) => lease_error(id, e),
                None => unavailable(e),
            })?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    async fn put_if(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>> {
        let compare = match expect {
            Expect::Absent => Compare::create_revision(key, CompareOp::Equal, 0),
            Expect::ModRevision(revision) => Compare::mod_revision(key, CompareOp::Equal, revision),
        };
        let txn =
            Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, value, Self::put_options(lease))]);
        let response = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| match lease {
                Some(id) => lease_error(id, e),
                None => unavailable(e),
            })?;
        Ok(response
            .succeeded()
            .then(|| response.header().map_or(0, |h| h.revision())))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .clone()
            .delete(key, None)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn put_guarded(
        &self,
        guard: &Guard,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64> {
        self.guarded(
            guard,
            TxnOp::put(key, value, Self::put_options(lease)),
            lease,
        )
        .await
    }

    async fn create_guarded(
        &self,
        guard: &Guard,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Option<i64>> {
        // Both compares in one txn; when it fails, the guard key read in the same txn tells
        // which one did.
        let txn = Txn::new()
            .when([
                Compare::create_revision(guard.key.as_str(), CompareOp::Equal, guard.revision),
                Compare::create_revision(key, CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(guard.key.as_str(), None)]);
        let response = self.client.clone().txn(txn).await.map_err(unavailable)?;
        if response.succeeded() {
            return Ok(Some(response.header().map_or(0, |h| h.revision())));
        }
        let guard_held = response.op_responses().iter().any(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == guard.revision),
            _ => false,
        });
        if guard_held {
            Ok(None)
        } else {
            Err(Error::GuardLost {
                key: guard.key.clone(),
                revision: guard.revision,
            })
        }
    }

    async fn delete_guarded(&self, guard: &Guard, key: &str) -> Result<()> {
        self.guarded(guard, TxnOp::delete(key, None), None)
            .await
            .map(|_| ())
    }
}
