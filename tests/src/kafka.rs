//! Kafka helpers for the suites: topic administration and a producer of clickstream
//! events whose acknowledged positions become the oracle's ground truth G (docs/testing.md).
//!
//! The events are the generator's: generator partition `p`, offset `o` goes to Kafka
//! partition `p` as its `o`-th record, so the event function tells which records are
//! valid, duplicates or invalid on purpose, while the broker's acknowledgements tell
//! where each landed.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use smelter_common::spec::GeneratorSpec;
use smelter_worker::source::generator::Clickstream;

use crate::TestResult;
use crate::oracle::Truth;

/// An admin client for `brokers`.
pub fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()
        .expect("admin client")
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> TestResult<()> {
    create_topic_with(&admin(brokers), topic, partitions).await
}

/// [`create_topic`] through `admin`.
pub async fn create_topic_with(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
) -> TestResult<()> {
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| format!("create topic {topic}: {e}"))?;
    for result in results {
        result.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// One acknowledged record: where the broker put it, and which generated event it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Generator offset of the event within its partition.
    pub event: i64,
}

/// The librdkafka settings of a client that reaches `brokers` over TLS, trusting `ca`.
pub fn tls_config(brokers: &str, ca: &std::path::Path) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", ca.display().to_string())
        .set("log_level", "3");
    config
}

/// [`tls_config`], authenticating as `user` with SASL/SCRAM-SHA-256 (`SASL_SSL`).
pub fn scram_config(
    brokers: &str,
    ca: &std::path::Path,
    user: &str,
    password: &str,
) -> ClientConfig {
    let mut config = tls_config(brokers, ca);
    config
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "SCRAM-SHA-256")
        .set("sasl.username", user)
        .set("sasl.password", password);
    config
}

/// A producer with `config`'s connection settings (otherwise as [`producer`]).
pub fn producer_with(mut config: ClientConfig) -> TestResult<FutureProducer> {
    config
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(|e| format!("producer: {e}"))
}

/// An admin client for `brokers` over TLS, trusting `ca`.
pub fn tls_admin(brokers: &str, ca: &std::path::Path) -> AdminClient<DefaultClientContext> {
    tls_config(brokers, ca)
        .create()
        .expect("a TLS admin client")
}

/// A producer to `brokers` over TLS, trusting `ca` (otherwise as [`producer`]).
pub fn tls_producer(brokers: &str, ca: &std::path::Path) -> TestResult<FutureProducer> {
    producer_with(tls_config(brokers, ca))
}

/// A producer that waits for every replica (`acks=all`) and keeps each partition's
/// records in order (one request in flight).
pub fn producer(brokers: &str) -> TestResult<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .set("log_level", "3")
        .create()
        .map_err(|e| format!("producer: {e}"))
}

/// Produces clickstream events with `acks=all` and records each acknowledgement.
pub struct EventProducer {
    producer: FutureProducer,
    events: Clickstream,
    topic: String,
    /// Next generator offset per partition.
    next: BTreeMap<i32, i64>,
    /// Every acknowledged record so far.
    pub acks: Vec<Ack>,
}

impl EventProducer {
    /// A producer of the events of `generator` into `topic`.
    pub fn new(brokers: &str, topic: &str, generator: &GeneratorSpec) -> TestResult<Self> {
        Ok(Self {
            producer: producer(brokers)?,
            events: Clickstream::new(generator).map_err(|e| e.to_string())?,
            topic: topic.to_string(),
            next: BTreeMap::new(),
            acks: Vec::new(),
        })
    }

    /// Produces the next `per_partition` events of each of `partitions`, waiting for
    /// every acknowledgement; any failed delivery fails the test.
    pub async fn produce(&mut self, partitions: &[i32], per_partition: i64) -> TestResult<()> {
        let mut pending = Vec::new();
        for &partition in partitions {
            let start = *self.next.get(&partition).unwrap_or(&0);
            for event in start..start + per_partition {
                let generated = self.events.event(partition, event);
                let record = FutureRecord::to(&self.topic)
                    .partition(partition)
                    .key(&generated.event_id)
                    .payload(&generated.payload);
                let delivery = self
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| format!("enqueue {partition}/{event}: {e}"))?;
                pending.push((partition, event, delivery));
            }
            self.next.insert(partition, start + per_partition);
        }
        for (partition, event, delivery) in pending {
            let delivered = delivery
                .await
                .map_err(|_| format!("delivery of {partition}/{event} cancelled"))?
                .map_err(|(e, _)| format!("delivery of {partition}/{event}: {e}"))?;
            self.acks.push(Ack {
                partition: delivered.partition,
                offset: delivered.offset,
                event,
            });
        }
        Ok(())
    }

    /// The last acknowledged offset of each partition.
    pub fn last_offsets(&self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for ack in &self.acks {
            let last = out.entry(ack.partition).or_insert(ack.offset);
            *last = (*last).max(ack.offset);
        }
        out
    }

    /// Ground truth from the acknowledgements, with the demo pipeline's rules.
    pub fn truth(&self) -> Truth {
        let mut truth = Truth::default();
        for ack in &self.acks {
            truth.add(
                (self.topic.clone(), ack.partition, ack.offset),
                self.events.event(ack.partition, ack.event),
            );
        }
        truth
    }
}

