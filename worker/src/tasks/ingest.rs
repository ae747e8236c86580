//! Ingest: source partitions -> bronze.
//!
//! Records are batched by count, bytes and time, then committed with one `txn` action per
//! (topic, partition) in the batch: `appId = "<pipeline>/<topic>/<partition>"`, `version` =
//! last offset (invariant 1). Start positions come from those txn versions, never from the
//! source's own bookkeeping. When a commit finds its positions already taken (another
//! owner, or an earlier attempt whose outcome was unknown), the buffered records are
//! dropped and the reader reopened from the table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    BinaryBuilder, Date32Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use async_trait::async_trait;
use deltalake::DeltaTable;
use smelter_proto::TaskState;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Progress, TaskEnv};
use crate::source::{self, CommittedPositions, SourceRecord, TopicState};
use crate::tasks::schemas;
use crate::{Result, WorkerError};
use smelter_lake::commit::Write;
use smelter_lake::timings::record_stages;
use smelter_lake::{AppId, CommitOutcome, TxnUpdate, WriteMode, log};

/// Largest payload kept in bronze; larger records land with an error flag instead.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Committed positions read from the bronze table's txn actions. Every answer is
/// remembered: it is the `previous` version of that partition's first commit, the value
/// the compare-and-set in [`smelter_lake::commit`] checks.
///
/// It starts from the snapshot the task has just loaded and follows the log through the
/// worker's [`smelter_lake::heads::LogHeads`]: a task start (after a rebalance, on every
/// worker that got a partition) costs one table load and one read of every txn, not one
/// log replay per partition or file.
struct TablePositions {
    pipeline: String,
    name: String,
    table: Mutex<DeltaTable>,
    commits: Arc<smelter_lake::CommitEnv>,
    answers: std::sync::Mutex<HashMap<(String, i32), Option<i64>>>,
    /// Answers about topics' ends ([`AppId::SourceEnd`]), as the log has them (-1 after a
    /// restore went back before the end).
    ends: std::sync::Mutex<HashMap<String, Option<i64>>>,
}

impl TablePositions {
    fn answered(&self, topic: &str, partition: i32) -> Option<Option<i64>> {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .copied()
    }

    /// The latest committed offset of every partition asked about (for the files source:
    /// within the latest file), for status reports.
    fn committed_offsets(&self) -> BTreeMap<i32, i64> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = BTreeMap::new();
        for ((_, partition), answer) in answers.iter() {
            if let Some(offset) = answer {
                let entry = out.entry(*partition).or_insert(*offset);
                *entry = (*entry).max(*offset);
            }
        }
        out
    }

    /// The txn versions of `app_ids` at the table's latest commit, from the worker's log
    /// heads: after the first question, every txn of the table is known and later ones
    /// (a files source asks twice per file) cost no log read.
    async fn latest(&self, app_ids: &[AppId]) -> Result<Vec<Option<i64>>> {
        let mut table = self.table.lock().await;
        let (_, at) = self
            .commits
            .heads
            .txns(&mut table, &self.name, app_ids)
            .await?;
        Ok(at)
    }

    fn answered_end(&self, topic: &str) -> Option<Option<i64>> {
        self.ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .copied()
    }

    fn forget(&self) {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.ends.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[async_trait]
impl CommittedPositions for TablePositions {
    async fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let answer = self
            .latest(&[AppId::source(&self.pipeline, topic, partition)])
            .await?[0];
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((topic.to_string(), partition), answer);
        Ok(answer)
    }

    async fn topic_states(&self, topics: &[String]) -> Result<Vec<TopicState>> {
        let mut app_ids = Vec::with_capacity(topics.len() * 2);
        for topic in topics {
            app_ids.push(AppId::source(&self.pipeline, topic, 0));
            app_ids.push(AppId::source_end(&self.pipeline, topic));
        }
        let answers = self.latest(&app_ids).await?;
        let mut committed = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        let mut states = Vec::with_capacity(topics.len());
        for (topic, pair) in topics.iter().zip(answers.chunks(2)) {
            committed.insert((topic.clone(), 0), pair[0]);
            ends.insert(topic.clone(), pair[1]);
            states.push(TopicState {
                committed: pair[0],
                ended: pair[1].filter(|last| *last >= 0),
            });
        }
        Ok(states)
    }
}

/// Ingests the owned partitions of one source into its bronze table.
pub struct IngestTask {
    /// The source name in the spec.
    pub source: String,
    /// The owned partitions.
    pub partitions: Vec<i32>,
    /// The bronze table (`bronze.events`).
    pub table: String,
}

