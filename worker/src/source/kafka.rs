//! The Kafka source: librdkafka (bundled) with manual `assign` of the partitions this
//! worker owns. No consumer group, no offset commits: each partition starts at its bronze
//! txn version + 1 (docs/exactly-once.md, invariant 1), or at the beginning when bronze holds none of it.
//!
//! A broker that cannot be reached is an error the task's supervisor retries with
//! backoff (the task shows `backoff` with the broker's message in `smelter status`); the
//! worker itself never stops for it. The high watermark is used for lag reports only —
//! some brokers report it loosely — never to decide what was consumed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use smelter_common::kafka::KafkaContext;
use smelter_common::spec::KafkaSpec;
use tokio::time::Instant;

use super::{CommittedPositions, SourceReader, SourceRecord};
use crate::{Result, WorkerError};

/// How long connecting to the brokers may take before the task backs off.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often lag (high watermark − next offset) is refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Reads the owned partitions of one Kafka topic.
pub struct KafkaReader {
    name: String,
    topic: Arc<str>,
    consumer: Arc<StreamConsumer<KafkaContext>>,
    /// Next offset expected per partition; anything below was already returned.
    next: HashMap<i32, i64>,
    high_watermarks: Arc<Mutex<BTreeMap<i32, i64>>>,
    /// Why the last watermark lookup failed, if it did: the broker's health, as seen here.
    broker_error: Arc<Mutex<Option<String>>>,
    lag_in_flight: Arc<AtomicBool>,
    last_lag_check: Option<Instant>,
    max_record_bytes: usize,
}

impl KafkaReader {
    /// Connects and assigns `partitions`, each after its committed position.
    pub async fn open(
        pipeline: &str,
        name: &str,
        spec: &KafkaSpec,
        partitions: &[i32],
        positions: &dyn CommittedPositions,
        max_record_bytes: usize,
    ) -> Result<Self> {
        let error = |message: String| WorkerError::Source {
            source_name: name.to_string(),
            message,
        };
        // Fails (and so backs off) while the brokers are unreachable or the topic is missing.
        smelter_common::kafka::partition_count(spec, pipeline, CONNECT_TIMEOUT)
            .await
            .map_err(|e| error(e.to_string()))?;
        let consumer: Arc<StreamConsumer<KafkaContext>> = Arc::new(
            smelter_common::kafka::client_config(spec, pipeline)
                .create_with_context(KafkaContext::default())
                .map_err(|e| error(format!("cannot create consumer: {e}")))?,
        );
        // The partitions' leaders must be known to this client before they are assigned:
        // librdkafka retries the first offset lookup of a partition without a known leader
        // only after a fixed 500 ms, so a task would start half a second behind.
        let warm = consumer.clone();
        let topic = spec.topic.clone();
        tokio::task::spawn_blocking(move || warm.fetch_metadata(Some(&topic), CONNECT_TIMEOUT))
            .await
            .map_err(|e| error(format!("metadata lookup panicked: {e}")))?
            .map_err(|e| error(format!("cannot read the topic's metadata: {e}")))?;
        let mut assignment = TopicPartitionList::new();
        let mut next = HashMap::new();
        for &partition in partitions {
            let committed = positions.committed(&spec.topic, partition).await?;
            let start = committed.map_or(0, |o| o + 1);
            let offset = if committed.is_some() {
                Offset::Offset(start)
            } else {
                Offset::Beginning
            };
            assignment
                .add_partition_offset(&spec.topic, partition, offset)
                .map_err(|e| error(e.to_string()))?;
            next.insert(partition, start);
        }
        consumer
            .assign(&assignment)
            .map_err(|e| error(format!("cannot assign partitions {partitions:?}: {e}")))?;
        tracing::info!(source = name, topic = %spec.topic, ?next, "kafka partitions assigned");
        Ok(Self {
            name: name.to_string(),
            topic: Arc::from(spec.topic.as_str()),
            consumer,
            next,
            high_watermarks: Default::default(),
            broker_error: Default::default(),
            lag_in_flight: Default::default(),
            last_lag_check: None,
            max_record_bytes,
        })
    }

