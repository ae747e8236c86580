//! Rust SDK: run SQL over Flight SQL and call the coordinator's admin API.

use arrow::record_batch::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use smelter_proto::{
    ApplyPipelineRequest, ApplyPipelineResponse, ClusterStatus, ClusterStatusRequest, ControlClient,
};
use tonic::transport::{Channel, Endpoint};

use crate::{ClientError, Result};

async fn channel(endpoint: &str) -> Result<Channel> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let unreachable = |message: String| ClientError::Unreachable {
        endpoint: url.clone(),
        message,
    };
    Endpoint::from_shared(url.clone())
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| unreachable(format!("{e} (is `smelter up` or a worker running there?)")))
}

/// A Flight SQL connection to one worker.
pub struct QueryClient {
    inner: FlightSqlServiceClient<Channel>,
}

impl QueryClient {
    /// Connects to a Flight SQL endpoint (`host:port` or a URL).
    pub async fn connect(endpoint: &str) -> Result<Self> {
        Ok(Self {
            inner: FlightSqlServiceClient::new(channel(endpoint).await?),
        })
    }

    /// Runs `sql` and collects every result batch.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<RecordBatch>> {
        let info = self
            .inner
            .execute(sql.to_string(), None)
            .await
            .map_err(flight_status)?;
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else {
                continue;
            };
            let stream = self.inner.do_get(ticket).await.map_err(flight_status)?;
            batches.extend(
                stream
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(flight_status)?,
            );
        }
        Ok(batches)
    }
}

/// Surfaces the server's status (with its message) rather than a wrapped transport error.
fn flight_status(error: arrow_flight::error::FlightError) -> ClientError {
    match error {
        arrow_flight::error::FlightError::Tonic(status) => ClientError::Rejected(*status),
        other => ClientError::Flight(other),
    }
}

/// The coordinator's admin API.
pub struct AdminClient {
    inner: ControlClient<Channel>,
}

/// How long [`AdminClient::connect`] waits for an election under way.
pub const ELECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl AdminClient {
    /// Connects to the leading coordinator. `endpoints` lists every replica, comma-separated
    /// (`host:port` or URLs); followers answer `UNAVAILABLE`, so the first replica that
    /// answers a status call is the leader. While an election is under way (some replica
    /// answers but none leads) it keeps asking for up to [`ELECTION_WAIT`]; unreachable
    /// endpoints alone fail at once.
    pub async fn connect(endpoints: &str) -> Result<Self> {
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
                    let mut inner = ControlClient::new(channel(endpoint).await?);
                    inner.get_cluster_status(ClusterStatusRequest {}).await?;
                    Ok::<_, ClientError>(Self { inner })
                };
                match attempt.await {
                    Ok(client) => return Ok(client),
                    Err(error) => {
                        electing |= matches!(&error, ClientError::Rejected(status)
                            if status.code() == tonic::Code::Unavailable
                                && status.message().contains("not the leader"));
                        last_error = Some(error);
                    }
                }
            }
            if !electing || tokio::time::Instant::now() >= deadline {
                return Err(last_error.unwrap_or_else(|| ClientError::Unreachable {
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