impl IngestTask {
    /// Runs until cancelled (or until a bounded source is exhausted and then cancelled).
    pub async fn run(
        self,
        env: TaskEnv,
        progress: Progress,
        cancel: CancellationToken,
    ) -> Result<()> {
        let spec = env.table_spec(&self.table)?;
        let source_spec = env
            .pipeline
            .sources
            .get(&self.source)
            .cloned()
            .ok_or_else(|| WorkerError::SourceInvalid {
                source_name: self.source.clone(),
                message: "not declared in the pipeline".into(),
            })?;
        let started = Instant::now();
        let mut table = env
            .open_or_create(&self.table, &schemas::bronze(), &spec.partition_by)
            .await?;
        let opened = started.elapsed();
        let positions = Arc::new(TablePositions {
            pipeline: env.pipeline.pipeline.clone(),
            name: self.table.clone(),
            table: Mutex::new(table.clone()),
            commits: env.commits.clone(),
            answers: Default::default(),
            ends: Default::default(),
        });
        let s3_options = env.tables.storage_options();
        // Last offset this task committed per (topic, partition), while the reader lives.
        let mut committed: HashMap<(String, i32), i64> = HashMap::new();
        let mut reader = source::open(
            &env.pipeline.pipeline,
            &self.source,
            &source_spec,
            &self.partitions,
            positions.clone(),
            &s3_options,
            MAX_RECORD_BYTES,
        )
        .await?;
        // Report where each partition stands in the table, before this task commits anything.
        for (partition, offset) in positions.committed_offsets() {
            progress.update_partition(partition, |p| {
                p.committed_offset = p.committed_offset.max(offset)
            });
        }
        progress.update(|r| r.table_version = log::version(&table));
        progress.set_state(TaskState::Running);
        tracing::info!(
            table = %self.table,
            partitions = ?self.partitions,
            open_ms = opened.as_millis() as u64,
            start_ms = started.elapsed().as_millis() as u64,
            "ingest running"
        );
        let max_wait = Duration::from_millis(env.config.batch_max_wait_ms);
        loop {
            let batch_opened = Instant::now();
            let closes =
                Instant::now() + until_batch_closes(std::time::SystemTime::now(), max_wait);
            let limits = BatchLimits {
                records: env.config.batch_max_records,
                bytes: env.config.batch_max_bytes,
                closes,
            };
            let buffer = fill_batch(reader.as_mut(), &limits, &cancel).await?;
            let lags = reader.lag();
            progress.update(|r| r.lag = lags.iter().map(|(_, lag)| lag).sum());
            for (partition, lag) in lags {
                progress.update_partition(partition, |p| p.lag = lag);
            }
            if !buffer.is_empty() {
                // Committed even when cancelled: draining finishes the in-flight batch.
                let batch = batch_opened.elapsed();
                let outcome = self
                    .commit(&env, &mut table, &buffer, &committed, &positions, batch)
                    .await?;
                match outcome {
                    CommitOutcome::Committed { version } => {
                        env.commits.failpoints.hit("ingest.after_commit", || {
                            format!("table={} version={version}", self.table)
                        });
                        // Rows and last offset per (topic, partition) of the batch.
                        let mut per_partition: BTreeMap<(&str, i32), (u64, i64)> = BTreeMap::new();
                        for r in &buffer {
                            let entry = per_partition
                                .entry((&r.topic, r.partition))
                                .or_insert((0, r.offset));
                            *entry = (entry.0 + 1, entry.1.max(r.offset));
                        }
                        for ((topic, partition), (rows, last)) in per_partition {
                            let position = committed
                                .entry((topic.to_string(), partition))
                                .or_insert(last);
                            *position = (*position).max(last);
                            progress.update_partition(partition, |p| {
                                p.rows += rows;
                                p.committed_offset = p.committed_offset.max(last);
                            });
                        }
                        let rows = env
                            .commits
                            .heads
                            .head(&mut table, &self.table)
                            .await?
                            .rows();
                        progress.committed(version, buffer.len() as u64, rows.unwrap_or_default());
                        tracing::debug!(table = %self.table, version, rows = buffer.len(), "bronze commit");
                    }
                    CommitOutcome::AlreadyCommitted => {
                        tracing::info!(table = %self.table, "positions already committed elsewhere; reopening source from the table");
                        committed.clear();
                        positions.forget();
                        reader = source::open(
                            &env.pipeline.pipeline,
                            &self.source,
                            &source_spec,
                            &self.partitions,
                            positions.clone(),
                            &s3_options,
                            MAX_RECORD_BYTES,
                        )
                        .await?;
                    }
                }
            } else if reader.finished() {
                progress.set_state(TaskState::Idle);
            }
            if cancel.is_cancelled() {
                progress.set_state(TaskState::Stopped);
                return Ok(());
            }
            if reader.finished() {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(env.config.poll_interval_ms)) => {}
                }
            }
        }
    }

    async fn commit(
        &self,
        env: &TaskEnv,
        table: &mut DeltaTable,
        records: &[SourceRecord],
        committed: &HashMap<(String, i32), i64>,
        positions: &TablePositions,
        batch_open: Duration,
    ) -> Result<CommitOutcome> {
        let batch = bronze_batch(&self.source, records)?;
        let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in records {
            let entry = last.entry((&r.topic, r.partition)).or_insert(r.offset);
            *entry = (*entry).max(r.offset);
        }
        let mut txns = Vec::with_capacity(last.len());
        for ((topic, partition), offset) in last {
            // Where this reader started for the partition: our last commit, or the table's
            // answer when the reader opened it.
            let previous = match committed.get(&(topic.to_string(), partition)) {
                Some(&mine) => Some(mine),
                None => positions.answered(topic, partition).ok_or_else(|| WorkerError::SourceInvalid {
                    source_name: self.source.clone(),
                    message: format!("reader emitted {topic}/{partition} without asking for its start position"),
                })?,
            };
            txns.push(TxnUpdate::new(
                &AppId::source(&env.pipeline.pipeline, topic, partition),
                previous,
                offset,
            ));
        }
        for r in records.iter().filter(|r| r.ends_topic) {
            // The topic's end, in the commit of its last record; asked about by the reader
            // before it read the topic (`CommittedPositions::topic_states`).
            let previous =
                positions
                    .answered_end(&r.topic)
                    .ok_or_else(|| WorkerError::SourceInvalid {
                        source_name: self.source.clone(),
                        message: format!(
                            "reader ended {} without asking whether it had ended before",
                            r.topic
                        ),
                    })?;
            txns.push(TxnUpdate::new(
                &AppId::source_end(&env.pipeline.pipeline, &r.topic),
                previous,
                r.offset,
            ));
        }
        let spec = env.table_spec(&self.table)?;
        let mut metadata = HashMap::new();
        record_stages(&mut metadata, &[("batch", batch_open)]);
        let write = Write {
            batches: vec![batch],
            mode: WriteMode::Append,
            partition_by: &spec.partition_by,
            txns,
            metadata: &metadata,
        };
        smelter_lake::commit_write(table, &self.table, write, &env.commits)
            .await
            .map_err(Into::into)
    }
}

