//! Refine: bronze -> silver (+ `<table>_quarantine`).
//!
//! Reads the data files added by each new bronze version (no full rescans), decodes the
//! payloads, applies expectations and dedupe, and commits quarantine first and silver
//! second, each with `txn(appId = "<table>/<bronze table>", version = last bronze version
//! consumed)` (invariant 2). If the process dies between the two commits, the replay finds
//! the quarantine txn already present and skips that commit (invariant 3).

mod columns;
pub mod confluent;
pub mod decode;
pub mod dedupe;
pub mod envelope;
pub mod expectations;
pub mod incompatible;
pub mod infer;
pub mod inferred;
mod key_times;
pub mod matching;
pub mod quality;
pub mod replay;

pub use dedupe::{KeyCache, SilverAt};

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBufferBuilder, Int32Array,
    Int32Builder, Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder, UInt32Array,
};
use arrow::buffer::BooleanBuffer;
use arrow::compute::kernels::boolean::and_not;
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::DeltaTable;
use smelter_common::spec::{OnViolation, RecordField, TableSpec};

use self::columns::Columns;
use self::decode::{Cell, JsonDecoder};
use self::expectations::CompiledExpectation;
use crate::tasks::schemas;
use crate::{Result, WorkerError};
use smelter_lake::changes;
use smelter_lake::recent_files::RecentFiles;

/// Rows decoded into one set of column builders at a time (see [`Refiner::refine`]).
const DECODE_SLICE: usize = 8_192;

/// Hidden column that ties a decoded row back to its bronze row while filtering.
const ROW: &str = "__row";

/// The bronze columns refine needs.
const BRONZE_INPUT: [&str; 6] = [
    "topic",
    "partition",
    "offset",
    "payload",
    "error",
    "ingested_at",
];

/// Rows read from bronze, in commit order, numbered across batches. The batches are kept
/// as read: joining them would copy every payload once more.
pub struct BronzeRows {
    batches: Vec<RecordBatch>,
    /// The number of the first row of each batch.
    starts: Vec<usize>,
}

impl BronzeRows {
    /// Rows given as bronze-shaped batches (tests, and callers that already hold them).
    pub fn from_batches(batches: Vec<RecordBatch>) -> Self {
        let starts = batches
            .iter()
            .scan(0, |next, b| {
                let start = *next;
                *next += b.num_rows();
                Some(start)
            })
            .collect();
        Self { batches, starts }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The batch holding row `row`, and the row's index in it.
    fn at(&self, row: usize) -> (&RecordBatch, usize) {
        let b = self.starts.partition_point(|&start| start <= row) - 1;
        (&self.batches[b], row - self.starts[b])
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads the rows of the data files that versions `from..=to` of `bronze` added, but for
/// the versions a restore undid (`undone`, see [`changes::undone`]), with the bronze
/// columns refine reads and `extra` ones. Files added without `dataChange` (compaction)
/// are skipped: their rows were seen before.
pub async fn read_versions(
    bronze: &DeltaTable,
    name: &str,
    (from, to): (i64, i64),
    undone: &[(i64, i64)],
    recent: &RecentFiles,
    extra: &[&str],
) -> Result<BronzeRows> {
    let columns: HashSet<String> = BRONZE_INPUT
        .iter()
        .chain(extra)
        .map(|c| c.to_string())
        .collect();
    let mut batches = Vec::new();
    for file in changes::range_skipping(bronze, name, from, to, undone)
        .await?
        .added
    {
        batches.extend(changes::read(bronze, name, &file, Some(&columns), recent).await?);
    }
    Ok(BronzeRows::from_batches(batches))
}

/// What one refine step produced.
#[derive(Debug)]
pub struct Refined {
    /// Rows for silver, in bronze order (at least one batch, which may be empty).
    pub silver: Vec<RecordBatch>,
    /// Rows for the quarantine table.
    pub quarantine: RecordBatch,
    /// Rows removed by `drop` expectations.
    pub dropped: usize,
    /// Rows removed as duplicates.
    pub deduplicated: usize,
    /// Violations counted by `warn` expectations, per rule.
    pub warned: Vec<(String, usize)>,
    /// Time spent looking for duplicates, in milliseconds.
    pub dedupe_ms: u64,
    /// Dedupe keys (with event time) of the silver rows, for the task's [`KeyCache`].
    pub new_keys: Vec<(String, i64)>,
}

/// Turns bronze rows into silver rows for one silver table.
pub struct Refiner {
    table: String,
    spec: TableSpec,
    decoder: JsonDecoder,
    silver_schema: SchemaRef,
    work_schema: SchemaRef,
    expectations: Vec<CompiledExpectation>,
    /// Payloads are Debezium change events ([`envelope`]).
    debezium: bool,
    /// Payloads are Confluent-framed (Avro records, or JSON text), turned into JSON first
    /// ([`confluent`]).
    framed: Option<tokio::sync::Mutex<confluent::Confluent>>,
}

struct Quarantined {
    rule: String,
    reason: String,
    row: usize,
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            WorkerError::Arrow(arrow::error::ArrowError::SchemaError(format!(
                "bronze column `{name}` missing or mistyped"
            )))
        })
}

impl Refiner {
    /// Prepares decoding and compiles the expectations of `table`. A table whose schema is
    /// inferred and not yet known decodes under no declared field (everything rescued).
    pub fn new(table: &str, spec: &TableSpec, origin: &str) -> Result<Self> {
        Self::rescuing(table, spec, origin, None)
    }

