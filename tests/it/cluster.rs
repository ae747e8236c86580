//! Cluster mode end to end: real etcd, a real Kafka-protocol broker (tansu), two
//! coordinator replicas and worker processes. While 200,000 acknowledged events stream
//! through a 12-partition topic, a fourth worker joins (hand-off), a worker is SIGKILLed,
//! and the leading coordinator is SIGKILLed; bronze must still hold exactly the
//! acknowledged records, and silver and gold must be complete. Then every worker is
//! restarted, and nothing is ingested again.

use std::collections::BTreeSet;
use std::time::Duration;

use smelter_lake::{history, log};
use smelter_tests::kafka::{
    caught_up_and_exact, create_topic, produce_in_background, unique_topic,
};
use smelter_tests::oracle::check_pipeline;
use smelter_tests::processes::{kafka_cluster, quick_settings, tasks, worker_id};
use smelter_tests::services::{Etcd, Tansu};
use smelter_tests::{bronze_rows, wait_bronze_rows};
use tokio::time::Instant;

const PARTITIONS: i32 = 12;
/// Rounds of production; each round sends `PER_ROUND` events to every partition.
const ROUNDS: i64 = 40;
const PER_ROUND: i64 = 417; // 12 × 417 × 40 = 200,160 events
const LEASE_TTL: Duration = Duration::from_millis(3_000);

