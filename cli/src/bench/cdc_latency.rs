//! Change-to-gold latency of a change stream: the users table's Debezium changes from the
//! seeded generator (`kind: users_cdc`: creates, updates, deletes, snapshot reads, late and
//! repeated deliveries, a few truncated), paced at `rate` changes per second, through
//! bronze, a silver table merged by key (SCD 1, with its change data feed) and a gold
//! aggregate over it — `smelter up`'s cluster in this process, as the other in-process
//! runs.
//!
//! The latency is measured as for events ([`super::latency`]): a change becomes visible when
//! the gold table has refreshed from a silver version that merged the bronze version
//! holding it, read from the tables' logs; its produce time is when the paced generator
//! made it due. Gold over a merged table is recomputed on each refresh (retractions through
//! the change feed are not built), so its refresh cost follows the table's size.
//!
//! Checked before any figure is reported: bronze holds every produced position exactly
//! once, every layer consumed everything, and the gold table counts exactly the rows silver
//! holds.

use serde::Serialize;
use smelter_common::config::SmelterConfig;
use smelter_lake::TableStore;
use smelter_worker::serve::query::QueryEngine;
use smelter_worker::tasks::drained::DrainWatch;

use super::in_process::{apply, start};
use super::latency::{Histories, Latency, ProduceTimes, latency};
use super::measure::cpu_seconds;
use super::{BenchOptions, now_ms, wait_for};
use crate::{CliError, Result};

/// Partitions of the change stream.
const PARTITIONS: u32 = 2;

/// The figures of the paced change-stream run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CdcLatency {
    /// Changes produced.
    pub changes: u64,
    /// Produce rate, changes per second.
    pub rate: u64,
    /// Distinct keys (users).
    pub keys: u64,
    /// From applying the pipeline until every layer had consumed everything.
    pub wall_seconds: f64,
    /// The process's CPU meanwhile.
    pub cpu_seconds: f64,
    /// Produce-to-gold latency of every change bronze holds, with its stages.
    pub latency: Latency,
    /// Gold refreshes (commits of the gold table).
    pub gold_refreshes: u64,
    /// Rows silver ends with (live keys).
    pub silver_rows: u64,
    /// Changes quarantined (truncated envelopes).
    pub quarantined: u64,
}

/// The pipeline of the run (see the module docs).
fn pipeline(changes: u64, rate: u64, keys: u64) -> String {
    format!(
        r#"pipeline: cdc_latency
sources:
  users_cdc:
    generator:
      kind: users_cdc
      seed: 7
      partitions: {PARTITIONS}
      rate: {rate}
      count: {changes}
      users: {keys}
      duplicate_rate: 0.01
      late_rate: 0.05
      invalid_rate: 0.001
      start: "2026-11-01T00:00:00Z"
      step_ms: 200
tables:
  bronze.users_cdc:
    from: users_cdc
  silver.users:
    from: bronze.users_cdc
    parse:
      format: debezium
      schema: {{ user_id: string, email: string, tier: string, country: string, updated_at: timestamp }}
    merge: {{ keys: [user_id], sequence_by: _lsn }}
    change_data_feed: true
  gold.users_by_tier:
    from: silver.users
    sql: SELECT tier, country, count(*) AS users FROM silver.users GROUP BY tier, country
"#
    )
}

/// Runs `rate × seconds` changes over `keys` keys through the pipeline and measures when
/// each became visible in gold.
pub async fn measure(
    config: &SmelterConfig,
    options: &BenchOptions,
    rate: u64,
    seconds: u64,
    keys: u64,
) -> Result<CdcLatency> {
    let changes = rate * seconds;
    let dir = options
        .work_dir
        .join(format!("cdc-latency-{}", uuid::Uuid::new_v4()));
    let text = pipeline(changes, rate, keys);
    let cpu_before = cpu_seconds(None).unwrap_or(0.0);
    let (cluster, tables) = start(config, &dir, options.workers).await?;
    let start_ms = now_ms();
    let spec = apply(&cluster, &text).await?;
    let mut drain = DrainWatch::new(tables.clone(), spec.clone());
    let measured = async {
        let wall = wait_for("the change stream draining", options.timeout, async || {
            drain.drained().await
        })
        .await?;
        let cpu_seconds = cpu_seconds(None).unwrap_or(0.0) - cpu_before;
        let histories = Histories::read(&tables, &spec).await?;
        let produced = ProduceTimes::Paced {
            start_ms,
            per_partition_per_ms: rate as f64 / f64::from(PARTITIONS) / 1000.0,
        };
        let mut figures = CdcLatency {
            changes,
            rate,
            keys,
            wall_seconds: wall.as_secs_f64(),
            cpu_seconds,
            latency: latency(&histories, &spec, &produced),
            gold_refreshes: histories
                .tables
                .get("gold.users_by_tier")
                .map_or(0, |c| c.len() as u64),
            ..CdcLatency::default()
        };
        check(&tables, &mut figures).await?;
        Ok::<_, CliError>(figures)
    }
    .await;
    cluster.shutdown().await?;
    let figures = measured?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

/// Checks the run's tables (see the module docs) and fills in what they hold.
async fn check(tables: &TableStore, figures: &mut CdcLatency) -> Result<()> {
    let engine = QueryEngine::new(tables.clone(), Default::default());
    let one = async |sql: &str| -> Result<i64> {
        use arrow::array::AsArray;
        use arrow::datatypes::{DataType, Int64Type};
        let batches = engine.plan(sql, None).await?.collect().await?;
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| CliError::Bench(format!("no answer to {sql}")))?;
        let value = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
        Ok(value.as_primitive::<Int64Type>().value(0))
    };
    let bronze = one("SELECT count(*) FROM bronze.users_cdc").await?;
    let positions =
        one("SELECT count(DISTINCT concat(\"partition\", '/', \"offset\")) FROM bronze.users_cdc")
            .await?;
    let silver = one("SELECT count(*) FROM silver.users").await?;
    let gold = one("SELECT coalesce(sum(users), 0) FROM gold.users_by_tier").await?;
    let quarantined = one("SELECT count(*) FROM silver.users_quarantine").await?;
    let mut problems = Vec::new();
    if bronze != figures.changes as i64 || positions != bronze {
        problems.push(format!(
            "bronze holds {bronze} rows at {positions} positions, {} were produced",
            figures.changes
        ));
    }
    if gold != silver {
        problems.push(format!("gold counts {gold} users, silver holds {silver}"));
    }
    if figures.latency.not_visible > 0 {
        problems.push(format!(
            "{} changes never became visible in gold",
            figures.latency.not_visible
        ));
    }
    if !problems.is_empty() {
        return Err(CliError::Bench(format!(
            "the change stream's tables are wrong: {}",
            problems.join("; ")
        )));
    }
    figures.silver_rows = silver as u64;
    figures.quarantined = quarantined as u64;
    Ok(())
}
