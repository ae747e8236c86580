//! `smelter coordinator` and `smelter worker`: the cluster roles as separate processes.

use std::sync::Arc;

use smelter_common::config::{SmelterConfig, StoreKind};
use smelter_common::security::tls;
use smelter_common::store::{CoordinationStore, EtcdStore, MemoryStore};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::local::bind;

/// Runs the coordinator until shutdown, on the configured coordination store. With etcd,
/// applied pipelines survive a coordinator restart; workers re-register by themselves.
pub async fn coordinator(config: SmelterConfig, shutdown: CancellationToken) -> Result<()> {
    let store: Arc<dyn CoordinationStore> = match config.coordinator.store {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Etcd => Arc::new(
            EtcdStore::connect_with(
                &config.coordinator.etcd_endpoint_list(),
                tls::etcd(&config.security)?,
            )
            .await?,
        ),
    };
    let listener = bind(&config.coordinator.listen).await?;
    let http = match &config.coordinator.http_listen {
        Some(address) => Some(bind(address).await?),
        None => None,
    };
    smelter_coordinator::run(
        config.coordinator,
        config.security,
        store,
        listener,
        http,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Runs a worker until shutdown (SIGTERM drains: in-flight batches are committed first).
/// On etcd, table commits go through etcd commit locks; with the in-memory store (one
/// process each, nothing shared) they rely on the txn compare-and-set alone.
pub async fn worker(config: SmelterConfig, shutdown: CancellationToken) -> Result<()> {
    let store: Option<Arc<dyn CoordinationStore>> = match config.coordinator.store {
        StoreKind::Memory => None,
        StoreKind::Etcd => Some(Arc::new(
            EtcdStore::connect_with(
                &config.coordinator.etcd_endpoint_list(),
                tls::etcd(&config.security)?,
            )
            .await?,
        )),
    };
    let listener = bind(&config.worker.flight_listen).await?;
    let shared = smelter_worker::ProcessShared::from_config(&config.worker);
    smelter_worker::run(config, listener, store, shared, shutdown).await?;
    Ok(())
}
