//! The Smelter control plane: worker membership, task placement and pipeline specs.
//!
//! The coordinator never touches data. It decides *who should* run each task; the Delta
//! log decides *what was* written (design.md §5). It is deliberately free of DataFusion
//! and Delta so it stays small and quick to test.
//!
//! [`run`] serves the `Control` gRPC service on a listener the caller bound (port 0 in
//! tests) until the shutdown token is cancelled.

pub mod actor;
pub mod assign;
pub mod error;
pub mod service;

use std::sync::Arc;

use smelter_common::config::CoordinatorConfig;
use smelter_common::store::CoordinationStore;
use smelter_proto::ControlServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use error::{CoordinatorError, Result};

/// Serves the control plane on `listener` until `shutdown`.
pub async fn run(
    config: CoordinatorConfig,
    store: Arc<dyn CoordinationStore>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let actor = actor::Actor::new(store, config).await?;
    let (commands, receiver) = tokio::sync::mpsc::channel(256);
    let actor_task = tokio::spawn(actor.run(receiver, shutdown.clone()));
    let address = listener.local_addr().ok();
    tracing::info!(address = ?address, "coordinator serving gRPC");
    tonic::transport::Server::builder()
        .add_service(ControlServer::new(service::ControlService::new(commands)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await?;
    let _ = actor_task.await;
    Ok(())
}
