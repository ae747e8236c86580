//! Confluent-framed payloads with a schema registry, end to end to gold. First Avro:
//! records in Confluent's wire format (a zero byte, the writer schema's id, the Avro
//! binary body), written with two
//! versions of a subject's schema — the second adds an optional `coupon` — go through
//! Kafka (tansu) into bronze, a silver table that decodes them with the schema each names,
//! and a gold aggregate of money in decimals. Then:
//!
//! * silver holds every good record once, with its typed fields (the coupon where the
//!   record's version has one, NULL where it does not) and its Kafka key and time
//!   (`parse.metadata`), which a rule checks;
//! * gold equals the aggregate the test computes from its own records, in integer cents;
//! * records that are not Confluent-framed, name a schema id the registry does not know,
//!   or are cut short are quarantined under `_parse` with the reason, nothing lost;
//! * each writer schema was asked of the registry once per refine task, not per record.
//!
//! Then JSON text framed by a JSON Schema serializer, unframed once its id names a JSON
//! schema, with the framing errors quarantined.
//!
//! The registry is the documented subset of Confluent's REST API (`POST
//! /subjects/{subject}/versions`, `GET /schemas/ids/{id}`), served by the test itself: no
//! Confluent-compatible registry installs here (docs/testing.md). The records are encoded
//! by the test's own Avro encoder, not by the library the worker decodes them with.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use smelter_tests::TestCluster;
use smelter_tests::cdc::produce;
use smelter_tests::kafka::{create_topic, unique_topic, wait_caught_up};
use smelter_tests::oracle::rows;
use smelter_tests::services::Tansu;

const GOOD: usize = 3_000;
/// Records from this one on are written with the second version of the schema.
const SECOND_VERSION_FROM: usize = 2_000;
const COUNTRIES: [&str; 3] = ["fr", "de", "us"];
/// 2026-11-01T00:00:00Z, microseconds.
const FIRST_AT: i64 = 1_761_955_200_000_000;

const V1: &str = r#"{"type":"record","name":"Purchase","namespace":"shop","fields":[
  {"name":"user_id","type":"string"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
  {"name":"country","type":["null","string"],"default":null}]}"#;

const V2: &str = r#"{"type":"record","name":"Purchase","namespace":"shop","fields":[
  {"name":"user_id","type":"string"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
  {"name":"country","type":["null","string"],"default":null},
  {"name":"coupon","type":["null","string"],"default":null}]}"#;

/// One purchase, as the test knows it.
struct Purchase {
    user: String,
    cents: i64,
    at: i64,
    country: Option<&'static str>,
    coupon: Option<String>,
}

fn purchase(i: usize) -> Purchase {
    Purchase {
        user: format!("u{}", i % 50),
        cents: (i as i64 * 37) % 10_000 + 1,
        at: FIRST_AT + i as i64 * 1_000_000,
        country: (!i.is_multiple_of(11)).then(|| COUNTRIES[i % 3]),
        coupon: (i >= SECOND_VERSION_FROM && i.is_multiple_of(2)).then(|| format!("W{}", i % 4)),
    }
}

// --- A minimal Avro binary encoder (the specification's encodings, nothing shared). ---

fn long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn bytes(out: &mut Vec<u8>, value: &[u8]) {
    long(out, value.len() as i64);
    out.extend_from_slice(value);
}

/// A nullable string: the union `["null","string"]`.
fn optional(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => long(out, 0),
        Some(v) => {
            long(out, 1);
            bytes(out, v.as_bytes());
        }
    }
}

/// The unscaled value as the shortest big-endian two's complement.
fn decimal(unscaled: i64) -> Vec<u8> {
    let all = unscaled.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (byte, next) = (all[start], all[start + 1]);
        let redundant = (byte == 0 && next & 0x80 == 0) || (byte == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    all[start..].to_vec()
}

/// Record `p` in Confluent's wire format under schema `id` (`v2`: with the coupon).
fn framed(p: &Purchase, id: u32, v2: bool) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    bytes(&mut out, p.user.as_bytes());
    bytes(&mut out, &decimal(p.cents));
    long(&mut out, p.at);
    optional(&mut out, p.country);
    if v2 {
        optional(&mut out, p.coupon.as_deref());
    }
    out
}

// --- The registry: Confluent's REST API, the two calls a producer and a reader make. ---

