//! Kafka partition discovery: the leader asks each Kafka source's brokers how many
//! partitions its topic has, at start and then every `discovery_interval`, so partitions
//! added to a topic later get ingest tasks. Lookups run beside the actor, never inside it:
//! a slow broker must not stall membership or hand-offs.

use std::time::Duration;

use smelter_common::spec::KafkaSpec;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::actor::Command;

/// Asks the actor for its Kafka sources and reports their partition counts back, until `stop`.
/// `now` wakes it early (a Kafka pipeline was just applied).
pub async fn run(
    commands: mpsc::WeakSender<Command>,
    interval: Duration,
    now: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = now.notified() => {}
        }
        let Some(sender) = commands.upgrade() else {
            return;
        };
        let (reply, answer) = oneshot::channel();
        if sender.send(Command::KafkaSources { reply }).await.is_err() {
            return;
        }
        let Ok(sources) = answer.await else { return };
        for (pipeline, source, spec) in sources {
            let timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
            match smelter_common::kafka::partition_count(&spec, &pipeline, timeout).await {
                Ok(count) => {
                    let _ = sender
                        .send(Command::Partitions {
                            pipeline,
                            source,
                            count,
                        })
                        .await;
                }
                Err(error) => {
                    tracing::warn!(%pipeline, %source, topic = %spec.topic, %error, "partition discovery failed; retrying next round");
                    let _ = sender
                        .send(Command::DiscoveryFailed {
                            pipeline,
                            source,
                            error: error.to_string(),
                        })
                        .await;
                }
            }
        }
    }
}

/// One Kafka source of one pipeline.
pub type KafkaSource = (String, String, KafkaSpec);
