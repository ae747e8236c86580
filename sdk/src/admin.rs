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

    /// A client of the replica at the other end of `channel` (already open, see
    /// [`crate::Channels`]), calling with `token`; unlike [`AdminClient::connect`] it does
    /// not check that the replica leads.
    pub fn over(channel: Channel, token: Option<&str>) -> Result<Self> {
        let credentials = Credentials {
            tls: None,
            token: token.map(str::to_string),
        };
        let inner = ControlClient::with_interceptor(channel, Bearer::new(&credentials)?);
        Ok(Self { inner })
    }

    /// Leader, workers, tasks and their progress.
    pub async fn status(&mut self) -> Result<ClusterStatus> {
        Ok(self
            .inner
            .get_cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// Pauses (`true`) or resumes a pipeline; see [`Self::wait_paused`].
    pub async fn set_paused(
        &mut self,
        pipeline: &str,
        paused: bool,
    ) -> Result<smelter_proto::SetPipelinePausedResponse> {
        let request = smelter_proto::SetPipelinePausedRequest {
            pipeline: pipeline.to_string(),
            paused,
        };
        Ok(self.inner.set_pipeline_paused(request).await?.into_inner())
    }

    /// Waits until every task of `pipeline` reports `PAUSED` under generation `generation`
    /// or later: each worker has drained the task's in-flight batch and runs nothing of the
    /// pipeline. Gives up after `timeout`, naming the tasks still running.
    pub async fn wait_paused(
        &mut self,
        pipeline: &str,
        generation: u64,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            let running: Vec<String> = status
                .tasks
                .iter()
                .filter(|t| t.task.as_ref().is_some_and(|a| a.pipeline == pipeline))
                .filter(|t| {
                    !t.report.as_ref().is_some_and(|r| {
                        r.state() == smelter_proto::TaskState::Paused
                            && r.context
                                .as_ref()
                                .is_some_and(|c| c.generation >= generation)
                    })
                })
                .map(|t| {
                    t.task
                        .as_ref()
                        .map(|a| a.task_id.clone())
                        .unwrap_or_default()
                })
                .collect();
            if running.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(crate::SdkError::Timeout(format!(
                    "pipeline {pipeline} not paused after {timeout:?}: still running {}",
                    running.join(", ")
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
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
