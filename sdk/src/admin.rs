//! The coordinator's admin API, against whichever replica leads.

use smelter_proto::{
    ApplyPipelineRequest, ApplyPipelineResponse, ClusterStatus, ClusterStatusRequest, ControlClient,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::connect::{Bearer, Credentials, channel};
use crate::{Result, SdkError};

/// The coordinator's admin API.
pub struct AdminClient {
    inner: ControlClient<InterceptedService<Channel, Bearer>>,
}

/// How long [`AdminClient::connect`] waits for an election under way.
pub const ELECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl AdminClient {
    /// Connects to the leading coordinator. `endpoints` lists every replica, comma-separated
    /// (`host:port` or URLs); followers answer `UNAVAILABLE` with a leader hint in the
    /// metadata, so the first replica that answers a status call is the leader. While an
    /// election is under way (some replica answers as a follower but none leads) it keeps
    /// asking for up to [`ELECTION_WAIT`]; unreachable endpoints alone fail at once.
    pub async fn connect(endpoints: &str) -> Result<Self> {
        Self::connect_with(endpoints, &Credentials::default()).await
    }

    /// [`AdminClient::connect`] with TLS and a token.
    pub async fn connect_with(endpoints: &str, credentials: &Credentials) -> Result<Self> {
        let bearer = Bearer::new(credentials)?;
        let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
        loop {
            let mut last_error = None;
            let mut electing = false;
            for endpoint in endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
            {
                let attempt = async {
                    let mut inner = ControlClient::with_interceptor(
                        channel(endpoint, credentials).await?,
                        bearer.clone(),
                    );
                    inner.get_cluster_status(ClusterStatusRequest {}).await?;
                    Ok::<_, SdkError>(Self { inner })
                };
                match attempt.await {
                    Ok(client) => return Ok(client),
                    Err(error) => {
                        electing |= error.leader_hint().is_some();
                        last_error = Some(error);
                    }
                }
            }
            if !electing || tokio::time::Instant::now() >= deadline {
                return Err(last_error.unwrap_or_else(|| SdkError::Unreachable {
                    endpoint: endpoints.to_string(),
                    message: "no coordinator endpoint given".into(),
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Leader, workers, tasks and their progress.
    pub async fn status(&mut self) -> Result<ClusterStatus> {
        Ok(self
            .inner
            .get_cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// Declares or updates a pipeline.
    pub async fn apply(&mut self, spec_yaml: &str, origin: &str) -> Result<ApplyPipelineResponse> {
        let request = ApplyPipelineRequest {
            spec_yaml: spec_yaml.to_string(),
            origin: origin.to_string(),
        };
        Ok(self.inner.apply_pipeline(request).await?.into_inner())
    }
}
