//! The cluster run: a coordinator and workers as separate `smelter` processes on etcd,
//! reading a fresh Kafka topic that a paced producer in this process fills.
//!
//! CPU and peak memory are read per child process from `/proc` once gold has caught up
//! (the producer's own CPU is not the pipeline's). Produce times are the records' Kafka
//! CreateTime, which bronze keeps in its `timestamp` column.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use rdkafka::admin::{AdminClient as KafkaAdmin, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use smelter_common::spec::{PipelineSpec, SourceSpec};
use smelter_lake::TableStore;
use smelter_worker::source::generator::Clickstream;

use super::latency::ProduceTimes;
use super::measure::{cpu_seconds, peak_rss_bytes, steal_seconds};
use super::{BenchOptions, EndToEnd, finish_run, wait_for};
use crate::workload::{demo_events, kafka_demo};
use crate::{CliError, Result};
use smelter_harness::{ClusterSpec, ProcessCluster, StopPolicy, free_port};

/// Where the external services are.
#[derive(Debug, Clone)]
pub struct Services {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// etcd client URLs, comma-separated.
    pub etcd: String,
    /// etcd's process id, when it runs on this machine: its CPU is reported per run.
    pub etcd_pid: Option<u32>,
}

fn bench_error(message: impl Into<String>) -> CliError {
    CliError::Bench(message.into())
}

/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Counts deliveries and failures of the producer.
#[derive(Clone, Default)]
struct Deliveries {
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: KafkaAdmin<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()
        .map_err(|e| bench_error(format!("kafka admin: {e}")))?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| bench_error(format!("create topic {topic}: {e}")))?;
    for result in results {
        result.map_err(|(t, e)| bench_error(format!("create topic {t}: {e}")))?;
    }
    Ok(())
}

/// Produces `events` clickstream events round-robin over `partitions` at `rate` per second,
/// then waits for every delivery. Blocking: runs on its own thread.
fn produce(brokers: &str, topic: &str, options: &BenchOptions) -> Result<()> {
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("log_level", "3")
        .create_with_context(deliveries.clone())
        .map_err(|e| bench_error(format!("producer: {e}")))?;
    let events = Clickstream::new(&demo_events(options.partitions))?;
    let partitions = options.partitions.max(1) as i64;
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (options.rate as f64 * tick.as_secs_f64()).max(1.0);
    let mut sent = 0u64;
    let mut due = 0f64;
    while sent < options.events {
        due += per_tick;
        while (sent as f64) < due && sent < options.events {
            let partition = (sent as i64 % partitions) as i32;
            let offset = sent as i64 / partitions;
            let event = events.event(partition, offset);
            let record = BaseRecord::to(topic)
                .partition(partition)
                .key(&event.event_id)
                .payload(&event.payload);
            if let Err((error, _)) = producer.send(record) {
                return Err(bench_error(format!("produce: {error}")));
            }
            sent += 1;
        }
        let next = tick.mul_f64(due / per_tick);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| bench_error(format!("flush: {e}")))?;
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(bench_error(format!("{failed} records were not delivered")));
    }
    Ok(())
}

/// The last offset of every partition of `topic` (-1 for an empty one).
fn last_offsets(brokers: &str, topic: &str, partitions: u32) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()
        .map_err(|e| bench_error(format!("consumer: {e}")))?;
    (0..partitions as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| (p, high - 1))
                .map_err(|e| bench_error(format!("watermarks of {topic}/{p}: {e}")))
        })
        .collect()
}

async fn caught_up(
    tables: &TableStore,
    spec: &PipelineSpec,
    topic: &str,
    last: &BTreeMap<i32, i64>,
) -> Result<bool> {
    use smelter_worker::tasks::drained::{bronze_behind, downstream_caught_up};
    Ok(bronze_behind(tables, spec, topic, last).await?.is_empty()
        && downstream_caught_up(tables, spec).await?)
}