/// How long the batch opened at `now` stays open: until the next multiple of `interval`
/// since the Unix epoch that is at least a quarter interval away.
///
/// Every ingest task closes its batches on this one grid, whichever worker runs it and
/// whenever it started, so the bronze commits of one interval land together and a single
/// refine pass (and gold refresh) takes them all. Batches timed from their own start
/// drift apart by each commit's duration, and every bronze commit then costs a silver
/// commit and a round of gold refreshes of its own. Worker clocks agree to well within an
/// interval (NTP), which is all the grid needs; a batch is never longer than 1.25
/// intervals.
pub fn until_batch_closes(now: std::time::SystemTime, interval: Duration) -> Duration {
    let interval_ns = interval.as_nanos().max(1);
    let since_epoch = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut left = interval_ns - since_epoch % interval_ns;
    if left < interval_ns / 4 {
        left += interval_ns;
    }
    Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
}

/// When a batch is full: by count, bytes or time, whichever comes first.
pub struct BatchLimits {
    /// Records at most.
    pub records: usize,
    /// Payload bytes at most (the record that passes it is kept).
    pub bytes: usize,
    /// When it closes.
    pub closes: Instant,
}

/// One batch from `reader`, up to `limits`, or what it holds when `cancel` fires. A
/// finished reader (a bounded source that gave everything) ends the batch at once: its
/// polls would answer at once, empty, until the batch closed — a spin of up to an
/// interval per batch.
pub async fn fill_batch(
    reader: &mut dyn source::SourceReader,
    limits: &BatchLimits,
    cancel: &CancellationToken,
) -> Result<Vec<SourceRecord>> {
    let mut buffer: Vec<SourceRecord> = Vec::new();
    let mut bytes = 0usize;
    while buffer.len() < limits.records && bytes < limits.bytes {
        let remaining = limits.closes.saturating_duration_since(Instant::now());
        if remaining.is_zero() || reader.finished() {
            break;
        }
        let records = tokio::select! {
            _ = cancel.cancelled() => break,
            records = reader.poll(limits.records - buffer.len(), remaining) => records?,
        };
        bytes += records
            .iter()
            .map(|r| r.payload.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
        buffer.extend(records);
    }
    Ok(buffer)
}

/// Builds the bronze rows of `records`.
pub fn bronze_batch(source: &str, records: &[SourceRecord]) -> Result<RecordBatch> {
    let now = chrono::Utc::now();
    let now_us = now.timestamp_micros();
    let today = (now.date_naive() - chrono::NaiveDate::default()).num_days() as i32;
    let n = records.len();
    let mut source_b = StringBuilder::with_capacity(n, n * source.len());
    let mut topic = StringBuilder::with_capacity(n, n * 16);
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut key = StringBuilder::with_capacity(n, n * 16);
    let mut timestamp = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut headers = StringBuilder::new();
    let mut payload = BinaryBuilder::with_capacity(
        n,
        records
            .iter()
            .map(|r| r.payload.as_ref().map_or(0, Vec::len))
            .sum(),
    );
    let mut error = StringBuilder::new();
    let mut ingested = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut date = Date32Builder::with_capacity(n);
    for r in records {
        source_b.append_value(source);
        topic.append_value(&r.topic);
        partition.append_value(r.partition);
        offset.append_value(r.offset);
        key.append_option(r.key.as_deref());
        timestamp.append_option(r.timestamp_us);
        headers.append_option(r.headers.as_deref());
        payload.append_option(r.payload.as_deref());
        error.append_option(r.error.as_deref());
        ingested.append_value(now_us);
        date.append_value(today);
    }
    let columns: Vec<arrow::array::ArrayRef> = vec![
        Arc::new(source_b.finish()),
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(key.finish()),
        Arc::new(timestamp.finish()),
        Arc::new(headers.finish()),
        Arc::new(payload.finish()),
        Arc::new(error.finish()),
        Arc::new(ingested.finish()),
        Arc::new(date.finish()),
    ];
    Ok(RecordBatch::try_new(schemas::bronze(), columns)?)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use async_trait::async_trait;
    use smelter_common::spec::GeneratorSpec;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::{BatchLimits, fill_batch, until_batch_closes};
    use crate::Result;
    use crate::source::generator::GeneratorReader;
    use crate::source::sample::FromTheStart;
    use crate::source::{SourceReader, SourceRecord};

    /// A reader that counts its polls.
    struct Counted<R> {
        inner: R,
        polls: usize,
    }

    #[async_trait]
    impl<R: SourceReader> SourceReader for Counted<R> {
        async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<SourceRecord>> {
            self.polls += 1;
            self.inner.poll(max, wait).await
        }

        fn lag(&self) -> Vec<(i32, i64)> {
            self.inner.lag()
        }

        fn finished(&self) -> bool {
            self.inner.finished()
        }
    }

    /// A bounded generator that has given everything ends its batch at once: the batch
    /// holds every event after as many polls as it took, not a spin of polls answered
    /// empty until the batch closes (two seconds away: without the fix, that many
    /// seconds of polls).
    #[tokio::test]
    async fn a_finished_reader_ends_its_batch_at_once() {
        let spec = GeneratorSpec {
            partitions: 2,
            count: Some(1_000),
            rate: None,
            ..GeneratorSpec::default()
        };
        let reader = GeneratorReader::open("events", &spec, &[0, 1], &FromTheStart)
            .await
            .unwrap();
        let mut reader = Counted {
            inner: reader,
            polls: 0,
        };
        let limits = BatchLimits {
            records: 100_000,
            bytes: usize::MAX,
            closes: Instant::now() + Duration::from_secs(2),
        };
        let batch = fill_batch(&mut reader, &limits, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(batch.len(), 1_000);
        assert!(reader.finished());
        assert_eq!(reader.polls, 1);
        // The next batch of a finished reader is empty, without a poll.
        let batch = fill_batch(&mut reader, &limits, &CancellationToken::new())
            .await
            .unwrap();
        assert!(batch.is_empty());
        assert_eq!(reader.polls, 1);
    }

    #[test]
    fn batches_opened_apart_close_together_on_the_grid() {
        let second = Duration::from_secs(1);
        let tick = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let close = |opened: SystemTime| opened + until_batch_closes(opened, second);
        // Two workers opening batches 0.3 s and 0.7 s into an interval close them at the
        // same instant: the next whole second.
        let next = tick + second;
        assert_eq!(close(tick + Duration::from_millis(300)), next);
        assert_eq!(close(tick + Duration::from_millis(700)), next);
        // A batch opened on a grid point stays open one whole interval.
        assert_eq!(close(tick), next);
        // One opened too close to the next point (a commit ran late) takes the one after.
        assert_eq!(close(tick + Duration::from_millis(800)), next + second);
        // Never shorter than a quarter nor longer than 1.25 intervals, at any phase.
        for ms in (0..1000).step_by(7) {
            let left = until_batch_closes(tick + Duration::from_millis(ms), second);
            assert!(
                left >= second / 4 && left <= second * 5 / 4,
                "{ms} ms: {left:?}"
            );
        }
        // Intervals that do not divide a second keep their own grid.
        let odd = Duration::from_millis(300);
        let opened = tick + Duration::from_millis(100);
        let closes = opened + until_batch_closes(opened, odd);
        let since = closes.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(since % 300, 0);
    }
}
