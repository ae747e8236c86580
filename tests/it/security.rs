//! TLS, mTLS, tokens, roles and grants against a real cluster on loopback: certificates
//! from a throwaway CA made by `openssl` for the run, tokens from a file and JWTs signed
//! here. Each refusal is checked for its status code, not only for failing.

use std::time::Duration;

use smelter_common::security::{SecurityConfig, tls};
use smelter_common::store::{CoordinationStore, EtcdStore};
use smelter_sdk::{AdminClient, Credentials, QueryClient, SdkError, TlsOptions};
use smelter_tests::certs::Certs;
use smelter_tests::services::Etcd;
use smelter_tests::{TestCluster, bounded_demo};
use tonic::Code;

fn tls_options(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> TlsOptions {
    TlsOptions {
        ca_pem: Certs::read(ca),
        identity: identity.map(|(cert, key)| (Certs::read(cert), Certs::read(key))),
        domain: None,
    }
}

fn with_tls(tls: TlsOptions) -> Credentials {
    Credentials {
        tls: Some(tls),
        token: None,
    }
}

fn with_token(token: &str) -> Credentials {
    Credentials {
        tls: None,
        token: Some(token.to_string()),
    }
}

/// The status code a refused call ended with (transport failures count as UNAVAILABLE).
fn code(error: &SdkError) -> Code {
    match error {
        SdkError::Rejected(status) => status.code(),
        _ => Code::Unavailable,
    }
}

async fn status(endpoint: &str, credentials: &Credentials) -> Result<usize, SdkError> {
    let mut admin = AdminClient::connect_with(endpoint, credentials).await?;
    Ok(admin.status().await?.workers.len())
}

async fn query(endpoint: &str, credentials: &Credentials, sql: &str) -> Result<usize, SdkError> {
    let mut client = QueryClient::connect_with(endpoint, credentials).await?;
    let batches = client.query(sql).await?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_listener_speaks_tls_and_the_coordinator_refuses_clients_without_its_certificates() {
    let certs = Certs::generate();
    let (ca, cert, key) = (certs.ca.clone(), certs.cert.clone(), certs.key.clone());
    let mut cluster = TestCluster::start_with(1, &bounded_demo(2_000, 2), |config| {
        config.security.tls_cert = Some(cert);
        config.security.tls_key = Some(key);
        config.security.tls_ca = Some(ca);
    })
    .await
    .unwrap();
    let coordinator = cluster.coordinator_endpoint();
    assert!(coordinator.starts_with("https://"), "{coordinator}");
    let flight = cluster.flight_endpoints()[0].clone();

    // The worker registered through mTLS and ran the pipeline, and a client with a
    // certificate is served.
    cluster
        .wait_drained(Duration::from_secs(120))
        .await
        .unwrap();
    let trusted = with_tls(tls_options(&certs.ca, Some((&certs.cert, &certs.key))));
    assert_eq!(status(&coordinator, &trusted).await.unwrap(), 1);

    // Without a client certificate, with one from another CA, in plain text, or trusting
    // another CA: refused.
    let refusals = [
        (
            "no client certificate",
            with_tls(tls_options(&certs.ca, None)),
        ),
        (
            "a certificate from another CA",
            with_tls(tls_options(
                &certs.ca,
                Some((&certs.rogue_cert, &certs.rogue_key)),
            )),
        ),
        (
            "a server certificate it cannot verify",
            with_tls(tls_options(
                &certs.rogue_ca,
                Some((&certs.rogue_cert, &certs.rogue_key)),
            )),
        ),
    ];
    for (what, credentials) in &refusals {
        let error = status(&coordinator, credentials).await.unwrap_err();
        eprintln!("coordinator, {what}: {error}");
        // Refused by the transport (a closed connection may also surface as CANCELLED),
        // never answered by the service.
        assert!(
            matches!(code(&error), Code::Unavailable | Code::Cancelled),
            "{what}: {error}"
        );
        // The server's alert (CertificateRequired, UnknownCA) races the closed
        // connection; a client that cannot verify the server says so itself.
        if what.starts_with("a server") {
            assert!(error.to_string().contains("certificate"), "{what}: {error}");
        }
    }
    let plain = coordinator.replace("https://", "http://");
    let error = status(&plain, &Credentials::default()).await.unwrap_err();
    eprintln!("coordinator, plain text: {error}");

    // Flight SQL: TLS for everyone, client certificates not required (tokens identify
    // clients there); plain text and an unverifiable server refused.
    let rows = query(
        &flight,
        &with_tls(tls_options(&certs.ca, None)),
        "SELECT * FROM gold.daily_summary",
    )
    .await
    .unwrap();
    assert!(rows > 0);
    let error = query(&flight, &Credentials::default(), "SELECT 1")
        .await
        .unwrap_err();
    eprintln!("flight, plain text: {error}");
    let error = query(
        &flight,
        &with_tls(tls_options(&certs.rogue_ca, None)),
        "SELECT 1",
    )
    .await
    .unwrap_err();
    eprintln!("flight, unverifiable server: {error}");
    assert!(error.to_string().contains("certificate"), "{error}");
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_needs_a_client_certificate() {
    let certs = Certs::generate();
    let Some(etcd) = Etcd::start_tls(&certs).await else {
        return;
    };
    assert!(etcd.endpoint.starts_with("https://"));
    let endpoints = [etcd.endpoint.clone()];
    // As the coordinator and the workers dial it: from the configuration.
    let security = SecurityConfig {
        etcd_ca: Some(certs.ca.clone()),
        etcd_cert: Some(certs.cert.clone()),
        etcd_key: Some(certs.key.clone()),
        ..SecurityConfig::default()
    };
    let store = EtcdStore::connect_with(&endpoints, tls::etcd(&security).unwrap())
        .await
        .unwrap();
    store
        .put("/smelter/tls-probe", b"ok".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        store
            .get("/smelter/tls-probe")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"ok"
    );

    // The CA alone (no client certificate): refused.
    let ca_only = SecurityConfig {
        etcd_ca: Some(certs.ca.clone()),
        ..SecurityConfig::default()
    };
    let refused = async {
        let store = EtcdStore::connect_with(&endpoints, tls::etcd(&ca_only).unwrap()).await?;
        store.get("/smelter/tls-probe").await
    };
    let error = tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("a refusal, not a hang")
        .unwrap_err();
    // etcd answers with a BadCertificate alert, or closes the connection first.
    eprintln!("etcd without a client certificate: {error}");
    // Plain text: refused.
    let plain = [etcd.endpoint.replace("https://", "http://")];
    let refused = async {
        let store = EtcdStore::connect(&plain).await?;
        store.get("/smelter/tls-probe").await
    };
    let error = tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("a refusal, not a hang")
        .unwrap_err();
    eprintln!("etcd in plain text: {error}");
    // Half a client identity is a configuration error, said at start-up.
    let half = SecurityConfig {
        etcd_ca: Some(certs.ca.clone()),
        etcd_cert: Some(certs.cert.clone()),
        ..SecurityConfig::default()
    };
    let error = tls::etcd(&half).unwrap_err().to_string();
    assert!(error.contains("etcd_cert and etcd_key"), "{error}");
}

const WORKER_TOKEN: &str = "wk-7f1c2d9e8a6b4c3d";
const OPERATOR_TOKEN: &str = "op-2b8e5a1f9c7d3e6a";
const READER_TOKEN: &str = "rd-9d4a7c2e1b8f6a3c";
const JWT_SECRET: &str = "jwt-secret-0123456789abcdef-0123456789";

fn jwt(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Seconds since the epoch, for JWT expiry claims relative to now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_roles_and_table_grants_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n\
             - {{ name: workers, token: {WORKER_TOKEN}, role: admin }}\n\
             - {{ name: ops, token: {OPERATOR_TOKEN}, role: operator }}\n\
             - {{ name: ana, token: {READER_TOKEN}, role: reader, tables: [\"gold.*\"] }}\n"
        ),
    )
    .unwrap();
    let jwt_key = dir.path().join("jwt.key");
    std::fs::write(&jwt_key, JWT_SECRET).unwrap();
    let pipeline = bounded_demo(2_000, 2);
    let mut cluster = TestCluster::start_with(1, &pipeline, |config| {
        config.security.tokens_file = Some(tokens.clone());
        config.security.jwt_key_file = Some(jwt_key.clone());
        config.security.jwt_issuer = Some("smelter-tests".into());
        config.security.token = Some(smelter_common::security::Secret::new(WORKER_TOKEN));
    })
    .await
    .unwrap();
    // The worker registered with its admin token, and the pipeline ran.
    cluster
        .wait_drained(Duration::from_secs(120))
        .await
        .unwrap();
    let coordinator = cluster.coordinator_endpoint();
    let flight = cluster.flight_endpoints()[0].clone();

    // Control API: no token or an unknown one is UNAUTHENTICATED; a reader may read the
    // status but not apply; an operator may apply.
    let error = status(&coordinator, &Credentials::default())
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::Unauthenticated, "{error}");
    let error = status(&coordinator, &with_token("not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::Unauthenticated, "{error}");
    assert!(!error.to_string().contains("not-a-token"), "{error}");
    assert_eq!(
        status(&coordinator, &with_token(READER_TOKEN))
            .await
            .unwrap(),
        1
    );
    let mut reader = AdminClient::connect_with(&coordinator, &with_token(READER_TOKEN))
        .await
        .unwrap();
    let error = reader.apply(&pipeline, "test.yaml").await.unwrap_err();
    assert_eq!(code(&error), Code::PermissionDenied, "{error}");
    assert!(error.to_string().contains("operator role"), "{error}");
    let mut operator = AdminClient::connect_with(&coordinator, &with_token(OPERATOR_TOKEN))
        .await
        .unwrap();
    operator.apply(&pipeline, "test.yaml").await.unwrap();
    let error = status(&coordinator, &with_token(OPERATOR_TOKEN))
        .await
        .map(|_| ());
    assert!(error.is_ok());

    // Flight SQL: the same tokens; the reader's grants hold in every position a table can
    // be named, and the catalog lists only what it may read.
    let error = query(&flight, &Credentials::default(), "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::Unauthenticated, "{error}");
    let ana = with_token(READER_TOKEN);
    assert!(
        query(&flight, &ana, "SELECT * FROM gold.hourly_metrics")
            .await
            .unwrap()
            > 0
    );
    for sql in [
        "SELECT count(*) FROM silver.events",
        "SELECT * FROM gold.hourly_metrics h JOIN silver.events e ON h.events = e.quantity",
        "SELECT * FROM gold.daily_summary WHERE events > (SELECT count(*) FROM bronze.events)",
        "WITH s AS (SELECT * FROM silver.events_quarantine) SELECT count(*) FROM s",
    ] {
        let error = query(&flight, &ana, sql).await.unwrap_err();
        assert_eq!(code(&error), Code::PermissionDenied, "{sql}: {error}");
        assert!(error.to_string().contains("ana may not read"), "{error}");
    }
    let mut client = QueryClient::connect_with(&flight, &ana).await.unwrap();
    let listed = client
        .query("SELECT table_schema || '.' || table_name FROM information_schema.tables WHERE table_schema IN ('bronze', 'silver', 'gold')")
        .await
        .unwrap();
    let names = smelter_tests::oracle::rows(&listed).unwrap();
    assert!(
        !names.is_empty() && names.iter().all(|n| n.contains("gold.")),
        "{names:?}"
    );
    assert!(
        query(
            &flight,
            &with_token(OPERATOR_TOKEN),
            "SELECT count(*) FROM silver.events"
        )
        .await
        .is_ok()
    );

    // JWTs: signed with the configured key, from the configured issuer, not expired.
    let silver_reader = jwt(serde_json::json!({
        "sub": "svc-quality", "role": "reader", "tables": ["silver.*"],
        "iss": "smelter-tests", "exp": now() + 600,
    }));
    let token = with_token(&silver_reader);
    assert!(
        query(&flight, &token, "SELECT count(*) FROM silver.events")
            .await
            .is_ok()
    );
    let error = query(&flight, &token, "SELECT * FROM gold.hourly_metrics")
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::PermissionDenied, "{error}");
    let expired = jwt(serde_json::json!({
        "sub": "svc-quality", "role": "reader", "iss": "smelter-tests", "exp": now() - 3600,
    }));
    let error = query(&flight, &with_token(&expired), "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::Unauthenticated, "{error}");
    assert!(error.to_string().contains("expired"), "{error}");
    let foreign = jwt(serde_json::json!({
        "sub": "x", "role": "admin", "iss": "elsewhere", "exp": now() + 600,
    }));
    let error = status(&coordinator, &with_token(&foreign))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::Unauthenticated, "{error}");

    // No secret in the status document.
    let mut admin = AdminClient::connect_with(&coordinator, &with_token(WORKER_TOKEN))
        .await
        .unwrap();
    let document = smelter_sdk::status_json(&admin.status().await.unwrap()).to_string();
    for secret in [WORKER_TOKEN, OPERATOR_TOKEN, READER_TOKEN, JWT_SECRET] {
        assert!(!document.contains(secret), "status shows a secret");
    }
    assert!(!format!("{:?}", cluster.config).contains(WORKER_TOKEN));
    cluster.stop().await.unwrap();
}
