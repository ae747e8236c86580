//! Kafka client settings shared by the worker's consumer and the coordinator's partition
//! discovery, so both speak to a source's brokers the same way.
//!
//! Consumers never join a consumer group and never commit offsets: partitions are assigned
//! by the coordinator and positions come from the bronze table's txn versions (design.md
//! §5.1). The `group.id` librdkafka insists on is informational only.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::spec::KafkaSpec;
use crate::{Error, Result};

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
    let consumer: BaseConsumer = client_config(spec, pipeline)
        .create()
        .map_err(|e| broker_error(e.to_string()))?;
    let metadata = consumer
        .fetch_metadata(Some(&spec.topic), timeout)
        .map_err(|e| broker_error(e.to_string()))?;
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
