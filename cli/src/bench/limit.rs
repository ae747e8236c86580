//! The limit: the same events through the bare stages of the pipeline, with none of its
//! bookkeeping (no commits, no dedupe, no quarantine, no coordination), measured in the
//! same run as the pipeline.
//!
//! Stages, each timed in CPU-seconds of this process while nothing else runs in it, each run
//! [`REPEATS`] times over each chunk of events, the least counting:
//! * `generate` — make the events (the in-process pipeline's source does the same);
//! * `kafka_consume` — for the cluster run, consume its topic to nothing with the
//!   pipeline's client settings;
//! * `bronze_encode` — bronze rows built and encoded as Parquet (Snappy, as delta-rs
//!   writes), to memory;
//! * `json_decode` — the payloads decoded to Arrow columns by Smelter's own decoder, the
//!   way refine decodes them (declared fields, flattened, and `_rescued_data`), malformed
//!   ones left out. It is the fastest decoder known here, so it is the one that counts;
//!   `json_decode_arrow`, the same with arrow-json against the nested schema, is measured
//!   alongside for comparison and not counted; so are `json_decode_serde` (Smelter's
//!   decoder driven by serde_json instead of its default, the SIMD parser sonic-rs, checked
//!   to give the same columns) and `json_parse_serde`/`json_parse_sonic` (each payload only
//!   parsed and validated, nothing kept: what the parser alone costs);
//! * `silver_encode` — the decoded rows in the silver shape, encoded;
//! * `gold_group_by` — every gold SQL of the pipeline over those silver rows in memory.
//!
//! The pipeline's events per CPU-second is then reported as a fraction of
//! `events / sum(stage CPU-seconds)`, with the stage that matches its source.
//!
//! A second limit counts third-party code only ([`THIRD_PARTY`]), so that it does not move
//! when Smelter's own code does: `json_decode_arrow` (arrow-json) instead of Smelter's
//! decoder, and `bronze_encode_default`/`silver_encode_default` — the same bronze and silver
//! batches encoded by the parquet crate's `ArrowWriter` with its default properties
//! instead of the tables' (`smelter_lake::file_format::writer_properties`). The batches
//! are built outside the timing, so these stages are the bare writer alone.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::MemTable;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use smelter_common::spec::{GeneratorSpec, KafkaSpec, PipelineSpec, TableSpec};
use smelter_worker::refine::Refiner;
use smelter_worker::source::SourceRecord;
use smelter_worker::source::generator::{Clickstream, EventKind, GeneratedEvent};

use super::measure::cpu_seconds;
use crate::{CliError, Result};

/// Events per chunk: every stage runs chunk by chunk, so memory stays bounded at 10M.
const CHUNK: usize = 250_000;

/// Runs of each stage over each chunk; the least CPU counts. The limit is what the hardware
/// can do, and on a shared machine other load only ever adds to a run: one run per stage
/// let the limit move by half between benchmark runs.
const REPEATS: usize = 3;

/// One bare stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stage {
    /// Stage name.
    pub name: String,
    /// CPU-seconds it took over all events.
    pub cpu_seconds: f64,
    /// Events per CPU-second.
    pub events_per_cpu_second: f64,
    /// Bytes it produced or consumed (payloads, Parquet).
    pub bytes: u64,
}

/// The limit of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Limit {
    /// Events put through.
    pub events: u64,
    /// Each stage.
    pub stages: Vec<Stage>,
    /// `events / sum(stage CPU-seconds)` with the generator as the source.
    pub events_per_cpu_second: f64,
    /// The same with consuming the topic as the source (cluster runs).
    pub kafka_events_per_cpu_second: Option<f64>,
    /// `events / sum(stage CPU-seconds)` of the third-party stages ([`THIRD_PARTY`]) with
    /// the generator as the source.
    pub third_party_events_per_cpu_second: f64,
    /// The same with consuming the topic as the source.
    pub third_party_kafka_events_per_cpu_second: Option<f64>,
}

/// The stages after the source.
pub const REFINING: [&str; 4] = [
    "bronze_encode",
    "json_decode",
    "silver_encode",
    "gold_group_by",
];

/// The stages after the source in the third-party limit: the bare arrow-json decoder, the
/// parquet writer with default settings, and DataFusion.
pub const THIRD_PARTY: [&str; 4] = [
    "bronze_encode_default",
    "json_decode_arrow",
    "silver_encode_default",
    "gold_group_by",
];

