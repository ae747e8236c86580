//! The cluster status a replica answers reads from. The leader holds it (its actor); a
//! follower relays the leader's over gRPC, with the caller's token so the leader's grants
//! apply, and keeps the last one it got: while the leader is gone and an election is under
//! way, reads keep answering from that copy, marked as such with its age
//! (`x-smelter-status: cached; age_ms=N`). Any replica therefore serves every read
//! endpoint; `/metrics` alone stays the leader's, so that a scraper of every replica does
//! not count a task twice.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use smelter_proto::ClusterStatus;

use super::{Shared, error, leader_status};
use crate::service::Role;

/// How long a follower waits for the leader's status before answering from its copy.
const RELAY_WAIT: Duration = Duration::from_secs(2);

/// Where an answered status came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// This replica leads.
    Leader,
    /// Relayed from the leader just now.
    Relayed,
    /// No leader answered: the last status this replica saw, this old.
    Cached { age: Duration },
}

impl Source {
    /// The `x-smelter-status` header value.
    pub(super) fn header(self) -> HeaderValue {
        match self {
            Source::Leader => HeaderValue::from_static("leader"),
            Source::Relayed => HeaderValue::from_static("relayed"),
            Source::Cached { age } => {
                HeaderValue::from_str(&format!("cached; age_ms={}", age.as_millis()))
                    .unwrap_or_else(|_| HeaderValue::from_static("cached"))
            }
        }
    }
}

/// The last status a replica saw, with when.
#[derive(Clone, Default)]
pub(super) struct LastStatus(Arc<Mutex<Option<(ClusterStatus, Instant)>>>);

impl LastStatus {
    fn keep(&self, status: &ClusterStatus) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some((status.clone(), Instant::now()));
        }
    }

    fn get(&self) -> Option<(ClusterStatus, Duration)> {
        let last = self.0.lock().ok()?;
        last.as_ref()
            .map(|(status, at)| (status.clone(), at.elapsed()))
    }
}

/// The status to answer a read from, and where it came from (see the module docs); 503
/// when no leader answers and this replica has seen none yet.
pub(super) async fn cluster_status(
    shared: &Shared,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<(ClusterStatus, Source), Response> {
    let leader = match &*shared.role.borrow() {
        Role::Leader(_) => None,
        Role::Follower { leader } => Some(leader.as_ref().map(|l| l.endpoint.clone())),
    };
    let why = match leader {
        None => match leader_status(shared).await? {
            Some(status) => {
                shared.last.keep(&status);
                return Ok((status, Source::Leader));
            }
            None => "this replica stopped leading".to_string(),
        },
        Some(None) => "no leader is known yet".to_string(),
        Some(Some(endpoint)) => match relay(shared, metadata, &endpoint).await {
            Ok(status) => {
                shared.last.keep(&status);
                return Ok((status, Source::Relayed));
            }
            Err(RelayError::Refused(response)) => return Err(response),
            Err(RelayError::Unreachable(why)) => {
                format!("the leader {endpoint} did not answer: {why}")
            }
        },
    };
    match shared.last.get() {
        Some((status, age)) => {
            tracing::debug!(%why, ?age, "answering from the last cluster status seen");
            Ok((status, Source::Cached { age }))
        }
        None => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{why}, and this replica has no cluster status yet"),
        )),
    }
}

enum RelayError {
    /// The leader answered with a refusal the caller must see (401, 403).
    Refused(Response),
    /// The leader did not answer (gone, electing, slow).
    Unreachable(String),
}

/// The leader's status, asked over gRPC with the caller's token.
async fn relay(
    shared: &Shared,
    metadata: &tonic::metadata::MetadataMap,
    endpoint: &str,
) -> Result<ClusterStatus, RelayError> {
    let token =
        smelter_common::security::auth::presented_token(metadata).map(|t| t.expose().to_string());
    // The connection to the leader is kept while it leads.
    shared.leader.retain(|e| e == endpoint);
    let asked = async {
        let mut redialled = false;
        loop {
            let channel = shared.leader.get(endpoint).await?;
            let answer = smelter_sdk::AdminClient::over(channel, token.as_deref())?
                .status()
                .await;
            match answer {
                // A kept connection that broke is dialled again once.
                Err(e) if !redialled && super::connection_failed(&e) => {
                    shared.leader.forget(endpoint);
                    redialled = true;
                }
                answer => return answer,
            }
        }
    };
    match tokio::time::timeout(RELAY_WAIT, asked).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(smelter_sdk::SdkError::Rejected(status)))
            if matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) =>
        {
            Err(RelayError::Refused(error(
                super::http_status(status.code()),
                status.message(),
            )))
        }
        Ok(Err(other)) => Err(RelayError::Unreachable(other.to_string())),
        Err(_) => Err(RelayError::Unreachable(format!(
            "no answer within {RELAY_WAIT:?}"
        ))),
    }
}
