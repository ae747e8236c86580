//! What merging a change stream costs: `changes` seeded changes over `keys` keys (85%
//! upserts, 15% deletes, 5% late by up to 6,000 log positions) in batches of `batch` — a
//! refine pass each — merged by Smelter's merge path (the refine task's `Merger`: key index,
//! tombstones, the `MERGE` rewrite with its change data file, the txn), as SCD type 1 and
//! type 2; the same batches appended (the cost of an append commit); and the same batches
//! through a bare delta-rs `MERGE` (reduced to the latest change per key first, which
//! delta-rs requires, with the same sequence conditions; no tombstones), once as SCD 1 and
//! once as SCD 2 the way Delta's documentation writes it (the changes staged twice — once
//! keyed to close the current row, once unkeyed to insert the new one — and one `MERGE`).
//! All in this process, one after the other, nothing else running: CPU is this process's
//! counter.
//!
//! Checked: Smelter's SCD 1 table ends with exactly the rows a plain replay of the changes
//! gives (latest change per key unless a delete), the SCD 2 table with one current row per
//! live key, and the bare MERGE's table with as many rows as the replay (without tombstones
//! it can differ only by keys a late change brought back after their delete, which the
//! figures report), and the bare SCD 2 table with as many current rows as the bare SCD 1
//! table has rows. A mismatch fails the benchmark. The bare SCD 2 `MERGE` does less than
//! Smelter's: it keeps one version per key and batch (the latest), and drops a late change
//! instead of splitting the version it falls into.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use serde::Serialize;
use smelter_common::spec::TableSpec;
use smelter_lake::describe::Description;
use smelter_lake::{AppId, CommitEnv, CommitOutcome, TableStore, TxnUpdate, WriteMode};
use smelter_worker::tasks::merge::{MergePass, Merger};

use super::measure::cpu_seconds;
use crate::{CliError, Result};

/// The figures (see the module docs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CdcBench {
    /// Changes merged.
    pub changes: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Changes per batch (per merge commit).
    pub batch: u64,
    /// Smelter's merge, SCD type 1.
    pub scd1: MergeRun,
    /// Smelter's merge, SCD type 2.
    pub scd2: MergeRun,
    /// The same batches appended.
    pub append: MergeRun,
    /// The same batches through a bare delta-rs `MERGE`.
    pub bare_delta_rs_merge: MergeRun,
    /// The same batches through a bare delta-rs SCD 2 `MERGE` (see the module docs).
    pub bare_delta_rs_scd2_merge: MergeRun,
    /// SCD 1 changes per CPU-second over the bare `MERGE`'s.
    pub scd1_to_bare_merge: f64,
    /// SCD 2 changes per CPU-second over the bare (SCD 1) `MERGE`'s.
    pub scd2_to_bare_merge: f64,
    /// SCD 2 changes per CPU-second over the bare SCD 2 `MERGE`'s.
    pub scd2_to_bare_scd2_merge: f64,
    /// A merge commit's CPU over an append commit's, SCD 1.
    pub merge_commit_to_append_commit: f64,
    /// Keys the bare `MERGE` holds that a replay does not (no tombstones: a late change
    /// after the key's delete brought it back).
    pub bare_merge_resurrected_keys: i64,
}

/// One way of writing the batches.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MergeRun {
    /// Commits made.
    pub commits: u64,
    /// CPU-seconds.
    pub cpu_seconds: f64,
    /// Wall-seconds.
    pub wall_seconds: f64,
    /// Changes per CPU-second.
    pub changes_per_cpu_second: f64,
    /// CPU milliseconds per commit.
    pub cpu_ms_per_commit: f64,
    /// Rows in the table at the end.
    pub rows: u64,
}

fn failed(message: impl std::fmt::Display) -> CliError {
    CliError::Bench(format!("cdc: {message}"))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("tier", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("_op", DataType::Utf8, true),
        Field::new("_lsn", DataType::Int64, true),
    ]))
}

