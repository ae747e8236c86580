//! SQL over Arrow Flight SQL.

use arrow_array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::Channel;

use crate::connect::{Credentials, channel};
use crate::{Result, SdkError};

/// A Flight SQL connection to one worker.
pub struct QueryClient {
    inner: FlightSqlServiceClient<Channel>,
}

impl QueryClient {
    /// Connects to a Flight SQL endpoint (`host:port` or a URL).
    pub async fn connect(endpoint: &str) -> Result<Self> {
        Self::connect_with(endpoint, &Credentials::default()).await
    }

    /// [`QueryClient::connect`] with TLS and a token.
    pub async fn connect_with(endpoint: &str, credentials: &Credentials) -> Result<Self> {
        let mut inner = FlightSqlServiceClient::new(channel(endpoint, credentials).await?);
        if let Some(token) = &credentials.token {
            inner.set_token(token.clone());
        }
        Ok(Self { inner })
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
fn flight_status(error: arrow_flight::error::FlightError) -> SdkError {
    match error {
        arrow_flight::error::FlightError::Tonic(status) => SdkError::from(*status),
        other => SdkError::Flight(other),
    }
}
