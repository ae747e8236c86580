//! The exactly-once oracle (docs/testing.md): ground truth computed from the generator's pure
//! event function, compared with what the tables hold, plus independent recomputation of
//! gold and a replay of each `_delta_log`.
//!
//! Nothing here shares code with the pipeline's refine or gold: the expected silver row of
//! each valid event is decoded from its payload with `serde_json` (nested objects
//! flattened by hand, the timestamp parsed by `chrono`), every column of every silver row
//! is compared with it, and gold is recomputed with plain DataFusion over those expected
//! rows — not over the silver table under test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int32Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;
use smelter_common::spec::{Layer, PipelineSpec, SourceSpec};
use smelter_lake::TableStore;
use smelter_worker::source::generator::{Clickstream, EventKind, GeneratedEvent};

use crate::TestResult;

/// A source position.
pub type Position = (String, i32, i64);

/// The demo's text columns in silver and where each comes from in the payload.
const TEXT_COLUMNS: [(&str, &[&str]); 10] = [
    ("event_id", &["event_id"]),
    ("event_type", &["event_type"]),
    ("session_id", &["session_id"]),
    ("user_id", &["user", "id"]),
    ("user_country", &["user", "country"]),
    ("user_device", &["user", "device"]),
    ("page_url", &["page", "url"]),
    ("page_referrer", &["page", "referrer"]),
    ("product_id", &["product", "id"]),
    ("product_category", &["product", "category"]),
];

/// One silver row as the oracle expects it, decoded from the event's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedRow {
    /// Where the event was first delivered (a later duplicate keeps nothing of its own).
    pub position: Position,
    /// The [`TEXT_COLUMNS`], in order.
    pub text: Vec<Option<String>>,
    /// `ts`, microseconds since the epoch.
    pub ts_us: Option<i64>,
    /// `product_price`, in integer cents (the column is `decimal(10,2)`).
    pub price: Option<i64>,
    /// `quantity`.
    pub quantity: Option<i64>,
}

/// A JSON number's text with at most two decimals (`19.9`, `-5`, `12.34`) in integer
/// cents, digit by digit: no float, and nothing shared with the decoder under test.
fn cents(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if fraction.len() > 2 || whole.is_empty() {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<2}").parse().ok()?;
    let value = whole * 100 + fraction;
    Some(if negative { -value } else { value })
}

impl ExpectedRow {
    /// Decodes a valid event's payload the way the demo's silver schema declares it.
    pub fn decode(position: Position, payload: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| format!("{position:?}: not JSON: {e}"))?;
        let at = |path: &[&str]| {
            path.iter()
                .try_fold(&value, |v, key| v.get(key))
                .filter(|v| !v.is_null())
        };
        let text = TEXT_COLUMNS
            .iter()
            .map(|(_, path)| at(path).and_then(|v| v.as_str()).map(str::to_string))
            .collect();
        let ts_us = at(&["ts"])
            .and_then(|v| v.as_str())
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.timestamp_micros())
                    .map_err(|e| format!("{position:?}: ts {t}: {e}"))
            })
            .transpose()?;
        let price = at(&["product", "price"])
            .map(|v| cents(&v.to_string()).ok_or_else(|| format!("{position:?}: price {v}")))
            .transpose()?;
        Ok(Self {
            position,
            text,
            ts_us,
            price,
            quantity: at(&["quantity"]).and_then(|v| v.as_i64()),
        })
    }

    /// The row's `event_id`.
    pub fn event_id(&self) -> &str {
        self.text[0].as_deref().unwrap_or_default()
    }
}

/// What the tables must hold, derived from the sources alone.
#[derive(Debug, Default)]
pub struct Truth {
    /// Every record the sources produced (G).
    pub bronze: BTreeSet<Position>,
    /// The rows silver must hold, by `event_id`, once each.
    pub silver: BTreeMap<String, ExpectedRow>,
    /// Records that must be quarantined, with their rule (G_bad).
    pub quarantine: BTreeMap<Position, String>,
    /// Generated duplicates (must not add silver rows).
    pub duplicates: usize,
}

impl Truth {
    /// Adds one record of the source at `position`: what it must become under the demo's
    /// rules (a silver row, nothing beyond bronze, or a quarantine row naming the rule).
    pub fn add(&mut self, position: Position, event: GeneratedEvent) {
        self.bronze.insert(position.clone());
        match event.kind {
            EventKind::Valid => {
                let row = ExpectedRow::decode(position, &event.payload)
                    .expect("a valid event's payload decodes");
                assert_eq!(
                    row.event_id(),
                    event.event_id,
                    "the payload names its event"
                );
                self.silver.insert(event.event_id, row);
            }
            EventKind::Duplicate { .. } => self.duplicates += 1,
            EventKind::Malformed => {
                self.quarantine.insert(position, "_parse".into());
            }
            EventKind::MissingUser => {
                self.quarantine.insert(position, "has_user".into());
            }
            EventKind::BadPrice => {
                self.quarantine.insert(position, "sane_price".into());
            }
        }
    }
}