/// The change stream, in batches, and its replay: each key's latest change.
fn stream(changes: u64, keys: u64, batch: u64) -> Result<(Vec<RecordBatch>, HashMap<i64, bool>)> {
    let tiers = ["free", "plus", "pro", "enterprise"];
    let mut batches = Vec::new();
    let mut latest: HashMap<i64, (i64, bool)> = HashMap::new();
    for start in (0..changes).step_by(batch as usize) {
        let n = batch.min(changes - start);
        let (mut ids, mut tier, mut email, mut op, mut lsn) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in start..start + n {
            let r = mix(i ^ 0x5EED);
            let id = (r % keys) as i64;
            let delete = (r >> 20) % 100 < 15;
            let mut position = i as i64 + 1;
            if (r >> 30) % 100 < 5 {
                position = (position - 1 - ((r >> 40) % 6_000) as i64).max(1);
            }
            ids.push(id);
            tier.push(tiers[((r >> 50) % 4) as usize]);
            email.push(format!("user{id}.{i}@shop.example"));
            op.push(if delete { "d" } else { "u" });
            lsn.push(position);
            let entry = latest.entry(id).or_insert((position, delete));
            if position >= entry.0 {
                *entry = (position, delete);
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(tier)),
            Arc::new(StringArray::from(email)),
            Arc::new(StringArray::from(op)),
            Arc::new(Int64Array::from(lsn)),
        ];
        batches.push(RecordBatch::try_new(schema(), columns)?);
    }
    let live = latest.into_iter().map(|(k, (_, d))| (k, !d)).collect();
    Ok((batches, live))
}

fn finish(run: &mut MergeRun, changes: u64, cpu: f64, started: Instant) {
    run.cpu_seconds = cpu_seconds(None).unwrap_or(0.0) - cpu;
    run.wall_seconds = started.elapsed().as_secs_f64();
    run.changes_per_cpu_second = changes as f64 / run.cpu_seconds.max(1e-9);
    run.cpu_ms_per_commit = run.cpu_seconds * 1000.0 / run.commits.max(1) as f64;
}

/// Merges the batches with Smelter's merge path into a new table of SCD type `scd`.
async fn smelter_merge(
    tables: &TableStore,
    batches: &[RecordBatch],
    changes: u64,
    scd: u8,
) -> Result<MergeRun> {
    let name = format!("silver.users_scd{scd}");
    let spec: TableSpec = serde_yaml::from_str(&format!(
        "from: bronze.users_cdc\n\
         parse: {{ format: json, schema: {{ id: long, tier: string, email: string }} }}\n\
         merge: {{ keys: [id], sequence_by: _lsn, delete_when: \"_op = 'd'\", scd: {scd} }}\n\
         change_data_feed: true\n"
    ))
    .map_err(failed)?;
    let merge = spec.merge.clone().ok_or_else(|| failed("no merge"))?;
    let table_schema = if scd == 2 {
        smelter_lake::merge::history::with_history_columns(&schema(), "_lsn")?
    } else {
        schema()
    };
    let env = CommitEnv::default();
    let mut table = with_change_feed(tables, &name, &table_schema).await?;
    let tombstones = tables
        .open_or_create(
            &TableSpec::tombstones_name(&name),
            &Merger::tombstone_schema(&merge, &table_schema)?,
            &[],
            &env,
        )
        .await?;
    let mut merger = Merger::open(
        &env,
        tombstones,
        (name.as_str(), &spec, &merge),
        &mut table,
        &table_schema,
    )
    .await?;
    let app_id = AppId::upstream(&name, &spec.from);
    let metadata = HashMap::new();
    let mut run = MergeRun::default();
    let cpu = cpu_seconds(None).unwrap_or(0.0);
    let started = Instant::now();
    let mut previous = None;
    for (i, batch) in batches.iter().enumerate() {
        let pass = MergePass {
            rows: vec![batch.clone()],
            txn: TxnUpdate::new(&app_id, previous, i as i64),
            metadata: &metadata,
        };
        match merger.commit(&env, &mut table, pass).await? {
            (CommitOutcome::Committed { .. }, _) => run.commits += 1,
            (CommitOutcome::AlreadyCommitted, _) => return Err(failed("a merge was refused")),
        }
        previous = Some(i as i64);
    }
    finish(&mut run, changes, cpu, started);
    run.rows = rows(tables, &name).await?;
    Ok(run)
}

/// Rows of the history table `name` that are current.
async fn current_rows(tables: &TableStore, name: &str) -> Result<u64> {
    let table = tables.open(name).await?;
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", table.table_provider().await.map_err(failed)?)?;
    let batches = ctx
        .sql("SELECT count(*) FROM t WHERE __current")
        .await?
        .collect()
        .await?;
    Ok(batches[0].column(0).as_primitive::<Int64Type>().value(0) as u64)
}

async fn rows(tables: &TableStore, name: &str) -> Result<u64> {
    let mut table = tables.open(name).await?;
    Ok(smelter_lake::detail::detail(&mut table, name).await?.rows)
}

