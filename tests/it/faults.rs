//! Faults against the commit protocol (docs/exactly-once.md), always judged by the exactly-once
//! oracle and the verifier: the commit-lock holder paused past its lease (real etcd, a real
//! broker, worker processes), and process crashes injected at each step of a commit.

use std::collections::BTreeSet;
use std::time::Duration;

use smelter_common::spec::PipelineSpec;
use smelter_common::store::{CoordinationStore, EtcdStore, keys};
use smelter_harness::wait_until_every;
use smelter_lake::TableStore;
use smelter_tests::kafka::{
    EventProducer, caught_up_and_exact, create_topic, demo_events, produce_in_background,
    unique_topic, wait_caught_up,
};
use smelter_tests::oracle::{check_pipeline, generator_truth};
use smelter_tests::processes::{self, kafka_cluster, quick_settings, smelter_up, wait_exit};
use smelter_tests::services::{Etcd, Moto, Tansu};
use smelter_tests::{bounded_demo, wait_bronze_rows};
use tokio::time::Instant;

const LOCK_TTL: Duration = Duration::from_millis(1_000);

fn signal(pid: u32, name: &str) {
    processes::signal(pid, name).unwrap();
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
    pause_lock_holders(None, false).await;
}

/// The same pauses with every table on the S3-compatible store (moto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_the_lock_holder_on_s3_lands_no_stale_commit() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket("lake");
    pause_lock_holders(Some(&moto), false).await;
}

/// The same pauses on an S3-compatible store used without conditional writes, where only
/// the commit lock and the version claims in etcd keep two holders off one version
/// (`storage.commit_arbitration`). `SMELTER_PAUSES` sets the number of pauses (the soak:
/// 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_the_lock_holder_without_put_if_absent_lands_no_stale_commit() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket("lake");
    pause_lock_holders(Some(&moto), true).await;
}

