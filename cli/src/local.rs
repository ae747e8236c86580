//! A whole cluster in one process: the coordinator with the in-memory store and N workers,
//! talking over loopback gRPC exactly as separate processes would. Used by `smelter up`
//! and by the in-process test harness.

use std::sync::Arc;

use smelter_common::config::SmelterConfig;
use smelter_common::store::{CoordinationStore, MemoryStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{CliError, Result};

/// A running in-process cluster.
pub struct LocalCluster {
    /// URL of the coordinator's gRPC service.
    pub coordinator_endpoint: String,
    /// URL of its HTTP surface (health, readiness, metrics), when `coordinator.http_listen`
    /// is set.
    pub http_endpoint: Option<String>,
    /// `host:port` of each worker's Flight SQL service.
    pub flight_endpoints: Vec<String>,
    workers_shutdown: CancellationToken,
    coordinator_shutdown: CancellationToken,
    workers: Vec<JoinHandle<smelter_worker::Result<()>>>,
    coordinator: JoinHandle<smelter_coordinator::Result<()>>,
}

/// Binds `address`, saying which on failure.
pub(crate) async fn bind(address: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|source| CliError::Io {
            context: format!("bind {address}"),
            source,
        })
}

/// The coordinator serves gRPC before its (uncontested, in-memory) election is won; callers
/// get a cluster that accepts `apply` at once.
async fn wait_until_leading(endpoint: &str, credentials: &smelter_sdk::Credentials) -> Result<()> {
    smelter_harness::wait_until(std::time::Duration::from_secs(30), "a leader", async || {
        smelter_sdk::AdminClient::connect_with(endpoint, credentials)
            .await
            .map(drop)
    })
    .await
    .map_err(|message| {
        CliError::Sdk(smelter_sdk::SdkError::Unreachable {
            endpoint: endpoint.to_string(),
            message,
        })
    })
}

impl LocalCluster {
    /// Starts the coordinator on `config.coordinator.listen` and `workers` workers (at least
    /// one); the
    /// first worker serves Flight SQL on `config.worker.flight_listen`, the others on free
    /// loopback ports.
    pub async fn start(mut config: SmelterConfig, workers: usize) -> Result<LocalCluster> {
        if config.security.requires_tokens() && config.security.token.is_none() {
            return Err(CliError::Common(smelter_common::Error::Config {
                source_name: "security.token".into(),
                message: "calls need tokens here, so the workers need one too: set an admin \
                          token (SMELTER__SECURITY__TOKEN)"
                    .into(),
            }));
        }
        let listener = bind(&config.coordinator.listen).await?;
        let address = listener.local_addr().map_err(|source| CliError::Io {
            context: "coordinator address".into(),
            source,
        })?;
        config.coordinator.endpoint = format!("{}://{address}", config.security.scheme());
        let coordinator_shutdown = CancellationToken::new();
        // One store for the coordinator and every worker's commit locks.
        let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
        let http = match &config.coordinator.http_listen {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        let http_endpoint = http
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| format!("{}://{a}", config.security.scheme()));
        let coordinator = tokio::spawn(smelter_coordinator::run(
            config.coordinator.clone(),
            config.security.clone(),
            store.clone(),
            listener,
            http,
            coordinator_shutdown.clone(),
        ));
        let workers_shutdown = CancellationToken::new();
        let mut handles = Vec::new();
        let mut flight_endpoints = Vec::new();
        // One cache of recently committed files (refine reads what any worker's ingest
        // wrote) and one set of commit announcements (a task wakes when any worker
        // commits its upstream).
        let shared = smelter_worker::ProcessShared::from_config(&config.worker);
        // Sharing that memory, the workers have nothing to exchange over Flight.
        config.worker.flight_exchange = Some(false);
        for i in 0..workers.max(1) {
            let flight_address = if i == 0 {
                config.worker.flight_listen.clone()
            } else {
                "127.0.0.1:0".to_string()
            };
            let listener = bind(&flight_address).await?;
            let local = listener.local_addr().map_err(|source| CliError::Io {
                context: "flight address".into(),
                source,
            })?;
            flight_endpoints.push(local.to_string());
            handles.push(tokio::spawn(smelter_worker::run(
                config.clone(),
                listener,
                Some(store.clone()),
                shared.clone(),
                workers_shutdown.clone(),
            )));
        }
        let credentials = crate::commands::credentials(&config.security)?;
        wait_until_leading(&config.coordinator.endpoint, &credentials).await?;
        Ok(LocalCluster {
            coordinator_endpoint: config.coordinator.endpoint.clone(),
            http_endpoint,
            flight_endpoints,
            workers_shutdown,
            coordinator_shutdown,
            workers: handles,
            coordinator,
        })
    }

    /// Drains the workers (in-flight batches are committed, leases released), then stops
    /// the coordinator.
    pub async fn shutdown(self) -> Result<()> {
        self.workers_shutdown.cancel();
        let mut first_error = None;
        for handle in self.workers {
            match handle.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = first_error.or(Some(CliError::Worker(e))),
                Err(e) => tracing::error!(error = %e, "worker task panicked"),
            }
        }
        self.coordinator_shutdown.cancel();
        match self.coordinator.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(CliError::Coordinator(e))),
            Err(e) => tracing::error!(error = %e, "coordinator task panicked"),
        }
        first_error.map_or(Ok(()), Err)
    }
}