/// Appends the batches, one commit each.
async fn append(tables: &TableStore, batches: &[RecordBatch], changes: u64) -> Result<MergeRun> {
    let name = "silver.users_appended";
    let env = CommitEnv::default();
    let mut table = tables.open_or_create(name, &schema(), &[], &env).await?;
    let mut run = MergeRun::default();
    let cpu = cpu_seconds(None).unwrap_or(0.0);
    let started = Instant::now();
    for batch in batches {
        smelter_lake::commit(
            &mut table,
            name,
            vec![batch.clone()],
            WriteMode::Append,
            &[],
            Vec::new(),
            &env,
        )
        .await?;
        run.commits += 1;
    }
    finish(&mut run, changes, cpu, started);
    run.rows = rows(tables, name).await?;
    Ok(run)
}

/// The latest change of each key in `batch` (delta-rs's MERGE refuses two source rows
/// matching one target row).
fn latest_per_key(batch: &RecordBatch) -> Result<RecordBatch> {
    let ids = batch.column(0).as_primitive::<Int64Type>();
    let lsns = batch.column(4).as_primitive::<Int64Type>();
    let mut latest: HashMap<i64, usize> = HashMap::new();
    for i in 0..batch.num_rows() {
        let entry = latest.entry(ids.value(i)).or_insert(i);
        if lsns.value(i) >= lsns.value(*entry) {
            *entry = i;
        }
    }
    let mut rows: Vec<u32> = latest.into_values().map(|i| i as u32).collect();
    rows.sort_unstable();
    Ok(take_record_batch(batch, &UInt32Array::from(rows))?)
}

/// A new table `name` of `schema` with the change data feed on.
async fn with_change_feed(
    tables: &TableStore,
    name: &str,
    schema: &SchemaRef,
) -> Result<deltalake::DeltaTable> {
    let described = Description {
        change_data_feed: true,
        ..Description::default()
    };
    Ok(tables
        .open_or_create_described(name, schema, &[], &described, &CommitEnv::default())
        .await?)
}

/// The batches through delta-rs's own `MERGE`, with the change data feed on.
async fn bare_merge(
    tables: &TableStore,
    batches: &[RecordBatch],
    changes: u64,
) -> Result<MergeRun> {
    let name = "silver.users_bare";
    let mut table = with_change_feed(tables, name, &schema()).await?;
    let delta = |e: deltalake::DeltaTableError| failed(format!("delta-rs MERGE: {e}"));
    let mut run = MergeRun::default();
    let cpu = cpu_seconds(None).unwrap_or(0.0);
    let started = Instant::now();
    for batch in batches {
        let source = latest_per_key(batch)?;
        let ctx = datafusion::prelude::SessionContext::new();
        let source = ctx.read_batch(source)?;
        let columns = ["id", "tier", "email", "_op", "_lsn"];
        let (merged, _) = table
            .merge(source, "target.id = source.id")
            .with_source_alias("source")
            .with_target_alias("target")
            .when_matched_delete(|d| d.predicate("source._op = 'd' AND source._lsn > target._lsn"))
            .map_err(delta)?
            .when_matched_update(|u| {
                columns.iter().fold(
                    u.predicate("source._op <> 'd' AND source._lsn > target._lsn"),
                    |u, c| u.update(*c, format!("source.{c}")),
                )
            })
            .map_err(delta)?
            .when_not_matched_insert(|i| {
                columns
                    .iter()
                    .fold(i.predicate("source._op <> 'd'"), |i, c| {
                        i.set(*c, format!("source.{c}"))
                    })
            })
            .map_err(delta)?
            .await
            .map_err(delta)?;
        table = merged;
        run.commits += 1;
    }
    finish(&mut run, changes, cpu, started);
    run.rows = rows(tables, name).await?;
    Ok(run)
}