    fn record(&self, message: &BorrowedMessage<'_>) -> SourceRecord {
        let (payload, error) = match message.payload() {
            Some(p) if p.len() > self.max_record_bytes => (
                None,
                Some(format!(
                    "record of {} bytes exceeds the {} byte limit; payload not kept",
                    p.len(),
                    self.max_record_bytes
                )),
            ),
            Some(p) => (Some(p.to_vec()), None),
            None => (None, Some("record has no payload (tombstone)".to_string())),
        };
        let headers = message.headers().map(|headers| {
            let object: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|h| {
                    let value = h.value.map_or(serde_json::Value::Null, |v| {
                        serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
                    });
                    (h.key.to_string(), value)
                })
                .collect();
            serde_json::Value::Object(object).to_string()
        });
        SourceRecord {
            topic: self.topic.clone(),
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            timestamp_us: message.timestamp().to_millis().map(|ms| ms * 1_000),
            headers,
            payload,
            error,
            ends_topic: false,
        }
    }

    /// Refreshes high watermarks in the background, at most every [`LAG_INTERVAL`].
    fn refresh_lag(&mut self) {
        if self
            .last_lag_check
            .is_some_and(|t| t.elapsed() < LAG_INTERVAL)
            || self.lag_in_flight.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.last_lag_check = Some(Instant::now());
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let partitions: Vec<i32> = self.next.keys().copied().collect();
        let out = self.high_watermarks.clone();
        let broker_error = self.broker_error.clone();
        let in_flight = self.lag_in_flight.clone();
        tokio::task::spawn_blocking(move || {
            let mut failure = None;
            for partition in partitions {
                match consumer.fetch_watermarks(&topic, partition, Duration::from_secs(2)) {
                    Ok((_, high)) => {
                        out.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(partition, high);
                    }
                    Err(error) => failure = Some(error.to_string()),
                }
            }
            *broker_error.lock().unwrap_or_else(|e| e.into_inner()) = failure;
            in_flight.store(false, Ordering::Release);
        });
    }
}

#[async_trait]
impl SourceReader for KafkaReader {
    async fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<Vec<SourceRecord>> {
        self.refresh_lag();
        let deadline = Instant::now() + max_wait;
        let mut out = Vec::new();
        while out.len() < max_records {
            let received = tokio::time::timeout_at(deadline, self.consumer.recv()).await;
            let message = match received {
                Err(_) => break,
                Ok(Ok(message)) => message,
                Ok(Err(error)) if out.is_empty() => {
                    return Err(WorkerError::Source {
                        source_name: self.name.clone(),
                        message: format!("kafka: {error}"),
                    });
                }
                // Hand over what we have; the error shows again on the next poll if it lasts.
                Ok(Err(_)) => break,
            };
            let partition = message.partition();
            let Some(next) = self.next.get_mut(&partition) else {
                continue;
            };
            // Never hand out a record twice (a fetch retried after a reconnect).
            if message.offset() < *next {
                continue;
            }
            *next = message.offset() + 1;
            out.push(self.record(&message));
        }
        if out.is_empty() {
            // librdkafka reconnects quietly; a broker that cannot even answer watermark
            // requests is surfaced, so the task backs off and shows why.
            let failure = self
                .broker_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(message) = failure {
                return Err(WorkerError::Source {
                    source_name: self.name.clone(),
                    message: format!("brokers unreachable: {message}"),
                });
            }
        }
        Ok(out)
    }

    fn lag(&self) -> Vec<(i32, i64)> {
        let high = self
            .high_watermarks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.next
            .iter()
            .map(|(p, next)| (*p, high.get(p).map_or(0, |h| (h - next).max(0))))
            .collect()
    }

    fn finished(&self) -> bool {
        false
    }
}
