//! Kafka client settings shared by the worker's consumer and the coordinator's partition
//! discovery, so both speak to a source's brokers the same way.
//!
//! Consumers never join a consumer group and never commit offsets: partitions are assigned
//! by the coordinator and positions come from the bronze table's txn versions
//! (docs/exactly-once.md, invariant 1). The `group.id` librdkafka insists on is
//! informational only.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use crate::spec::KafkaSpec;
use crate::{Error, Result};

/// How long an identical client error stays quiet after it was logged once.
const REPEAT_QUIET: Duration = Duration::from_secs(30);

/// Routes librdkafka's logs and client errors into `tracing` as warnings, each distinct
/// message at most once per [`REPEAT_QUIET`]: a broker that is away makes librdkafka
/// report the same failure many times a second, and the task's own state (`backoff`,
/// with the error) is where operators look.
#[derive(Default)]
pub struct KafkaContext {
    last: Mutex<Option<(String, Instant)>>,
    /// The first distinct warnings of this client, in order (at most [`KEPT_WARNINGS`]).
    first: Mutex<Vec<String>>,
}

/// Distinct warnings a client keeps to explain a failure.
const KEPT_WARNINGS: usize = 4;

impl KafkaContext {
    /// The first distinct warnings librdkafka gave, joined (a refused TLS handshake, a
    /// failed SASL authentication come first; "all brokers down" follows): the reason
    /// behind a bare "broker transport failure".
    pub fn warnings(&self) -> Option<String> {
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        (!first.is_empty()).then(|| first.join("; "))
    }

    fn warn_once(&self, message: String) {
        {
            let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
            if first.len() < KEPT_WARNINGS && !first.contains(&message) {
                first.push(message.clone());
            }
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let repeated = last
            .as_ref()
            .is_some_and(|(m, at)| *m == message && at.elapsed() < REPEAT_QUIET);
        if !repeated {
            tracing::warn!(target: "smelter::kafka", "{message}");
            *last = Some((message, Instant::now()));
        }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Debug | RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => {
                tracing::debug!(target: "smelter::kafka", facility, "{message}")
            }
            _ => self.warn_once(format!("librdkafka {facility}: {message}")),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.warn_once(format!("kafka client: {error}: {reason}"));
    }
}

impl ConsumerContext for KafkaContext {}

/// Client settings for `spec`: Smelter's fixed settings, then the spec's extra properties
/// (validation keeps those away from the fixed ones).
pub fn client_config(spec: &KafkaSpec, pipeline: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &spec.brokers)
        .set("group.id", format!("smelter-{pipeline}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.max.ms", "2000")
        // A fetch the broker holds for want of data returns within 100 ms (librdkafka's
        // default is 500): bronze commits every `batch_max_wait_ms` (250 ms), and a record
        // that arrives while a fetch is parked must not miss the batch it could be in.
        // A spec may set it otherwise.
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "3");
    for (key, value) in &spec.properties {
        config.set(key, value);
    }
    config
}

/// How many partitions `spec.topic` has now, asking the brokers (blocking up to `timeout`).
pub fn partition_count_blocking(
    spec: &KafkaSpec,
    pipeline: &str,
    timeout: Duration,
) -> Result<u32> {
    let broker_error = |message: String| Error::Broker {
        brokers: spec.brokers.clone(),
        message,
    };
    let consumer: BaseConsumer<KafkaContext> = client_config(spec, pipeline)
        .create_with_context(KafkaContext::default())
        .map_err(|e| broker_error(e.to_string()))?;
    let metadata = consumer
        .fetch_metadata(Some(&spec.topic), timeout)
        .map_err(|e| {
            // librdkafka's logs (where a refused handshake says why) wait in the client's
            // queue until it is served.
            for _ in 0..10 {
                if consumer.poll(Duration::from_millis(20)).is_none()
                    && consumer.context().warnings().is_some()
                {
                    break;
                }
            }
            match consumer.context().warnings() {
                Some(why) => broker_error(format!("{e}; {why}")),
                None => broker_error(e.to_string()),
            }
        })?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == spec.topic)
        .ok_or_else(|| broker_error(format!("topic `{}` not in metadata", spec.topic)))?;
    if let Some(error) = topic.error() {
        return Err(broker_error(format!(
            "topic `{}`: {}",
            spec.topic,
            rdkafka::error::RDKafkaErrorCode::from(error)
        )));
    }
    Ok(topic.partitions().len() as u32)
}

/// [`partition_count_blocking`] off the async runtime's threads.
pub async fn partition_count(spec: &KafkaSpec, pipeline: &str, timeout: Duration) -> Result<u32> {
    let (spec, pipeline) = (spec.clone(), pipeline.to_string());
    tokio::task::spawn_blocking(move || partition_count_blocking(&spec, &pipeline, timeout))
        .await
        .map_err(|e| Error::Broker {
            brokers: String::new(),
            message: format!("metadata lookup panicked: {e}"),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure's reason is what the client said first: later warnings ("all brokers
    /// down") do not push it out, repeats are kept once, and only a few are kept.
    #[test]
    fn the_first_distinct_warnings_explain_a_failure() {
        let context = KafkaContext::default();
        assert_eq!(context.warnings(), None);
        context.warn_once("SSL handshake failed: certificate verify failed".into());
        context.warn_once("SSL handshake failed: certificate verify failed".into());
        context.warn_once("1/1 brokers are down".into());
        for i in 0..10 {
            context.warn_once(format!("later {i}"));
        }
        assert_eq!(
            context.warnings().as_deref(),
            Some(
                "SSL handshake failed: certificate verify failed; 1/1 brokers are down; \
                 later 0; later 1"
            )
        );
    }

    fn spec(properties: &[(&str, &str)]) -> KafkaSpec {
        KafkaSpec {
            brokers: "127.0.0.1:9092".into(),
            topic: "events".into(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn parked_fetches_return_within_a_batch_interval_unless_the_spec_says_otherwise() {
        let config = client_config(&spec(&[]), "shop");
        assert_eq!(config.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(config.get("group.id"), Some("smelter-shop"));
        let config = client_config(&spec(&[("fetch.wait.max.ms", "20")]), "shop");
        assert_eq!(config.get("fetch.wait.max.ms"), Some("20"));
    }
}
