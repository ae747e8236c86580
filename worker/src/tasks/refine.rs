//! The refine task loop: follow the bronze table's versions and refine each new range.

use std::time::Duration;

use deltalake::DeltaTable;
use smelter_common::spec::TableSpec;
use smelter_proto::TaskState;
use tokio_util::sync::CancellationToken;

use super::silver_schema::{self, Reading};
use super::{Progress, TaskEnv};
use crate::Result;
use crate::refine::{self, KeyCache, Refiner, SilverAt};
use crate::tasks::merge::{MergePass, Merger};
use crate::tasks::schemas;
use smelter_lake::{AppId, CommitOutcome, TxnUpdate, WriteMode, changes, log};
use tracing::Instrument as _;

/// How long a pass woken by a bronze commit waits for the other ingest tasks' commits of
/// the same batch interval, so that one pass takes them all (see
/// `smelter_lake::signals::Announcements::wait`): without it, refine made a pass and a
/// silver commit per ingest task and used a fifth more CPU in the benchmark. A commit
/// found by the poll (another worker's, not announced here) waits as long: otherwise
/// the commit of this worker's own ingest task, a few milliseconds behind it, got a pass
/// of its own in about two intervals out of five in the cluster benchmark — and a gold
/// refresh a slot later (`tasks::aggregate`).
const SETTLE: Duration = Duration::from_millis(25);

/// Keeps one silver table (and its quarantine) current with its bronze table.
pub struct RefineTask {
    /// The silver table.
    pub table: String,
}

