//! The log store of tables on object stores without put-if-absent
//! (`storage.commit_arbitration = true`). It reads like any log store, and refuses to
//! write: on such a store a version may be written only through a claim in etcd
//! ([`crate::claims`]), which the commit path makes under the commit lock. A write that
//! reaches this store came through delta-rs's own commit path, which knows nothing of
//! claims, and is refused rather than allowed to race.

use std::sync::Arc;

use deltalake::DeltaResult;
use deltalake::logstore::LogStore;
use object_store::{ObjectStore, ObjectStoreExt};

/// A log store for object stores without put-if-absent, whose versions are written only
/// through claims in etcd (see the module docs). Used only when configured, and the worker
/// refuses to run it without a shared coordination store.
pub struct ArbitratedLogStore {
    inner: Arc<dyn LogStore>,
}

impl ArbitratedLogStore {
    /// Arbitrated writes over `inner`'s object store.
    pub fn new(inner: Arc<dyn LogStore>) -> Self {
        Self { inner }
    }
}

#[async_trait::async_trait]
impl LogStore for ArbitratedLogStore {
    fn name(&self) -> String {
        "SmelterArbitratedLogStore".into()
    }

    async fn read_commit_entry(
        &self,
        version: deltalake::kernel::Version,
    ) -> DeltaResult<Option<bytes::Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: deltalake::kernel::Version,
        _commit_or_bytes: deltalake::logstore::CommitOrBytes,
        _operation_id: uuid::Uuid,
    ) -> Result<(), deltalake::kernel::transaction::TransactionError> {
        Err(
            deltalake::kernel::transaction::TransactionError::LogStoreError {
                msg: format!(
                    "version {version}: on a store without put-if-absent only Smelter's commit \
                     path writes the log (through a claim in etcd); this operation would write \
                     it unfenced and is not supported there"
                ),
                source: "write refused by the arbitrated log store".into(),
            },
        )
    }

    async fn abort_commit_entry(
        &self,
        _version: deltalake::kernel::Version,
        commit_or_bytes: deltalake::logstore::CommitOrBytes,
        _operation_id: uuid::Uuid,
    ) -> Result<(), deltalake::kernel::transaction::TransactionError> {
        if let deltalake::logstore::CommitOrBytes::TmpCommit(tmp) = commit_or_bytes {
            let _ = self.inner.object_store(None).delete(&tmp).await;
        }
        Ok(())
    }

    async fn get_latest_version(
        &self,
        start_version: deltalake::kernel::Version,
    ) -> DeltaResult<deltalake::kernel::Version> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<uuid::Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<uuid::Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn config(&self) -> &deltalake::logstore::LogStoreConfig {
        self.inner.config()
    }
}
