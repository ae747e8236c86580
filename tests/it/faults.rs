//! Faults against the commit protocol (design.md §5), always judged by the exactly-once
//! oracle and the verifier: the commit-lock holder paused past its lease (real etcd, a real
//! broker, worker processes), and process crashes injected at each step of a commit.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use smelter_common::spec::PipelineSpec;
use smelter_common::store::{CoordinationStore, EtcdStore, keys};
use smelter_tests::bounded_demo;
use smelter_tests::kafka::{
    EventProducer, create_topic, demo_events, kafka_demo, unique_topic, wait_caught_up,
};
use smelter_tests::oracle::{check_pipeline, generator_truth};
use smelter_tests::processes::{ProcessCluster, smelter_up, wait_exit};
use smelter_tests::services::{Etcd, Tansu};
use smelter_worker::tables::TableStore;
use tokio::time::Instant;

const LOCK_TTL: Duration = Duration::from_millis(1_000);

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// The pid in a lock holder record (`<host> pid <pid> flight <addr>`).
fn holder_pid(value: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(value);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "pid")?;
    words.next()?.parse().ok()
}

/// SIGSTOPs whoever holds a table commit lock — mid-commit, since the lock is held only
/// for the log write — for longer than the lock's lease, then SIGCONTs it; 20 times while
/// events stream. A paused holder's lock is taken over; when it wakes, its commit must not
/// land on a stale base. The oracle must find every table exact and the verifier must see
/// epochs strictly increasing in every log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_the_lock_holder_past_its_lease_lands_no_stale_commit() {
    let (Some(etcd), Some(tansu)) = (Etcd::start().await, Tansu::start().await) else {
        return;
    };
    let topic = unique_topic("pause");
    create_topic(&tansu.brokers, &topic, 4).await.unwrap();
    let lock_ttl = LOCK_TTL.as_millis().to_string();
    let mut cluster = ProcessCluster::start(
        1,
        &etcd.endpoint,
        &[
            ("SMELTER__COORDINATOR__LEASE_TTL_MS", "5000"),
            ("SMELTER__COORDINATOR__HEARTBEAT_INTERVAL_MS", "500"),
            ("SMELTER__COORDINATOR__DISCOVERY_INTERVAL_MS", "1000"),
            ("SMELTER__WORKER__COMMIT_LOCK_TTL_MS", lock_ttl.as_str()),
            ("SMELTER__WORKER__BATCH_MAX_WAIT_MS", "200"),
            ("SMELTER__WORKER__POLL_INTERVAL_MS", "50"),
            ("SMELTER__WORKER__GOLD_MIN_INTERVAL_MS", "200"),
        ],
    );
    cluster.add_worker();
    cluster.add_worker();
    let text = kafka_demo(&tansu.brokers, &topic);
    let pipeline = cluster.dir().join("pipeline.yaml");
    std::fs::write(&pipeline, &text).unwrap();
    cluster.apply(&pipeline).await.unwrap();
    let spec = PipelineSpec::parse(&text, "pipeline.yaml").unwrap();
    let tables = TableStore::new(cluster.root()).unwrap();

    let brokers = tansu.brokers.clone();
    let producer_topic = topic.clone();
    let producer = tokio::spawn(async move {
        let mut producer = EventProducer::new(&brokers, &producer_topic, &demo_events(4)).unwrap();
        // About a minute of traffic: the pauses need commits to catch.
        for _ in 0..100 {
            producer.produce(&[0, 1, 2, 3], 150).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        producer
    });

    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let lock_prefix = keys::commit_lock("");
    let mut paused_holding = 0;
    let mut tables_paused = BTreeSet::new();
    for cycle in 0..20 {
        // Catch a holder: the lock key exists only while a log write is under way.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (key, pid) = loop {
            let held = store.list(&lock_prefix).await.unwrap();
            if let Some(kv) = held.first()
                && let Some(pid) = holder_pid(&kv.value)
            {
                break (kv.key.clone(), pid);
            }
            assert!(
                Instant::now() < deadline,
                "no commit lock was taken for 20 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        signal(pid, "STOP");
        eprintln!("cycle {cycle}: paused pid {pid} holding {key}");
        if store.get(&key).await.unwrap().is_some() {
            paused_holding += 1;
            tables_paused.insert(keys::leaf(&key).to_string());
        }
        tokio::time::sleep(LOCK_TTL + Duration::from_millis(700)).await;
        signal(pid, "CONT");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "paused a holder with its lock still held {paused_holding} of 20 times, tables {tables_paused:?}"
    );
    assert!(
        paused_holding >= 5,
        "most pauses must land while the lock is held ({paused_holding} of 20)"
    );

    let producer = producer.await.unwrap();
    wait_caught_up(
        &tables,
        &spec,
        &topic,
        &producer.last_offsets(),
        Duration::from_secs(180),
    )
    .await
    .unwrap();
    // Exact tables; the verifier inside also checks that `smelter/epoch` strictly increases.
    check_pipeline(&tables, &spec, &producer.truth())
        .await
        .unwrap();
}

/// Runs a 20,000-event pipeline in `smelter up` with `failpoint` armed, so the process
/// aborts at that point of a commit; then runs it again to the end. Exact every time.
async fn crash_at(failpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.yaml");
    let text = bounded_demo(20_000, 4).replace("      rate: null\n", "      rate: 8000\n");
    std::fs::write(&pipeline, &text).unwrap();
    let data = dir.path().join("data");

    let mut crashing = smelter_up(
        &data,
        &pipeline,
        &[],
        &[("SMELTER__WORKER__FAILPOINT", failpoint)],
    );
    let status = wait_exit(&mut crashing, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        !status.success(),
        "{failpoint}: the process aborted ({status})"
    );

    let mut again = smelter_up(&data, &pipeline, &["--exit-when-done"], &[]);
    let status = wait_exit(&mut again, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(
        status.success(),
        "{failpoint}: the rerun finished ({status})"
    );
    let tables = TableStore::new(data.join("tables")).unwrap();
    let spec = PipelineSpec::parse(&text, "pipeline.yaml").unwrap();
    check_pipeline(&tables, &spec, &generator_truth(&spec))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_data_files_before_the_commit() {
    crash_at("commit.after_files:7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_commit_before_its_result_is_handled() {
    crash_at("commit.after_log:7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_commit_before_the_status_report() {
    crash_at("ingest.after_commit:3").await;
}
