//! TLS settings for the listeners and for the clients that dial them, from PEM files.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use super::SecurityConfig;
use crate::{Error, Result};

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn bad(field: &str, message: impl Into<String>) -> Error {
    Error::Config {
        source_name: format!("security.{field}"),
        message: message.into(),
    }
}

/// This process's certificate and key, when both are configured.
fn identity(security: &SecurityConfig) -> Result<Option<Identity>> {
    match (&security.tls_cert, &security.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(read(cert)?, read(key)?))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad("tls_key", "tls_cert is set but its key is not")),
        (None, Some(_)) => Err(bad("tls_cert", "tls_key is set but the certificate is not")),
    }
}

/// tonic's TLS listeners take rustls's process-wide crypto provider, and rustls cannot pick
/// one when two are compiled in (the object store's HTTP client brings aws-lc-rs, tonic
/// ring). Installs ring, as the clients use, unless a provider is installed already; the
/// one piece of process state this crate sets, because rustls keeps it nowhere else.
fn crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS a listener serves, or `None` for plain TCP. `client_certs`: refuse clients
/// without a certificate signed by `tls_ca`.
pub fn server(security: &SecurityConfig, client_certs: bool) -> Result<Option<ServerTlsConfig>> {
    crypto_provider();
    let Some(identity) = identity(security)? else {
        if client_certs && security.tls_ca.is_some() {
            return Err(bad(
                "tls_cert",
                "client certificates are required but this listener has no certificate",
            ));
        }
        return Ok(None);
    };
    let mut config = ServerTlsConfig::new().identity(identity);
    if client_certs {
        let ca = security.tls_ca.as_ref().ok_or_else(|| {
            bad(
                "tls_ca",
                "client certificates are required: set the CA that signs them",
            )
        })?;
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// The TLS of the HTTP listener (same certificate as gRPC, no client certificates: probes
/// cannot present one), or `None` for plain HTTP.
pub fn http_server(
    security: &SecurityConfig,
) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad("tls_cert", format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad("tls_key", format!("{}: {e}", key.display())))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("tls_cert", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(std::sync::Arc::new(config)))
}

/// A client endpoint for `address` (`host:port` or a URL): `https` with the configured CA,
/// client certificate and domain when TLS is configured, plain `http` otherwise.
pub fn endpoint(address: &str, security: &SecurityConfig) -> Result<Endpoint> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("{}://{address}", security.scheme())
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| bad("endpoint", format!("bad endpoint {url}: {e}")))?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let ca = security.tls_ca.as_ref().ok_or_else(|| {
        bad(
            "tls_ca",
            format!("{url} is https: set the CA that signs its certificate"),
        )
    })?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some(identity) = identity(security)? {
        tls = tls.identity(identity);
    }
    if let Some(domain) = &security.tls_domain {
        tls = tls.domain_name(domain.clone());
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| bad("tls_ca", format!("TLS settings for {url}: {e}")))
}

/// TLS options for the etcd client, when `etcd_ca` is set.
pub fn etcd(security: &SecurityConfig) -> Result<Option<etcd_client::TlsOptions>> {
    let Some(ca) = &security.etcd_ca else {
        if security.etcd_cert.is_some() || security.etcd_key.is_some() {
            return Err(bad(
                "etcd_ca",
                "an etcd client certificate needs the etcd CA",
            ));
        }
        return Ok(None);
    };
    let mut tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    match (&security.etcd_cert, &security.etcd_key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => return Err(bad("etcd_cert", "etcd_cert and etcd_key go together")),
    }
    Ok(Some(tls))
}
