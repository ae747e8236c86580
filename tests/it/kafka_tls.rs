//! The Kafka source over TLS: the broker is reachable only through a TLS endpoint (tansu
//! 0.6 does not serve TLS itself, so stunnel terminates it in front, with a certificate of
//! the run's throwaway CA, and the broker advertises that endpoint). A pipeline whose
//! source sets `security.protocol: SSL` and the CA lands every record in bronze and
//! silver exactly once; the same pipeline trusting another CA ingests nothing and the
//! cluster's status names the certificate failure of its source — so the records did
//! cross TLS, verified.
//!
//! SASL/SCRAM over TLS (`SASL_SSL`): tansu 0.6 answers the SASL handshake, but its
//! in-memory and S3 storage keep no SCRAM credentials (storing a user is a no-op there), so
//! the test puts a SCRAM gate between stunnel and the broker (`smelter_tests::scram`, the
//! server side of RFC 5802/7677 over Kafka's SASL requests). The workers' librdkafka does
//! real SCRAM-SHA-256 against it: with the right password every record lands exactly once
//! and the gate counts the exchanges that succeeded; with a wrong one nothing lands, the
//! gate counts refusals, and the status names the authentication failure.

use std::time::Duration;

use smelter_harness::wait_until;
use smelter_sdk::AdminClient;
use smelter_tests::TestCluster;
use smelter_tests::cdc::produce_with;
use smelter_tests::certs::Certs;
use smelter_tests::kafka::{
    create_topic_with, producer_with, tls_admin, tls_producer, unique_topic, wait_caught_up,
};
use smelter_tests::oracle::rows;
use smelter_tests::services::TlsTansu;

const RECORDS: usize = 2_000;

fn pipeline(brokers: &str, topic: &str, ca: &std::path::Path) -> String {
    secured(
        brokers,
        topic,
        &format!(
            r#"security.protocol: SSL, ssl.ca.location: "{}""#,
            ca.display()
        ),
    )
}