/// Produces in the background: `rounds` rounds of `per_round` events to each of
/// `partitions` partitions, a round every `every` at most; the producer (with its
/// acknowledgements) is the task's result.
pub fn produce_in_background(
    brokers: &str,
    topic: &str,
    partitions: i32,
    rounds: i64,
    per_round: i64,
    every: Duration,
) -> tokio::task::JoinHandle<EventProducer> {
    let pace = Pace {
        partitions,
        per_round,
        every,
    };
    produce(brokers, topic, pace, Some(rounds), CancellationToken::new())
}

/// Produces in the background until `stop` is cancelled: a round of `per_round` events to
/// each of `partitions` partitions every `every`, for faults whose number of cycles is not
/// known in advance; the producer (with its acknowledgements) is the task's result.
pub fn produce_until(
    brokers: &str,
    topic: &str,
    partitions: i32,
    per_round: i64,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<EventProducer> {
    let pace = Pace {
        partitions,
        per_round,
        every,
    };
    produce(brokers, topic, pace, None, stop)
}

/// How a background producer paces its rounds.
struct Pace {
    partitions: i32,
    per_round: i64,
    every: Duration,
}

fn produce(
    brokers: &str,
    topic: &str,
    pace: Pace,
    rounds: Option<i64>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<EventProducer> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::spawn(async move {
        let mut producer =
            EventProducer::new(&brokers, &topic, &demo_events(pace.partitions as u32))
                .expect("producer");
        let all: Vec<i32> = (0..pace.partitions).collect();
        let started = tokio::time::Instant::now();
        let mut round: u32 = 0;
        while rounds.is_none_or(|r| i64::from(round) < r) && !stop.is_cancelled() {
            producer
                .produce(&all, pace.per_round)
                .await
                .expect("every record acknowledged");
            round += 1;
            tokio::select! {
                _ = tokio::time::sleep_until(started + pace.every * round) => {}
                _ = stop.cancelled() => {}
            }
        }
        producer
    })
}

pub use smelter_cli::workload::{demo_events, kafka_demo};

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{}", nanos, std::process::id())
}

/// Waits until bronze holds every partition of `topic` up to `last` (txn versions), then
/// until silver and gold have consumed the latest bronze.
pub async fn wait_caught_up(
    tables: &smelter_lake::TableStore,
    spec: &smelter_common::spec::PipelineSpec,
    topic: &str,
    last: &BTreeMap<i32, i64>,
    timeout: Duration,
) -> TestResult<()> {
    use smelter_worker::tasks::drained::{bronze_behind, downstream_caught_up};
    smelter_harness::wait_until_every(
        Duration::from_millis(250),
        timeout,
        "the pipeline catching up",
        async || {
            let missing = bronze_behind(tables, spec, topic, last)
                .await
                .map_err(|e| e.to_string())?;
            if !missing.is_empty() {
                return Err(format!(
                    "bronze partitions behind: [{}]",
                    missing.join(", ")
                ));
            }
            if downstream_caught_up(tables, spec)
                .await
                .map_err(|e| e.to_string())?
            {
                Ok(())
            } else {
                Err("silver or gold behind bronze".into())
            }
        },
    )
    .await
}

/// Waits until the pipeline has consumed everything `producer` had acknowledged, then
/// checks every table against it with the oracle (the verifier included).
pub async fn caught_up_and_exact(
    tables: &smelter_lake::TableStore,
    spec: &smelter_common::spec::PipelineSpec,
    topic: &str,
    producer: &EventProducer,
    timeout: Duration,
) -> TestResult<()> {
    wait_caught_up(tables, spec, topic, &producer.last_offsets(), timeout).await?;
    crate::oracle::check_pipeline(tables, spec, &producer.truth()).await
}