    /// [`Self::new`], the decoder rescuing values of the fields `rescue` names instead of
    /// quarantining their records (see [`decode::JsonDecoder::rescuing`]).
    pub fn rescuing(
        table: &str,
        spec: &TableSpec,
        origin: &str,
        rescue: Option<&decode::Rescue>,
    ) -> Result<Self> {
        let parse = spec.parse.clone().ok_or_else(|| WorkerError::InvalidSpec {
            origin: origin.to_string(),
            field: format!("tables.{table}.parse"),
            message: "silver tables need a parse section".into(),
        })?;
        let silver_schema = schemas::silver(spec);
        let mut fields: Vec<Field> = silver_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROW, DataType::UInt32, false));
        let work_schema = Arc::new(Schema::new(fields));
        let expectations = expectations::compile(table, origin, &spec.expectations, &work_schema)?;
        let text_values = parse.format == smelter_common::spec::PayloadFormat::Csv;
        let declared = parse.schema.declared().cloned().unwrap_or_default();
        let mut decoder = JsonDecoder::with_text_values(declared, spec.flatten, text_values);
        if let Some(rescue) = rescue {
            decoder = decoder.rescuing(rescue);
        }
        // The decoder fills the silver schema's leading columns, in the same order.
        let leading: Vec<&String> = work_schema.fields().iter().map(|f| f.name()).collect();
        if leading.len() < decoder.columns().len() + 6
            || decoder.columns().iter().zip(&leading).any(|(a, b)| a != *b)
            || leading[decoder.columns().len()] != "_rescued_data"
        {
            return Err(WorkerError::Arrow(arrow::error::ArrowError::SchemaError(
                format!("{table}: decoded columns do not lead the silver schema"),
            )));
        }
        Ok(Self {
            table: table.to_string(),
            spec: spec.clone(),
            decoder,
            silver_schema,
            work_schema,
            expectations,
            debezium: parse.format == smelter_common::spec::PayloadFormat::Debezium,
            framed: match (&parse.registry, parse.format) {
                (Some(registry), smelter_common::spec::PayloadFormat::Avro) => {
                    Some(tokio::sync::Mutex::new(confluent::Confluent::new(
                        confluent::Framing::Avro,
                        registry,
                    )?))
                }
                (Some(registry), smelter_common::spec::PayloadFormat::Json) => {
                    Some(tokio::sync::Mutex::new(confluent::Confluent::new(
                        confluent::Framing::Json,
                        registry,
                    )?))
                }
                _ => None,
            },
        })
    }

    /// The work batch: decoded columns built directly, the bronze metadata columns taken
    /// from the rows of `input` that decoded (`kept`), and [`ROW`] pointing back at them
    /// (`input` starts at row `base`).
    fn decoded_batch(
        &self,
        input: &RecordBatch,
        base: usize,
        decoded: Columns,
        kept: Vec<u32>,
    ) -> Result<RecordBatch> {
        if kept.is_empty() {
            return Ok(RecordBatch::new_empty(self.work_schema.clone()));
        }
        let mut arrays = decoded.finish()?;
        let rows = UInt32Array::from(kept);
        for field in self.spec.parse.iter().flat_map(|p| &p.metadata) {
            let kind = self
                .work_schema
                .field_with_name(field.column())?
                .data_type()
                .clone();
            // Rows that never had it (a replay from the quarantine, a files source) are NULL.
            let Some(source) = input.column_by_name(field.bronze_column()) else {
                arrays.push(arrow::array::new_null_array(&kind, rows.len()));
                continue;
            };
            let taken = arrow::compute::take(source.as_ref(), &rows, None)?;
            arrays.push(match field {
                RecordField::Headers => columns::headers_map(&taken, &kind)?,
                RecordField::Key | RecordField::Timestamp => arrow::compute::cast(&taken, &kind)?,
            });
        }
        for name in ["topic", "partition", "offset", "ingested_at"] {
            let source = input.column_by_name(name).ok_or_else(|| {
                WorkerError::Arrow(arrow::error::ArrowError::SchemaError(format!(
                    "bronze column `{name}` missing"
                )))
            })?;
            arrays.push(arrow::compute::take(source.as_ref(), &rows, None)?);
        }
        let base = base as u32;
        arrays.push(Arc::new(UInt32Array::from_iter_values(
            rows.values().iter().map(|r| base + r),
        )));
        Ok(RecordBatch::try_new(self.work_schema.clone(), arrays)?)
    }

    /// Decodes one payload into a row of `decoded` (its cells staged in `cells`), or says
    /// why it does not decode.
    fn decode_into<'p>(
        &self,
        payload: &'p [u8],
        cells: &mut Vec<Cell<'p>>,
        decoded: &mut Columns,
    ) -> Result<std::result::Result<(), decode::Rejection>> {
        if self.debezium {
            return self.decode_change(payload, decoded);
        }
        match self.decoder.decode_cells(payload, cells) {
            Ok(rescued) => {
                cells.push(rescued.map_or(Cell::Null, |r| Cell::Text(r.into())));
                decoded.push(cells)?;
                Ok(Ok(()))
            }
            Err(rejection) => Ok(Err(rejection)),
        }
    }

    /// [`Self::decode_into`] for a Debezium change event: the row image decoded, then the
    /// envelope's columns after `_rescued_data`.
    fn decode_change(
        &self,
        payload: &[u8],
        decoded: &mut Columns,
    ) -> Result<std::result::Result<(), decode::Rejection>> {
        let change = match envelope::unwrap(payload) {
            Ok(change) => change,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let mut cells = Vec::with_capacity(self.decoded_width());
        match self.decoder.decode_cells(&change.image, &mut cells) {
            Ok(rescued) => {
                cells.push(rescued.map_or(Cell::Null, |r| Cell::Text(r.into())));
                cells.push(Cell::Text(change.op.into()));
                cells.push(change.ts_ms.map_or(Cell::Null, Cell::Long));
                cells.push(change.lsn.map_or(Cell::Null, Cell::Long));
                cells.push(change.source.map_or(Cell::Null, |s| Cell::Text(s.into())));
                decoded.push(&mut cells)?;
                Ok(Ok(()))
            }
            Err(rejection) => Ok(Err(rejection)),
        }
    }

    /// The columns decoding fills: the declared ones, `_rescued_data`, and for Debezium
    /// change events the envelope's.
    fn decoded_width(&self) -> usize {
        let envelope = if self.debezium {
            smelter_common::spec::DEBEZIUM_COLUMNS.len()
        } else {
            0
        };
        self.decoder.columns().len() + 1 + envelope
    }

    /// The decoding alone, as refine does it: the declared columns and `_rescued_data` of
    /// the payloads that decode, the others left out. (The benchmark's limit measures it.)
    pub fn decode_payloads<'p>(
        &self,
        payloads: impl IntoIterator<Item = &'p [u8]>,
    ) -> Result<Vec<ArrayRef>> {
        let declared = &self.work_schema.fields()[..self.decoded_width()];
        let payloads = payloads.into_iter();
        let mut decoded = Columns::new(declared, payloads.size_hint().0);
        let mut cells = Vec::with_capacity(declared.len());
        for payload in payloads {
            // A payload that does not decode is left out, as the quarantine takes it.
            let _ = self.decode_into(payload, &mut cells, &mut decoded)?;
        }
        decoded.finish()
    }

    /// The schema of what [`Self::decode_rows`] returns: the declared columns,
    /// `_rescued_data` and, for change events, the envelope's.
    pub fn decoded_schema(&self) -> SchemaRef {
        let declared = &self.work_schema.fields()[..self.decoded_width()];
        Arc::new(Schema::new(declared.to_vec()))
    }

    /// The payloads decoded as refine decodes them (see [`Self::decoded_schema`]), with
    /// for each decoded row the index of its payload; missing payloads and those that do
    /// not decode are left out. What `smelter delete --cascade` evaluates a silver
    /// predicate on to find the records of the rows it deletes.
    pub fn decode_rows<'p>(
        &self,
        payloads: impl IntoIterator<Item = Option<&'p [u8]>>,
    ) -> Result<(RecordBatch, Vec<usize>)> {
        let schema = self.decoded_schema();
        let payloads = payloads.into_iter();
        let mut decoded = Columns::new(schema.fields(), payloads.size_hint().0);
        let mut cells = Vec::with_capacity(schema.fields().len());
        let mut rows = Vec::new();
        for (index, payload) in payloads.enumerate() {
            let Some(payload) = payload else { continue };
            if self.decode_into(payload, &mut cells, &mut decoded)?.is_ok() {
                rows.push(index);
            }
        }
        let columns = decoded.finish()?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        Ok((
            RecordBatch::try_new_with_options(schema, columns, &options)?,
            rows,
        ))
    }

    /// The bronze columns this table keeps besides those every refine reads (its
    /// `parse.metadata`).
    pub fn extra_bronze_columns(&self) -> Vec<&'static str> {
        self.spec
            .parse
            .iter()
            .flat_map(|p| &p.metadata)
            .map(|f| f.bronze_column())
            .collect()
    }

    /// The refiner, parsing JSON with `parser` (the benchmark compares parsers with it).
    pub fn with_json_parser(mut self, parser: decode::JsonParser) -> Self {
        self.decoder = self.decoder.with_parser(parser);
        self
    }

    /// Up to `limit` payloads of `rows` as JSON objects would be decoded (Avro records
    /// turned into theirs first), leaving out records in error: what an inferred schema is
    /// inferred from.
    pub async fn json_payloads(&self, rows: &BronzeRows, limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for batch in &rows.batches {
            let prepared = match &self.framed {
                Some(framed) => framed.lock().await.prepare(batch).await?,
                None => batch.clone(),
            };
            let payload = column::<BinaryArray>(&prepared, "payload")?;
            let error = column::<StringArray>(&prepared, "error")?;
            let undecoded = prepared
                .column_by_name(confluent::DECODE_ERROR)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>());
            for row in 0..prepared.num_rows() {
                if out.len() >= limit {
                    return Ok(out);
                }
                if payload.is_valid(row)
                    && error.is_null(row)
                    && undecoded.is_none_or(|u| u.is_null(row))
                {
                    out.push(payload.value(row).to_vec());
                }
            }
        }
        Ok(out)
    }

    /// The silver table's schema.
    pub fn silver_schema(&self) -> &SchemaRef {
        &self.silver_schema
    }

    /// Decodes, validates and dedupes `rows`; `silver` is the table version dedupe checks
    /// against, `cache` its keys as far as the task knows them.
    pub async fn refine(
        &self,
        rows: &BronzeRows,
        silver: &mut SilverAt<'_>,
        cache: &mut KeyCache,
    ) -> Result<Refined> {
        let mut quarantined: Vec<Quarantined> = Vec::new();
        // Framed payloads (Avro, JSON Schema) are made JSON ones first; the quarantine keeps
        // the bytes as bronze holds them (`rows`).
        let prepared;
        let input_rows = match &self.framed {
            Some(framed) => {
                let mut framed = framed.lock().await;
                let mut batches = Vec::with_capacity(rows.batches.len());
                for batch in &rows.batches {
                    batches.push(framed.prepare(batch).await?);
                }
                prepared = BronzeRows::from_batches(batches);
                &prepared
            }
            None => rows,
        };
        // Kafka tombstones of a change stream, skipped (counted as dropped).
        let mut tombstones = 0;
        // Decoded in slices of rows, each built into Arrow columns at once.
        let mut slices = Vec::new();
        // The declared columns and `_rescued_data`.
        let declared = &self.work_schema.fields()[..self.decoded_width()];
        let mut cells = Vec::with_capacity(declared.len());
        for (input, &base) in input_rows.batches.iter().zip(&input_rows.starts) {
            let n = input.num_rows();
            if n == 0 {
                continue;
            }
            let payload = column::<BinaryArray>(input, "payload")?;
            let error = column::<StringArray>(input, "error")?;
            let undecoded = input
                .column_by_name(confluent::DECODE_ERROR)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>());
            for start in (0..n).step_by(DECODE_SLICE) {
                let mut decoded = Columns::new(declared, DECODE_SLICE);
                // The bronze row of each decoded row.
                let mut kept: Vec<u32> = Vec::with_capacity(DECODE_SLICE);
                for row in start..n.min(start + DECODE_SLICE) {
                    if self.debezium && payload.is_null(row) && error.is_null(row) {
                        // A Kafka tombstone following a delete (for log compaction): the
                        // delete itself came as the change before it.
                        tombstones += 1;
                        continue;
                    }
                    if let Some(undecoded) = undecoded
                        && undecoded.is_valid(row)
                    {
                        quarantined.push(Quarantined {
                            rule: "_parse".into(),
                            reason: undecoded.value(row).to_string(),
                            row: base + row,
                        });
                        continue;
                    }
                    if error.is_valid(row) || payload.is_null(row) {
                        let reason = if error.is_valid(row) {
                            error.value(row).to_string()
                        } else {
                            "record has no payload".into()
                        };
                        quarantined.push(Quarantined {
                            rule: "_ingest".into(),
                            reason,
                            row: base + row,
                        });
                        continue;
                    }
                    match self.decode_into(payload.value(row), &mut cells, &mut decoded)? {
                        Ok(()) => kept.push(row as u32),
                        Err(rejection) => quarantined.push(Quarantined {
                            rule: rejection.rule.into(),
                            reason: rejection.reason,
                            row: base + row,
                        }),
                    }
                }
                slices.push(self.decoded_batch(input, base, decoded, kept)?);
            }
        }
        // Expectations and dedupe only mark rows in `keep`, one mask per slice; the rows
        // are copied once, at the end, into silver's batches.
        slices.retain(|slice| slice.num_rows() > 0);
        let mut keep: Vec<BooleanArray> = slices
            .iter()
            .map(|slice| BooleanArray::new(BooleanBuffer::new_set(slice.num_rows()), None))
            .collect();
        let mut dropped = tombstones;
        let mut warned = Vec::new();
        if let Some(merge) = &self.spec.merge {
            // A change without its key or its sequence value cannot be merged.
            for name in merge.keys.iter().chain([&merge.sequence_by]) {
                let what = if *name == merge.sequence_by {
                    "the sequence column"
                } else {
                    "the key column"
                };
                for (slice, kept) in slices.iter().zip(keep.iter_mut()) {
                    let values = slice.column_by_name(name).ok_or_else(|| {
                        WorkerError::Arrow(arrow::error::ArrowError::SchemaError(format!(
                            "merge column `{name}` missing"
                        )))
                    })?;
                    let violations = arrow::compute::and(&arrow::compute::is_null(values)?, kept)?;
                    if violations.true_count() == 0 {
                        continue;
                    }
                    let rows = column::<UInt32Array>(slice, ROW)?;
                    quarantined.extend(violations.values().set_indices().map(|i| Quarantined {
                        rule: "_merge".into(),
                        reason: format!("{what} `{name}` is NULL"),
                        row: rows.value(i) as usize,
                    }));
                    *kept = and_not(kept, &violations)?;
                }
            }
        }
        for rule in &self.expectations {
            let violations = slices
                .iter()
                .zip(&keep)
                .map(|(slice, kept)| rule.violations_among(slice, kept))
                .collect::<Result<Vec<_>>>()?;
            let count: usize = violations.iter().map(BooleanArray::true_count).sum();
            if count == 0 {
                continue;
            }
            // Bronze rows of the violating rows, in order.
            let mut violating = Vec::with_capacity(count);
            for (slice, violations) in slices.iter().zip(&violations) {
                let rows = column::<UInt32Array>(slice, ROW)?;
                violating.extend(
                    (0..violations.len())
                        .filter(|&i| violations.value(i))
                        .map(|i| rows.value(i) as usize),
                );
            }
            match rule.action() {
                OnViolation::Warn => {
                    tracing::warn!(table = %self.table, rule = %rule.spec.name, count, "expectation violated (kept)");
                    warned.push((rule.spec.name.clone(), count));
                    continue;
                }
                OnViolation::Fail => {
                    return Err(WorkerError::ExpectationFailed {
                        table: self.table.clone(),
                        rule: rule.spec.name.clone(),
                        expr: rule.spec.expr.clone(),
                        count,
                        position: position(rows, violating[0])?,
                    });
                }
                OnViolation::Drop => dropped += count,
                OnViolation::Quarantine => {
                    quarantined.extend(violating.into_iter().map(|row| Quarantined {
                        rule: rule.spec.name.clone(),
                        reason: format!("violates `{}`", rule.spec.expr),
                        row,
                    }));
                }
            }
            for (kept, violations) in keep.iter_mut().zip(&violations) {
                *kept = and_not(kept, violations)?;
            }
        }

        let mut deduplicated = 0;
        let mut new_keys = Vec::new();
        let dedupe_started = std::time::Instant::now();
        if let Some(dedupe) = &self.spec.dedupe {
            let by = dedupe.by.clone().or_else(|| {
                self.silver_schema
                    .fields()
                    .iter()
                    .find(|f| {
                        f.data_type() == &schemas::timestamp_type() && !f.name().starts_with('_')
                    })
                    .map(|f| f.name().clone())
            });
            let window = dedupe.within.zip(by);
            let mut columns = dedupe.keys.clone();
            columns.extend(window.as_ref().map(|(_, c)| c.clone()));
            let narrow = kept_columns(&self.work_schema, &slices, &keep, &columns)?;
            let deduped = dedupe::dedupe(
                narrow,
                &dedupe.keys,
                window.as_ref().map(|(d, c)| (c.as_str(), *d)),
                silver,
                cache,
            )
            .await?;
            keep = narrowed(&keep, &deduped.keep);
            deduplicated = deduped.removed;
            new_keys = deduped.keys;
        }
        let silver_columns: Vec<usize> = (0..self.silver_schema.fields().len()).collect();
        let mut silver_batches = Vec::with_capacity(slices.len());
        for (slice, kept) in slices.iter().zip(&keep) {
            let rows = if kept.true_count() == kept.len() {
                slice.project(&silver_columns)?
            } else {
                filter_record_batch(&slice.project(&silver_columns)?, kept)?
            };
            if rows.num_rows() > 0 {
                silver_batches.push(RecordBatch::try_new(
                    self.silver_schema.clone(),
                    rows.columns().to_vec(),
                )?);
            }
        }
        if silver_batches.is_empty() {
            silver_batches.push(RecordBatch::new_empty(self.silver_schema.clone()));
        }
        quarantined.sort_by_key(|q| q.row);
        let dedupe_ms = dedupe_started.elapsed().as_millis() as u64;
        Ok(Refined {
            silver: silver_batches,
            quarantine: quarantine_batch(rows, &quarantined)?,
            dropped,
            deduplicated,
            warned,
            dedupe_ms,
            new_keys,
        })
    }
}

