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

/// Channels dialled once per endpoint and shared by every caller that reaches it: a tonic
/// channel multiplexes calls over one HTTP/2 connection, so a server that relays many
/// requests (the coordinator's HTTP API handing SQL to workers, a follower asking the
/// leader) pays the connection (and TLS handshake) once, not per request. Tokens travel
/// per call, never with the channel, so callers with different tokens share it.
///
/// A channel whose connection broke is dropped with [`Channels::forget`] by the caller that
/// saw the transport error; the next caller dials again.
#[derive(Clone, Default)]
pub struct Channels {
    credentials: Credentials,
    open: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Channel>>>,
}

impl Channels {
    /// Channels dialled with `tls` (the token of `Credentials` is not used: calls carry
    /// their own).
    pub fn new(tls: Option<TlsOptions>) -> Self {
        Self {
            credentials: Credentials { tls, token: None },
            open: Default::default(),
        }
    }

    /// The channel to `endpoint`, dialled now if there is none yet.
    pub async fn get(&self, endpoint: &str) -> Result<Channel> {
        if let Some(open) = self.lock().get(endpoint) {
            return Ok(open.clone());
        }
        // Dialled without the lock held; of two callers racing, the first kept wins and
        // the other's channel is dropped.
        let dialled = channel(endpoint, &self.credentials).await?;
        Ok(self
            .lock()
            .entry(endpoint.to_string())
            .or_insert(dialled)
            .clone())
    }

    /// Drops the channel to `endpoint` (its connection failed).
    pub fn forget(&self, endpoint: &str) {
        self.lock().remove(endpoint);
    }

    /// Drops the channels to endpoints `keep` refuses (servers that left).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|endpoint, _| keep(endpoint));
    }

    /// How many channels are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no channel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Channel>> {
        // The map holds no invariant a panicking holder could break.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
