//! `smelter coordinator` and `smelter worker`: the cluster roles as separate processes.

use std::sync::Arc;

use smelter_common::config::SmelterConfig;
use smelter_common::store::MemoryStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{ClientError, Result};

/// Runs the coordinator until shutdown. The coordination store is in memory until the etcd
/// store lands; workers re-register if the coordinator restarts.
pub async fn coordinator(config: SmelterConfig, shutdown: CancellationToken) -> Result<()> {
    let listener = TcpListener::bind(&config.coordinator.listen)
        .await
        .map_err(|source| ClientError::Io {
            context: format!("bind {}", config.coordinator.listen),
            source,
        })?;
    smelter_coordinator::run(
        config.coordinator,
        Arc::new(MemoryStore::new()),
        listener,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Runs a worker until shutdown (SIGTERM drains: in-flight batches are committed first).
pub async fn worker(config: SmelterConfig, shutdown: CancellationToken) -> Result<()> {
    let listener = TcpListener::bind(&config.worker.flight_listen)
        .await
        .map_err(|source| ClientError::Io {
            context: format!("bind {}", config.worker.flight_listen),
            source,
        })?;
    smelter_worker::run(config, listener, shutdown).await?;
    Ok(())
}
