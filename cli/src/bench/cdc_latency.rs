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
//! made it due. Gold follows the merged table through its change data feed (inserts and
//! post-images folded in, deletes and pre-images retracted), so a refresh costs what the
//! merges since the last one changed, not the table's size; the run reports how each
//! refresh was computed and what a folded one cost.
//!
//! Checked before any figure is reported: bronze holds every produced position exactly
//! once, every layer consumed everything, the gold table counts exactly the rows silver
//! holds, and gold refreshes after the first folded the change data.

use serde::Serialize;
use smelter_common::config::SmelterConfig;
use smelter_lake::TableStore;
use smelter_worker::gold::{RefreshKind, Refresher};
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
    /// Of them, those that folded silver's change data into the state (inserts and
    /// post-images in, deletes and pre-images retracted).
    pub gold_folded: u64,
    /// Those that built the state from the whole silver table (the first, and after a
    /// change the state cannot follow).
    pub gold_built: u64,
    /// Silver rows read per folded refresh (change data rows), on average.
    pub gold_folded_rows_mean: f64,
    /// Time a folded refresh took (the gold commit's `refresh` stage), milliseconds.
    pub gold_folded_refresh_ms: RefreshCost,
    /// After the run, over the final silver table: building the gold state from it (what
    /// every refresh cost before gold followed the change feed), milliseconds...
    pub gold_build_ms: f64,
    /// ... and recomputing the query over it in full, milliseconds.
    pub gold_recompute_ms: f64,
    /// Rows silver ends with (live keys).
    pub silver_rows: u64,
    /// Changes quarantined (truncated envelopes).
    pub quarantined: u64,
}

/// Percentiles of a refresh stage, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RefreshCost {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl RefreshCost {
    fn of(mut times: Vec<f64>) -> Self {
        if times.is_empty() {
            return Self::default();
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.5),
            p99: at(0.99),
            max: times[times.len() - 1],
        }
    }
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
    sql: {GOLD_SQL}
"#
    )
}

/// The gold query of the run.
const GOLD_SQL: &str =
    "SELECT tier, country, count(*) AS users FROM silver.users GROUP BY tier, country";

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
        let gold_commits = histories
            .tables
            .get("gold.users_by_tier")
            .cloned()
            .unwrap_or_default();
        let how = |c: &smelter_lake::history::Commit| {
            c.smelter_info
                .get(smelter_worker::gold::REFRESH_KEY)
                .and_then(|r| r["how"].as_str().map(str::to_string))
        };
        let folded: Vec<&smelter_lake::history::Commit> = gold_commits
            .iter()
            .filter(|c| how(c).as_deref() == Some("folded"))
            .collect();
        let folded_rows: u64 = folded
            .iter()
            .filter_map(|c| {
                c.smelter_info[smelter_worker::gold::REFRESH_KEY]["upstreamRows"].as_u64()
            })
            .sum();
        let mut figures = CdcLatency {
            gold_folded: folded.len() as u64,
            gold_built: gold_commits
                .iter()
                .filter(|c| how(c).as_deref() == Some("built"))
                .count() as u64,
            gold_folded_rows_mean: folded_rows as f64 / folded.len().max(1) as f64,
            gold_folded_refresh_ms: RefreshCost::of(
                folded
                    .iter()
                    .filter_map(|c| c.stages.get("refresh").copied())
                    .collect(),
            ),
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
        (figures.gold_build_ms, figures.gold_recompute_ms) = rebuild_costs(&tables).await?;
        Ok::<_, CliError>(figures)
    }
    .await;
    cluster.shutdown().await?;
    let figures = measured?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

/// What a refresh that cannot follow the change feed costs over the final silver table:
/// building the gold state from the whole table, and recomputing the query in full
/// (milliseconds; the best of three, so that a first read's cold cache does not count).
async fn rebuild_costs(tables: &TableStore) -> Result<(f64, f64)> {
    let engine = QueryEngine::new(tables.clone(), Default::default());
    let mut silver = tables.open("silver.users").await?;
    let version = smelter_lake::log::version(&silver);
    let (mut build, mut recompute) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let mut refresher = Refresher::new(engine.clone(), GOLD_SQL, "silver.users");
        let started = std::time::Instant::now();
        refresher.refresh(&mut silver, version).await?;
        if !matches!(refresher.last_refresh(), RefreshKind::Built { .. }) {
            return Err(CliError::Bench(format!(
                "gold's state over silver.users was not built: {:?}",
                refresher.last_refresh()
            )));
        }
        build = build.min(started.elapsed().as_secs_f64() * 1000.0);
        let started = std::time::Instant::now();
        engine
            .plan(GOLD_SQL, Some(("silver.users", version)))
            .await?
            .collect()
            .await?;
        recompute = recompute.min(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((build, recompute))
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
    if figures.gold_refreshes > 1 && figures.gold_folded == 0 {
        problems.push(format!(
            "no gold refresh folded silver's change data ({} built of {})",
            figures.gold_built, figures.gold_refreshes
        ));
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
