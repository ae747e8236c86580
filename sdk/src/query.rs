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

    /// A client over a channel already open (see [`crate::Channels`]), calling with
    /// `token`.
    pub fn over(channel: Channel, token: Option<&str>) -> Self {
        let mut inner = FlightSqlServiceClient::new(channel);
        if let Some(token) = token {
            inner.set_token(token.to_string());
        }
        Self { inner }
    }

    /// Sends `key: value` with every call from now on (for example W3C Trace Context's
    /// `traceparent`, so that the server's spans join the caller's trace).
    pub fn set_header(&mut self, key: &str, value: &str) {
        self.inner.set_header(key, value);
    }

    /// Runs `sql` and collects every result batch.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<RecordBatch>> {
        let info = self
            .inner
            .execute(sql.to_string(), None)
            .await
            .map_err(flight_status)?;
        self.fetch(info).await
    }

    /// The primary key of table `layer.table` (Flight SQL's GetPrimaryKeys): its columns
    /// in key order, empty when it has none.
    pub async fn primary_key(&mut self, layer: &str, table: &str) -> Result<Vec<String>> {
        use arrow_array::Array as _;
        use arrow_array::cast::AsArray as _;
        let command = arrow_flight::sql::CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some(layer.to_string()),
            table: table.to_string(),
        };
        let info = self
            .inner
            .get_primary_keys(command)
            .await
            .map_err(flight_status)?;
        let mut keys = Vec::new();
        for batch in self.fetch(info).await? {
            let (Some(columns), Some(sequence)) = (
                batch.column_by_name("column_name"),
                batch.column_by_name("key_sequence"),
            ) else {
                continue;
            };
            let columns = columns.as_string::<i32>();
            let sequence = sequence.as_primitive::<arrow_array::types::Int32Type>();
            for row in 0..batch.num_rows() {
                if columns.is_valid(row) {
                    keys.push((sequence.value(row), columns.value(row).to_string()));
                }
            }
        }
        keys.sort();
        Ok(keys.into_iter().map(|(_, column)| column).collect())
    }

    /// Every batch of every endpoint of `info`.
    async fn fetch(&mut self, info: arrow_flight::FlightInfo) -> Result<Vec<RecordBatch>> {
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
