//! Dialling an endpoint given as `host:port` or a URL.

use tonic::transport::{Channel, Endpoint};

use crate::{Result, SdkError};

/// A channel to `endpoint` (`host:port` or `http://host:port`).
pub async fn channel(endpoint: &str) -> Result<Channel> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let unreachable = |message: String| SdkError::Unreachable {
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