/// The batches through delta-rs's `MERGE` as an SCD 2 table, the way Delta's documentation
/// writes it: each batch's latest change per key staged twice — keyed, to close the key's
/// current version if the change is newer; and, when it is a newer upsert of a key that
/// has a current version, unkeyed, to insert the new version — then one `MERGE`.
async fn bare_scd2_merge(
    tables: &TableStore,
    batches: &[RecordBatch],
    changes: u64,
) -> Result<MergeRun> {
    let name = "silver.users_bare_scd2";
    let table_schema = smelter_lake::merge::history::with_history_columns(&schema(), "_lsn")?;
    let mut table = with_change_feed(tables, name, &table_schema).await?;
    let delta = |e: deltalake::DeltaTableError| failed(format!("delta-rs SCD 2 MERGE: {e}"));
    let mut run = MergeRun::default();
    let cpu = cpu_seconds(None).unwrap_or(0.0);
    let started = Instant::now();
    let columns = ["id", "tier", "email", "_op", "_lsn"];
    for batch in batches {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_batch("updates", latest_per_key(batch)?)?;
        ctx.register_table("history", table.table_provider().await?)?;
        let staged = ctx
            .sql(
                "SELECT id AS merge_key, id, tier, email, _op, _lsn FROM updates                  UNION ALL                  SELECT CAST(NULL AS BIGINT) AS merge_key, u.id, u.tier, u.email, u._op, u._lsn                  FROM updates u JOIN history h ON u.id = h.id                  WHERE h.__current AND u._lsn > h._lsn AND u._op <> 'd'",
            )
            .await?;
        let (merged, _) = table
            .merge(staged, "target.id = source.merge_key AND target.__current")
            .with_source_alias("source")
            .with_target_alias("target")
            .when_matched_update(|u| {
                u.predicate("source._lsn > target._lsn")
                    .update("__current", "false")
                    .update("__end_at", "source._lsn")
            })
            .map_err(delta)?
            .when_not_matched_insert(|i| {
                columns
                    .iter()
                    .fold(i.predicate("source._op <> 'd'"), |i, c| {
                        i.set(*c, format!("source.{c}"))
                    })
                    .set("__start_at", "source._lsn")
                    .set("__end_at", "CAST(NULL AS BIGINT)")
                    .set("__current", "true")
            })
            .map_err(delta)?
            .await
            .map_err(delta)?;
        table = merged;
        run.commits += 1;
    }
    finish(&mut run, changes, cpu, started);
    run.rows = rows(tables, name).await?;
    Ok(run)
}

/// Runs every way of writing the stream in `work_dir`, checks the tables, removes them.
pub async fn measure(work_dir: &Path, changes: u64, keys: u64, batch: u64) -> Result<CdcBench> {
    let dir = work_dir.join(format!("cdc-{}", uuid::Uuid::new_v4()));
    let measured = measure_in(&dir, changes, keys, batch).await;
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

async fn measure_in(dir: &Path, changes: u64, keys: u64, batch: u64) -> Result<CdcBench> {
    let tables = TableStore::new(dir)?;
    let (batches, replay) = stream(changes, keys, batch)?;
    let live = replay.values().filter(|l| **l).count() as u64;
    let scd1 = smelter_merge(&tables, &batches, changes, 1).await?;
    if scd1.rows != live {
        return Err(failed(format!(
            "SCD 1 holds {} rows; the replay of the changes {live}",
            scd1.rows
        )));
    }
    let scd2 = smelter_merge(&tables, &batches, changes, 2).await?;
    let current = current_rows(&tables, "silver.users_scd2").await?;
    if current != live {
        return Err(failed(format!(
            "SCD 2 holds {current} current rows; the replay of the changes {live}"
        )));
    }
    let append = append(&tables, &batches, changes).await?;
    let bare = bare_merge(&tables, &batches, changes).await?;
    let bare_scd2 = bare_scd2_merge(&tables, &batches, changes).await?;
    let bare_current = current_rows(&tables, "silver.users_bare_scd2").await?;
    if bare_current != bare.rows {
        return Err(failed(format!(
            "the bare SCD 2 MERGE holds {bare_current} current rows; the bare SCD 1 MERGE {} rows",
            bare.rows
        )));
    }
    let per_second = |run: &MergeRun| run.changes_per_cpu_second;
    Ok(CdcBench {
        changes,
        keys,
        batch,
        scd1_to_bare_merge: per_second(&scd1) / per_second(&bare).max(1e-9),
        scd2_to_bare_merge: per_second(&scd2) / per_second(&bare).max(1e-9),
        scd2_to_bare_scd2_merge: per_second(&scd2) / per_second(&bare_scd2).max(1e-9),
        merge_commit_to_append_commit: scd1.cpu_ms_per_commit / append.cpu_ms_per_commit.max(1e-9),
        bare_merge_resurrected_keys: bare.rows as i64 - live as i64,
        scd1,
        scd2,
        append,
        bare_delta_rs_merge: bare,
        bare_delta_rs_scd2_merge: bare_scd2,
    })
}