impl Limit {
    /// The events per CPU-second of the named stages together.
    pub fn of(&self, names: &[&str]) -> f64 {
        let cpu: f64 = self
            .stages
            .iter()
            .filter(|s| names.contains(&s.name.as_str()))
            .map(|s| s.cpu_seconds)
            .sum();
        rate(self.events, cpu)
    }
}

/// `events / cpu`, 0 when no CPU time was measured.
pub fn rate(events: u64, cpu: f64) -> f64 {
    if cpu > 0.0 { events as f64 / cpu } else { 0.0 }
}

/// Where the source stage reads from.
pub enum LimitSource<'a> {
    /// Make the events with the generator.
    Generator,
    /// Consume the pipeline's topic from the beginning to its end, with the client
    /// settings the pipeline uses.
    Kafka(&'a KafkaSpec),
}

fn bench_error(message: impl Into<String>) -> CliError {
    CliError::Bench(message.into())
}

/// Measures the limit on `events` events of `generator` (spread over its partitions as the
/// pipeline saw them), with the silver and gold tables of `spec`.
pub async fn measure(
    spec: &PipelineSpec,
    generator: &GeneratorSpec,
    events: u64,
    source: LimitSource<'_>,
) -> Result<Limit> {
    let (silver_name, silver) = spec
        .tables
        .iter()
        .find(|(_, t)| t.parse.is_some())
        .ok_or_else(|| bench_error("the pipeline has no silver table"))?;
    let refiner = Refiner::new(silver_name, silver, &spec.pipeline)?;
    let serde = Refiner::new(silver_name, silver, &spec.pipeline)?
        .with_json_parser(smelter_worker::refine::decode::JsonParser::SerdeJson);
    let gold: Vec<&TableSpec> = spec.tables.values().filter(|t| t.sql.is_some()).collect();
    let clickstream = Clickstream::new(&GeneratorSpec {
        count: Some(events),
        ..generator.clone()
    })?;
    let topic: Arc<str> = clickstream.topic("events").into();
    let nested = nested_schema(silver);
    let flat = smelter_worker::tasks::schemas::silver(silver);
    let mut totals: Vec<Stage> = [
        "generate",
        "bronze_encode",
        "json_decode",
        "silver_encode",
        "json_decode_arrow",
        "json_decode_serde",
        "json_parse_serde",
        "json_parse_sonic",
        "bronze_encode_default",
        "silver_encode_default",
    ]
    .iter()
    .map(|name| Stage {
        name: name.to_string(),
        ..Stage::default()
    })
    .collect();
    let mut silver_rows: Vec<RecordBatch> = Vec::new();

    let consumed = match source {
        LimitSource::Kafka(kafka) => {
            let (cpu, bytes) = timed(|| consume_to_nothing(kafka))?;
            Some(Stage {
                name: "kafka_consume".into(),
                cpu_seconds: cpu,
                bytes,
                ..Stage::default()
            })
        }
        LimitSource::Generator => None,
    };
    // Every (partition, offset) the pipeline saw, chunk by chunk.
    let positions: Vec<(i32, i64)> = (0..generator.partitions.max(1) as i32)
        .map(|p| (p, clickstream.partition_count(p).unwrap_or(0)))
        .collect();
    let mut all = positions
        .iter()
        .flat_map(|&(p, count)| (0..count).map(move |o| (p, o)));
    loop {
        let wanted: Vec<(i32, i64)> = all.by_ref().take(CHUNK).collect();
        if wanted.is_empty() {
            break;
        }
        let (cpu, chunk) = least(|| {
            Ok(wanted
                .iter()
                .map(|&(p, o)| (p, o, clickstream.event(p, o)))
                .collect::<Vec<_>>())
        })?;
        totals[0].cpu_seconds += cpu;
        totals[0].bytes += chunk
            .iter()
            .map(|(_, _, e)| e.payload.len() as u64)
            .sum::<u64>();
        let (cpu, bytes) = least(|| bronze_encode(&topic, &chunk))?;
        totals[1].cpu_seconds += cpu;
        totals[1].bytes += bytes;
        let bronze =
            smelter_worker::tasks::ingest::bronze_batch("events", &records(&topic, &chunk))?;
        let (cpu, bytes) = least(|| parquet_default(&bronze))?;
        totals[8].cpu_seconds += cpu;
        totals[8].bytes += bytes;
        let (cpu, decoded) = least(|| json_decode(&refiner, &chunk))?;
        totals[2].cpu_seconds += cpu;
        let (cpu, (bytes, flattened)) = least(|| silver_encode(&flat, &topic, &chunk, &decoded))?;
        totals[3].cpu_seconds += cpu;
        totals[3].bytes += bytes;
        let (cpu, _) = least(|| json_decode_arrow(&nested, &chunk))?;
        totals[4].cpu_seconds += cpu;
        let (cpu, serde) = least(|| json_decode(&serde, &chunk))?;
        totals[5].cpu_seconds += cpu;
        if serde.iter().zip(&decoded).any(|(a, b)| a != b) {
            return Err(bench_error(
                "sonic-rs and serde_json decoded the payloads differently",
            ));
        }
        let (cpu, _) = least(|| json_parse(&chunk, |p| serde_json::from_slice(p).ok()))?;
        totals[6].cpu_seconds += cpu;
        let (cpu, _) = least(|| json_parse(&chunk, |p| sonic_rs::from_slice(p).ok()))?;
        totals[7].cpu_seconds += cpu;
        let (cpu, bytes) = least(|| parquet_default(&flattened))?;
        totals[9].cpu_seconds += cpu;
        totals[9].bytes += bytes;
        silver_rows.push(flattened);
    }
    let mut gold_cpu = f64::INFINITY;
    for _ in 0..REPEATS {
        let started = cpu_seconds(None).unwrap_or(0.0);
        group_by(&flat, silver_rows.clone(), &gold).await?;
        gold_cpu = gold_cpu.min(cpu_seconds(None).unwrap_or(0.0) - started);
    }
    totals.push(Stage {
        name: "gold_group_by".into(),
        cpu_seconds: gold_cpu,
        ..Stage::default()
    });
    totals.extend(consumed);
    for stage in &mut totals {
        stage.events_per_cpu_second = rate(events, stage.cpu_seconds);
    }
    let mut limit = Limit {
        events,
        stages: totals,
        ..Limit::default()
    };
    let with = |source: &'static str| [&[source][..], &REFINING[..]].concat();
    let bare = |source: &'static str| [&[source][..], &THIRD_PARTY[..]].concat();
    limit.events_per_cpu_second = limit.of(&with("generate"));
    limit.third_party_events_per_cpu_second = limit.of(&bare("generate"));
    if limit.stages.iter().any(|s| s.name == "kafka_consume") {
        limit.kafka_events_per_cpu_second = Some(limit.of(&with("kafka_consume")));
        limit.third_party_kafka_events_per_cpu_second = Some(limit.of(&bare("kafka_consume")));
    }
    Ok(limit)
}

