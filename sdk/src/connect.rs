//! Dialling an endpoint given as `host:port` or a URL, with the caller's credentials.

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{Result, SdkError};

/// TLS settings of a client: the CA that signs the servers' certificates, and the
/// client's own certificate where the server requires one (the coordinator does under
/// mTLS).
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// CA certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// Client certificate and private key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name on the servers' certificates, when it is not the host dialled.
    pub domain: Option<String>,
}

/// How a client identifies itself and checks the server. The default is plain HTTP/2
/// without a token (`smelter up`).
#[derive(Clone, Default)]
pub struct Credentials {
    /// TLS; endpoints given as `host:port` are then dialled as `https://`.
    pub tls: Option<TlsOptions>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A channel to `endpoint` (`host:port` or a URL).
pub async fn channel(endpoint: &str, credentials: &Credentials) -> Result<Channel> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else if credentials.tls.is_some() {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    let unreachable = |message: String| SdkError::Unreachable {
        endpoint: url.clone(),
        message,
    };
    let mut dial = Endpoint::from_shared(url.clone())
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if let (Some(tls), true) = (&credentials.tls, url.starts_with("https://")) {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        dial = dial
            .tls_config(config)
            .map_err(|e| unreachable(format!("TLS settings: {e}")))?;
    }
    dial.connect().await.map_err(|e| {
        // The transport error's sources say why (a refused certificate, a closed port).
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        unreachable(format!(
            "{message} (is `smelter up` or a worker running there?)"
        ))
    })
}

/// Adds the bearer token to every call.
#[derive(Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// The token of `credentials`, if any.
    pub fn new(credentials: &Credentials) -> Result<Self> {
        let Some(token) = &credentials.token else {
            return Ok(Self(None));
        };
        let mut value = format!("Bearer {token}")
            .parse::<tonic::metadata::MetadataValue<_>>()
            .map_err(|_| {
                SdkError::Rejected(tonic::Status::invalid_argument(
                    "a token must be printable ASCII",
                ))
            })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