impl RefineTask {
    /// Runs until cancelled; an in-flight range is committed before returning.
    pub async fn run(
        self,
        env: TaskEnv,
        progress: Progress,
        cancel: CancellationToken,
    ) -> Result<()> {
        let spec = env.table_spec(&self.table)?;
        let origin = env.pipeline.pipeline.clone();
        let quarantine_name = TableSpec::quarantine_name(&self.table);
        let mut quarantine = env
            .open_or_create(&quarantine_name, &schemas::quarantine(), &[])
            .await?;
        let held = match env.tables.exists(&self.table).await {
            true => Some(env.tables.open(&self.table).await?),
            false => None,
        };
        let held_schema = match &held {
            Some(table) => Some(log::arrow_schema(table, &self.table)?),
            None => None,
        };
        // An inferred table not created yet takes its first schema from bronze's first
        // records, so it is created with its columns in the records' order.
        let mut first = Vec::new();
        if held.is_none() && spec.parse.as_ref().is_some_and(|p| p.schema.inferred()) {
            let bare = Refiner::new(&self.table, &spec, &origin)?;
            progress.set_state(TaskState::Idle);
            let poll = Duration::from_millis(env.config.poll_interval_ms);
            let mut announced = env
                .commits
                .signals
                .subscribe(env.tables.url(&spec.from)?.as_str());
            loop {
                if cancel.is_cancelled() {
                    progress.set_state(TaskState::Stopped);
                    return Ok(());
                }
                if let Some(records) = silver_schema::first_records(&env, &spec, &bare).await? {
                    first = records;
                    break;
                }
                announced.wait(poll, SETTLE, &cancel).await;
            }
        }
        let Reading {
            mut refiner,
            inferred: mut inferring,
        } = silver_schema::reading(&self.table, &spec, held_schema.as_deref(), &first, &origin)?;
        // A history (SCD 2) table adds the validity of each version to the rows.
        let table_schema = match &spec.merge {
            Some(merge) if merge.scd == 2 => smelter_lake::merge::history::with_history_columns(
                refiner.silver_schema(),
                &merge.sequence_by,
            )?,
            _ => refiner.silver_schema().clone(),
        };
        let mut silver = match held {
            Some(table) => table,
            None => {
                env.open_or_create(&self.table, &table_schema, &spec.partition_by)
                    .await?
            }
        };
        if spec.merge.is_none()
            && !silver_schema::start_over(
                &env,
                (&self.table, &spec),
                &mut silver,
                &mut quarantine,
                &refiner,
            )
            .await?
        {
            silver_schema::finish_start_over(&env, (&self.table, &spec), &silver, &mut quarantine)
                .await?;
        }
        // A merged table: the pass's rows are changes applied by key.
        let mut merger = match &spec.merge {
            Some(merge) => {
                let tombstones = env
                    .open_or_create(
                        &TableSpec::tombstones_name(&self.table),
                        &Merger::tombstone_schema(merge, &table_schema)?,
                        &[],
                    )
                    .await?;
                let merging = (self.table.as_str(), &spec, merge);
                Some(
                    Merger::open(
                        &env.commits,
                        tombstones,
                        merging,
                        &mut silver,
                        &table_schema,
                    )
                    .await?,
                )
            }
            None => None,
        };
        let app_id = AppId::upstream(&self.table, &spec.from);
        let quarantine_app_id = AppId::upstream(&quarantine_name, &spec.from);
        let mut consumed = log::txn_version(&silver, &app_id).await?;
        let mut quarantined_to = log::txn_version(&quarantine, &quarantine_app_id).await?;
        let poll = Duration::from_millis(env.config.poll_interval_ms);
        let heads = &env.commits.heads;
        progress.update(|r| {
            r.table_rows = log::row_count(&silver);
            r.table_version = log::version(&silver);
        });
        progress.set_state(TaskState::Running);
        // The bronze table is only followed, never read as a snapshot: new versions are
        // found by probing its log, and their files are read from the commit entries.
        let mut bronze: Option<(DeltaTable, i64)> = None;
        // Its versions committed in this process are also announced: a caught-up task
        // waits for the next poll or the next announcement (`smelter_lake::signals`).
        let mut announced = env
            .commits
            .signals
            .subscribe(env.tables.url(&spec.from)?.as_str());
        // Bronze versions a restore undid after this task's position (read when bronze is
        // opened and after every reload; restores happen while the task is not running).
        let mut undone: Option<Vec<(i64, i64)>> = None;
        let mut keys = KeyCache::default();
        let window = spec.dedupe.as_ref().and_then(|d| d.within);
        // Whether the last wait ended by the poll rather than an announcement.
        let mut polled = false;
        loop {
            if cancel.is_cancelled() {
                progress.set_state(TaskState::Stopped);
                return Ok(());
            }
            if bronze.is_none() && env.tables.exists(&spec.from).await {
                let table = env.tables.open(&spec.from).await?;
                let loaded = log::version(&table);
                bronze = Some((table, loaded));
            }
            let Some((upstream, known)) = bronze.as_mut() else {
                announced.wait(poll, SETTLE, &cancel).await;
                continue;
            };
            *known = log::latest_version(upstream, &spec.from, *known).await?;
            let latest = *known;
            let done = consumed.unwrap_or(-1);
            if undone.is_none() {
                undone = Some(changes::undone(upstream, &spec.from, done, latest).await?);
            }
            let skip = undone.as_deref().unwrap_or_default();
            progress.update(|r| r.lag = latest - done);
            if latest <= done {
                progress.set_state(TaskState::Idle);
                polled = !announced.wait(poll, SETTLE, &cancel).await;
                continue;
            }
            if std::mem::take(&mut polled) {
                // Found by the poll: the interval's other commits may be moments behind.
                tokio::select! { _ = cancel.cancelled() => {}, _ = tokio::time::sleep(SETTLE) => {} }
                continue;
            }
            progress.set_state(TaskState::Running);
            // If the quarantine is ahead of silver (we died between the two commits), replay
            // exactly its range: same input, same output, and its commit is skipped.
            // (So are the tombstones of a merged table.)
            let ahead = quarantined_to.max(merger.as_ref().and_then(|m| m.tombstoned_to));
            let to = match ahead {
                Some(q) if q > done => q,
                _ => latest.min(done + env.config.refine_max_versions as i64),
            };
            let started = std::time::Instant::now();
            // One span per pass: the bronze versions read and the rows they held.
            let span = tracing::info_span!(
                "refine",
                table = %self.table,
                bronze_from = done + 1,
                bronze_to = to,
                rows = tracing::field::Empty,
            );
            let rows = refine::read_versions(
                upstream,
                &spec.from,
                (done + 1, to),
                skip,
                &env.commits.recent,
                &refiner.extra_bronze_columns(),
            )
            .instrument(span.clone())
            .await?;
            span.record("rows", rows.len());
            let read = started.elapsed();
            let head = heads.head(&mut silver, &self.table).await?;
            let mut at = SilverAt {
                table: &mut silver,
                name: &self.table,
                version: head.version(),
            };
            let mut refined = refiner
                .refine(&rows, &mut at, &mut keys)
                .instrument(span.clone())
                .await?;
            // An inferred schema grows by the new fields the pass rescued; the pass is then
            // decoded again, and its commit evolves the table.
            if let Some(current) = &inferring
                && let Some((grown, added)) =
                    refine::inferred::grow(current, rescued_texts(&refined.silver))
            {
                tracing::info!(table = %self.table, added = ?added, "inferred schema grows");
                let reading = Reading::inferring(&self.table, &spec, grown, &origin)?;
                refiner = reading.refiner;
                inferring = reading.inferred;
                refined = refiner
                    .refine(&rows, &mut at, &mut keys)
                    .instrument(span.clone())
                    .await?;
            }
            let new_keys = std::mem::take(&mut refined.new_keys);
            let refine = started.elapsed().saturating_sub(read);
            let quarantined = refined.quarantine.num_rows() as u64;
            let good: u64 = refined.silver.iter().map(|b| b.num_rows() as u64).sum();
            let mut quality =
                quality_figures(rows.len(), good, &rules_of(&refined.quarantine), &refined);
            let checks = crate::checks::evaluate(&spec.checks, &refined.silver);
            // A pass without rows (a bronze version that added none: a compaction, a
            // description) says nothing about the checks; the last outcomes stand.
            if spec.checks.on_rows() && good > 0 {
                quality["checks"] = serde_json::to_value(&checks).unwrap_or_default();
            }
            let quarantining = std::time::Instant::now();
            if quarantined > 0 && quarantined_to.is_none_or(|q| q < to) {
                let txns = vec![TxnUpdate::new(&quarantine_app_id, quarantined_to, to)];
                match smelter_lake::commit(
                    &mut quarantine,
                    &quarantine_name,
                    vec![refined.quarantine],
                    WriteMode::Append,
                    &[],
                    txns,
                    &env.commits,
                )
                .instrument(span.clone())
                .await?
                {
                    CommitOutcome::Committed { .. } => quarantined_to = Some(to),
                    CommitOutcome::AlreadyCommitted => {
                        keys.invalidate();
                        (consumed, quarantined_to) = self
                            .reload(&env, &spec.from, &mut silver, &mut quarantine)
                            .await?;
                        if let Some(merger) = merger.as_mut() {
                            merger.reload(&env.commits, &mut silver).await?;
                        }
                        undone = None;
                        continue;
                    }
                }
            }
            let txns = vec![TxnUpdate::new(&app_id, consumed, to)];
            let mut metadata = std::collections::HashMap::from([(
                smelter_lake::commit::QUALITY_KEY.to_string(),
                quality,
            )]);
            smelter_lake::timings::record_stages(
                &mut metadata,
                &[
                    ("read", read),
                    ("refine", refine),
                    ("quarantine", quarantining.elapsed()),
                ],
            );
            let committed = match merger.as_mut() {
                Some(merger) => {
                    let pass = MergePass {
                        rows: refined.silver,
                        txn: txns[0].clone(),
                        metadata: &metadata,
                    };
                    let (outcome, counts) = merger
                        .commit(&env.commits, &mut silver, pass)
                        .instrument(span.clone())
                        .await?;
                    tracing::debug!(table = %self.table, ?counts, "merged");
                    outcome
                }
                None => {
                    let write = smelter_lake::commit::Write {
                        batches: refined.silver,
                        mode: WriteMode::Append,
                        partition_by: &spec.partition_by,
                        txns,
                        metadata: &metadata,
                    };
                    smelter_lake::commit_write(&mut silver, &self.table, write, &env.commits)
                        .instrument(span.clone())
                        .await?
                }
            };
            match committed {
                CommitOutcome::Committed { version } => {
                    keys.committed(version, new_keys, window);
                    let rows = heads.head(&mut silver, &self.table).await?.rows();
                    progress.committed(version, good, rows.unwrap_or_default());
                    progress.update(|r| {
                        r.rows_quarantined += quarantined;
                        r.rows_dropped += refined.dropped as u64;
                        r.rows_deduplicated += refined.deduplicated as u64;
                        r.lag = latest - to;
                        // A pass without rows says nothing new about the checks.
                        if good > 0 {
                            r.failed_checks = failing(&checks);
                        }
                    });
                    tracing::debug!(
                        table = %self.table, version, bronze_from = done + 1, bronze_to = to, rows = good, quarantined,
                        read_ms = read.as_millis() as u64, refine_ms = refine.as_millis() as u64, dedupe_ms = refined.dedupe_ms, total_ms = started.elapsed().as_millis() as u64, "silver commit"
                    );
                    consumed = Some(to);
                }
                CommitOutcome::AlreadyCommitted => {
                    keys.invalidate();
                    (consumed, quarantined_to) = self
                        .reload(&env, &spec.from, &mut silver, &mut quarantine)
                        .await?;
                    if let Some(merger) = merger.as_mut() {
                        merger.reload(&env.commits, &mut silver).await?;
                    }
                    undone = None;
                    tracing::info!(table = %self.table, ?consumed, "range already refined; resuming after the table's txn version");
                }
            }
        }
    }