/// Ground truth for a pipeline fed by bounded generators, with the demo's rules.
pub fn generator_truth(spec: &PipelineSpec) -> Truth {
    let mut truth = Truth::default();
    for (_, table) in spec.tables_in(Layer::Bronze) {
        let Some(SourceSpec::Generator(g)) = spec.sources.get(&table.from) else {
            continue;
        };
        let events = Clickstream::new(g).expect("valid generator");
        let topic = events.topic(&table.from);
        for partition in 0..g.partitions as i32 {
            for offset in 0..events
                .partition_count(partition)
                .expect("bounded generator")
            {
                truth.add(
                    (topic.clone(), partition, offset),
                    events.event(partition, offset),
                );
            }
        }
    }
    truth
}

/// Runs `sql` over the tables in storage, each registered as `layer.name` at its latest
/// version — plain DataFusion over plain Delta, independent of the worker's query engine.
pub async fn sql(tables: &TableStore, sql: &str) -> TestResult<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    let catalog = ctx.catalog("datafusion").ok_or("no default catalog")?;
    for layer in ["bronze", "silver", "gold"] {
        catalog
            .register_schema(layer, Arc::new(MemorySchemaProvider::new()))
            .map_err(|e| e.to_string())?;
    }
    for name in tables.list().await {
        let table = tables.open(&name).await.map_err(|e| e.to_string())?;
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| e.to_string())?;
        let provider = table.table_provider().await.map_err(|e| e.to_string())?;
        let (layer, short) = name.split_once('.').ok_or("bad table name")?;
        ctx.register_table(TableReference::partial(layer, short), provider)
            .map_err(|e| e.to_string())?;
    }
    ctx.sql(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))?
        .collect()
        .await
        .map_err(|e| format!("{sql}: {e}"))
}

/// The values of a text column (any string encoding), NULLs as `None`.
pub fn optional_strings(column: &arrow::array::ArrayRef) -> Vec<Option<String>> {
    let column = arrow::compute::cast(column, &DataType::Utf8).expect("text column");
    let column = column.as_string::<i32>();
    column.iter().map(|v| v.map(str::to_string)).collect()
}

/// The values of a text column (any string encoding) as owned strings.
pub fn strings(column: &arrow::array::ArrayRef) -> Vec<String> {
    let column = arrow::compute::cast(column, &DataType::Utf8).expect("text column");
    let column = column.as_string::<i32>();
    (0..column.len())
        .map(|i| column.value(i).to_string())
        .collect()
}

/// Reads (topic, partition, offset) triples from the given columns of a result.
pub fn positions(batches: &[RecordBatch]) -> Vec<Position> {
    let mut out = Vec::new();
    for batch in batches {
        let topic = strings(batch.column(0));
        let partition = batch.column(1).as_primitive::<Int32Type>();
        let offset = batch.column(2).as_primitive::<Int64Type>();
        for (i, topic) in topic.into_iter().enumerate() {
            out.push((topic, partition.value(i), offset.value(i)));
        }
    }
    out
}

/// Checks that `found` is exactly `expected`: nothing missing, nothing extra, no duplicates.
pub fn exact(what: &str, found: Vec<Position>, expected: &BTreeSet<Position>) -> TestResult<()> {
    let total = found.len();
    let mut counts: HashMap<&Position, usize> = HashMap::new();
    for p in &found {
        *counts.entry(p).or_default() += 1;
    }
    let duplicates: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, n)| format!("{p:?} x{n}"))
        .take(5)
        .collect();
    let set: BTreeSet<Position> = found.iter().cloned().collect();
    let missing: Vec<_> = expected.difference(&set).take(5).collect();
    let extra: Vec<_> = set.difference(expected).take(5).collect();
    if duplicates.is_empty() && missing.is_empty() && extra.is_empty() && total == expected.len() {
        return Ok(());
    }
    Err(format!(
        "{what}: {total} rows vs {} expected; {} missing (e.g. {missing:?}), {} extra (e.g. {extra:?}), duplicates e.g. {duplicates:?}",
        expected.len(),
        expected.difference(&set).count(),
        set.difference(expected).count()
    ))
}

