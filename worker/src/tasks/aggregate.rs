//! The aggregate task: keeps a gold table equal to its SQL over the silver table.
//!
//! Each refresh computes the SQL's result at one silver version ([`crate::gold`]: folded
//! from the new silver files when the query allows it, recomputed in full otherwise) and
//! replaces the gold table's rows in one commit carrying `txn(appId = "<gold>/<silver>",
//! version = silver version read)` (invariant 2). Refreshes are spaced by at least
//! `gold_min_interval_ms` and by at least [`BUSY_FACTOR`] times the last refresh's
//! duration: gold never takes more than about a fifth of a core per table, and is never
//! more than one interval plus one refresh behind silver.

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
        // Wait for the silver table: the gold schema comes from planning over it.
        while !env.tables.exists(&spec.from).await {
            tokio::select! { _ = cancel.cancelled() => return Ok(()), _ = tokio::time::sleep(poll) => {} }
        }
        let mut silver = env.tables.open(&spec.from).await?;
        let planned = engine
            .plan(&sql, Some((&spec.from, log::version(&silver).max(0))))
            .await?;
        let schema = schemas::delta_schema(planned.schema().as_arrow());
        let mut gold = env
            .open_or_create(&self.table, &schema, &spec.partition_by)
            .await?;
        let mut consumed = log::txn_version(&gold, &app_id).await?;
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
            progress.update(|r| r.lag = latest - done);
            let throttled = last_refresh.is_some_and(|t| t.elapsed() < interval);
            if latest <= done || throttled {
                progress.set_state(if latest <= done {
                    TaskState::Idle
                } else {
                    TaskState::Running
                });
                tokio::select! { _ = cancel.cancelled() => {}, _ = tokio::time::sleep(poll) => {} }
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
            if spec.checks.on_rows() {
                metadata.insert(
                    smelter_lake::commit::QUALITY_KEY.to_string(),
                    serde_json::json!({ "checks": checks }),
                );
            }
            let txns = vec![TxnUpdate::new(&app_id, consumed, latest)];
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
                }
                CommitOutcome::AlreadyCommitted => {
                    let heads = &env.commits.heads;
                    consumed = heads
                        .txns(&mut gold, &self.table, std::slice::from_ref(&app_id))
                        .await?
                        .1[0];
                }
            }
        }
    }
}