    /// The positions in `from` of silver and its quarantine at their latest versions.
    async fn reload(
        &self,
        env: &TaskEnv,
        from: &str,
        silver: &mut DeltaTable,
        quarantine: &mut DeltaTable,
    ) -> Result<(Option<i64>, Option<i64>)> {
        let heads = &env.commits.heads;
        let app_id = AppId::upstream(&self.table, from);
        let (_, at) = heads.txns(silver, &self.table, &[app_id]).await?;
        let quarantine_name = TableSpec::quarantine_name(&self.table);
        let quarantine_app_id = AppId::upstream(&quarantine_name, from);
        let (_, quarantined) = heads
            .txns(quarantine, &quarantine_name, &[quarantine_app_id])
            .await?;
        Ok((at[0], quarantined[0]))
    }
}

/// The `_rescued_data` values of silver rows.
fn rescued_texts(batches: &[arrow::array::RecordBatch]) -> impl Iterator<Item = &str> {
    use arrow::array::AsArray;
    batches
        .iter()
        .filter_map(|b| b.column_by_name("_rescued_data"))
        .flat_map(|c| c.as_string::<i32>().iter().flatten())
}

/// Quarantined rows per rule (the quarantine batch's `rule` column).
fn rules_of(quarantine: &arrow::array::RecordBatch) -> std::collections::BTreeMap<String, u64> {
    use arrow::array::AsArray;
    let mut out = std::collections::BTreeMap::new();
    if let Some(rules) = quarantine.column_by_name("rule") {
        for rule in rules.as_string::<i32>().iter().flatten() {
            *out.entry(rule.to_string()).or_default() += 1;
        }
    }
    out
}

/// The failing checks of a pass, as a task reports them.
pub(super) fn failing(checks: &[crate::checks::CheckOutcome]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(crate::checks::CheckOutcome::summary)
        .collect()
}

/// What a refine pass did to its rows, as its silver commit records it
/// ([`smelter_lake::commit::QUALITY_KEY`]).
fn quality_figures(
    rows_in: usize,
    rows_out: u64,
    quarantined: &std::collections::BTreeMap<String, u64>,
    refined: &crate::refine::Refined,
) -> serde_json::Value {
    let warned: serde_json::Map<String, serde_json::Value> = refined
        .warned
        .iter()
        .map(|(rule, n)| (rule.clone(), serde_json::Value::from(*n)))
        .collect();
    serde_json::json!({
        "rows_in": rows_in,
        "rows_out": rows_out,
        "quarantined": quarantined,
        "warned": warned,
        "dropped": refined.dropped,
        "deduplicated": refined.deduplicated,
        "columns": crate::refine::quality::column_figures(&refined.silver),
    })
}