#[derive(Default)]
struct Registry {
    /// Schema text and type (`None`: Avro) by id (ids from 1).
    schemas: Vec<(String, Option<String>)>,
    /// `GET /schemas/ids/{id}` calls per id.
    reads: HashMap<u32, usize>,
}

type Shared = Arc<Mutex<Registry>>;

async fn register(
    State(registry): State<Shared>,
    Path(_subject): Path<String>,
    body: Bytes,
) -> (StatusCode, String) {
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(schema) = body["schema"].as_str() else {
        let error = serde_json::json!({"error_code": 42201, "message": "Invalid schema"});
        return (StatusCode::UNPROCESSABLE_ENTITY, error.to_string());
    };
    let kind = body["schemaType"].as_str().map(str::to_string);
    let mut registry = registry.lock().unwrap();
    let id = match registry.schemas.iter().position(|(s, _)| s == schema) {
        Some(at) => at + 1,
        None => {
            registry.schemas.push((schema.to_string(), kind));
            registry.schemas.len()
        }
    };
    (StatusCode::OK, serde_json::json!({ "id": id }).to_string())
}

async fn schema_by_id(State(registry): State<Shared>, Path(id): Path<u32>) -> (StatusCode, String) {
    let mut registry = registry.lock().unwrap();
    *registry.reads.entry(id).or_default() += 1;
    match registry.schemas.get((id as usize).wrapping_sub(1)) {
        // As Confluent's registry answers: `schemaType` only for schemas that are not Avro.
        Some((schema, Some(kind))) => (
            StatusCode::OK,
            serde_json::json!({ "schema": schema, "schemaType": kind }).to_string(),
        ),
        Some((schema, None)) => (
            StatusCode::OK,
            serde_json::json!({ "schema": schema }).to_string(),
        ),
        None => (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error_code": 40403, "message": "Schema not found"}).to_string(),
        ),
    }
}

