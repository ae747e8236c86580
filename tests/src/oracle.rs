//! The exactly-once oracle (docs/testing.md): ground truth computed from the generator's pure
//! event function, compared with what the tables hold, plus independent recomputation of
//! gold and a replay of each `_delta_log`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
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

/// What the tables must hold, derived from the sources alone.
#[derive(Debug, Default)]
pub struct Truth {
    /// Every record the sources produced (G).
    pub bronze: BTreeSet<Position>,
    /// `event_id`s that must be in silver, once each.
    pub silver_ids: BTreeSet<String>,
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
                self.silver_ids.insert(event.event_id);
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

/// Silver holds each valid event once, and nothing else; quarantine holds exactly G_bad
/// with rule and reason.
pub async fn check_silver(tables: &TableStore, silver: &str, truth: &Truth) -> TestResult<()> {
    let batches = sql(tables, &format!("SELECT event_id FROM {silver}")).await?;
    let mut ids = Vec::new();
    for batch in &batches {
        ids.extend(strings(batch.column(0)));
    }
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    if unique.len() != ids.len() {
        return Err(format!(
            "{silver}: {} duplicate event_id rows",
            ids.len() - unique.len()
        ));
    }
    if unique != truth.silver_ids {
        let missing: Vec<_> = truth.silver_ids.difference(&unique).take(5).collect();
        let extra: Vec<_> = unique.difference(&truth.silver_ids).take(5).collect();
        return Err(format!(
            "{silver}: {} ids vs {} expected; missing {missing:?}; extra {extra:?}",
            unique.len(),
            truth.silver_ids.len()
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
    Ok(())
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

/// Every gold table equals its SQL recomputed here, directly over the silver table.
pub async fn check_gold(tables: &TableStore, spec: &PipelineSpec) -> TestResult<()> {
    for (name, table) in spec.tables_in(Layer::Gold) {
        let expected = rows(&sql(tables, table.sql.as_deref().unwrap_or_default()).await?)?;
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

/// Replays a table's `_delta_log`: every txn app id's versions never decrease, and no data
/// file is added twice.
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
        for line in text.lines() {
            let action: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("{table} v{version}: {e}"))?;
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
    check_gold(tables, spec).await?;
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