/// Runs `f` [`REPEATS`] times and returns the least CPU-seconds one run took, with that
/// run's output.
fn least<T>(mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let (mut cpu, mut out) = timed(&mut f)?;
    for _ in 1..REPEATS {
        let (again, output) = timed(&mut f)?;
        if again < cpu {
            (cpu, out) = (again, output);
        }
    }
    Ok((cpu, out))
}

/// Runs `f` and returns the CPU-seconds this process spent meanwhile.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let before = cpu_seconds(None).unwrap_or(0.0);
    let out = f()?;
    Ok((cpu_seconds(None).unwrap_or(0.0) - before, out))
}

fn consume_to_nothing(kafka: &KafkaSpec) -> Result<u64> {
    let topic = kafka.topic.as_str();
    let consumer: BaseConsumer = smelter_common::kafka::client_config(kafka, "bench-limit")
        .create()
        .map_err(|e| bench_error(format!("kafka consumer: {e}")))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| bench_error(format!("metadata of {topic}: {e}")))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition.id(), timeout)
            .map_err(|e| bench_error(format!("watermarks of {topic}: {e}")))?;
        if high > 0 {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .map_err(|e| bench_error(e.to_string()))?;
            ends.insert(partition.id(), high);
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| bench_error(format!("assign: {e}")))?;
    let mut bytes = 0u64;
    while !ends.is_empty() {
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                bytes += message.payload_len() as u64;
                if ends
                    .get(&message.partition())
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    ends.remove(&message.partition());
                }
            }
            Some(Err(e)) => return Err(bench_error(format!("consume {topic}: {e}"))),
            None => return Err(bench_error(format!("consume {topic}: no message for 10 s"))),
        }
    }
    Ok(bytes)
}

fn records(topic: &Arc<str>, chunk: &[(i32, i64, GeneratedEvent)]) -> Vec<SourceRecord> {
    chunk
        .iter()
        .map(|(partition, offset, event)| SourceRecord {
            topic: Arc::clone(topic),
            partition: *partition,
            offset: *offset,
            key: Some(event.event_id.clone()),
            timestamp_us: Some(event.ts_us),
            headers: None,
            payload: Some(event.payload.clone()),
            error: None,
            ends_topic: false,
        })
        .collect()
}

