//! Sources: anything that yields records at a (topic, partition, offset) position.
//!
//! A reader never decides where to start by itself: it asks [`CommittedPositions`], which
//! answers from the bronze table's Delta `txn` actions (docs/exactly-once.md, invariant 1). That is what makes
//! restarts, hand-offs and crashes exactly-once for every source kind: the generator (a
//! pure function of seed, partition and offset), the files source (each file is a
//! one-partition topic named after the file, see [`files`]), and Kafka.

pub mod file_records;
pub mod files;
pub mod generator;
mod kafka;
pub mod landing;
pub mod sample;
mod users_cdc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use smelter_common::spec::SourceSpec;

use crate::Result;

/// One record as read from a source, before it becomes a bronze row.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// Topic (generator topic, file name, Kafka topic).
    pub topic: Arc<str>,
    /// Partition within the topic.
    pub partition: i32,
    /// Offset within the partition; strictly increasing per (topic, partition).
    pub offset: i64,
    /// Record key, if the source has one.
    pub key: Option<String>,
    /// Source timestamp in microseconds since the epoch, if the source has one.
    pub timestamp_us: Option<i64>,
    /// Headers as a JSON object, if any.
    pub headers: Option<String>,
    /// The raw payload; `None` when it could not be kept (see `error`).
    pub payload: Option<Vec<u8>>,
    /// Why the record is flagged (e.g. too large); such records still land in bronze.
    pub error: Option<String>,
    /// No record follows this one in its topic (the last record of a file): the commit
    /// that holds it also records the topic as finished ([`smelter_lake::AppId::SourceEnd`]).
    pub ends_topic: bool,
}

/// Answers "what is the last offset of (topic, partition) already in bronze?".
#[async_trait]
pub trait CommittedPositions: Send + Sync {
    /// The last committed offset, or `None` if nothing of it was committed.
    async fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>>;

    /// For topics that end (the files of a files source, each at partition 0): where each
    /// of `topics` stands. Asked for many at once: a listing may find thousands of files.
    async fn topic_states(&self, topics: &[String]) -> Result<Vec<TopicState>>;
}

/// Where a topic that ends (a file) stands in bronze.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicState {
    /// The last offset committed at partition 0 (-1 after a restore went back before it).
    pub committed: Option<i64>,
    /// The offset of its last record, if bronze records it as read to its end.
    pub ended: Option<i64>,
}

/// Reads the partitions of one source that this worker owns.
#[async_trait]
pub trait SourceReader: Send {
    /// The next records, at most `max_records`, waiting at most `max_wait`. A reader may
    /// wait for more than the first record (Kafka fills up to `max_records`; a paced
    /// generator hands out slices of its schedule). An empty result means nothing is
    /// available right now.
    async fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<Vec<SourceRecord>>;

    /// Records available but not yet returned, per owned partition, where the source can tell.
    fn lag(&self) -> Vec<(i32, i64)>;

    /// True once a bounded source has returned everything it will ever return.
    fn finished(&self) -> bool;
}

/// Opens a reader over `partitions` of `source`, starting after the committed positions;
/// a files source on `s3://` is reached with `s3_options` (the storage section's).
pub async fn open(
    pipeline: &str,
    name: &str,
    source: &SourceSpec,
    partitions: &[i32],
    positions: Arc<dyn CommittedPositions>,
    s3_options: &HashMap<String, String>,
    max_record_bytes: usize,
) -> Result<Box<dyn SourceReader>> {
    match source {
        SourceSpec::Generator(spec) => Ok(Box::new(
            generator::GeneratorReader::open(name, spec, partitions, positions.as_ref()).await?,
        )),
        SourceSpec::Files(spec) => Ok(Box::new(files::FilesReader::new(
            name,
            spec,
            partitions,
            positions,
            s3_options,
            max_record_bytes,
        )?)),
        SourceSpec::Kafka(spec) => Ok(Box::new(
            kafka::KafkaReader::open(
                pipeline,
                name,
                spec,
                partitions,
                positions.as_ref(),
                max_record_bytes,
            )
            .await?,
        )),
    }
}
