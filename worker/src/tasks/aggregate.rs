//! The aggregate task: keeps a gold table equal to its SQL over the silver table.
//!
//! A query that joins other tables (`joins:`) follows each of them too: a refresh reads
//! every upstream at one version and records a txn for each that moved.
//!
//! Each refresh computes the SQL's result at one silver version ([`crate::gold`]: folded
//! from the new silver files when the query allows it, recomputed in full otherwise) and
//! replaces the gold table's rows in one commit carrying `txn(appId = "<gold>/<silver>",
//! version = silver version read)` (invariant 2). Refreshes are spaced by at least
//! `gold_min_interval_ms` and by at least [`BUSY_FACTOR`] times the last refresh's
//! duration: gold never takes more than about a fifth of a core per table, and is never
//! more than one interval plus one refresh behind silver.
//!
//! New silver versions are found by probing the log every `poll_interval_ms`, or at once
//! when a worker of this process committed them (`smelter_lake::signals`); while a refresh
//! is throttled the task sleeps until the interval is over instead of probing.

use std::time::Duration;

use smelter_proto::TaskState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Progress, TaskEnv};
use crate::Result;
use crate::gold::Refresher;
use crate::serve::query::QueryEngine;
use crate::tasks::schemas;
use smelter_lake::{AppId, CommitOutcome, TxnUpdate, WriteMode, log};
use tracing::Instrument as _;

/// Least ratio of idle time to refresh time. (2 was tried: gold refreshed a little sooner
/// under load, but on an overloaded machine the extra refreshes delayed other tasks.)
pub const BUSY_FACTOR: u32 = 4;

/// Keeps one gold table current.
pub struct AggregateTask {
    /// The gold table.
    pub table: String,
}