/// Bronze holds exactly G.
pub async fn check_bronze(tables: &TableStore, table: &str, truth: &Truth) -> TestResult<()> {
    let found = positions(
        &sql(
            tables,
            &format!("SELECT topic, \"partition\", \"offset\" FROM {table}"),
        )
        .await?,
    );
    exact(table, found, &truth.bronze)
}

/// Silver holds each valid event once, every column equal to the value its payload gives,
/// and nothing else; quarantine holds exactly G_bad with rule and reason.
pub async fn check_silver(tables: &TableStore, silver: &str, truth: &Truth) -> TestResult<()> {
    check_silver_with(tables, silver, truth, &[])
        .await
        .map(drop)
}

/// [`check_silver`] for a table whose schema gained columns while it ran: a row of
/// `added` (column, `_rescued_data` key) may hold the column null if its `_rescued_data`
/// holds the expected value under the key instead (the row was refined before the column
/// was declared: nothing lost). Returns how many rows held an added column that way.
pub async fn check_silver_with(
    tables: &TableStore,
    silver: &str,
    truth: &Truth,
    added: &[(&str, &str)],
) -> TestResult<usize> {
    let mut rescued_rows = 0usize;
    let columns: Vec<&str> = TEXT_COLUMNS.iter().map(|(c, _)| *c).collect();
    let batches = sql(
        tables,
        &format!(
            "SELECT {}, CAST(ts AS BIGINT), product_price, quantity, _topic, _partition, \
             _offset, _rescued_data FROM {silver}",
            columns.join(", ")
        ),
    )
    .await?;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut problems: Vec<String> = Vec::new();
    let mut rows = 0usize;
    let n = TEXT_COLUMNS.len();
    for batch in &batches {
        let text: Vec<Vec<Option<String>>> =
            (0..n).map(|i| optional_strings(batch.column(i))).collect();
        let ts = batch.column(n).as_primitive::<Int64Type>();
        if batch.column(n + 1).data_type() != &DataType::Decimal128(10, 2) {
            return Err(format!(
                "{silver}: product_price is {}, not decimal(10,2)",
                batch.column(n + 1).data_type()
            ));
        }
        let price = batch.column(n + 1).as_primitive::<Decimal128Type>();
        let quantity = batch.column(n + 2).as_primitive::<Int64Type>();
        let topic = strings(batch.column(n + 3));
        let partition = batch.column(n + 4).as_primitive::<Int32Type>();
        let offset = batch.column(n + 5).as_primitive::<Int64Type>();
        let rescued = optional_strings(batch.column(n + 6));
        for row in 0..batch.num_rows() {
            rows += 1;
            let mut text: Vec<Option<String>> = text.iter().map(|c| c[row].clone()).collect();
            let mut extra: Option<serde_json::Map<String, serde_json::Value>> = rescued[row]
                .as_deref()
                .map(|r| serde_json::from_str(r).unwrap_or_default());
            let mut from_rescued = false;
            for (column, key) in added {
                let Some(i) = TEXT_COLUMNS.iter().position(|(c, _)| c == column) else {
                    continue;
                };
                if text[i].is_none()
                    && let Some(value) = extra.as_mut().and_then(|e| e.remove(*key))
                {
                    text[i] = value.as_str().map(str::to_string);
                    from_rescued = true;
                }
            }
            rescued_rows += usize::from(from_rescued);
            let found = ExpectedRow {
                position: (topic[row].clone(), partition.value(row), offset.value(row)),
                text,
                ts_us: ts.is_valid(row).then(|| ts.value(row)),
                price: price.is_valid(row).then(|| price.value(row) as i64),
                quantity: quantity.is_valid(row).then(|| quantity.value(row)),
            };
            let id = found.event_id().to_string();
            if !seen.insert(id.clone()) {
                problems.push(format!("{id} more than once"));
                continue;
            }
            match truth.silver.get(&id) {
                None => problems.push(format!("{id} is not a valid event: {found:?}")),
                Some(expected) if *expected != found => {
                    problems.push(format!("{id}: found {found:?}, expected {expected:?}"))
                }
                Some(_) => {}
            }
            if let Some(extra) = extra.filter(|e| !e.is_empty()) {
                problems.push(format!("{id}: unexpected _rescued_data {extra:?}"));
            }
        }
    }
    let missing: Vec<&String> = truth
        .silver
        .keys()
        .filter(|id| !seen.contains(*id))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} valid events missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if !problems.is_empty() {
        return Err(format!(
            "{silver}: {rows} rows, {} expected; {} problems, e.g. {:?}",
            truth.silver.len(),
            problems.len(),
            &problems[..problems.len().min(5)]
        ));
    }
    let quarantine = format!("{silver}_quarantine");
    let batches = sql(
        tables,
        &format!("SELECT topic, \"partition\", \"offset\", rule, reason FROM {quarantine}"),
    )
    .await?;
    let found = positions(&batches);
    let expected: BTreeSet<Position> = truth.quarantine.keys().cloned().collect();
    exact(&quarantine, found.clone(), &expected)?;
    let mut i = 0;
    for batch in &batches {
        let rule = strings(batch.column(3));
        let reason = strings(batch.column(4));
        for row in 0..batch.num_rows() {
            let position = &found[i];
            i += 1;
            if truth.quarantine.get(position) != Some(&rule[row]) {
                return Err(format!(
                    "{quarantine}: {position:?} has rule {} but {:?} was expected",
                    rule[row],
                    truth.quarantine.get(position)
                ));
            }
            if reason[row].is_empty() {
                return Err(format!("{quarantine}: {position:?} has no reason"));
            }
        }
    }
    Ok(rescued_rows)
}