/// Kafka CreateTime of every bronze record, milliseconds, per partition in offset order.
async fn produce_times(tables: &TableStore) -> Result<ProduceTimes> {
    let engine = smelter_worker::serve::query::QueryEngine::new(tables.clone(), Default::default());
    let batches: Vec<RecordBatch> = engine
        .plan(
            "SELECT \"partition\", \"offset\", CAST(\"timestamp\" AS BIGINT) AS ts \
             FROM bronze.events ORDER BY \"partition\", \"offset\"",
            None,
        )
        .await?
        .collect()
        .await?;
    let mut times: HashMap<i32, Vec<(i64, i64)>> = HashMap::new();
    for batch in batches {
        let partition = batch.column(0).as_primitive::<Int32Type>();
        let offset = batch.column(1).as_primitive::<Int64Type>();
        let ts = batch.column(2).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            if ts.is_valid(i) {
                times
                    .entry(partition.value(i))
                    .or_default()
                    .push((offset.value(i), ts.value(i) / 1000));
            }
        }
    }
    Ok(ProduceTimes::Recorded(times))
}

/// Runs the pipeline as a cluster on `services` (the processes inherit this one's
/// environment, `SMELTER_*` settings included); returns the run and the pipeline's Kafka
/// source (for the limit's consume stage).
pub async fn run(options: &BenchOptions, services: &Services) -> Result<(EndToEnd, PipelineSpec)> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("smelter-bench-{}", &id[..8]);
    create_topic(&services.brokers, &topic, options.partitions as i32).await?;
    let dir = options.work_dir.join(format!("cluster-{id}"));
    let io = |context: &str| {
        let context = context.to_string();
        move |source| CliError::Io { context, source }
    };
    let flight = format!("127.0.0.1:{}", free_port().map_err(io("find a free port"))?);
    let binary = std::env::current_exe().map_err(io("locate the smelter binary"))?;
    let mut spec = ClusterSpec::new(binary, 1, Some(&services.etcd));
    spec.log_filter = options.cluster_log.clone();
    let storage = match &options.s3_endpoint {
        Some(endpoint) => {
            let storage = s3_storage(endpoint, &id).await?;
            spec = spec.with_settings(&[
                ("SMELTER__STORAGE__S3_ENDPOINT", endpoint.as_str()),
                ("SMELTER__STORAGE__S3_REGION", "us-east-1"),
                ("SMELTER__STORAGE__S3_ALLOW_HTTP", "true"),
                ("SMELTER__STORAGE__S3_ACCESS_KEY_ID", "smelter"),
                ("SMELTER__STORAGE__S3_SECRET_ACCESS_KEY", "smelter"),
            ]);
            storage
        }
        None => smelter_common::config::StorageConfig {
            root: dir.join("tables"),
            ..Default::default()
        },
    };
    spec.root = Some(storage.root.display().to_string());
    // Stopped with SIGTERM: see `StopPolicy::Terminate` (the next run shares this etcd).
    spec.stop = StopPolicy::Terminate { grace: STOP_GRACE };
    let mut processes = ProcessCluster::start(spec).map_err(io("start smelter coordinator"))?;
    for i in 0..options.workers {
        // The first worker's Flight SQL endpoint is known up front: the query latency
        // figure asks it.
        let listen = if i == 0 {
            flight.as_str()
        } else {
            "127.0.0.1:0"
        };
        processes
            .add_worker_with(&[("SMELTER__WORKER__FLIGHT_LISTEN", listen)])
            .map_err(io("start smelter worker"))?;
    }
    let text = kafka_demo(&services.brokers, &topic);
    let spec = crate::commands::load_pipeline(&text, "bench.yaml").await?;
    // Every worker registers before the pipeline is applied, as in a cluster that was
    // running already: the tasks are placed once, instead of some being handed off to a
    // worker that joins a moment later, inside the run's first second of latency.
    let workers = usize::from(options.workers);
    processes
        .wait_status(
            "every worker registered",
            options.timeout.min(Duration::from_secs(120)),
            |status| status["workers"].as_array().map(Vec::len) == Some(workers),
        )
        .await
        .map_err(bench_error)?;
    processes
        .apply(&text, "bench.yaml")
        .await
        .map_err(bench_error)?;
    let tables = TableStore::from_config(&storage)?;

    let started = Instant::now();
    let steal_before = steal_seconds();
    let etcd_before = services.etcd_pid.and_then(|pid| cpu_seconds(Some(pid)));
    let producing = {
        let (brokers, topic, options) = (services.brokers.clone(), topic.clone(), options.clone());
        tokio::task::spawn_blocking(move || produce(&brokers, &topic, &options))
    };
    producing
        .await
        .map_err(|e| bench_error(format!("producer thread: {e}")))??;
    let last = last_offsets(&services.brokers, &topic, options.partitions)?;
    wait_for("the cluster catching up", options.timeout, || {
        caught_up(&tables, &spec, &topic, &last)
    })
    .await?;
    let mut run = EndToEnd {
        events: options.events,
        rate: options.rate,
        wall_seconds: started.elapsed().as_secs_f64(),
        steal_seconds: steal_seconds() - steal_before,
        etcd_cpu_seconds: services
            .etcd_pid
            .and_then(|pid| Some(cpu_seconds(Some(pid))? - etcd_before?)),
        ..EndToEnd::default()
    };
    for (name, pid) in processes.pids() {
        let name = name.replace("coordinator-0", "coordinator");
        let cpu = cpu_seconds(Some(pid)).unwrap_or(0.0);
        run.cpu_seconds += cpu;
        run.process_cpu_seconds.insert(name.clone(), cpu);
        run.peak_rss_bytes
            .insert(name, peak_rss_bytes(Some(pid)).unwrap_or(0));
    }
    run.file_reads = file_reads(&processes).await;
    run.store = Some(
        options
            .s3_endpoint
            .clone()
            .unwrap_or_else(|| "local".to_string()),
    );
    let produced = produce_times(&tables).await?;
    finish_run(&mut run, &tables, &spec, &produced, &flight).await?;
    drop(processes);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((run, spec))
}

