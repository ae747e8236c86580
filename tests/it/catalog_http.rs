//! The REST API against a cluster — two coordinator replicas, three workers, etcd and a
//! Kafka-protocol broker — driven with a real HTTP client: every endpoint on both replicas
//! (a follower relays the leader's catalog), bad requests, and a failover of the leading
//! replica in the middle: the follower keeps answering reads (from the last status it saw,
//! saying so, while no leader answers), then leads, and the restarted replica relays.
//! Figures are checked against the producer's acknowledgements (the oracle), and the
//! catalog description (written into each table's metadata while its writers run) against
//! the Delta log read with delta-rs directly.

use std::time::Duration;

use smelter_tests::kafka::{
    EventProducer, caught_up_and_exact, create_topic, demo_events, unique_topic,
};
use smelter_tests::processes::{kafka_cluster, quick_settings};
use smelter_tests::services::{Etcd, Tansu};

const PARTITIONS: i32 = 3;
const PER_PARTITION: i64 = 1_000;
const LEASE_TTL_MS: &str = "3000";

/// One HTTP answer.
struct Answer {
    status: u16,
    /// The `x-smelter-status` header (where a catalog read's status came from).
    source: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    try_send(request).await.expect("the server answers")
}

/// The answer, or why there is none (a replica still starting refuses connections).
async fn try_send(request: reqwest::RequestBuilder) -> Result<Answer, String> {
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let source = response
        .headers()
        .get("x-smelter-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.bytes().await.map_err(|e| e.to_string())?.to_vec();
    Ok(Answer {
        status,
        source,
        body,
    })
}

async fn get(client: &reqwest::Client, url: String) -> Answer {
    send(client.get(url)).await
}

async fn query(client: &reqwest::Client, base: &str, body: &str, accept: Option<&str>) -> Answer {
    let mut request = client
        .post(format!("{base}/query"))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    send(request).await
}

/// The single number a `SELECT count(*)`-like query returned as JSON.
fn only_number(answer: &Answer) -> i64 {
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let body = answer.json();
    let row = body["rows"][0].as_object().expect("one row").clone();
    row.values()
        .next()
        .and_then(|v| v.as_i64())
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_the_rest_api_through_a_failover() {
    let (Some(etcd), Some(tansu)) = (Etcd::start().await, Tansu::start().await) else {
        return;
    };
    let topic = unique_topic("rest");
    create_topic(&tansu.brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let settings = quick_settings(LEASE_TTL_MS, "500", &[]);
    let (mut cluster, spec, tables) =
        kafka_cluster(2, 3, &etcd.endpoint, &tansu.brokers, &topic, &settings).await;
    let mut producer =
        EventProducer::new(&tansu.brokers, &topic, &demo_events(PARTITIONS as u32)).unwrap();
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    producer.produce(&partitions, PER_PARTITION).await.unwrap();
    caught_up_and_exact(&tables, &spec, &topic, &producer, Duration::from_secs(180))
        .await
        .unwrap();
    let truth = producer.truth();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Which replica leads.
    let status = cluster.status().await.unwrap();
    let leader_endpoint = status["leader_endpoint"].as_str().unwrap().to_string();
    let leader = (0..2)
        .find(|i| cluster.coordinator_endpoint(*i) == leader_endpoint)
        .expect("one replica leads");
    let follower = 1 - leader;
    let (lead_url, follow_url) = (
        cluster.http_endpoint(leader),
        cluster.http_endpoint(follower),
    );

    // Liveness and readiness on both; metrics are the leader's.
    for base in [&lead_url, &follow_url] {
        assert_eq!(get(&client, format!("{base}/health")).await.status, 200);
        let ready = get(&client, format!("{base}/ready")).await;
        assert_eq!(
            ready.status,
            200,
            "{}",
            String::from_utf8_lossy(&ready.body)
        );
    }
    let metrics = get(&client, format!("{lead_url}/metrics")).await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("smelter_coordinator_leader 1"), "{text}");
    assert!(text.contains("smelter_task_rows_committed_total"), "{text}");
    let metrics = get(&client, format!("{follow_url}/metrics")).await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("smelter_coordinator_leader 0"), "{text}");

    // The catalog answers the same on both replicas: the leader's own, relayed.
    let mut listed = Vec::new();
    for base in [&lead_url, &follow_url] {
        let tables_answer = get(&client, format!("{base}/tables")).await;
        assert_eq!(tables_answer.status, 200);
        let mut names: Vec<String> = tables_answer.json()["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        listed.push((names, tables_answer.source));
    }
    assert_eq!(listed[0].0, listed[1].0);
    assert_eq!(listed[0].1, "leader");
    assert_eq!(listed[1].1, "relayed");
    let mut expected: Vec<String> = spec.tables.keys().cloned().collect();
    expected.push("silver.events_quarantine".into());
    expected.sort();
    assert_eq!(listed[0].0, expected);
    let gold = get(&client, format!("{follow_url}/tables?layer=gold"))
        .await
        .json();
    assert!(
        gold["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["layer"] == "gold")
    );
    assert_eq!(
        get(&client, format!("{follow_url}/tables?layer=platinum"))
            .await
            .status,
        400
    );
    assert_eq!(
        get(&client, format!("{follow_url}/tables/gold.nope"))
            .await
            .status,
        404
    );
    assert_eq!(
        get(&client, format!("{follow_url}/no/such/endpoint"))
            .await
            .status,
        404
    );

    // A table: the pipeline's view and the log's, which agrees with the oracle.
    let silver = get(&client, format!("{follow_url}/tables/silver.events"))
        .await
        .json();
    assert_eq!(silver["owner"], "growth-analytics", "{silver}");
    let detail = &silver["detail"];
    assert_eq!(
        detail["rows"].as_u64(),
        Some(truth.silver.len() as u64),
        "{silver}"
    );
    assert!(detail["files"].as_u64().unwrap() >= 1);
    assert!(detail["bytes"].as_u64().unwrap() > 0);
    assert!(detail["small_files"].as_u64().unwrap() <= detail["files"].as_u64().unwrap());
    let columns: Vec<&str> = detail["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        columns.contains(&"event_id") && columns.contains(&"_offset"),
        "{columns:?}"
    );

    // History, preview, quality — quality per rule equals the oracle's quarantine.
    let history = get(
        &client,
        format!("{follow_url}/tables/silver.events/history?limit=5"),
    )
    .await;
    assert_eq!(history.status, 200);
    let history = history.json();
    assert!(history["rows"].as_array().unwrap().len() <= 5);
    assert_eq!(
        history["rows"][0]["version"].as_i64(),
        detail["version"].as_i64()
    );
    let preview = get(
        &client,
        format!("{follow_url}/tables/bronze.events/preview?limit=3"),
    )
    .await;
    assert_eq!(preview.json()["rows"].as_array().unwrap().len(), 3);
    assert_eq!(
        get(
            &client,
            format!("{follow_url}/tables/bronze.events/preview?limit=0")
        )
        .await
        .status,
        400
    );
    let quality = get(
        &client,
        format!("{follow_url}/tables/silver.events/quality"),
    )
    .await
    .json();
    let mut rules = std::collections::BTreeMap::<String, u64>::new();
    for rule in truth.quarantine.values() {
        *rules.entry(rule.clone()).or_default() += 1;
    }
    let counted: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(quality["totals"]["quarantined"].clone()).unwrap();
    assert_eq!(counted, rules, "{quality}");
    assert_eq!(
        quality["totals"]["rows_in"].as_u64(),
        Some(truth.bronze.len() as u64)
    );

    // Lineage, down to the source offsets behind the latest gold version: gold read all of
    // silver, which read all of bronze, which holds every acknowledged offset.
    let lineage = get(
        &client,
        format!("{follow_url}/catalog/lineage/silver.events"),
    )
    .await
    .json();
    assert!(
        lineage["upstream"].to_string().contains("bronze.events")
            && lineage["downstream"].to_string().contains("gold."),
        "{lineage}"
    );
    let gold = get(&client, format!("{follow_url}/tables/gold.hourly_metrics"))
        .await
        .json();
    let (gold_version, gold_rows) = (
        gold["detail"]["version"].as_i64().unwrap(),
        gold["detail"]["rows"].clone(),
    );
    let tree = get(
        &client,
        format!("{follow_url}/catalog/lineage/gold.hourly_metrics?version={gold_version}"),
    )
    .await
    .json();
    let mut offsets = std::collections::BTreeMap::new();
    collect_sources(&tree, &mut offsets);
    let last = producer.last_offsets();
    assert_eq!(
        offsets, last,
        "the sources behind gold v{gold_version}: {tree}"
    );
    let catalog = get(&client, format!("{follow_url}/catalog")).await.json();
    assert!(
        catalog["owners"]["growth-analytics"]
            .to_string()
            .contains("silver.events")
    );

    // Queries: rows as JSON and as Arrow, and what a bad request gets.
    let count = query(
        &client,
        &follow_url,
        r#"{"sql": "SELECT count(*) AS n FROM silver.events"}"#,
        None,
    )
    .await;
    assert_eq!(only_number(&count), truth.silver.len() as i64);
    let arrow = query(
        &client,
        &lead_url,
        r#"{"sql": "SELECT event_id FROM silver.events", "limit": 1000000}"#,
        Some("application/vnd.apache.arrow.stream"),
    )
    .await;
    assert_eq!(arrow.status, 200);
    let rows: usize =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow.body), None)
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
    assert_eq!(rows, truth.silver.len());
    let huge = query(
        &client,
        &lead_url,
        r#"{"sql": "SELECT * FROM bronze.events", "limit": 3}"#,
        None,
    )
    .await;
    assert_eq!(huge.json()["rows"].as_array().unwrap().len(), 3);
    assert_eq!(huge.json()["truncated"], true);
    for (body, status) in [
        (r#"{"sql": "SELEC nonsense"}"#, 400),
        (r#"{"sql": "SELECT * FROM gold.nope"}"#, 400),
        (r#"{"sql": "DROP TABLE gold.hourly_metrics"}"#, 400),
        (r#"{"sql": "#, 400),
        (r#"{"query": "SELECT 1"}"#, 400),
    ] {
        let answer = query(&client, &follow_url, body, None).await;
        assert_eq!(
            answer.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert!(
            answer.json()["error"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // Failover: SIGKILL the leader. The follower answers reads at once, from the last
    // status it saw (the leader it would relay from is gone), then leads.
    cluster.kill_coordinator(leader).unwrap();
    let cached = get(&client, format!("{follow_url}/tables/silver.events")).await;
    assert_eq!(
        cached.status,
        200,
        "{}",
        String::from_utf8_lossy(&cached.body)
    );
    assert!(cached.source.starts_with("cached"), "{}", cached.source);
    let during = query(
        &client,
        &follow_url,
        r#"{"sql": "SELECT count(*) FROM silver.events"}"#,
        None,
    )
    .await;
    assert_eq!(only_number(&during), truth.silver.len() as i64);
    let source =
        smelter_harness::wait_until(Duration::from_secs(20), "the follower leads", async || {
            let answer = get(&client, format!("{follow_url}/tables")).await;
            if answer.status == 200 && answer.source == "leader" {
                Ok(answer.source)
            } else {
                Err(format!("{} {}", answer.status, answer.source))
            }
        })
        .await
        .unwrap();
    assert_eq!(source, "leader");
    let ready = get(&client, format!("{follow_url}/ready")).await.json();
    assert_eq!(ready["leader"], "this replica");
    // The workers' leases lapsed while no replica led; once they are back with the new
    // leader, queries run again. The old leader comes back as a follower and relays the
    // new leader's catalog.
    cluster
        .wait_status(
            "three workers under the new leader",
            Duration::from_secs(30),
            |s| s["workers"].as_array().is_some_and(|w| w.len() == 3),
        )
        .await
        .unwrap();
    cluster.restart_coordinator(leader).unwrap();
    let relayed = smelter_harness::wait_until(
        Duration::from_secs(20),
        "the restarted replica relays",
        async || {
            let answer =
                try_send(client.get(format!("{lead_url}/tables/gold.hourly_metrics"))).await?;
            if answer.status != 200 || answer.source != "relayed" {
                return Err(format!("{}: {}", answer.status, answer.source));
            }
            // The new leader knows the workers once they have renewed their leases.
            let body = answer.json();
            if body["detail"].is_null() {
                return Err(format!("no detail yet: {}", body["detail_error"]));
            }
            Ok(body)
        },
    )
    .await
    .unwrap();
    // Gold's rows as before (its later versions write its catalog description).
    assert_eq!(relayed["detail"]["rows"], gold_rows, "{relayed}");
    assert!(relayed["detail"]["version"].as_i64() >= Some(gold_version));

    // The spec's catalog fields are in the tables' own metadata (they were created with
    // them): delta-rs reads them.
    let described = smelter_harness::wait_until(
        Duration::from_secs(30),
        "silver's description in its Delta metadata",
        async || {
            let metadata = silver_metadata(&tables).await?;
            let config = metadata.configuration().clone();
            if config.get("smelter.owner").map(String::as_str) == Some("growth-analytics") {
                Ok((metadata.description().map(str::to_string), config))
            } else {
                Err(format!("properties: {config:?}"))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(described.0, spec.tables["silver.events"].description);
    assert_eq!(
        described.1.get("smelter.tags").cloned(),
        Some(spec.tables["silver.events"].tags.join(","))
    );
    // Flight SQL's GetPrimaryKeys answers a gold table's keys, from its metadata too.
    let status = cluster.status().await.unwrap();
    let flight = status["workers"][0]["flight_endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let mut flight = smelter_sdk::QueryClient::connect(&flight).await.unwrap();
    let keys = smelter_harness::wait_until(
        Duration::from_secs(30),
        "gold's key in its metadata",
        async || {
            let keys = flight
                .primary_key("gold", "hourly_metrics")
                .await
                .map_err(|e| e.to_string())?;
            if keys.is_empty() {
                Err("no key yet".to_string())
            } else {
                Ok(keys)
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(keys, spec.tables["gold.hourly_metrics"].keys);
    assert_eq!(
        flight.primary_key("silver", "events").await.unwrap(),
        Vec::<String>::new()
    );

    // A changed spec reaches the tables' metadata: the maintenance task writes a
    // metadata-only version (`describe`), and the writers carry on past it exactly once.
    let changed = smelter_tests::kafka::kafka_demo(&tansu.brokers, &topic)
        .replace("owner: growth-analytics", "owner: growth-data");
    cluster.apply(&changed, "pipeline.yaml").await.unwrap();
    smelter_harness::wait_until(
        Duration::from_secs(60),
        "the new owner in silver's Delta metadata",
        async || {
            let owner = silver_metadata(&tables)
                .await?
                .configuration()
                .get("smelter.owner")
                .cloned();
            if owner.as_deref() == Some("growth-data") {
                Ok(())
            } else {
                Err(format!("owner {owner:?}"))
            }
        },
    )
    .await
    .unwrap();
    producer
        .produce(&partitions, PER_PARTITION / 2)
        .await
        .unwrap();
    caught_up_and_exact(&tables, &spec, &topic, &producer, Duration::from_secs(180))
        .await
        .unwrap();
    let history = get(
        &client,
        format!("{lead_url}/tables/silver.events/history?limit=1000"),
    )
    .await;
    let history = history.json();
    assert!(
        history["rows"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|v| v["operation"] == "describe")),
        "the description is a version of its own: {history}"
    );
    let entry = get(&client, format!("{lead_url}/tables/silver.events"))
        .await
        .json();
    assert_eq!(entry["owner"], "growth-data");
    assert_eq!(
        entry["detail"]["properties"]["smelter.owner"],
        "growth-data"
    );
}

/// Silver's Delta metadata as its log has it now (read with delta-rs).
async fn silver_metadata(
    tables: &smelter_lake::TableStore,
) -> Result<deltalake::kernel::Metadata, String> {
    let table = tables
        .open("silver.events")
        .await
        .map_err(|e| e.to_string())?;
    Ok(table
        .snapshot()
        .map_err(|e| e.to_string())?
        .metadata()
        .clone())
}

/// Every source offset in a lineage tree, the highest per partition.
fn collect_sources(tree: &serde_json::Value, out: &mut std::collections::BTreeMap<i32, i64>) {
    for source in tree["sources"].as_array().into_iter().flatten() {
        let partition = source["partition"].as_i64().unwrap() as i32;
        let offset = source["offset"].as_i64().unwrap();
        let entry = out.entry(partition).or_insert(offset);
        *entry = (*entry).max(offset);
    }
    for upstream in tree["upstream"].as_array().into_iter().flatten() {
        collect_sources(upstream, out);
    }
}