/// Serves the registry on a loopback port; returns its URL.
async fn serve(registry: Shared) -> String {
    let app = Router::new()
        .route("/subjects/{subject}/versions", post(register))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .with_state(registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Registers `schema` under `subject` as a producer's serializer does; returns its id.
async fn register_schema(url: &str, subject: &str, schema: &str) -> u32 {
    register_typed(url, subject, schema, None).await
}

/// [`register_schema`] for a schema of `kind` (`JSON`; Avro when `None`).
async fn register_typed(url: &str, subject: &str, schema: &str, kind: Option<&str>) -> u32 {
    let mut body = serde_json::json!({ "schema": schema });
    if let Some(kind) = kind {
        body["schemaType"] = kind.into();
    }
    let answer: serde_json::Value = serde_json::from_slice(
        &reqwest::Client::new()
            .post(format!("{url}/subjects/{subject}/versions"))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    answer["id"].as_u64().unwrap() as u32
}

fn pipeline(brokers: &str, topic: &str, registry: &str) -> String {
    pipeline_of("avro", brokers, topic, registry)
}

fn pipeline_of(format: &str, brokers: &str, topic: &str, registry: &str) -> String {
    format!(
        r#"pipeline: purchases
sources:
  purchases:
    kafka: {{ brokers: "{brokers}", topic: {topic} }}
tables:
  bronze.purchases: {{ from: purchases }}
  silver.purchases:
    from: bronze.purchases
    parse:
      format: {format}
      registry: {registry}
      schema: {{ user_id: string, amount: "decimal(10,2)", at: timestamp, country: string, coupon: string }}
      metadata: [key, timestamp]
    expectations:
      - {{ name: keyed_by_user, expr: "_key = user_id AND _timestamp IS NOT NULL", on_violation: quarantine }}
  gold.revenue_by_country:
    from: silver.purchases
    sql: SELECT country, count(*) AS orders, sum(amount) AS revenue FROM silver.purchases GROUP BY country
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_avro_records_decode_with_their_registry_schema_through_gold() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let registry = Shared::default();
    let url = serve(registry.clone()).await;
    let topic = unique_topic("purchases");
    let subject = format!("{topic}-value");
    let v1 = register_schema(&url, &subject, V1).await;
    let v2 = register_schema(&url, &subject, V2).await;
    assert_ne!(v1, v2, "each version has its id");
    assert_eq!(
        register_schema(&url, &subject, V1).await,
        v1,
        "ids are stable"
    );
    create_topic(&tansu.brokers, &topic, 2).await.unwrap();

    // Good records on both partitions, with bad ones among them on partition 0.
    let purchases: Vec<Purchase> = (0..GOOD).map(purchase).collect();
    let mut records: Vec<(i32, String, Vec<u8>)> = Vec::new();
    let mut bad = 0;
    for (i, p) in purchases.iter().enumerate() {
        let second = i >= SECOND_VERSION_FROM;
        let value = framed(p, if second { v2 } else { v1 }, second);
        records.push(((i % 2) as i32, p.user.clone(), value));
        if i % 300 == 150 {
            let unframed = format!(r#"{{"user_id":"{}"}}"#, p.user).into_bytes();
            let unknown = framed(p, 999, false);
            let mut truncated = framed(p, v1, false);
            truncated.truncate(truncated.len() - 3);
            for value in [unframed, unknown, truncated] {
                records.push((0, "bad".into(), value));
                bad += 1;
            }
        }
    }
    assert_eq!(bad, 30);

    let text = pipeline(&tansu.brokers, &topic, &url);
    let cluster = TestCluster::start(2, &text).await.unwrap();
    let last = produce(&tansu.brokers, &topic, &records).await.unwrap();
    wait_caught_up(
        &cluster.tables,
        &cluster.spec,
        &topic,
        &last,
        Duration::from_secs(180),
    )
    .await
    .unwrap();

    // Silver: every good record once, typed; the coupon only where the version has one.
    let got = rows(
        &cluster
            .query(
                "SELECT user_id, CAST(amount AS VARCHAR) AS a, CAST(at AS BIGINT) AS t, country, coupon \
                 FROM silver.purchases",
            )
            .await
            .unwrap(),
    )
    .unwrap();
    let expected: Vec<String> = purchases
        .iter()
        .map(|p| {
            format!(
                "{} | {}.{:02} | {} | {} | {}",
                p.user,
                p.cents / 100,
                p.cents % 100,
                p.at,
                p.country.unwrap_or("NULL"),
                p.coupon.as_deref().unwrap_or("NULL")
            )
        })
        .collect();
    let (mut got, mut expected) = (got, expected);
    got.sort();
    expected.sort();
    assert_eq!(got.len(), GOOD, "every good record once");
    let wrong: Vec<(&String, &String)> = got
        .iter()
        .zip(&expected)
        .filter(|(g, e)| g != e)
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "fields not as written (got, expected): {wrong:?}"
    );

    // The Kafka key (the user) and record time, kept as `_key` and `_timestamp`, held
    // the rule on every record.
    let keyed = rows(
        &cluster
            .query(
                "SELECT count(*) FROM silver.purchases \
                 WHERE _key = user_id AND _timestamp IS NOT NULL",
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(keyed, [GOOD.to_string()]);

    // Gold: orders and revenue per country, in integer cents.
    let mut by_country: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for p in &purchases {
        let entry = by_country
            .entry(p.country.unwrap_or("NULL").to_string())
            .or_default();
        entry.0 += 1;
        entry.1 += p.cents;
    }
    let expected: Vec<String> = by_country
        .iter()
        .map(|(country, (orders, cents))| {
            format!("{country} | {orders} | {}.{:02}", cents / 100, cents % 100)
        })
        .collect();
    let got = rows(
        &cluster
            .query(
                "SELECT coalesce(country, 'NULL') AS c, orders, CAST(revenue AS VARCHAR) \
                 FROM gold.revenue_by_country ORDER BY c",
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(got, expected, "gold is the aggregate of the records");

    // The bad records: quarantined with their reason, none lost.
    let got = rows(
        &cluster
            .query(
                "SELECT rule, CASE \
                   WHEN reason LIKE '%not in the Confluent wire format%' THEN 'unframed' \
                   WHEN reason LIKE '%schema id 999 is not in the registry%' THEN 'unknown id' \
                   WHEN reason LIKE '%schema id 1:%' AND (reason LIKE '%truncated%' \
                     OR reason LIKE '%does not decode%') THEN 'cut short' \
                   ELSE reason END AS why, \
                 count(*) FROM silver.purchases_quarantine GROUP BY 1, 2 ORDER BY 2",
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        got,
        [
            "_parse | cut short | 10",
            "_parse | unframed | 10",
            "_parse | unknown id | 10"
        ],
        "each bad record quarantined with its reason"
    );

    // Each writer schema was fetched once per refine task, not once per record.
    let reads = registry.lock().unwrap().reads.clone();
    for id in [v1, v2, 999] {
        let n = reads.get(&id).copied().unwrap_or(0);
        assert!(
            (1..=3).contains(&n),
            "schema {id} fetched {n} times: {reads:?}"
        );
    }
}

/// The JSON Schema serializer's records: a zero byte, the schema id, the JSON text. The
/// worker unframes them after checking the id names a JSON schema; silver reads the JSON
/// as any JSON payload. Records not framed, or naming an Avro schema or none, are
/// quarantined with the reason; gold is the test's aggregate in integer cents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_json_schema_records_are_unframed_through_gold() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let registry = Shared::default();
    let url = serve(registry.clone()).await;
    let topic = unique_topic("purchases_json");
    let subject = format!("{topic}-value");
    let json_schema = r#"{"type":"object","properties":{"user_id":{"type":"string"},"amount":{"type":"string"},"at":{"type":"integer"},"country":{"type":["string","null"]}}}"#;
    let id = register_typed(&url, &subject, json_schema, Some("JSON")).await;
    let avro_id = register_schema(&url, &subject, V1).await;
    create_topic(&tansu.brokers, &topic, 2).await.unwrap();
    const RECORDS: usize = 600;
    let purchases: Vec<Purchase> = (0..RECORDS).map(purchase).collect();
    let frame = |id: u32, p: &Purchase| {
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        let text = serde_json::json!({
            "user_id": p.user,
            "amount": format!("{}.{:02}", p.cents / 100, p.cents % 100),
            // Epoch milliseconds.
            "at": p.at / 1_000,
            "country": p.country,
        });
        out.extend_from_slice(text.to_string().as_bytes());
        out
    };
    let mut records: Vec<(i32, String, Vec<u8>)> = purchases
        .iter()
        .enumerate()
        .map(|(i, p)| ((i % 2) as i32, p.user.clone(), frame(id, p)))
        .collect();
    let unframed = br#"{"user_id":"u1","amount":"1.00","at":1}"#.to_vec();
    for value in [
        unframed,
        frame(avro_id, &purchases[0]),
        frame(4242, &purchases[1]),
    ] {
        records.push((0, "bad".into(), value));
    }
    let text = pipeline_of("json", &tansu.brokers, &topic, &url);
    let cluster = TestCluster::start(2, &text).await.unwrap();
    let last = produce(&tansu.brokers, &topic, &records).await.unwrap();
    wait_caught_up(
        &cluster.tables,
        &cluster.spec,
        &topic,
        &last,
        Duration::from_secs(180),
    )
    .await
    .unwrap();

    let mut got = rows(
        &cluster
            .query(
                "SELECT user_id, CAST(amount AS VARCHAR), CAST(at AS BIGINT), country FROM silver.purchases",
            )
            .await
            .unwrap(),
    )
    .unwrap();
    let mut expected: Vec<String> = purchases
        .iter()
        .map(|p| {
            format!(
                "{} | {}.{:02} | {} | {}",
                p.user,
                p.cents / 100,
                p.cents % 100,
                p.at,
                p.country.unwrap_or("NULL")
            )
        })
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "every record once, unframed and typed");
    let cents: i64 = purchases.iter().map(|p| p.cents).sum();
    let got = rows(
        &cluster
            .query("SELECT sum(orders), CAST(sum(revenue) AS VARCHAR) FROM gold.revenue_by_country")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        got,
        [format!("{RECORDS} | {}.{:02}", cents / 100, cents % 100)]
    );
    let got = rows(
        &cluster
            .query(
                "SELECT rule, CASE \
                   WHEN reason LIKE 'json: not in the Confluent wire format%' THEN 'unframed' \
                   WHEN reason LIKE '%is a AVRO schema, not JSON%' THEN 'avro id' \
                   WHEN reason LIKE '%schema id 4242 is not in the registry%' THEN 'unknown id' \
                   ELSE reason END AS why FROM silver.purchases_quarantine ORDER BY 2",
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        got,
        [
            "_parse | avro id",
            "_parse | unframed",
            "_parse | unknown id"
        ]
    );
    let reads = registry.lock().unwrap().reads.clone();
    assert!((1..=3).contains(&reads[&id]), "{reads:?}");
}