/// The rows of `slices` still in `keep`, as one batch of the named columns only (what
/// dedupe reads), in order.
fn kept_columns(
    schema: &SchemaRef,
    slices: &[RecordBatch],
    keep: &[BooleanArray],
    columns: &[String],
) -> Result<RecordBatch> {
    let indices = columns
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let narrow = Arc::new(schema.project(&indices)?);
    let parts = slices
        .iter()
        .zip(keep)
        .map(|(slice, kept)| Ok(filter_record_batch(&slice.project(&indices)?, kept)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(concat_batches(&narrow, &parts)?)
}

/// `keep` with its kept rows narrowed to those `still` keeps (one value per kept row, in
/// order).
fn narrowed(keep: &[BooleanArray], still: &BooleanArray) -> Vec<BooleanArray> {
    let mut still = still.values().iter();
    keep.iter()
        .map(|kept| {
            let mut narrowed = BooleanBufferBuilder::new(kept.len());
            narrowed.append_n(kept.len(), false);
            for row in kept.values().set_indices() {
                if still.next().unwrap_or(false) {
                    narrowed.set_bit(row, true);
                }
            }
            BooleanArray::new(narrowed.finish(), None)
        })
        .collect()
}

fn position(rows: &BronzeRows, row: usize) -> Result<String> {
    let (input, row) = rows.at(row);
    let topic = column::<StringArray>(input, "topic")?;
    let partition = column::<Int32Array>(input, "partition")?;
    let offset = column::<Int64Array>(input, "offset")?;
    Ok(format!(
        "{}/{}@{}",
        topic.value(row),
        partition.value(row),
        offset.value(row)
    ))
}

fn quarantine_batch(input: &BronzeRows, rows: &[Quarantined]) -> Result<RecordBatch> {
    if rows.is_empty() {
        return Ok(RecordBatch::new_empty(schemas::quarantine()));
    }
    let now = chrono::Utc::now().timestamp_micros();
    let mut rule_b = StringBuilder::new();
    let mut reason_b = StringBuilder::new();
    let mut topic_b = StringBuilder::new();
    let mut partition_b = Int32Builder::new();
    let mut offset_b = Int64Builder::new();
    let mut payload_b = BinaryBuilder::new();
    let mut ingested_b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut at_b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for q in rows {
        let (batch, row) = input.at(q.row);
        let topic = column::<StringArray>(batch, "topic")?;
        let partition = column::<Int32Array>(batch, "partition")?;
        let offset = column::<Int64Array>(batch, "offset")?;
        let payload = column::<BinaryArray>(batch, "payload")?;
        let ingested = column::<TimestampMicrosecondArray>(batch, "ingested_at")?;
        rule_b.append_value(&q.rule);
        reason_b.append_value(&q.reason);
        topic_b.append_value(topic.value(row));
        partition_b.append_value(partition.value(row));
        offset_b.append_value(offset.value(row));
        payload_b.append_option(payload.is_valid(row).then(|| payload.value(row)));
        ingested_b.append_value(ingested.value(row));
        at_b.append_value(now);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(rule_b.finish()),
        Arc::new(reason_b.finish()),
        Arc::new(topic_b.finish()),
        Arc::new(partition_b.finish()),
        Arc::new(offset_b.finish()),
        Arc::new(payload_b.finish()),
        Arc::new(ingested_b.finish()),
        Arc::new(at_b.finish()),
    ];
    Ok(RecordBatch::try_new(schemas::quarantine(), columns)?)
}

#[cfg(test)]
mod tests;