/// Sorted text rows of a result, floats rounded so summation order does not matter.
pub fn rows(batches: &[RecordBatch]) -> TestResult<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let mut columns = Vec::new();
        for column in batch.columns() {
            let column = match column.data_type() {
                DataType::Float64 | DataType::Float32 => {
                    let values = arrow::compute::cast(column, &DataType::Float64)
                        .map_err(|e| e.to_string())?;
                    let values = values.as_primitive::<Float64Type>();
                    Arc::new(arrow::array::StringArray::from_iter(
                        values.iter().map(|v| v.map(|v| format!("{v:.4}"))),
                    )) as arrow::array::ArrayRef
                }
                DataType::Utf8View | DataType::LargeUtf8 => {
                    arrow::compute::cast(column, &DataType::Utf8).map_err(|e| e.to_string())?
                }
                _ => Arc::clone(column),
            };
            columns.push(column);
        }
        let formatters: Vec<ArrayFormatter> = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        for row in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect::<Vec<_>>()
                    .join(" | "),
            );
        }
    }
    out.sort();
    Ok(out)
}

/// Every gold table equals its SQL recomputed here with plain DataFusion over the rows
/// silver must hold (the oracle's, not the silver table under test).
pub async fn check_gold(tables: &TableStore, spec: &PipelineSpec, truth: &Truth) -> TestResult<()> {
    let expected_silver = expected_silver(truth)?;
    for (name, table) in spec.tables_in(Layer::Gold) {
        let recomputed = over_expected_silver(
            &table.from,
            expected_silver.clone(),
            table.sql.as_deref().unwrap_or_default(),
        )
        .await?;
        let expected = rows(&recomputed)?;
        let actual = rows(&sql(tables, &format!("SELECT * FROM {name}")).await?)?;
        if expected.is_empty() {
            return Err(format!(
                "{name}: recomputation is empty; the test would prove nothing"
            ));
        }
        if expected != actual {
            let diff: Vec<_> = expected
                .iter()
                .filter(|r| !actual.contains(r))
                .take(3)
                .collect();
            return Err(format!(
                "{name}: {} rows vs {} recomputed; e.g. expected but missing: {diff:?}",
                actual.len(),
                expected.len()
            ));
        }
    }
    Ok(())
}

