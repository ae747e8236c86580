//! Network partitions: a worker cut off from etcd and from the coordinator — its packets
//! held by proxies the test controls, the process itself running on, still reading Kafka
//! and still reaching the object store. That is the split the commit protocol exists for:
//! a writer that believes it holds a commit lock and can still write.
//!
//! Tables live on an S3-compatible store used without conditional writes
//! (`storage.commit_arbitration`), where every log write is a version claim in etcd
//! compared against the writer's lock (docs/exactly-once.md): the configuration in which a
//! late writer is stopped by etcd alone.

use std::time::Duration;

use smelter_common::store::{CoordinationStore, EtcdStore, keys};
use smelter_harness::wait_until_every;
use smelter_tests::kafka::{caught_up_and_exact, create_topic, produce_until, unique_topic};
use smelter_tests::processes::{
    self, apply_kafka_demo, holder_pid, quick_settings, s3_settings, successor_commit,
    table_version, tasks, worker_id,
};
use smelter_tests::proxy::Proxy;
use smelter_tests::services::{Etcd, Moto, Tansu};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many cuts the test may make to catch one between a lock and its claim.
const MAX_CUTS: usize = 8;

/// The worker's commit-lock TTL.
const LOCK_TTL: Duration = Duration::from_millis(1_000);

