//! The maintenance task: one per pipeline, placed on a worker like the others. It looks at
//! each of the pipeline's tables (and each silver table's quarantine) every
//! `maintenance.every`, compacts it once it has `min_small_files` files smaller than
//! `target_file_mb`, and vacuums the files rewrites took out more than `retention` ago —
//! only those removed at or before the version every reader of the table has consumed
//! (see `smelter_lake::vacuum`), so a lagging refine never finds its input gone.
//!
//! Why a task and not a timer in every writer: compaction reads and rewrites whole files,
//! which would stall a streaming writer's next batch; as a task of its own it runs on its
//! own thread, the coordinator places it (and moves it when its worker dies), and it is
//! the only compactor of its pipeline's tables. Its commits take the same commit lock as
//! the writers' (see `smelter_lake::compact`), so they queue with them — arbitrated stores
//! included — and never conflict with an append. Checkpoints are written by the commit
//! path itself, every `checkpointInterval` versions.
//!
//! It also keeps each table's catalog description (owner, tags, description, column
//! descriptions from the spec) in the table's Delta metadata (`smelter_lake::describe`).
//! Tables are born with it (their writers create them so); the task brings existing tables
//! up to a changed spec, checked as soon as it starts — it restarts with every change of
//! the spec — and every few seconds for tables that do not exist yet.
//!
//! Data retention (`retention.data`) deletes, at each pass, the rows older than the window
//! in the table's time column — a `DELETE` commit like `smelter delete`'s, so downstream
//! gold rebuilds without them and ingest never reads the positions again — and
//! `retention.vacuum_after` sets how soon the files it took out are vacuumed.
//!
//! Maintenance also cleans up the table's log: entries older than its history retention,
//! but none after the version every reader has consumed (`smelter_lake::log_cleanup`;
//! the writers' checkpoints do not clean up).
//!
//! Cost: a pass reads only the commits since the last one. Compaction and vacuum follow
//! the table's heads and its tombstones (`smelter_lake::vacuum::Tombstones`) from the
//! commit entries, never a snapshot update (which lists the log), and compaction copies
//! row groups where it can (`smelter_lake::concat`). Log cleanup has to list the log, and
//! vacuum and log cleanup can delete nothing younger than their retention, so each runs
//! every half of its retention rather than every pass (`cleanup_interval`).
//!
//! After each pass over a table it updates the table's maintenance record
//! (`smelter_lake::maintenance_record`): what ran, when, and what it saved, read back by
//! `smelter maintenance status`.

use std::time::Duration;

use deltalake::DeltaTable;
use smelter_common::spec::{Layer, MaintenanceSpec, PipelineSpec, table_layer};
use smelter_lake::compact::{CompactOptions, Compaction, compact};
use smelter_lake::concat::COPY_MIN_ROW_GROUP_BYTES;
use smelter_lake::delete::{SqlPredicate, delete};
use smelter_lake::describe::{Description, describe};
use smelter_lake::maintenance_record::{self, ExpiryRun, MaintenanceRecord};
use smelter_lake::vacuum::{Tombstones, Vacuum};
use smelter_lake::{AppId, log, log_cleanup};
use smelter_proto::TaskState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Progress, TaskEnv};
use crate::Result;

/// Keeps one pipeline's tables compacted and vacuumed.
pub struct MaintainTask;

/// One table under maintenance.
struct Maintained {
    name: String,
    spec: MaintenanceSpec,
    /// Data retention: rows older than this in that column are deleted.
    expire: Option<(Duration, String)>,
    /// The data-retention delete of the pass under way, for the record.
    expired: Option<ExpiryRun>,
    /// Log entries the pass under way deleted, for the record.
    log_cleaned: u64,
    due: Instant,
    /// When vacuum next runs (see [`cleanup_interval`]).
    vacuum_due: Instant,
    /// When log cleanup next runs (see [`cleanup_interval`]).
    log_cleanup_due: Instant,
    /// The files the table's commits removed, followed from one vacuum to the next.
    tombstones: Tombstones,
    table: Option<DeltaTable>,
    /// The tables that read this one, opened once: each pass reads only their commits
    /// since (through the worker's heads), not their whole log.
    readers: std::collections::HashMap<String, DeltaTable>,
    /// The table's maintenance record, read at the first pass that finds the table.
    record: Option<MaintenanceRecord>,
}

