//! The `[security]` section of the configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// TLS, authentication and authorization settings (docs/security.md). Everything is off
/// by default: `smelter up` on a laptop listens on loopback without credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// This process's certificate chain (PEM). With `tls_key`, the coordinator's gRPC and
    /// the worker's Flight SQL listeners accept TLS only, and the same certificate is this
    /// process's client identity when it dials the coordinator.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that signs every peer: clients verify servers with it, and
    /// the coordinator accepts only clients presenting a certificate it signed (mTLS).
    pub tls_ca: Option<PathBuf>,
    /// Flight SQL clients must present a certificate signed by `tls_ca` too (otherwise
    /// they are identified by their bearer tokens alone).
    pub flight_client_certs: bool,
    /// The name the servers' certificates carry, when it differs from the host dialled.
    pub tls_domain: Option<String>,
    /// CA certificate (PEM) of the etcd cluster; with it, etcd is dialled over TLS
    /// (`https://` endpoints).
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd.
    pub etcd_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub etcd_key: Option<PathBuf>,
    /// Static bearer tokens (YAML): each names its holder, role and table grants. Setting
    /// it (or `jwt_key_file`) makes every call need a token.
    pub tokens_file: Option<PathBuf>,
    /// Key that signs JWT bearer tokens: the shared secret for `HS256`, the PEM public key
    /// for `RS256`/`ES256`.
    pub jwt_key_file: Option<PathBuf>,
    /// `HS256`, `RS256` or `ES256`.
    pub jwt_algorithm: String,
    /// Required `iss` claim, if set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub jwt_audience: Option<String>,
    /// The bearer token this process presents: workers to the coordinator (they need the
    /// `admin` role), the CLI to both. Best given as `SMELTER__SECURITY__TOKEN`.
    pub token: Option<Secret>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            flight_client_certs: false,
            tls_domain: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            tokens_file: None,
            jwt_key_file: None,
            jwt_algorithm: "HS256".into(),
            jwt_issuer: None,
            jwt_audience: None,
            token: None,
        }
    }
}

impl SecurityConfig {
    /// Whether the listeners serve TLS.
    pub fn serves_tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The URL scheme clients use for this cluster's listeners.
    pub fn scheme(&self) -> &'static str {
        if self.serves_tls() || self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Whether calls must carry a token.
    pub fn requires_tokens(&self) -> bool {
        self.tokens_file.is_some() || self.jwt_key_file.is_some()
    }
}