fn ingest_owners(status: &serde_json::Value) -> Vec<(i64, String, String)> {
    tasks(status)
        .iter()
        .filter(|t| t["kind"] == "ingest")
        .map(|t| {
            (
                t["partition"].as_i64().unwrap_or(-1),
                t["worker_id"].as_str().unwrap_or_default().to_string(),
                t["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_rebalances_and_fails_over_exactly_once() {
    let (Some(etcd), Some(tansu)) = (Etcd::start().await, Tansu::start().await) else {
        return;
    };
    let topic = unique_topic("clicks");
    create_topic(&tansu.brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let ttl = LEASE_TTL.as_millis().to_string();
    let settings = quick_settings(
        &ttl,
        "500",
        &[
            ("SMELTER__COORDINATOR__HANDOFF_TIMEOUT_MS", "5000"),
            ("SMELTER__WORKER__BATCH_MAX_RECORDS", "10000"),
        ],
    );
    let (mut cluster, spec, tables) =
        kafka_cluster(2, 3, &etcd.endpoint, &tansu.brokers, &topic, &settings).await;

    // Every partition gets a task, spread evenly over the three workers.
    let (status, _) = cluster
        .wait_status(
            "12 ingest tasks over 3 workers",
            Duration::from_secs(30),
            |s| {
                let owners = ingest_owners(s);
                let per_worker: BTreeSet<usize> = (0..3)
                    .filter_map(|i| worker_id(s, i))
                    .map(|w| owners.iter().filter(|(_, o, _)| *o == w).count())
                    .collect();
                owners.len() == PARTITIONS as usize && per_worker == BTreeSet::from([4])
            },
        )
        .await
        .unwrap();
    assert!(
        status["leader_endpoint"]
            .as_str()
            .is_some_and(|l| !l.is_empty()),
        "status names the leader: {status}"
    );

    let producer = produce_in_background(
        &tansu.brokers,
        &topic,
        PARTITIONS,
        ROUNDS,
        PER_ROUND,
        Duration::from_millis(900),
    );

    // A fourth worker joins mid-stream: partitions are handed off to it within 10 s.
    wait_bronze_rows(&tables, 20_000, Duration::from_secs(120))
        .await
        .unwrap();
    let joiner = cluster.add_worker().unwrap();
    let (_, took) = cluster
        .wait_status(
            "the new worker owns partitions",
            Duration::from_secs(10),
            |s| {
                let Some(id) = worker_id(s, joiner) else {
                    return false;
                };
                let owners = ingest_owners(s);
                owners
                    .iter()
                    .any(|(_, w, state)| *w == id && state == "running")
                    && tasks(s).iter().all(|t| t["releasing_from"].is_null())
            },
        )
        .await
        .unwrap();
    eprintln!("a joining worker ran its first partitions after {took:?}");

    // SIGKILL worker 0 mid-stream: its partitions resume elsewhere within TTL + 5 s.
    let status = cluster.status().await.unwrap();
    let victim = worker_id(&status, 0).unwrap();
    let orphaned: Vec<i64> = ingest_owners(&status)
        .into_iter()
        .filter(|(_, w, _)| *w == victim)
        .map(|(p, _, _)| p)
        .collect();
    assert!(!orphaned.is_empty(), "worker 0 owned partitions: {status}");
    cluster.kill_worker(0).unwrap();
    let (_, took) = cluster
        .wait_status(
            "the killed worker's partitions run elsewhere",
            LEASE_TTL + Duration::from_secs(5),
            |s| {
                let owners = ingest_owners(s);
                worker_id(s, 0).is_none()
                    && orphaned.iter().all(|p| {
                        owners
                            .iter()
                            .any(|(q, w, state)| q == p && *w != victim && state == "running")
                    })
            },
        )
        .await
        .unwrap();
    eprintln!("a killed worker's partitions resumed after {took:?}");

    // SIGKILL the leading coordinator: the other replica leads within TTL + 5 s, and the
    // workers keep ingesting meanwhile.
    let before = cluster.status().await.unwrap();
    let old_leader = before["leader_endpoint"].as_str().unwrap().to_string();
    let leader_index = (0..2)
        .find(|i| cluster.coordinator_endpoint(*i) == old_leader)
        .expect("the leader is one of the replicas");
    let rows_before = bronze_rows(&tables).await;
    cluster.kill_coordinator(leader_index).unwrap();
    // `smelter status` issued right away waits out the election instead of failing.
    let endpoints = cluster.endpoints();
    let asked = Instant::now();
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(smelter_tests::smelter_binary())
            .args(["status", "--output", "json", "--coordinator", &endpoints])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let answered: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_ne!(answered["leader_endpoint"], old_leader.as_str());
    let failover = asked.elapsed();
    assert!(
        failover <= LEASE_TTL + Duration::from_secs(5),
        "{failover:?}"
    );
    cluster
        .wait_status(
            "the other replica leads",
            LEASE_TTL + Duration::from_secs(5),
            |s| {
                s["leader_endpoint"]
                    .as_str()
                    .is_some_and(|l| !l.is_empty() && l != old_leader)
            },
        )
        .await
        .unwrap();
    let rows_during = bronze_rows(&tables).await;
    eprintln!(
        "`smelter status` answered from a new leader after {failover:?}; bronze grew {rows_before} -> {rows_during} meanwhile"
    );
    assert!(
        rows_during > rows_before,
        "workers kept ingesting while there was no leader"
    );
    // A worker whose lease ran out meanwhile comes back under its own id.
    let members: BTreeSet<String> = [1, 2, joiner]
        .iter()
        .filter_map(|i| worker_id(&before, *i))
        .collect();
    cluster
        .wait_status(
            "the new leader has the same three workers",
            LEASE_TTL + Duration::from_secs(5),
            |s| {
                let ids: BTreeSet<String> = s["workers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|w| w["worker_id"].as_str().map(str::to_string))
                    .collect();
                ids == members
            },
        )
        .await
        .unwrap();
    cluster.restart_coordinator(leader_index).unwrap();

    // Everything acknowledged lands exactly once, through gold.
    let producer = producer.await.unwrap();
    let truth = producer.truth();
    assert!(truth.bronze.len() >= 200_000);
    caught_up_and_exact(&tables, &spec, &topic, &producer, Duration::from_secs(240))
        .await
        .unwrap();

    // Restart every worker (SIGTERM drains), then start three new ones: positions come
    // from the Delta log, so nothing is ingested again.
    let bronze_version = log::version(&tables.open("bronze.events").await.unwrap());
    for i in 0..cluster.workers.len() {
        if cluster.workers[i].is_some() {
            let exit = cluster.stop_worker(i).await.unwrap();
            assert!(exit.success(), "a worker exits 0 after draining: {exit}");
        }
    }
    let fresh: Vec<usize> = (0..3).map(|_| cluster.add_worker().unwrap()).collect();
    let last = producer.last_offsets();
    cluster
        .wait_status(
            "restarted workers run every partition at its last offset",
            Duration::from_secs(60),
            |s| {
                let ids: Vec<String> = fresh.iter().filter_map(|i| worker_id(s, *i)).collect();
                ids.len() == 3
                    && tasks(s).iter().filter(|t| t["kind"] == "ingest").all(|t| {
                        let partition = t["partition"].as_i64().unwrap_or(-1) as i32;
                        ids.iter().any(|id| t["worker_id"] == id.as_str())
                            && t["state"] == "running"
                            && t["committed_offset"].as_i64() == last.get(&partition).copied()
                    })
            },
        )
        .await
        .unwrap();
    // Nothing to wait for: the claim is that nothing is ingested. Watch bronze for two
    // seconds of running ingest tasks (several poll rounds) and fail on the first new commit
    // that adds data or moves a source position. The maintenance task may compact bronze
    // meanwhile: a compaction rewrites files without a data change, and is allowed.
    let window = Instant::now() + Duration::from_secs(2);
    let mut checked = bronze_version;
    while Instant::now() < window {
        let bronze = tables.open("bronze.events").await.unwrap();
        if log::version(&bronze) > checked {
            let since = history::commits(&bronze, "bronze.events").await.unwrap();
            for commit in since.iter().filter(|c| c.version > checked) {
                assert!(
                    commit.files_added == 0 && commit.txns.is_empty(),
                    "restarted workers ingested again: bronze version {} after {bronze_version}: {commit:?}",
                    commit.version
                );
                eprintln!(
                    "bronze version {} meanwhile: {:?}, no data change",
                    commit.version, commit.operation
                );
            }
            checked = log::version(&bronze);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_pipeline(&tables, &spec, &truth).await.unwrap();
}
