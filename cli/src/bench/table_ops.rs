//! What keeping tables fast costs and saves, on a table written for the purpose in the
//! run's work directory (nothing else running): how long opening the latest snapshot takes
//! after `commits` small commits, with the checkpoints the commit path writes (every 100
//! versions by default) and with them deleted; and the CPU compaction and vacuum take per
//! GB of the files they rewrite and delete. CPU is this process's counter (nothing else
//! runs in it meanwhile); the figures are checked (every file compacted, every replaced
//! file vacuumed, the rows unchanged) or the benchmark fails.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::Serialize;
use smelter_lake::compact::{CompactOptions, compact};
use smelter_lake::{CommitEnv, TableStore, WriteMode};

use super::measure::cpu_seconds;
use crate::{CliError, Result};

const TABLE: &str = "silver.ops";
const ROWS_PER_COMMIT: u64 = 2_000;

/// The figures (see the module docs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableOps {
    /// Commits written, one small file each.
    pub commits: u64,
    /// Rows per commit.
    pub rows_per_commit: u64,
    /// Median time to open the latest snapshot with the checkpoints, milliseconds.
    pub open_ms_with_checkpoints: f64,
    /// The same with the checkpoints deleted (every commit replayed).
    pub open_ms_without_checkpoints: f64,
    /// The compaction of every file into one.
    pub compaction: Cost,
    /// The vacuum of the files the compaction replaced.
    pub vacuum: Cost,
}

/// What one maintenance operation took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cost {
    /// Files it read (compaction) or deleted (vacuum).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// CPU-seconds.
    pub cpu_seconds: f64,
    /// Wall-seconds.
    pub wall_seconds: f64,
    /// CPU-seconds per GB of those bytes.
    pub cpu_seconds_per_gb: f64,
}

fn failed(message: impl std::fmt::Display) -> CliError {
    CliError::Bench(format!("table operations: {message}"))
}

fn cost(files: u64, bytes: u64, cpu_seconds: f64, wall: Duration) -> Cost {
    Cost {
        files,
        bytes,
        cpu_seconds,
        wall_seconds: wall.as_secs_f64(),
        cpu_seconds_per_gb: if bytes > 0 {
            cpu_seconds / (bytes as f64 / 1e9)
        } else {
            0.0
        },
    }
}

/// Median milliseconds to open the table's latest snapshot, over five opens.
async fn open_ms(tables: &TableStore) -> Result<f64> {
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let started = Instant::now();
        tables.open(TABLE).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Writes the table, measures, and removes it.
pub async fn measure(work_dir: &Path, commits: u64) -> Result<TableOps> {
    let dir = work_dir.join(format!("table-ops-{}", uuid::Uuid::new_v4()));
    let measured = measure_in(&dir, commits).await;
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

async fn measure_in(dir: &Path, commits: u64) -> Result<TableOps> {
    let tables = TableStore::new(dir)?;
    let env = CommitEnv::default();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("payload", DataType::Utf8, false),
    ]));
    let mut table = tables.open_or_create(TABLE, &schema, &[], &env).await?;
    for commit in 0..commits {
        let first = commit * ROWS_PER_COMMIT;
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(
            (first..first + ROWS_PER_COMMIT).map(|i| i as i64),
        ));
        let payloads: ArrayRef = Arc::new(StringArray::from_iter_values(
            (first..first + ROWS_PER_COMMIT).map(|i| format!("event {i} of a small commit")),
        ));
        let batch = RecordBatch::try_new(schema.clone(), vec![ids, payloads])?;
        smelter_lake::commit(
            &mut table,
            TABLE,
            vec![batch],
            WriteMode::Append,
            &[],
            Vec::new(),
            &env,
        )
        .await?;
    }
    let open_ms_with_checkpoints = open_ms(&tables).await?;
    let log = dir.join("silver").join("ops").join("_delta_log");
    for entry in std::fs::read_dir(&log).map_err(|e| failed(format!("{}: {e}", log.display())))? {
        let path = entry.map_err(failed)?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.contains(".checkpoint") || name == "_last_checkpoint" {
            std::fs::remove_file(&path).map_err(failed)?;
        }
    }
    let open_ms_without_checkpoints = open_ms(&tables).await?;

    let mut table = tables.open(TABLE).await?;
    let before = smelter_lake::detail::detail(&mut table, TABLE).await?;
    let options = CompactOptions {
        target_file_bytes: 1 << 40,
        min_small_files: 2,
        zorder_by: Vec::new(),
        tiered: false,
        copy_row_groups: None,
    };
    let cpu = cpu_seconds(None).unwrap_or(0.0);
    let started = Instant::now();
    let compacted = compact(&mut table, TABLE, options, &env).await?;
    let compaction = cost(
        compacted.files_removed,
        before.bytes,
        cpu_seconds(None).unwrap_or(0.0) - cpu,
        started.elapsed(),
    );
    let after = smelter_lake::detail::detail(&mut table, TABLE).await?;
    if compacted.files_removed != commits || after.files != 1 || after.rows != before.rows {
        return Err(failed(format!(
            "compaction took {} of {commits} files into {}, rows {} -> {}",
            compacted.files_removed, after.files, before.rows, after.rows
        )));
    }

    // A zero retention as of a moment after the compaction: every file it replaced.
    let after_compaction = chrono::Utc::now().timestamp_millis() + 1;
    let cpu = cpu_seconds(None).unwrap_or(0.0);
    let started = Instant::now();
    let vacuumed = smelter_lake::vacuum::vacuum(
        &mut table,
        TABLE,
        Duration::ZERO,
        None,
        after_compaction,
        &env,
    )
    .await?;
    let vacuum = cost(
        vacuumed.files_deleted,
        vacuumed.bytes_deleted,
        cpu_seconds(None).unwrap_or(0.0) - cpu,
        started.elapsed(),
    );
    if vacuumed.files_deleted != commits {
        return Err(failed(format!(
            "vacuum deleted {} of the {commits} replaced files",
            vacuumed.files_deleted
        )));
    }
    Ok(TableOps {
        commits,
        rows_per_commit: ROWS_PER_COMMIT,
        open_ms_with_checkpoints,
        open_ms_without_checkpoints,
        compaction,
        vacuum,
    })
}
