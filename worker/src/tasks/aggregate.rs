//! The aggregate task: keeps a gold table equal to its SQL over the silver table.
//!
//! A query that joins other tables (`joins:`) follows each of them too: a refresh reads
//! every upstream at one version and records a txn for each that moved.
//!
//! Each refresh computes the SQL's result at one silver version ([`crate::gold`]: folded
//! from the new silver files when the query allows it, recomputed in full otherwise) and
//! replaces the gold table's rows in one commit carrying `txn(appId = "<gold>/<silver>",
//! version = silver version read)` (invariant 2).
//!
//! Refreshes are throttled to one per slot of a grid: the multiples of an interval since
//! the Unix epoch, the interval being `gold_min_interval_ms` or the least multiple of it
//! that is [`BUSY_FACTOR`] times the last refresh's duration. So gold takes at most about a quarter
//! of a core per table, and is never more than one interval plus one refresh behind
//! silver. Why a grid and not an interval timed from the last refresh: ingest closes its
//! batches on the same kind of grid (`batch_max_wait_ms`), so silver commits come once
//! per interval, a little after each grid point. A throttle timed from the last refresh
//! slides against them by the time it takes to notice a commit, every refresh, until a
//! new silver version waits almost a whole interval; then it starts over — a sawtooth
//! that added half an interval to the median latency. On the grid, the first silver
//! commit of each slot is refreshed as soon as it is seen ([`refresh_wait`]).
//!
//! New silver versions are found by probing the log every `poll_interval_ms`, or at once
//! when a worker of this process committed them (`smelter_lake::signals`); while a refresh
//! is throttled the task sleeps until the next slot instead of probing.

use std::time::{Duration, SystemTime};

use smelter_proto::TaskState;
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
        // Times since the Unix epoch: the grid's slots are multiples of it.
        let mut last_refresh: Option<Duration> = None;
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
            let caught_up = latest <= done && joins_behind == 0;
            if caught_up {
                progress.set_state(TaskState::Idle);
                announced.wait(poll, Duration::ZERO, &cancel).await;
                continue;
            }
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            if let Some(left) = last_refresh.and_then(|last| refresh_wait(last, now, interval)) {
                // Nothing can be refreshed before the next slot: no probe until then.
                progress.set_state(TaskState::Running);
                tokio::select! { _ = cancel.cancelled() => {}, _ = tokio::time::sleep(left) => {} }
                continue;
            }
            progress.set_state(TaskState::Running);
            last_refresh = Some(now);
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
                    interval = slot_interval(min_interval, took);
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

/// The refresh grid's interval after a refresh that took `took`: the least multiple of
/// `min_interval` that is at least [`BUSY_FACTOR`] times `took`, so that the slots keep
/// lining up with the ingest batches' grid (of the same interval by default).
pub fn slot_interval(min_interval: Duration, took: Duration) -> Duration {
    let min = min_interval.as_nanos().max(1);
    let busy = (took * BUSY_FACTOR).as_nanos();
    let slots = busy.div_ceil(min).max(1);
    Duration::from_nanos(u64::try_from(min * slots).unwrap_or(u64::MAX))
}

/// How long a refresh due at `due` waits when the last one was at `last` (both times since
/// the Unix epoch): nothing once `due` is in a later slot of the `interval` grid (its
/// multiples) than `last`, else until the next slot begins. A due time before the last
/// refresh (the system time stepped back) waits at most one interval.
pub fn refresh_wait(last: Duration, due: Duration, interval: Duration) -> Option<Duration> {
    let interval = interval.as_nanos().max(1);
    let (last, due) = (last.as_nanos(), due.as_nanos());
    if due / interval > last / interval {
        return None;
    }
    let left = interval - due % interval;
    Some(Duration::from_nanos(
        u64::try_from(left).unwrap_or(u64::MAX),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A point on the grid, `n` ms after its origin. The grid only counts whole intervals
    /// since the origin, so any origin that is a multiple of the interval behaves alike.
    fn at(n: u64) -> Duration {
        ms(n)
    }

    #[test]
    fn a_refresh_waits_only_within_the_slot_of_the_last_one() {
        let interval = ms(250);
        // The last refresh at 1,080 ms: its slot is [1,000, 1,250).
        assert_eq!(refresh_wait(at(1_080), at(1_100), interval), Some(ms(150)));
        assert_eq!(refresh_wait(at(1_080), at(1_249), interval), Some(ms(1)));
        assert_eq!(refresh_wait(at(1_080), at(1_250), interval), None);
        // Less than an interval after the last one, but in the next slot: at once.
        assert_eq!(refresh_wait(at(1_249), at(1_251), interval), None);
        // A due time before the last refresh (system time stepped back) waits for the slot
        // after the due time, never longer than one interval.
        assert_eq!(refresh_wait(at(1_400), at(1_100), interval), Some(ms(150)));
    }

    #[test]
    fn a_slow_refresh_widens_the_grid_by_whole_intervals() {
        let min = ms(250);
        assert_eq!(slot_interval(min, Duration::ZERO), min);
        assert_eq!(slot_interval(min, ms(62)), min);
        assert_eq!(slot_interval(min, ms(63)), ms(500));
        assert_eq!(slot_interval(min, ms(200)), ms(1_000));
    }

    /// Silver commits once per 250 ms, 60–110 ms after each grid point; the task notices
    /// each 5–45 ms later (deterministic jitter). On the grid, every commit is refreshed
    /// the moment it is seen. Timed from the last refresh instead, the refresh slides
    /// later against the commits: the wait ratchets up to the largest jitter seen and
    /// beyond — the sawtooth this rule replaced.
    #[test]
    fn refreshes_on_the_grid_follow_silver_commits_without_sliding() {
        let interval = ms(250);
        let mut jitter = 7u64;
        let mut next = || {
            jitter = (jitter * 37 + 11) % 101;
            jitter
        };
        let (mut last_grid, mut last_timed): (Option<Duration>, Option<Duration>) = (None, None);
        let (mut waited_grid, mut waited_timed) = (Duration::ZERO, Duration::ZERO);
        for k in 0..200u64 {
            let commit = k * 250 + 60 + next() / 2;
            let seen = at(commit + 5 + next() * 40 / 100);
            let wait = last_grid.and_then(|l| refresh_wait(l, seen, interval));
            waited_grid += wait.unwrap_or_default();
            last_grid = Some(seen + wait.unwrap_or_default());
            let wait = last_timed
                .map(|l| interval.saturating_sub(seen.saturating_sub(l)))
                .unwrap_or_default();
            waited_timed += wait;
            last_timed = Some(seen + wait);
        }
        assert_eq!(waited_grid, Duration::ZERO);
        assert!(
            waited_timed > 200 * ms(10),
            "timed from the last refresh, the waits were {waited_timed:?} in all"
        );
    }
}