impl AggregateTask {
    /// Runs until cancelled.
    pub async fn run(
        self,
        env: TaskEnv,
        progress: Progress,
        cancel: CancellationToken,
    ) -> Result<()> {
        let spec = env.table_spec(&self.table)?;
        let sql = spec.sql.clone().unwrap_or_default();
        let app_id = AppId::upstream(&self.table, &spec.from);
        let poll = Duration::from_millis(env.config.poll_interval_ms);
        let min_interval = Duration::from_millis(env.config.gold_min_interval_ms);
        let engine = QueryEngine::new(env.tables.clone(), Default::default());
        progress.set_state(TaskState::Starting);
        // Silver versions committed in this process wake a waiting task at once
        // (`smelter_lake::signals`); others are found by the poll.
        let mut announced = env
            .commits
            .signals
            .subscribe(env.tables.url(&spec.from)?.as_str());
        // Wait for the silver table: the gold schema comes from planning over it.
        while !env.tables.exists(&spec.from).await {
            announced.wait(poll, Duration::ZERO, &cancel).await;
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
        // The tables the query joins: followed like `from`, one txn each.
        while let Some(missing) = first_missing(&env, &spec.joins).await {
            tracing::debug!(table = %self.table, missing, "waiting for a joined table");
            tokio::select! { _ = cancel.cancelled() => return Ok(()), _ = tokio::time::sleep(poll) => {} }
        }
        let mut joined = Vec::with_capacity(spec.joins.len());
        for name in &spec.joins {
            let table = env.tables.open(name).await?;
            let version = log::version(&table);
            joined.push(Joined {
                app_id: AppId::upstream(&self.table, name),
                name: name.clone(),
                table,
                known: version,
                consumed: None,
            });
        }
        // Over a silver table whose schema is inferred, the columns the SQL names may
        // not have appeared yet: planning waits for them, version after version.
        let inferred = spec.upstreams().any(|name| {
            env.pipeline
                .tables
                .get(name)
                .is_some_and(|t| t.parse.as_ref().is_some_and(|p| p.schema.inferred()))
        });
        let (mut silver, planned) = loop {
            let silver = env.tables.open(&spec.from).await?;
            match engine
                .plan(&sql, Some((&spec.from, log::version(&silver).max(0))))
                .await
            {
                Ok(planned) => break (silver, planned),
                Err(error) if inferred && !cancel.is_cancelled() => {
                    tracing::info!(table = %self.table, %error, "waiting for the inferred columns the SQL names");
                    announced.wait(poll, Duration::ZERO, &cancel).await;
                }
                Err(error) => return Err(error),
            }
        };
        let schema = schemas::delta_schema(planned.schema().as_arrow());
        let mut gold = env
            .open_or_create(&self.table, &schema, &spec.partition_by)
            .await?;
        let mut consumed = log::txn_version(&gold, &app_id).await?;
        for join in &mut joined {
            join.consumed = log::txn_version(&gold, &join.app_id).await?;
        }
        let mut refresher =
            Refresher::new(engine, &sql, &spec.from).with_recent_files(env.commits.recent.clone());
        let mut known = log::version(&silver);
        let mut last_refresh: Option<Instant> = None;
        let mut interval = min_interval;
        // How long the refreshes this task committed took, reported with its status.
        let mut refreshes = smelter_lake::timings::Histogram::default();
        progress.update(|r| {
            r.table_rows = log::row_count(&gold);
            r.table_version = log::version(&gold);
        });
        loop {
            if cancel.is_cancelled() {
                progress.set_state(TaskState::Stopped);
                return Ok(());
            }
            // Probed, not loaded: the refresher reads the new commit entries itself.
            known = log::latest_version(&silver, &spec.from, known).await?;
            let latest = known;
            let done = consumed.unwrap_or(-1);
            let mut joins_behind = 0;
            for join in &mut joined {
                join.known = log::latest_version(&join.table, &join.name, join.known).await?;
                joins_behind += join.behind();
            }
            progress.update(|r| r.lag = latest - done + joins_behind);
            let throttled = last_refresh.is_some_and(|t| t.elapsed() < interval);
            let caught_up = latest <= done && joins_behind == 0;
            if caught_up {
                progress.set_state(TaskState::Idle);
                announced.wait(poll, Duration::ZERO, &cancel).await;
                continue;
            }
            if throttled {
                // Nothing can be refreshed before the interval is over: no probe until then.
                progress.set_state(TaskState::Running);
                let left =
                    last_refresh.map_or(Duration::ZERO, |t| interval.saturating_sub(t.elapsed()));
                tokio::select! { _ = cancel.cancelled() => {}, _ = tokio::time::sleep(left) => {} }
                continue;
            }
            progress.set_state(TaskState::Running);
            last_refresh = Some(Instant::now());
            let refresh_started = std::time::Instant::now();
            // One span per refresh: the silver version computed from, its commit inside.
            let span = tracing::info_span!(
                "gold_refresh",
                table = %self.table,
                silver_version = latest,
                rows = tracing::field::Empty,
            );
            refresher.join_at(joined.iter().map(|j| (j.name.clone(), j.known)).collect());
            let batches = refresher
                .refresh(&mut silver, latest)
                .instrument(span.clone())
                .await?;
            let mut batches = batches
                .iter()
                .map(|b| schemas::to_delta(b, &schema))
                .collect::<Result<Vec<_>>>()?;
            if batches.is_empty() {
                // An empty result still replaces the table's rows; the writer needs a batch.
                batches.push(arrow::record_batch::RecordBatch::new_empty(schema.clone()));
            }
            let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            span.record("rows", rows);
            // Checks see the whole table as this refresh leaves it: exact for gold.
            let checks = crate::checks::evaluate(&spec.checks, &batches);
            let mut metadata = std::collections::HashMap::new();
            smelter_lake::timings::record_stages(
                &mut metadata,
                &[("refresh", refresh_started.elapsed())],
            );
            metadata.insert(
                crate::gold::REFRESH_KEY.to_string(),
                refresher.last_refresh().record(),
            );
            if spec.checks.on_rows() {
                metadata.insert(
                    smelter_lake::commit::QUALITY_KEY.to_string(),
                    serde_json::json!({ "checks": checks }),
                );
            }
            // A txn for each upstream that moved (one that did not keeps its version: a
            // txn version is written once).
            let mut txns = Vec::new();
            if latest > done {
                txns.push(TxnUpdate::new(&app_id, consumed, latest));
            }
            for join in joined.iter().filter(|j| j.behind() > 0) {
                txns.push(TxnUpdate::new(&join.app_id, join.consumed, join.known));
            }
            let write = smelter_lake::commit::Write {
                batches,
                mode: WriteMode::Overwrite,
                partition_by: &spec.partition_by,
                txns,
                metadata: &metadata,
            };
            match smelter_lake::commit_write(&mut gold, &self.table, write, &env.commits)
                .instrument(span)
                .await?
            {
                CommitOutcome::Committed { version } => {
                    let took = refresh_started.elapsed();
                    refreshes.observe(took);
                    progress.committed(version, rows, rows);
                    progress.update(|r| {
                        r.lag = 0;
                        r.failed_checks = super::refine::failing(&checks);
                        r.refresh_seconds = Some(crate::timings::histogram(&refreshes));
                    });
                    interval = min_interval.max(took * BUSY_FACTOR);
                    tracing::debug!(table = %self.table, version, silver_version = latest, rows, how = ?refresher.last_refresh(), elapsed_ms = took.as_millis() as u64, next_in_ms = interval.as_millis() as u64, "gold refresh");
                    consumed = Some(latest);
                    for join in &mut joined {
                        join.consumed = Some(join.known);
                    }
                }
                CommitOutcome::AlreadyCommitted => {
                    let heads = &env.commits.heads;
                    let mut app_ids = vec![app_id.clone()];
                    app_ids.extend(joined.iter().map(|j| j.app_id.clone()));
                    let (_, at) = heads.txns(&mut gold, &self.table, &app_ids).await?;
                    consumed = at[0];
                    for (join, at) in joined.iter_mut().zip(&at[1..]) {
                        join.consumed = *at;
                    }
                }
            }
        }
    }
}

/// A table the gold query joins, followed like its `from`.
struct Joined {
    name: String,
    app_id: AppId,
    table: deltalake::DeltaTable,
    /// Its latest version known.
    known: i64,
    /// The version the gold table's txn records for it.
    consumed: Option<i64>,
}

impl Joined {
    /// Versions the gold table has not read yet.
    fn behind(&self) -> i64 {
        (self.known - self.consumed.unwrap_or(-1)).max(0)
    }
}

/// The first of `tables` that does not exist yet.
async fn first_missing(env: &TaskEnv, tables: &[String]) -> Option<String> {
    for name in tables {
        if !env.tables.exists(name).await {
            return Some(name.clone());
        }
    }
    None
}