/// The oracle's silver rows as one Arrow batch with the demo's silver columns.
fn expected_silver(truth: &Truth) -> TestResult<RecordBatch> {
    use arrow::array::{
        ArrayRef, Decimal128Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Schema, TimeUnit};
    let rows: Vec<&ExpectedRow> = truth.silver.values().collect();
    let mut fields: Vec<Field> = TEXT_COLUMNS
        .iter()
        .map(|(c, _)| Field::new(*c, DataType::Utf8, true))
        .collect();
    let mut columns: Vec<ArrayRef> = (0..TEXT_COLUMNS.len())
        .map(|i| {
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.text[i].as_deref()),
            )) as ArrayRef
        })
        .collect();
    fields.push(Field::new(
        "ts",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.ts_us)).with_timezone("UTC"),
    ));
    fields.push(Field::new(
        "product_price",
        DataType::Decimal128(10, 2),
        true,
    ));
    columns.push(Arc::new(
        Decimal128Array::from_iter(rows.iter().map(|r| r.price.map(i128::from)))
            .with_precision_and_scale(10, 2)
            .map_err(|e| e.to_string())?,
    ));
    fields.push(Field::new("quantity", DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from_iter(
        rows.iter().map(|r| r.quantity),
    )));
    fields.push(Field::new("_topic", DataType::Utf8, false));
    columns.push(Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.position.0.as_str()),
    )));
    fields.push(Field::new("_partition", DataType::Int32, false));
    columns.push(Arc::new(Int32Array::from_iter_values(
        rows.iter().map(|r| r.position.1),
    )));
    fields.push(Field::new("_offset", DataType::Int64, false));
    columns.push(Arc::new(Int64Array::from_iter_values(
        rows.iter().map(|r| r.position.2),
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Runs `sql` with plain DataFusion, `silver` (a `layer.name`) being `rows`.
async fn over_expected_silver(
    silver: &str,
    rows: RecordBatch,
    sql: &str,
) -> TestResult<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    let catalog = ctx.catalog("datafusion").ok_or("no default catalog")?;
    let (layer, short) = silver.split_once('.').ok_or("bad table name")?;
    catalog
        .register_schema(layer, Arc::new(MemorySchemaProvider::new()))
        .map_err(|e| e.to_string())?;
    let table = datafusion::datasource::MemTable::try_new(rows.schema(), vec![vec![rows]])
        .map_err(|e| e.to_string())?;
    ctx.register_table(TableReference::partial(layer, short), Arc::new(table))
        .map_err(|e| e.to_string())?;
    ctx.sql(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))?
        .collect()
        .await
        .map_err(|e| format!("{sql}: {e}"))
}

/// Replays a table's `_delta_log`: every txn app id's versions never decrease, and no data
/// file is added twice — except in a `RESTORE` commit, which puts positions and files back
/// (recognised by its commitInfo operation, as any Delta reader would).
pub fn check_log(tables: &TableStore, table: &str) -> TestResult<()> {
    let log = tables.path(table).join("_delta_log");
    let mut commits: Vec<(i64, std::path::PathBuf)> = std::fs::read_dir(&log)
        .map_err(|e| format!("{}: {e}", log.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json")
                .and_then(|v| v.parse::<i64>().ok())
                .map(|v| (v, e.path()))
        })
        .collect();
    commits.sort();
    for (i, (version, _)) in commits.iter().enumerate() {
        if *version != i as i64 {
            return Err(format!(
                "{table}: log versions are not contiguous at {version}"
            ));
        }
    }
    let mut txns: HashMap<String, i64> = HashMap::new();
    let mut files: BTreeSet<String> = BTreeSet::new();
    for (version, path) in commits {
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let actions: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).map_err(|e| format!("{table} v{version}: {e}")))
            .collect::<TestResult<_>>()?;
        let restore = actions
            .iter()
            .any(|a| a["commitInfo"]["operation"] == "RESTORE");
        for action in actions {
            if restore {
                if let Some(txn) = action.get("txn") {
                    let app = txn["appId"].as_str().unwrap_or_default().to_string();
                    txns.insert(app, txn["version"].as_i64().unwrap_or(-1));
                }
                continue;
            }
            if let Some(txn) = action.get("txn") {
                let app = txn["appId"].as_str().unwrap_or_default().to_string();
                let v = txn["version"].as_i64().unwrap_or(-1);
                if let Some(previous) = txns.insert(app.clone(), v)
                    && v < previous
                {
                    return Err(format!(
                        "{table} v{version}: txn {app} went back from {previous} to {v}"
                    ));
                }
            }
            if let Some(add) = action.get("add") {
                let file = add["path"].as_str().unwrap_or_default().to_string();
                if !files.insert(file.clone()) {
                    return Err(format!("{table} v{version}: file {file} added twice"));
                }
            }
        }
    }
    Ok(())
}

/// The whole oracle for a generator-fed clickstream pipeline: bronze exactly G, silver and
/// quarantine exact, gold equal to its recomputation, and every table's log replayed clean
/// (here, and by the product's verifier).
pub async fn check_pipeline(
    tables: &TableStore,
    spec: &PipelineSpec,
    truth: &Truth,
) -> TestResult<()> {
    check_bronze(tables, "bronze.events", truth).await?;
    check_silver(tables, "silver.events", truth).await?;
    check_gold(tables, spec, truth).await?;
    for table in tables.list().await {
        if tables.is_local() {
            // The raw-file replay reads local directories; the verifier reads any store.
            check_log(tables, &table)?;
        }
        verified(tables, &table).await?;
    }
    Ok(())
}

/// The product's own verifier (`smelter verify`) must find `table` clean too.
pub async fn verified(tables: &TableStore, table: &str) -> TestResult<()> {
    let report = smelter_lake::verify::verify(tables, table)
        .await
        .map_err(|e| format!("verify {table}: {e}"))?;
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!("verify {table}: {:?}", report.findings))
    }
}