async fn pause_lock_holders(s3: Option<&Moto>, arbitrated: bool) {
    let (Some(etcd), Some(tansu)) = (Etcd::start().await, Tansu::start().await) else {
        return;
    };
    let topic = unique_topic("pause");
    create_topic(&tansu.brokers, &topic, 4).await.unwrap();
    let lock_ttl = LOCK_TTL.as_millis().to_string();
    // Commits as often as possible: the pauses need log writes to catch.
    let mut settings = quick_settings(
        "5000",
        "500",
        &[
            ("SMELTER__WORKER__COMMIT_LOCK_TTL_MS", lock_ttl.as_str()),
            ("SMELTER__WORKER__BATCH_MAX_WAIT_MS", "200"),
            ("SMELTER__WORKER__POLL_INTERVAL_MS", "50"),
            ("SMELTER__WORKER__GOLD_MIN_INTERVAL_MS", "200"),
        ],
    );
    if let Some(moto) = s3 {
        settings.extend(s3_settings(moto));
    }
    if arbitrated {
        settings.extend([
            ("SMELTER__STORAGE__S3_CONDITIONAL_PUT", "false"),
            ("SMELTER__STORAGE__COMMIT_ARBITRATION", "true"),
        ]);
    }
    let pauses: usize = std::env::var("SMELTER_PAUSES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let (_cluster, spec, tables) =
        kafka_cluster(1, 2, &etcd.endpoint, &tansu.brokers, &topic, &settings).await;

    // Traffic for the whole series (three seconds a pause; a minute at least): the pauses
    // need commits to catch.
    let producer = produce_in_background(
        &tansu.brokers,
        &topic,
        4,
        (pauses as i64 * 5).max(100),
        150,
        Duration::from_millis(600),
    );

    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let lock_prefix = keys::commit_lock("");
    let mut paused_holding = 0;
    let mut tables_paused = BTreeSet::new();
    for cycle in 0..pauses {
        // Catch a holder: the lock key exists only while a log write is under way.
        let (key, pid) = wait_until_every(
            Duration::from_millis(1),
            Duration::from_secs(20),
            "a commit lock to be taken",
            async || {
                let held = store.list(&lock_prefix).await.unwrap();
                let kv = held.first()?;
                Some((kv.key.clone(), holder_pid(&kv.value)?))
            },
        )
        .await
        .unwrap();
        signal(pid, "STOP");
        eprintln!("cycle {cycle}: paused pid {pid} holding {key}");
        if store.get(&key).await.unwrap().is_some() {
            paused_holding += 1;
            tables_paused.insert(keys::leaf(&key).to_string());
        }
        // Keep it stopped until its lease has run out: the key it created is gone (or was
        // re-created by a successor, with a new revision).
        if let Some(held) = store.get(&key).await.unwrap() {
            wait_until_every(
                Duration::from_millis(50),
                LOCK_TTL * 10,
                "a paused holder's lock to expire",
                async || {
                    store
                        .get(&key)
                        .await
                        .unwrap()
                        .is_none_or(|kv| kv.create_revision != held.create_revision)
                },
            )
            .await
            .unwrap();
        }
        signal(pid, "CONT");
    }
    eprintln!(
        "paused a holder with its lock still held {paused_holding} of {pauses} times, tables {tables_paused:?}"
    );
    assert!(
        paused_holding >= pauses / 4,
        "most pauses must land while the lock is held ({paused_holding} of {pauses})"
    );

    let producer = producer.await.unwrap();
    // Exact tables; the verifier inside also checks that `smelter/epoch` strictly increases.
    caught_up_and_exact(&tables, &spec, &topic, &producer, Duration::from_secs(180))
        .await
        .unwrap();
}

/// The store the kill and restart faults run on: local disk, or with
/// `SMELTER_FAULT_STORAGE=s3` (the documented soak) a moto bucket started here.
async fn fault_storage() -> Option<Moto> {
    if std::env::var("SMELTER_FAULT_STORAGE").as_deref() != Ok("s3") {
        return None;
    }
    let moto = Moto::start()
        .await
        .expect("SMELTER_FAULT_STORAGE=s3 needs moto");
    moto.create_bucket("lake");
    Some(moto)
}

/// Worker settings that put every table under `s3://lake/tables` on `moto`.
fn s3_settings(moto: &Moto) -> Vec<(&'static str, &str)> {
    vec![
        ("SMELTER__STORAGE__ROOT", "s3://lake/tables"),
        ("SMELTER__STORAGE__S3_ENDPOINT", moto.endpoint.as_str()),
        ("SMELTER__STORAGE__S3_REGION", "us-east-1"),
        ("SMELTER__STORAGE__S3_ALLOW_HTTP", "true"),
        ("SMELTER__STORAGE__S3_ACCESS_KEY_ID", "smelter"),
        ("SMELTER__STORAGE__S3_SECRET_ACCESS_KEY", "smelter"),
    ]
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

/// SIGKILLs a random worker every 5 s for 60 s while events stream through a 12-partition
/// topic (a replacement starts each time, so three workers run). Every layer must be exact.
/// `SMELTER_FAULT_EVENTS` sets the event count (the documented soak uses 500,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_random_worker_every_five_seconds_loses_nothing() {
    let (Some(etcd), Some(tansu)) = (Etcd::start().await, Tansu::start().await) else {
        return;
    };
    let events: i64 = std::env::var("SMELTER_FAULT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    const PARTITIONS: i32 = 12;
    const ROUNDS: i64 = 60;
    let per_round = (events / ROUNDS / PARTITIONS as i64).max(1);
    let topic = unique_topic("chaos");
    create_topic(&tansu.brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let s3 = fault_storage().await;
    let mut settings = quick_settings(
        "2000",
        "400",
        &[
            ("SMELTER__COORDINATOR__HANDOFF_TIMEOUT_MS", "3000"),
            ("SMELTER__WORKER__COMMIT_LOCK_TTL_MS", "2000"),
            ("SMELTER__WORKER__BATCH_MAX_RECORDS", "10000"),
        ],
    );
    settings.extend(s3.as_ref().map(s3_settings).unwrap_or_default());
    let (mut cluster, spec, tables) =
        kafka_cluster(1, 3, &etcd.endpoint, &tansu.brokers, &topic, &settings).await;

    // The rounds spread over the minute of kills.
    let producer = produce_in_background(
        &tansu.brokers,
        &topic,
        PARTITIONS,
        ROUNDS,
        per_round,
        Duration::from_secs(1),
    );

    // A cheap, seeded "random" choice: the test stays reproducible.
    let mut pick = 0x9E37_79B9_u64;
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let alive: Vec<usize> = (0..cluster.workers.len())
            .filter(|i| cluster.workers[*i].is_some())
            .collect();
        pick = pick
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let victim = alive[(pick >> 33) as usize % alive.len()];
        cluster.kill_worker(victim).unwrap();
        cluster.add_worker().unwrap();
        kills += 1;
    }
    let producer = producer.await.unwrap();
    let truth = producer.truth();
    eprintln!(
        "{kills} workers SIGKILLed while {} events were acknowledged",
        truth.bronze.len()
    );
    caught_up_and_exact(&tables, &spec, &topic, &producer, Duration::from_secs(300))
        .await
        .unwrap();
}

/// etcd is SIGKILLed mid-stream and comes back 5 s later (longer than every lease TTL):
/// the leader steps down and is elected again, commits wait for their locks, workers
/// rejoin — all by themselves. Every layer exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_mid_stream_recovers_by_itself() {
    let (Some(mut etcd), Some(tansu)) = (Etcd::start().await, Tansu::start().await) else {
        return;
    };
    let topic = unique_topic("etcd-restart");
    create_topic(&tansu.brokers, &topic, 4).await.unwrap();
    let s3 = fault_storage().await;
    let mut settings = quick_settings(
        "2000",
        "400",
        &[("SMELTER__WORKER__COMMIT_LOCK_TTL_MS", "2000")],
    );
    settings.extend(s3.as_ref().map(s3_settings).unwrap_or_default());
    let (cluster, spec, tables) =
        kafka_cluster(2, 2, &etcd.endpoint, &tansu.brokers, &topic, &settings).await;

    let producer = produce_in_background(
        &tansu.brokers,
        &topic,
        4,
        40,
        500,
        Duration::from_millis(500),
    );
    // Mid-stream: once bronze holds some of it.
    wait_bronze_rows(&tables, 4_000, Duration::from_secs(60))
        .await
        .unwrap();
    etcd.restart(Duration::from_secs(5)).await;

    let producer = producer.await.unwrap();
    caught_up_and_exact(&tables, &spec, &topic, &producer, Duration::from_secs(180))
        .await
        .unwrap();
    cluster
        .wait_status(
            "a leader with both workers again",
            Duration::from_secs(30),
            |s| s["workers"].as_array().map(Vec::len) == Some(2),
        )
        .await
        .unwrap();
}

/// The broker (durable: its topics live in an S3 store) is SIGKILLed mid-stream and comes
/// back 3 s later on the same port. Consumers reconnect by themselves (or their tasks back
/// off and reopen from the bronze txn versions); every layer exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_recovers_by_itself() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let Some(moto) = Moto::start().await else {
        return;
    };
    let Some(mut tansu) = Tansu::start_durable(&moto).await else {
        return;
    };
    let topic = unique_topic("broker-restart");
    create_topic(&tansu.brokers, &topic, 4).await.unwrap();
    let settings = quick_settings("3000", "500", &[]);
    let (_cluster, spec, tables) =
        kafka_cluster(1, 2, &etcd.endpoint, &tansu.brokers, &topic, &settings).await;

    let mut producer = EventProducer::new(&tansu.brokers, &topic, &demo_events(4)).unwrap();
    for _ in 0..10 {
        producer.produce(&[0, 1, 2, 3], 250).await.unwrap();
    }
    let before = producer.last_offsets();
    wait_caught_up(&tables, &spec, &topic, &before, Duration::from_secs(90))
        .await
        .unwrap();
    tansu.restart(Duration::from_secs(3)).await;
    // The topic survived, and production goes on after the restart.
    for _ in 0..10 {
        producer.produce(&[0, 1, 2, 3], 250).await.unwrap();
    }
    caught_up_and_exact(&tables, &spec, &topic, &producer, Duration::from_secs(120))
        .await
        .unwrap();
}
