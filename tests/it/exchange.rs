//! The task-to-task exchange (`smelter_lake::exchange`) in a cluster of worker processes:
//! downstream tasks take the rows of files another worker committed over Flight, a forged
//! answer is refused by its checksum, the exchange switched off reads files only — and in
//! each case the oracle finds every layer exact.

use std::time::Duration;

use smelter_tests::kafka::{
    caught_up_and_exact, create_topic, produce_in_background, unique_topic,
};
use smelter_tests::processes::{kafka_cluster, quick_settings};
use smelter_tests::services::{Etcd, Tansu};

/// The exchange switched on (on local disk it is off unless asked for).
const EXCHANGE_ON: &[(&str, &str)] = &[("SMELTER__WORKER__FLIGHT_EXCHANGE", "true")];

/// The workers' file reads, summed: `(exchanged, rejected, served, storage)`.
fn reads(status: &serde_json::Value) -> (u64, u64, u64, u64) {
    let mut sum = (0, 0, 0, 0);
    for worker in status["workers"].as_array().into_iter().flatten() {
        let reads = &worker["reads"];
        let n = |key: &str| reads[key].as_u64().unwrap_or(0);
        sum.0 += n("exchanged");
        sum.1 += n("rejected");
        sum.2 += n("served");
        sum.3 += n("storage");
    }
    sum
}

/// Runs the Kafka demo on two workers with `extra` settings through 8 partitions until
/// every layer is exact, then waits until the workers' reads (as their heartbeats report
/// them) satisfy `expected`; returns them.
/// `None` when etcd or the broker is not installed (and not required: see the harness).
async fn exact_with(
    extra: &[(&str, &str)],
    expected: fn((u64, u64, u64, u64)) -> bool,
) -> Option<(u64, u64, u64, u64)> {
    let (Some(etcd), Some(tansu)) = (Etcd::start().await, Tansu::start().await) else {
        return None;
    };
    const PARTITIONS: i32 = 8;
    let topic = unique_topic("exchange");
    create_topic(&tansu.brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let settings = quick_settings("3000", "300", extra);
    let (cluster, spec, tables) =
        kafka_cluster(1, 2, &etcd.endpoint, &tansu.brokers, &topic, &settings).await;
    cluster
        .wait_status("both workers have tasks", Duration::from_secs(60), |s| {
            s["workers"]
                .as_array()
                .is_some_and(|w| w.len() == 2 && w.iter().all(|w| w["tasks"].as_u64() > Some(0)))
        })
        .await
        .unwrap();
    let producer = produce_in_background(
        &tansu.brokers,
        &topic,
        PARTITIONS,
        12,
        150,
        Duration::from_millis(500),
    );
    let producer = producer.await.unwrap();
    if let Err(e) =
        caught_up_and_exact(&tables, &spec, &topic, &producer, Duration::from_secs(120)).await
    {
        // What each worker held and reported, for the diagnosis.
        panic!("{e}\ncluster status: {:?}", cluster.status().await);
    }
    let (status, _) = cluster
        .wait_status("the reads expected", Duration::from_secs(30), |s| {
            expected(reads(s))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let found = reads(&status);
    eprintln!("reads (exchanged, rejected, served, storage): {found:?}");
    Some(found)
}

/// With the exchange on, refine and gold take rows the other worker committed from it:
/// some reads are answered over Flight, none refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_take_each_others_rows_over_flight() {
    let Some((exchanged, rejected, served, _)) =
        exact_with(EXCHANGE_ON, |(exchanged, _, served, _)| {
            exchanged > 0 && served > 0
        })
        .await
    else {
        return;
    };
    assert!(
        exchanged > 0 && served >= exchanged,
        "{exchanged} taken, {served} served"
    );
    assert_eq!(rejected, 0);
}

/// Every worker forges its answers (the `worker.exchange_forge` test hook changes a byte
/// of each): every answer is refused by its checksum, the file is read instead, and no
/// forged row reaches a table (the oracle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_answers_are_refused_and_files_read() {
    let Some((exchanged, rejected, served, storage)) = exact_with(
        &[EXCHANGE_ON[0], ("SMELTER__WORKER__EXCHANGE_FORGE", "true")],
        |(_, rejected, _, _)| rejected > 0,
    )
    .await
    else {
        return;
    };
    assert_eq!(exchanged, 0, "a forged answer was taken");
    assert!(
        rejected > 0 && served >= rejected,
        "{rejected} refused, {served} served"
    );
    assert!(
        storage >= rejected,
        "every refused answer read from the file"
    );
}

/// `worker.flight_exchange = false` (the default on local disk, as here): nothing is
/// offered or fetched; downstream reads what it does not hold in memory from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_switched_off_reads_files() {
    let Some((exchanged, rejected, served, storage)) = exact_with(
        &[("SMELTER__WORKER__FLIGHT_EXCHANGE", "false")],
        |(_, _, _, storage)| storage > 0,
    )
    .await
    else {
        return;
    };
    assert_eq!((exchanged, rejected, served), (0, 0, 0));
    assert!(storage > 0);
}
