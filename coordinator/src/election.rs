//! Leader election among coordinator replicas (docs/architecture.md, "Control plane").
//!
//! Every replica campaigns for one key, [`keys::leader`], bound to its own lease. The one
//! whose create-if-absent lands leads; its [`Guard`] (the key's create revision) is then
//! compared by every write it makes, so a replica that lost the key — lease expired while
//! it was paused, say — can no longer write even if it still believes it leads. The lease
//! is kept alive at a third of its TTL; when renewal fails for a whole TTL, or the lease
//! is gone, leadership is over and the replica campaigns again.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smelter_common::store::{CoordinationStore, Expect, Guard, LeaseId, keys};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the leader key holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderRecord {
    /// The leading replica's id.
    pub id: String,
    /// Its control-plane URL.
    pub endpoint: String,
}

/// Held leadership: the lease the leader key is bound to and the guard for writes.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// The lease of the leader key.
    pub lease: LeaseId,
    /// Compared by every leader write.
    pub guard: Guard,
}

/// Reads who leads now, if anyone.
pub async fn current_leader(store: &dyn CoordinationStore) -> Option<LeaderRecord> {
    let kv = store.get(&keys::leader()).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

/// Campaigns until this replica leads (`Some`) or `shutdown` (`None`). `on_follow` is told
/// who leads meanwhile, so followers can point clients there.
pub async fn campaign(
    store: &Arc<dyn CoordinationStore>,
    me: &LeaderRecord,
    ttl: Duration,
    shutdown: &CancellationToken,
    mut on_follow: impl FnMut(Option<LeaderRecord>),
) -> Option<Leadership> {
    let value = serde_json::to_vec(me).unwrap_or_default();
    let poll = Duration::from_millis(250);
    let mut announced: Option<LeaderRecord> = None;
    while !shutdown.is_cancelled() {
        match try_lead(store.as_ref(), &value, ttl).await {
            Ok(Some(leadership)) => {
                tracing::info!(coordinator_id = %me.id, revision = leadership.guard.revision, "won the leader election");
                return Some(leadership);
            }
            Ok(None) => {
                let leader = current_leader(store.as_ref()).await;
                if leader != announced {
                    if let Some(l) = &leader {
                        tracing::info!(leader = %l.id, endpoint = %l.endpoint, "following");
                    }
                    on_follow(leader.clone());
                    announced = leader;
                }
            }
            Err(error) => tracing::warn!(%error, "campaign failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    None
}

async fn try_lead(
    store: &dyn CoordinationStore,
    value: &[u8],
    ttl: Duration,
) -> smelter_common::Result<Option<Leadership>> {
    if store.get(&keys::leader()).await?.is_some() {
        return Ok(None);
    }
    let lease = store.grant_lease(ttl).await?;
    match store
        .put_if(&keys::leader(), Expect::Absent, value.to_vec(), Some(lease))
        .await?
    {
        Some(revision) => Ok(Some(Leadership {
            lease,
            guard: Guard {
                key: keys::leader(),
                revision,
            },
        })),
        None => {
            let _ = store.revoke_lease(lease).await;
            Ok(None)
        }
    }
}

/// Keeps the leader lease alive until `lost` or `shutdown` fires; cancels `lost` once the
/// lease is gone or could not be renewed for a whole TTL.
pub async fn hold(
    store: Arc<dyn CoordinationStore>,
    leadership: Leadership,
    ttl: Duration,
    lost: CancellationToken,
) {
    let mut last_renewal = Instant::now();
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A renewal that hangs counts as failed once it has taken a third of the TTL.
        let renewal = tokio::time::timeout(ttl / 3, store.keep_alive(leadership.lease)).await;
        let renewal = renewal.unwrap_or_else(|_| {
            Err(smelter_common::Error::StoreUnavailable {
                message: "leader lease renewal timed out".into(),
            })
        });
        match renewal {
            Ok(()) => last_renewal = Instant::now(),
            Err(smelter_common::Error::LeaseNotFound { .. }) => {
                tracing::error!("leader lease expired; stepping down");
                lost.cancel();
                return;
            }
            Err(error) if last_renewal.elapsed() >= ttl => {
                tracing::error!(%error, "leader lease not renewed for a whole TTL; stepping down");
                lost.cancel();
                return;
            }
            Err(error) => tracing::warn!(%error, "leader lease renewal failed; retrying"),
        }
    }
}