/// `batch` as Parquet, written with the tables' properties (`smelter_lake::file_format`).
fn parquet(batch: &RecordBatch) -> Result<u64> {
    parquet_with(batch, Some(smelter_lake::file_format::writer_properties()))
}

/// `batch` as Parquet by the parquet crate's writer with its default properties.
fn parquet_default(batch: &RecordBatch) -> Result<u64> {
    parquet_with(batch, None)
}

fn parquet_with(
    batch: &RecordBatch,
    properties: Option<datafusion::parquet::file::properties::WriterProperties>,
) -> Result<u64> {
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), properties)
        .map_err(|e| bench_error(format!("parquet: {e}")))?;
    writer
        .write(batch)
        .and_then(|_| writer.close().map(|_| ()))
        .map_err(|e| bench_error(format!("parquet: {e}")))?;
    Ok(out.len() as u64)
}

fn bronze_encode(topic: &Arc<str>, chunk: &[(i32, i64, GeneratedEvent)]) -> Result<u64> {
    let batch = smelter_worker::tasks::ingest::bronze_batch("events", &records(topic, chunk))?;
    parquet(&batch)
}

/// The declared columns, nested as in the JSON.
fn nested_schema(silver: &TableSpec) -> SchemaRef {
    let unflattened = TableSpec {
        flatten: false,
        ..silver.clone()
    };
    let full = smelter_worker::tasks::schemas::silver(&unflattened);
    let declared: Vec<Field> = full
        .fields()
        .iter()
        .filter(|f| !f.name().starts_with('_'))
        .map(|f| f.as_ref().clone())
        .collect();
    Arc::new(Schema::new(declared))
}

fn json_decode(refiner: &Refiner, chunk: &[(i32, i64, GeneratedEvent)]) -> Result<Vec<ArrayRef>> {
    Ok(refiner.decode_payloads(chunk.iter().map(|(_, _, e)| e.payload.as_slice()))?)
}

/// Each payload parsed and checked as JSON, nothing kept: the parser alone.
fn json_parse(
    chunk: &[(i32, i64, GeneratedEvent)],
    parse: impl Fn(&[u8]) -> Option<serde::de::IgnoredAny>,
) -> Result<usize> {
    Ok(chunk
        .iter()
        .filter(|(_, _, e)| parse(&e.payload).is_some())
        .count())
}

fn json_decode_arrow(
    schema: &SchemaRef,
    chunk: &[(i32, i64, GeneratedEvent)],
) -> Result<RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(chunk.len().max(1))
        .build_decoder()?;
    for (_, _, event) in chunk {
        if event.kind != EventKind::Malformed {
            decoder.decode(&event.payload)?;
        }
    }
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

fn silver_encode(
    flat: &SchemaRef,
    topic: &Arc<str>,
    chunk: &[(i32, i64, GeneratedEvent)],
    decoded: &[ArrayRef],
) -> Result<(u64, RecordBatch)> {
    let kept: Vec<&(i32, i64, GeneratedEvent)> = chunk
        .iter()
        .filter(|(_, _, e)| e.kind != EventKind::Malformed)
        .collect();
    let n = kept.len();
    let now = chrono_now_us();
    // The decoded columns end with `_rescued_data`; the bronze position follows.
    let mut columns = decoded.to_vec();
    columns.push(Arc::new(StringArray::from(vec![topic.as_ref(); n])));
    columns.push(Arc::new(Int32Array::from_iter_values(
        kept.iter().map(|k| k.0),
    )));
    columns.push(Arc::new(Int64Array::from_iter_values(
        kept.iter().map(|k| k.1),
    )));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC"),
    ));
    let batch = RecordBatch::try_new(flat.clone(), columns)?;
    Ok((parquet(&batch)?, batch))
}

fn chrono_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

async fn group_by(flat: &SchemaRef, rows: Vec<RecordBatch>, gold: &[&TableSpec]) -> Result<()> {
    // The same functions as the pipeline's sessions.
    let ctx = SessionContext::new();
    smelter_worker::serve::functions::register(&ctx);
    let layer = Arc::new(MemorySchemaProvider::new());
    let table = MemTable::try_new(flat.clone(), vec![rows])?;
    layer.register_table("events".into(), Arc::new(table))?;
    ctx.catalog("datafusion")
        .ok_or_else(|| bench_error("default catalog missing"))?
        .register_schema("silver", layer)?;
    for table in gold {
        let sql = table.sql.as_deref().unwrap_or_default();
        let batches = ctx.sql(sql).await?.collect().await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        tracing::debug!(rows, "limit group-by");
    }
    Ok(())
}