/// Bucket of the cluster runs on an S3-compatible store.
const BUCKET: &str = "smelter-bench";

/// Storage for a cluster run's tables under `s3://smelter-bench/<id>` at `endpoint`,
/// creating the bucket if missing (an unsigned `PUT`, which moto and MinIO in its default
/// test mode accept; an existing bucket answers 409).
pub(super) async fn s3_storage(
    endpoint: &str,
    id: &str,
) -> Result<smelter_common::config::StorageConfig> {
    let url = format!("{}/{BUCKET}", endpoint.trim_end_matches('/'));
    let answer = reqwest::Client::new()
        .put(&url)
        .send()
        .await
        .map_err(|e| bench_error(format!("create bucket {url}: {e}")))?;
    if !(answer.status().is_success() || answer.status() == reqwest::StatusCode::CONFLICT) {
        return Err(bench_error(format!(
            "create bucket {url}: HTTP {}",
            answer.status()
        )));
    }
    Ok(smelter_common::config::StorageConfig {
        root: format!("s3://{BUCKET}/{id}").into(),
        s3_endpoint: Some(endpoint.to_string()),
        s3_region: Some("us-east-1".into()),
        s3_allow_http: true,
        s3_access_key_id: Some("smelter".into()),
        s3_secret_access_key: Some("smelter".into()),
        ..Default::default()
    })
}

/// The workers' file reads, summed, once their heartbeats report the whole run: the
/// status is asked every heartbeat interval until two answers agree (at most 20 times).
async fn file_reads(processes: &ProcessCluster) -> Option<smelter_lake::recent_files::Reads> {
    let every = Duration::from_millis(
        smelter_common::config::CoordinatorConfig::default().heartbeat_interval_ms + 200,
    );
    let mut last = None;
    for _ in 0..20 {
        let status = processes.status().await.ok()?;
        let mut sum = smelter_lake::recent_files::Reads::default();
        for worker in status["workers"].as_array().into_iter().flatten() {
            let reads = &worker["reads"];
            let n = |key: &str| reads[key].as_u64().unwrap_or(0);
            sum.memory += n("memory");
            sum.served += n("served");
            sum.exchanged += n("exchanged");
            sum.exchanged_bytes += n("exchanged_bytes");
            sum.rejected += n("rejected");
            sum.failed += n("failed");
            sum.storage += n("storage");
            sum.storage_bytes += n("storage_bytes");
            sum.decode_ms += n("decode_ms");
        }
        if last == Some(sum) {
            break;
        }
        last = Some(sum);
        tokio::time::sleep(every).await;
    }
    last
}

/// The Kafka source of a pipeline run by [`run`].
pub fn kafka_source(spec: &PipelineSpec) -> Option<&smelter_common::spec::KafkaSpec> {
    spec.sources.values().find_map(|s| match s {
        SourceSpec::Kafka(k) => Some(k),
        _ => None,
    })
}