/// The pipeline with the source's connection `properties` (a YAML flow mapping's inside).
fn secured(brokers: &str, topic: &str, properties: &str) -> String {
    format!(
        r#"pipeline: secured
sources:
  orders:
    kafka:
      brokers: "{brokers}"
      topic: {topic}
      properties: {{ {properties} }}
tables:
  bronze.orders: {{ from: orders }}
  silver.orders:
    from: bronze.orders
    parse: {{ format: json, schema: {{ id: long, amount: "decimal(10,2)" }}, metadata: [key] }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cross_a_verified_tls_connection_exactly_once() {
    let certs = Certs::generate();
    let Some(tansu) = TlsTansu::start(&certs).await else {
        return;
    };
    let topic = unique_topic("orders");
    create_topic_with(&tls_admin(&tansu.brokers, &certs.ca), &topic, 2)
        .await
        .unwrap();
    let records: Vec<(i32, String, Vec<u8>)> = (0..RECORDS)
        .map(|i| {
            let value = format!(r#"{{"id":{i},"amount":"{}.{:02}"}}"#, i / 7, i % 100);
            ((i % 2) as i32, format!("k{i}"), value.into_bytes())
        })
        .collect();
    let producer = tls_producer(&tansu.brokers, &certs.ca).unwrap();
    let last = produce_with(&producer, &topic, &records).await.unwrap();

    let text = pipeline(&tansu.brokers, &topic, &certs.ca);
    let cluster = TestCluster::start(1, &text).await.unwrap();
    wait_caught_up(
        &cluster.tables,
        &cluster.spec,
        &topic,
        &last,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let got = rows(
        &cluster
            .query(
                "SELECT count(*) AS n, count(DISTINCT id) AS ids, \
                 sum(CASE WHEN _key = concat('k', CAST(id AS VARCHAR)) THEN 1 ELSE 0 END) AS keyed, \
                 CAST(sum(amount) AS VARCHAR) AS total FROM silver.orders",
            )
            .await
            .unwrap(),
    )
    .unwrap();
    let cents: i64 = (0..RECORDS as i64).map(|i| (i / 7) * 100 + i % 100).sum();
    assert_eq!(
        got,
        [format!(
            "{RECORDS} | {RECORDS} | {RECORDS} | {}.{:02}",
            cents / 100,
            cents % 100
        )],
        "every record once, its key and amount as produced"
    );
    let bronze = rows(
        &cluster
            .query("SELECT count(*) FROM bronze.orders")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bronze, [RECORDS.to_string()]);

    // The same source trusting another CA: the handshake fails, nothing lands, and the
    // ingest task says why.
    let rogue_topic = unique_topic("rogue");
    create_topic_with(&tls_admin(&tansu.brokers, &certs.ca), &rogue_topic, 2)
        .await
        .unwrap();
    produce_with(&producer, &rogue_topic, &records[..10])
        .await
        .unwrap();
    let text = pipeline(&tansu.brokers, &rogue_topic, &certs.rogue_ca);
    let rogue = TestCluster::start(1, &text).await.unwrap();
    let status = source_refused(&rogue, &["ssl", "certificate"]).await;
    nothing_landed(
        &rogue,
        &format!("nothing crossed an unverified connection; {status}"),
    )
    .await;
}

/// SASL/SCRAM-SHA-256 over TLS through the gate (see the module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_tls_lands_every_record_and_a_wrong_password_is_refused() {
    let certs = Certs::generate();
    let Some(tansu) = TlsTansu::start_scram(&certs, "smelter", "s3cret-pass").await else {
        return;
    };
    let exchanges = tansu
        .gate
        .as_ref()
        .map(|(gate, _, _)| gate.exchanges.clone())
        .unwrap();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        tansu.client_config(&certs.ca).create().unwrap();
    let topic = unique_topic("scram");
    create_topic_with(&admin, &topic, 2).await.unwrap();
    let records: Vec<(i32, String, Vec<u8>)> = (0..500)
        .map(|i| {
            let value = format!(r#"{{"id":{i},"amount":"{i}.25"}}"#);
            (i % 2, format!("k{i}"), value.into_bytes())
        })
        .collect();
    let producer = producer_with(tansu.client_config(&certs.ca)).unwrap();
    let last = produce_with(&producer, &topic, &records).await.unwrap();
    let before = exchanges
        .succeeded
        .load(std::sync::atomic::Ordering::SeqCst);

    let scram = |password: &str| {
        format!(
            r#"security.protocol: SASL_SSL, ssl.ca.location: "{}", sasl.mechanism: SCRAM-SHA-256, sasl.username: smelter, sasl.password: "{password}""#,
            certs.ca.display()
        )
    };
    let cluster = TestCluster::start(1, &secured(&tansu.brokers, &topic, &scram("s3cret-pass")))
        .await
        .unwrap();
    wait_caught_up(
        &cluster.tables,
        &cluster.spec,
        &topic,
        &last,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let got = rows(
        &cluster
            .query("SELECT count(*), count(DISTINCT id), CAST(sum(amount) AS VARCHAR) FROM silver.orders")
            .await
            .unwrap(),
    )
    .unwrap();
    let total: i64 = (0..500).sum::<i64>() * 100 + 500 * 25;
    assert_eq!(
        got,
        [format!("500 | 500 | {}.{:02}", total / 100, total % 100)]
    );
    assert!(
        exchanges
            .succeeded
            .load(std::sync::atomic::Ordering::SeqCst)
            > before,
        "the workers authenticated through the gate"
    );
    let refused_before = exchanges.failed.load(std::sync::atomic::Ordering::SeqCst);

    let wrong = TestCluster::start(1, &secured(&tansu.brokers, &topic, &scram("guessed")))
        .await
        .unwrap();
    let status = source_refused(&wrong, &["authentication", "sasl"]).await;
    assert!(
        exchanges.failed.load(std::sync::atomic::Ordering::SeqCst) > refused_before,
        "the gate refused the wrong password: {status}"
    );
    nothing_landed(&wrong, "nothing landed with a wrong password").await;
}

/// Asserts that bronze holds no row (or is not there at all): `why` says what that proves.
async fn nothing_landed(cluster: &TestCluster, why: &str) {
    let landed = rows(
        &cluster
            .query("SELECT count(*) FROM bronze.orders")
            .await
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    assert!(landed.is_empty() || landed == ["0"], "{why}: {landed:?}");
}

/// The cluster's status once it lists the `orders` source as failing with an error that
/// names one of `words` (lower case).
async fn source_refused(cluster: &TestCluster, words: &[&str]) -> serde_json::Value {
    wait_until(
        Duration::from_secs(60),
        &format!("the status naming the source's failure ({words:?})"),
        async || {
            let mut admin = AdminClient::connect_with(
                &cluster.coordinator_endpoint(),
                &cluster.credentials().unwrap(),
            )
            .await
            .unwrap();
            let status = smelter_sdk::status_json(&admin.status().await.unwrap());
            let refused = status["source_errors"].as_array().is_some_and(|errors| {
                errors.iter().any(|e| {
                    let text = e["error"].as_str().unwrap_or_default().to_ascii_lowercase();
                    e["source"] == "orders" && words.iter().any(|w| text.contains(w))
                })
            });
            if refused {
                Ok(status)
            } else {
                Err(format!("status {status}"))
            }
        },
    )
    .await
    .unwrap()
}
