//! The first records of a source, read without a pipeline: what `smelter infer` looks at.
//! Nothing is committed and no position is taken: every partition is read from its start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use smelter_common::spec::SourceSpec;

use super::{CommittedPositions, SourceRecord, TopicState};
use crate::Result;

/// Positions of a source nothing was ingested from: every partition from its start.
pub(crate) struct FromTheStart;

#[async_trait]
impl CommittedPositions for FromTheStart {
    async fn committed(&self, _topic: &str, _partition: i32) -> Result<Option<i64>> {
        Ok(None)
    }

    async fn topic_states(&self, topics: &[String]) -> Result<Vec<TopicState>> {
        Ok(vec![TopicState::default(); topics.len()])
    }
}

/// Up to `count` records of `source` from the start of its partitions, in the order the
/// reader returns them; fewer if it has no more (a bounded source that finished, or
/// nothing new for `idle`).
pub async fn sample(
    pipeline: &str,
    name: &str,
    source: &SourceSpec,
    count: usize,
    idle: Duration,
) -> Result<Vec<SourceRecord>> {
    let partitions: Vec<i32> = match source {
        SourceSpec::Generator(spec) => (0..spec.partitions as i32).collect(),
        SourceSpec::Kafka(spec) => {
            let n = smelter_common::kafka::partition_count(spec, pipeline, idle).await?;
            (0..n as i32).collect()
        }
        SourceSpec::Files(spec) => (0..spec.partitions as i32).collect(),
    };
    let mut reader = super::open(
        pipeline,
        name,
        source,
        &partitions,
        Arc::new(FromTheStart),
        &HashMap::new(), // a files source on S3: settings from the AWS_* environment
        usize::MAX,
    )
    .await?;
    let mut out = Vec::with_capacity(count);
    let started = tokio::time::Instant::now();
    let mut last = started;
    while out.len() < count && !reader.finished() && last.elapsed() < idle {
        let wait = Duration::from_millis(200).min(idle);
        let records = reader.poll(count - out.len(), wait).await?;
        if !records.is_empty() {
            last = tokio::time::Instant::now();
        }
        out.extend(records);
    }
    out.truncate(count);
    Ok(out)
}