impl MaintainTask {
    /// Runs until cancelled.
    pub async fn run(
        self,
        env: TaskEnv,
        progress: Progress,
        cancel: CancellationToken,
    ) -> Result<()> {
        progress.set_state(TaskState::Starting);
        let mut tables = maintained(&env.pipeline);
        let mut undescribed = descriptions(&env);
        let mut compacted_files = 0u64;
        loop {
            progress.set_state(TaskState::Running);
            let mut failed = Vec::new();
            undescribed = describe_pending(&env, undescribed, &mut failed).await;
            let now = Instant::now();
            for entry in tables.iter_mut().filter(|t| t.due <= now) {
                if cancel.is_cancelled() {
                    break;
                }
                entry.due = now + entry.spec.every;
                let outcome = maintain(&env, entry, now).await;
                record(entry, &outcome).await;
                match outcome {
                    Ok(Some((compaction, _))) => {
                        if let Some(version) = compaction.version {
                            compacted_files += compaction.files_removed;
                            progress.update(|r| {
                                r.table_version = version;
                                r.rows_committed = compacted_files;
                                r.last_commit_unix_ms = chrono::Utc::now().timestamp_millis();
                            });
                        }
                    }
                    Ok(None) => {}
                    // One table's failure (a store hiccup, a zorder_by column the table
                    // lacks) does not stop the others': reported, tried again next time.
                    Err(error) => {
                        tracing::warn!(table = %entry.name, %error, "maintenance failed; trying again at the next interval");
                        failed.push(format!("{}: {error}", entry.name));
                    }
                }
            }
            let next = tables
                .iter()
                .map(|t| t.due)
                .chain((!undescribed.is_empty()).then(|| Instant::now() + DESCRIBE_AGAIN))
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            if failed.is_empty() {
                progress.set_state(TaskState::Idle);
            } else {
                // Shown in `smelter status` until a pass succeeds.
                progress.update(|r| {
                    r.state = TaskState::Backoff as i32;
                    r.error = failed.join("; ");
                });
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    progress.set_state(TaskState::Stopped);
                    return Ok(());
                }
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

/// The tables to look after: every table whose maintenance is on, and each silver table's
/// quarantine with its table's settings.
fn maintained(pipeline: &PipelineSpec) -> Vec<Maintained> {
    let now = Instant::now();
    let mut out = Vec::new();
    for (name, spec) in &pipeline.tables {
        if !spec.maintenance.enabled {
            continue;
        }
        let layer = table_layer(name);
        let mut names = vec![name.clone()];
        if layer == Some(Layer::Silver) {
            names.extend(spec.side_tables(name));
        }
        // Files rewrites took out go after `retention.vacuum_after` where given.
        let mut maintenance = spec.maintenance.clone();
        if let Some(after) = spec.vacuum_after() {
            maintenance.retention = after;
        }
        for name in names {
            // Data retention applies to the table itself; a quarantine keeps its records
            // (they wait for a fix and a replay).
            let expire = spec
                .retention
                .data
                .zip(layer.and_then(|l| spec.retention.data_column(l)))
                .filter(|_| !name.ends_with("_quarantine") && !name.ends_with("_tombstones"))
                .map(|(window, column)| (window, column.to_string()));
            out.push(Maintained {
                name,
                spec: maintenance.clone(),
                expire,
                expired: None,
                log_cleaned: 0,
                // The first look comes one interval after the start: a worker that just
                // took the task over need not rewrite anything in its first moments.
                due: now + spec.maintenance.every,
                vacuum_due: now,
                log_cleanup_due: now,
                tombstones: Tombstones::default(),
                table: None,
                readers: Default::default(),
                record: None,
            });
        }
    }
    out
}

/// How soon descriptions are tried again for tables that did not exist yet.
const DESCRIBE_AGAIN: Duration = Duration::from_secs(2);

/// Every table of the pipeline, and each silver table's quarantine, with its catalog
/// description.
fn descriptions(env: &TaskEnv) -> Vec<(String, Description)> {
    let mut names: Vec<String> = Vec::new();
    for (name, spec) in &env.pipeline.tables {
        if table_layer(name) == Some(Layer::Silver) {
            names.extend(spec.side_tables(name));
        }
        names.push(name.clone());
    }
    names
        .into_iter()
        .map(|name| {
            let description = env.catalog_description(&name);
            (name, description)
        })
        .collect()
}

/// Writes the descriptions of the tables that exist; returns those left to do (tables not
/// created yet, and failures, which are added to `failed`).
async fn describe_pending(
    env: &TaskEnv,
    pending: Vec<(String, Description)>,
    failed: &mut Vec<String>,
) -> Vec<(String, Description)> {
    let mut left = Vec::new();
    for (name, description) in pending {
        if !env.tables.exists(&name).await {
            left.push((name, description));
            continue;
        }
        let described = async {
            let mut table = env.tables.open(&name).await?;
            describe(&mut table, &name, &description, &env.commits).await
        };
        if let Err(error) = described.await {
            tracing::warn!(table = %name, %error, "catalog description not written; trying again");
            failed.push(format!("{name}: {error}"));
            left.push((name, description));
        }
    }
    left
}

/// Adds one pass to the table's maintenance record and stores it (once the table exists).
/// A record that cannot be read or stored is logged: it is a report, and the pass's work
/// is in the log already.
async fn record(entry: &mut Maintained, outcome: &Result<Option<(Compaction, Vacuum)>>) {
    let Some(table) = entry.table.as_ref() else {
        return;
    };
    let outcome = match outcome {
        Ok(None) => return,
        Ok(Some(done)) => Ok(done.clone()),
        Err(error) => Err(error.to_string()),
    };
    if entry.record.is_none() {
        match maintenance_record::read(table, &entry.name).await {
            Ok(record) => entry.record = Some(record.unwrap_or_default()),
            Err(error) => {
                tracing::warn!(table = %entry.name, %error, "maintenance record unreadable; starting a new one");
                entry.record = Some(MaintenanceRecord::default());
            }
        }
    }
    let record = entry.record.as_mut().expect("set above");
    if let Some(expiry) = entry.expired.take() {
        record.add_expiry(expiry);
    }
    record.log_entries_deleted += std::mem::take(&mut entry.log_cleaned);
    record.add_pass(
        chrono::Utc::now().timestamp_millis(),
        entry.spec.target_file_mb * 1024 * 1024,
        outcome,
    );
    if let Err(error) = maintenance_record::write(table, &entry.name, record).await {
        tracing::warn!(table = %entry.name, %error, "maintenance record not stored");
    }
}

/// How often vacuum (with `retention`, the vacuum delay) or log cleanup (with the history
/// retention) runs on a table: every half retention, but not more often than the passes
/// (`every`) and at least every 10 minutes (or every pass, if rarer). A file out for less
/// than the vacuum delay, or an entry younger than the history, is never deleted anyway,
/// so looking more often buys nothing; and log cleanup lists the table's log (a local
/// directory lists each entry's metadata), where compaction and vacuum read only the
/// commits since the last pass.
fn cleanup_interval(retention: Duration, every: Duration) -> Duration {
    (retention / 2).clamp(every, every.max(CLEANUP_AT_LEAST_EVERY))
}

/// The longest time between two vacuums, or two log cleanups, of a table (see
/// [`cleanup_interval`]).
const CLEANUP_AT_LEAST_EVERY: Duration = Duration::from_secs(600);

/// Compacts one table if it exists (`None` if it does not yet), and vacuums it and cleans
/// up its log when each is due at `now`: what the compaction and the vacuum did.
async fn maintain(
    env: &TaskEnv,
    entry: &mut Maintained,
    now: Instant,
) -> Result<Option<(Compaction, Vacuum)>> {
    if entry.table.is_none() {
        if !env.tables.exists(&entry.name).await {
            return Ok(None);
        }
        entry.table = Some(env.tables.open(&entry.name).await?);
    }
    let table = entry.table.as_mut().expect("opened above");
    if let Some((window, column)) = &entry.expire {
        let cut_ms = chrono::Utc::now().timestamp_millis() - window.as_millis() as i64;
        entry.expired = expire(env, table, &entry.name, column, cut_ms).await?;
    }
    let options = CompactOptions {
        target_file_bytes: entry.spec.target_file_mb * 1024 * 1024,
        min_small_files: entry.spec.min_small_files,
        // A quarantine has its own columns: it is compacted in arrival order.
        zorder_by: if entry.name.ends_with("_quarantine") {
            Vec::new()
        } else {
            entry.spec.zorder_by.clone()
        },
        // Behind a stream: each pass packs fresh files, not the earlier passes' output,
        // and copies their row groups where they are large enough.
        tiered: true,
        copy_row_groups: Some(COPY_MIN_ROW_GROUP_BYTES),
    };
    let compaction = compact(table, &entry.name, options, &env.commits).await?;
    let (vacuum_due, log_due) = (now >= entry.vacuum_due, now >= entry.log_cleanup_due);
    if !vacuum_due && !log_due {
        return Ok(Some((compaction, Vacuum::default())));
    }
    let Some(as_of) = consumed_by_readers(env, &entry.name, &mut entry.readers).await? else {
        return Ok(Some((compaction, Vacuum::default())));
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut vacuumed = Vacuum::default();
    if vacuum_due {
        entry.vacuum_due = now + cleanup_interval(entry.spec.retention, entry.spec.every);
        vacuumed = entry
            .tombstones
            .vacuum(
                table,
                &entry.name,
                entry.spec.retention,
                as_of,
                now_ms,
                &env.commits,
            )
            .await?;
    }
    if log_due {
        // The log past the history, up to what every reader has consumed.
        let history = log_cleanup::history_retention(table, &entry.name)?;
        entry.log_cleanup_due = now + cleanup_interval(history, entry.spec.every);
        let keep = match as_of {
            Some(version) => version,
            None => env.commits.heads.head(table, &entry.name).await?.version(),
        };
        entry.log_cleaned += log_cleanup::clean_up(table, &entry.name, keep, now_ms).await? as u64;
    }
    tracing::debug!(table = %entry.name, ?compaction, files_vacuumed = vacuumed.files_deleted, "maintenance pass");
    Ok(Some((compaction, vacuumed)))
}

/// Deletes the rows of `table` whose `column` is before `cut_ms` (data retention), in one
/// `DELETE` commit under the commit lock as `smelter delete` makes: what it did, if any
/// row was that old.
async fn expire(
    env: &TaskEnv,
    table: &mut DeltaTable,
    name: &str,
    column: &str,
    cut_ms: i64,
) -> Result<Option<ExpiryRun>> {
    let cut = chrono::DateTime::from_timestamp_millis(cut_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let schema = log::arrow_schema(table, name)?;
    let predicate = format!("\"{column}\" < CAST('{cut}' AS TIMESTAMP)");
    let selector = SqlPredicate::new(&predicate, &schema, name)?;
    let deleted = delete(table, name, &selector, &env.commits).await?;
    if let Some(version) = deleted.version {
        tracing::info!(table = name, version, rows = deleted.rows_deleted, %cut, "rows past data retention deleted");
    }
    Ok(deleted.version.map(|version| ExpiryRun {
        unix_ms: chrono::Utc::now().timestamp_millis(),
        version,
        rows_deleted: deleted.rows_deleted,
        before_unix_ms: cut_ms,
    }))
}

/// The version of `name` every table of the pipeline that reads it has consumed: `Some(None)`
/// when nothing reads it (the latest, then), `None` while a reader has not started.
/// `readers` keeps the reader tables opened by earlier passes.
async fn consumed_by_readers(
    env: &TaskEnv,
    name: &str,
    readers: &mut std::collections::HashMap<String, DeltaTable>,
) -> Result<Option<Option<i64>>> {
    let mut least: Option<i64> = None;
    for (reader, spec) in &env.pipeline.tables {
        if spec.from != name || table_layer(reader) == Some(Layer::Bronze) {
            continue;
        }
        if !readers.contains_key(reader) {
            if !env.tables.exists(reader).await {
                return Ok(None);
            }
            readers.insert(reader.clone(), env.tables.open(reader).await?);
        }
        let table = readers.get_mut(reader).expect("opened above");
        let app_id = AppId::upstream(reader, name);
        let (_, versions) = env.commits.heads.txns(table, reader, &[app_id]).await?;
        let Some(consumed) = versions[0] else {
            return Ok(None);
        };
        least = Some(least.map_or(consumed, |l: i64| l.min(consumed)));
    }
    Ok(Some(least))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantines_follow_their_silver_table_and_disabled_tables_are_skipped() {
        let spec = smelter_common::spec::PipelineSpec::parse(
            r#"
pipeline: p
sources:
  s: { generator: { count: 10 } }
tables:
  bronze.raw: { from: s, maintenance: { enabled: false } }
  silver.events:
    from: bronze.raw
    parse: { format: json, schema: { id: string } }
    maintenance: { min_small_files: 4, every: 5s }
"#,
            "p.yaml",
        )
        .unwrap();
        let tables = maintained(&spec);
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["silver.events", "silver.events_quarantine"]);
        assert!(
            tables
                .iter()
                .all(|t| t.spec.min_small_files == 4 && t.spec.every == Duration::from_secs(5))
        );
    }

    #[test]
    fn vacuum_and_log_cleanup_run_every_half_retention_between_the_interval_and_ten_minutes() {
        let secs = |every: u64, retention: u64| {
            cleanup_interval(Duration::from_secs(retention), Duration::from_secs(every)).as_secs()
        };
        // A short retention: every pass.
        assert_eq!(secs(2, 0), 2);
        assert_eq!(secs(2, 4), 2);
        assert_eq!(secs(10, 30), 15);
        // The default week (vacuum) or 30 days (history): every 10 minutes, or every
        // pass if passes are rarer.
        assert_eq!(secs(60, 7 * 86_400), 600);
        assert_eq!(secs(60, 30 * 86_400), 600);
        assert_eq!(secs(3_600, 7 * 86_400), 3_600);
    }
}
