//! The Kafka source in one process (coordinator and workers in-process, real tansu broker):
//! a multi-partition topic over two workers lands exactly once, and a broker that goes
//! away puts the ingest task in backoff with the broker's error while the worker keeps
//! serving. (Partitions added later: tansu 0.6 answers CreatePartitions with
//! UnsupportedFeature, so discovery is proven in the coordinator's own tests.)

use std::time::Duration;

use smelter_harness::wait_until;
use smelter_sdk::AdminClient;
use smelter_tests::TestCluster;
use smelter_tests::kafka::{
    EventProducer, create_topic, demo_events, kafka_demo, unique_topic, wait_caught_up,
};
use smelter_tests::oracle::check_pipeline;
use smelter_tests::services::Tansu;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_partitions_over_two_workers_are_ingested_exactly_once() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let topic = unique_topic("many");
    create_topic(&tansu.brokers, &topic, 6).await.unwrap();
    let cluster = TestCluster::start(2, &kafka_demo(&tansu.brokers, &topic))
        .await
        .unwrap();
    let mut producer = EventProducer::new(&tansu.brokers, &topic, &demo_events(6)).unwrap();
    let partitions: Vec<i32> = (0..6).collect();
    for _ in 0..3 {
        producer.produce(&partitions, 700).await.unwrap();
    }
    wait_caught_up(
        &cluster.tables,
        &cluster.spec,
        &topic,
        &producer.last_offsets(),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    check_pipeline(&cluster.tables, &cluster.spec, &producer.truth())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_broker_backs_off_and_the_worker_keeps_serving() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let topic = unique_topic("lost");
    create_topic(&tansu.brokers, &topic, 2).await.unwrap();
    let cluster = TestCluster::start(1, &kafka_demo(&tansu.brokers, &topic))
        .await
        .unwrap();
    let mut producer = EventProducer::new(&tansu.brokers, &topic, &demo_events(2)).unwrap();
    producer.produce(&[0, 1], 500).await.unwrap();
    wait_caught_up(
        &cluster.tables,
        &cluster.spec,
        &topic,
        &producer.last_offsets(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    drop(tansu);
    let last = wait_until(
        Duration::from_secs(45),
        "ingest reporting backoff with the broker's error",
        async || {
            let mut admin = AdminClient::connect(&cluster.coordinator_endpoint())
                .await
                .unwrap();
            let last = smelter_sdk::status_json(&admin.status().await.unwrap());
            let ingest: Vec<&serde_json::Value> = last["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["kind"] == "ingest")
                .collect();
            let backing_off = !ingest.is_empty()
                && ingest.iter().all(|t| {
                    t["state"] == "backoff"
                        && t["error"].as_str().is_some_and(|e| e.contains("events"))
                });
            if backing_off {
                Ok(last)
            } else {
                Err(format!("status {last}"))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        last["workers"].as_array().map(Vec::len),
        Some(1),
        "the worker is still a member: {last}"
    );
    // Queries are still served from what was committed.
    let batches = cluster
        .query("SELECT count(*) AS n FROM bronze.events")
        .await
        .unwrap();
    assert_eq!(
        smelter_tests::oracle::rows(&batches).unwrap(),
        vec!["1000".to_string()]
    );
}
