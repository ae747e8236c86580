//! The benchmark checks its own output: after every end-to-end run, the rows each layer
//! holds are compared with what the produced events must become, and a run that lost or
//! doubled rows fails instead of reporting a figure.
//!
//! The expectation comes from the generator's labels alone (valid, duplicate, malformed,
//! missing user, bad price), not from anything the pipeline computed: bronze must hold
//! every produced position exactly once, silver every valid event once, the quarantine
//! every invalid one, and the gold tables that count events must count every silver row.

use serde::{Deserialize, Serialize};
use smelter_common::spec::{GeneratorSpec, PipelineSpec, SourceSpec};
use smelter_lake::TableStore;
use smelter_worker::serve::query::QueryEngine;
use smelter_worker::source::generator::{Clickstream, EventKind};

use crate::{CliError, Result};

/// What a run's tables held, as checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Rows in bronze: every produced position, once.
    pub bronze: u64,
    /// Rows in silver: every valid event, once.
    pub silver: u64,
    /// Rows in silver's quarantine: every invalid event.
    pub quarantine: u64,
    /// `sum(events)` of each gold table that counts events: every silver row.
    pub gold_events: u64,
}

/// Checks the tables of a run of `events` events from `generator` against what they must
/// hold; the counts, or an error saying what is wrong.
pub async fn check_run(
    tables: &TableStore,
    generator: &GeneratorSpec,
    events: u64,
) -> Result<Counts> {
    let engine = QueryEngine::new(tables.clone(), Default::default());
    let partitions = query(
        &engine,
        "SELECT \"partition\", count(*), count(DISTINCT \"offset\"), min(\"offset\"), \
         max(\"offset\") FROM bronze.events GROUP BY 1 ORDER BY 1",
    )
    .await?;
    let mut problems = Vec::new();
    let mut expected = Counts::default();
    let clickstream = Clickstream::new(generator)?;
    for row in &partitions {
        let [partition, rows, distinct, first, last] = row[..] else {
            continue;
        };
        if rows != distinct || first != 0 || last + 1 != rows {
            problems.push(format!(
                "bronze partition {partition}: {rows} rows, {distinct} distinct offsets \
                 {first}..={last}"
            ));
        }
        for offset in 0..=last {
            match clickstream.kind(partition as i32, offset) {
                EventKind::Valid => expected.silver += 1,
                EventKind::Duplicate { .. } => {}
                EventKind::Malformed | EventKind::MissingUser | EventKind::BadPrice => {
                    expected.quarantine += 1
                }
            }
        }
    }
    let found = Counts {
        bronze: partitions.iter().map(|r| r[1] as u64).sum(),
        silver: count(&engine, "SELECT count(*) FROM silver.events").await?,
        quarantine: count(&engine, "SELECT count(*) FROM silver.events_quarantine").await?,
        gold_events: count(&engine, "SELECT sum(events) FROM gold.daily_summary").await?,
    };
    expected.bronze = events;
    expected.gold_events = expected.silver;
    for (layer, found, expected) in [
        ("bronze", found.bronze, expected.bronze),
        ("silver", found.silver, expected.silver),
        ("quarantine", found.quarantine, expected.quarantine),
        (
            "gold.daily_summary events",
            found.gold_events,
            expected.gold_events,
        ),
    ] {
        if found != expected {
            problems.push(format!("{layer}: {found} rows, expected {expected}"));
        }
    }
    let hourly = count(&engine, "SELECT sum(events) FROM gold.hourly_metrics").await?;
    if hourly != expected.silver {
        problems.push(format!(
            "gold.hourly_metrics events: {hourly}, expected {}",
            expected.silver
        ));
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(CliError::Bench(format!(
            "the run's tables are not what its {events} events must give: {}",
            problems.join("; ")
        )))
    }
}

/// The generator behind a pipeline: its own, or (a Kafka source) the one the benchmark's
/// producer used.
pub fn generator_of(spec: &PipelineSpec, produced_with: &GeneratorSpec) -> GeneratorSpec {
    spec.sources
        .values()
        .find_map(|s| match s {
            SourceSpec::Generator(g) => Some(g.clone()),
            _ => None,
        })
        .unwrap_or_else(|| produced_with.clone())
}

/// Every row of `sql` as integers.
async fn query(engine: &QueryEngine, sql: &str) -> Result<Vec<Vec<i64>>> {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Int64Type};
    let batches = engine.plan(sql, None).await?.collect().await?;
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &DataType::Int64))
            .collect::<std::result::Result<_, _>>()?;
        for i in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| c.as_primitive::<Int64Type>().value(i))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// The one integer `sql` returns (0 for NULL).
pub(super) async fn count(engine: &QueryEngine, sql: &str) -> Result<u64> {
    Ok(query(engine, sql)
        .await?
        .first()
        .and_then(|row| row.first())
        .map_or(0, |n| (*n).max(0) as u64))
}
