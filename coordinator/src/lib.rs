//! The Smelter control plane: leader election, worker membership, task placement and
//! pipeline specs.
//!
//! The coordinator never touches data. It decides *who should* run each task; the Delta
//! log decides *what was* written (docs/exactly-once.md). It is deliberately free of DataFusion
//! and Delta so it stays small and quick to test.
//!
//! [`run`] serves the `Control` gRPC service on a listener the caller bound (port 0 in
//! tests) until the shutdown token is cancelled. Every replica serves; only the elected
//! leader runs the [`actor::Actor`], and followers answer `UNAVAILABLE` naming the leader.

pub mod actor;
pub mod catalog;
pub mod discovery;
pub mod election;
pub mod error;
pub mod http;
pub mod service;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use smelter_common::config::CoordinatorConfig;
use smelter_common::security::{Authenticator, SecurityConfig, tls};
use smelter_common::store::CoordinationStore;
use smelter_proto::ControlServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

pub use error::{CoordinatorError, Result};

use crate::election::LeaderRecord;
use crate::service::Role;

/// How the coordinator dials the workers' Flight SQL (HTTP `/query`): their CA, and its
/// own certificate where they require client certificates.
fn flight_tls(security: &SecurityConfig) -> Result<Option<smelter_sdk::TlsOptions>> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| smelter_common::Error::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let Some(ca) = &security.tls_ca else {
        return Ok(None);
    };
    let identity = match (&security.tls_cert, &security.tls_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(Some(smelter_sdk::TlsOptions {
        ca_pem: read(ca)?,
        identity,
        domain: security.tls_domain.clone(),
    }))
}

/// Serves the control plane on `listener` until `shutdown`: campaigns, leads while elected,
/// and campaigns again after losing leadership. `security` sets the listener's TLS (mTLS
/// when a CA is configured: every worker and CLI presents a certificate it signed) and
/// the tokens every call must carry. `http`, when given, serves the HTTP surface
/// ([`http`]: health, readiness, metrics) with the same TLS.
pub async fn run(
    config: CoordinatorConfig,
    security: SecurityConfig,
    store: Arc<dyn CoordinationStore>,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<()> {
    let address = listener.local_addr().ok();
    let scheme = security.scheme();
    let me = LeaderRecord {
        id: uuid::Uuid::new_v4().to_string(),
        endpoint: config.advertise.clone().unwrap_or_else(|| {
            address.map_or_else(|| config.endpoint.clone(), |a| format!("{scheme}://{a}"))
        }),
    };
    let auth = Authenticator::from_config(&security)?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls::server(&security, true)? {
        builder = builder.tls_config(tls)?;
    }
    let (role, roles) = watch::channel(Role::Follower { leader: None });
    tracing::info!(
        address = ?address,
        coordinator_id = %me.id,
        tls = security.serves_tls(),
        tokens = auth.requires_tokens(),
        "coordinator serving gRPC"
    );
    let http_tls = tls::http_server(&security)?;
    let flight_tls = flight_tls(&security)?;
    let _http = http.map(|listener| {
        tracing::info!(address = ?listener.local_addr().ok(), "coordinator serving HTTP");
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(http::serve(
            listener,
            http_tls,
            flight_tls,
            roles.clone(),
            auth.clone(),
            shutdown.clone(),
        )))
    });
    let server_shutdown = shutdown.clone();
    let control =
        ControlServer::with_interceptor(service::ControlService::new(roles), auth.interceptor());
    let server = tokio::spawn(async move {
        builder
            .add_service(control)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                server_shutdown.cancelled_owned(),
            )
            .await
    });

    let ttl = config.lease_ttl();
    while !shutdown.is_cancelled() {
        let Some(leadership) = election::campaign(&store, &me, ttl, &shutdown, |leader| {
            role.send_replace(Role::Follower { leader });
        })
        .await
        else {
            break;
        };
        let lost = shutdown.child_token();
        let holder = tokio::spawn(election::hold(
            store.clone(),
            leadership.clone(),
            ttl,
            lost.clone(),
        ));
        match actor::Actor::take_over(
            store.clone(),
            config.clone(),
            me.clone(),
            leadership.guard.clone(),
        )
        .await
        {
            Ok(actor) => {
                let (commands, receiver) = tokio::sync::mpsc::channel(256);
                role.send_replace(Role::Leader(commands.clone()));
                let discovery = tokio::spawn(discovery::run(
                    commands.downgrade(),
                    config.discovery_interval(),
                    actor.discovery_trigger(),
                    lost.clone(),
                ));
                drop(commands);
                actor.run(receiver, lost.clone()).await;
                discovery.abort();
            }
            Err(error) => tracing::error!(%error, "taking over as leader failed"),
        }
        role.send_replace(Role::Follower { leader: None });
        lost.cancel();
        let _ = holder.await;
        if shutdown.is_cancelled() {
            // Resign, so another replica takes over now rather than after the TTL.
            let _ = store.revoke_lease(leadership.lease).await;
            tracing::info!("resigned leadership");
        } else {
            tracing::warn!("lost leadership; campaigning again");
        }
    }
    // Graceful shutdown waits for open calls to finish; a client that stopped reading its
    // assignment stream never lets its call finish. Give them a lease TTL, then go.
    let mut server = server;
    match tokio::time::timeout(ttl, &mut server).await {
        Ok(served) => served.map_err(|e| CoordinatorError::Internal(e.to_string()))??,
        Err(_) => {
            tracing::warn!(
                grace_ms = ttl.as_millis() as u64,
                "open calls did not finish in time; closing them"
            );
            server.abort();
        }
    }
    Ok(())
}