/// Worker B (index 1) is cut off from etcd and the coordinator while it holds a commit
/// lock, then healed; up to [`MAX_CUTS`] times, until one cut lands between B taking a lock
/// and claiming its version. Each cut must show: B's lock lapsed (its key gone or
/// re-created), B's lease expired and every task running on the other worker, and a
/// successor's commit to the table B was committing. After each heal B rejoins; a commit it
/// had under way is refused (its `commits_fenced` in `smelter status` grows), and no commit
/// carrying B's lapsed epoch sits after the successor's. At the end every table is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_etcd_loses_its_locks_and_its_late_commits_are_refused() {
    let (Some(etcd), Some(tansu), Some(moto)) = (
        Etcd::start().await,
        Tansu::start().await,
        Moto::start().await,
    ) else {
        return;
    };
    moto.create_bucket("lake");
    let topic = unique_topic("partition");
    create_topic(&tansu.brokers, &topic, 4).await.unwrap();
    let lock_ttl = LOCK_TTL.as_millis().to_string();
    let mut settings = quick_settings(
        "2000",
        "300",
        &[
            ("SMELTER__WORKER__COMMIT_LOCK_TTL_MS", lock_ttl.as_str()),
            ("SMELTER__WORKER__BATCH_MAX_WAIT_MS", "200"),
            ("SMELTER__WORKER__POLL_INTERVAL_MS", "50"),
            ("SMELTER__WORKER__GOLD_MIN_INTERVAL_MS", "200"),
            ("SMELTER__STORAGE__S3_CONDITIONAL_PUT", "false"),
            ("SMELTER__STORAGE__COMMIT_ARBITRATION", "true"),
        ],
    );
    settings.extend(s3_settings(&moto.endpoint));
    let mut cluster = processes::start(1, &etcd.endpoint, &settings);
    cluster.add_worker().unwrap();

    // Worker B reaches etcd and the coordinator only through the proxies.
    let etcd_proxy = Proxy::start(etcd.endpoint.trim_start_matches("http://"))
        .await
        .unwrap();
    let control = cluster.coordinator_endpoint(0);
    let control_proxy = Proxy::start(control.trim_start_matches("http://"))
        .await
        .unwrap();
    let (etcd_via, control_via) = (
        format!("http://{}", etcd_proxy.address),
        format!("http://{}", control_proxy.address),
    );
    let b = cluster
        .add_worker_with(&[
            ("SMELTER__COORDINATOR__ETCD_ENDPOINTS", etcd_via.as_str()),
            ("SMELTER__COORDINATOR__ENDPOINT", control_via.as_str()),
        ])
        .unwrap();
    let b_pid = cluster.workers[b].as_ref().unwrap().id();
    let (spec, tables) = apply_kafka_demo(&cluster, &tansu.brokers, &topic)
        .await
        .unwrap();

    let stop_producing = CancellationToken::new();
    let producer = produce_until(
        &tansu.brokers,
        &topic,
        4,
        40,
        Duration::from_millis(300),
        stop_producing.clone(),
    );
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let lock_prefix = keys::commit_lock("");
    let fenced_on_b = |status: &serde_json::Value| -> Option<u64> {
        let id = worker_id(status, b)?;
        status["workers"]
            .as_array()?
            .iter()
            .find(|w| w["worker_id"] == id.as_str())?["commits_fenced"]
            .as_u64()
    };

    let mut cuts = Vec::new();
    let mut refused = 0;
    for cut in 1..=MAX_CUTS {
        // B is registered and running tasks (after a heal, the rebalance gives it some).
        let (status, _) = cluster
            .wait_status("worker B running tasks", Duration::from_secs(60), |s| {
                worker_id(s, b).is_some_and(|id| {
                    tasks(s)
                        .iter()
                        .any(|t| t["worker_id"] == id.as_str() && t["state"] == "running")
                })
            })
            .await
            .unwrap();
        let b_id = worker_id(&status, b).unwrap();
        let fenced_before = fenced_on_b(&status).unwrap();

        // Cut B off the moment it holds a commit lock.
        let held = wait_until_every(
            Duration::from_millis(1),
            Duration::from_secs(60),
            "worker B to hold a commit lock",
            async || {
                let locks = store.list(&lock_prefix).await.unwrap();
                locks
                    .into_iter()
                    .find(|kv| holder_pid(&kv.value) == Some(b_pid))
            },
        )
        .await
        .unwrap();
        etcd_proxy.cut();
        control_proxy.cut();
        let cut_at = Instant::now();
        let table = keys::leaf(&held.key).to_string();
        let version_at_cut = table_version(&tables, &table).await;

        // The lock lapses: its key is gone, or a successor holds a new one.
        wait_until_every(
            Duration::from_millis(50),
            LOCK_TTL * 10,
            "worker B's commit lock to lapse",
            async || {
                store
                    .get(&held.key)
                    .await
                    .unwrap()
                    .is_none_or(|kv| kv.create_revision != held.create_revision)
            },
        )
        .await
        .unwrap();
        // B's lease expires and its tasks move to the other worker.
        cluster
            .wait_status(
                "worker B's lease to expire and its tasks to move",
                Duration::from_secs(10),
                |s| {
                    let tasks = tasks(s);
                    worker_id(s, b).is_none()
                        && !tasks.is_empty()
                        && tasks.iter().all(|t| {
                            t["worker_id"] != b_id.as_str()
                                && !t["worker_id"].as_str().unwrap_or_default().is_empty()
                        })
                },
            )
            .await
            .unwrap();
        // A successor commits the table B was committing (versions just after the cut may
        // still be B's own, claimed under its lock and completed by the successor).
        let successor = wait_until_every(
            Duration::from_millis(20),
            Duration::from_secs(20),
            "a successor's commit to the table worker B held",
            async || successor_commit(&tables, &table, version_at_cut, held.create_revision).await,
        )
        .await
        .unwrap();
        let partition = cut_at.elapsed();
        etcd_proxy.heal();
        control_proxy.heal();

        // B rejoins; a commit it had under way when cut is refused on arrival.
        cluster
            .wait_status("worker B to rejoin", Duration::from_secs(30), |s| {
                worker_id(s, b).is_some()
            })
            .await
            .unwrap();
        let fenced = wait_until_every(
            Duration::from_millis(100),
            Duration::from_secs(10),
            "worker B's late commit to be refused",
            async || {
                let status = cluster.status().await.ok()?;
                fenced_on_b(&status).filter(|f| *f > fenced_before)
            },
        )
        .await;
        // Whatever happened, nothing carrying B's lapsed epoch landed after the successor.
        let log = tables.open(&table).await.unwrap();
        let commits = smelter_lake::history::commits(&log, &table).await.unwrap();
        for commit in &commits {
            let epoch = commit
                .txns
                .iter()
                .find(|(app, _)| app.as_str() == smelter_lake::app_id::EPOCH)
                .map(|(_, v)| *v);
            if epoch == Some(held.create_revision) {
                assert!(
                    commit.version < successor,
                    "{table} v{} carries worker B's lapsed epoch {}, after the successor's v{successor}",
                    commit.version,
                    held.create_revision
                );
            }
        }
        eprintln!(
            "cut {cut}: worker B held {table} (epoch {}), partitioned {partition:?}, \
             successor v{successor}, late commit refused: {}",
            held.create_revision,
            fenced.is_ok()
        );
        cuts.push(partition);
        if fenced.is_ok() {
            refused += 1;
            break;
        }
    }
    assert_eq!(
        refused,
        1,
        "none of {} cuts landed between a lock and its claim",
        cuts.len()
    );

    stop_producing.cancel();
    let producer = producer.await.unwrap();
    caught_up_and_exact(&tables, &spec, &topic, &producer, Duration::from_secs(180))
        .await
        .unwrap();
}
