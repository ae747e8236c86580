//! Quarantine replay: the records a silver table quarantined, refined again under the
//! current spec (after a rule or a schema was fixed). Rows that now pass go to silver;
//! rows that still fail stay quarantined with their new rule and reason; rows removed as
//! duplicates of silver rows, or dropped by a `drop` expectation, leave the quarantine.
//!
//! Exactly once, over two tables, with one app id ([`AppId::Replay`]) in both:
//!
//! 1. **plan**: the quarantine's latest version `V`; the rows it holds at `V` that match
//!    the request (`--rule`, `--where`);
//! 2. **silver**: one commit of the rows that now pass, with `txn(replay, V)` compared and
//!    set like any commit's, and the request in its `commitInfo`
//!    ([`REPLAY_KEY`]);
//! 3. **quarantine**: the replayed rows deleted by source position (a rewrite under the
//!    commit lock, while refine keeps appending), then one commit of the rows that still
//!    fail with `txn(replay, V)`.
//!
//! A replay whose silver holds a replay txn beyond the quarantine's (it stopped after 2)
//! finishes that one first: it plans again from the quarantine *as of* `V` with the request
//! silver recorded — the same rows, refined the same way — skips the silver commit, deletes
//! the positions (idempotent: a position deleted before is simply not found) and appends
//! what still fails. So a crash at any point neither loses a record nor refines it twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::DeltaTable;
use smelter_common::spec::{Layer, PipelineSpec, table_layer};
use smelter_lake::delete::{AtPositions, SqlPredicate, delete};
use smelter_lake::{AppId, CommitEnv, CommitOutcome, TableStore, TxnUpdate, WriteMode};

use super::{BronzeRows, KeyCache, SilverAt};
use crate::tasks::schemas;
use crate::{Result, WorkerError};

/// The `commitInfo` key under which a replay's silver commit records what it replayed:
/// `{"quarantine": .., "version": V, "rule": .., "where": ..}`.
pub const REPLAY_KEY: &str = "smelter.replay";

/// Which quarantined records to replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplayRequest {
    /// Only records quarantined by this rule.
    pub rule: Option<String>,
    /// Only records matching this SQL predicate over the quarantine's columns.
    #[serde(rename = "where")]
    pub predicate: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// The quarantine version replayed.
    pub quarantine_version: Option<i64>,
    /// Whether this run finished a replay an earlier run had started.
    pub resumed: bool,
    /// Records taken out of the quarantine.
    pub replayed: u64,
    /// Of those, rows committed to silver.
    pub refined: u64,
    /// Of those, rows quarantined again, per rule.
    pub still_quarantined: BTreeMap<String, u64>,
    /// Of those, duplicates of rows silver holds.
    pub deduplicated: u64,
    /// Rows a `drop` expectation removed.
    pub dropped: u64,
    /// The silver commit, if one was made here.
    pub silver_version: Option<i64>,
}

/// Replays `request` from `quarantine` (`<silver>_quarantine`) into its silver table under
/// `spec` (see the module docs).
pub async fn replay(
    tables: &TableStore,
    spec: &PipelineSpec,
    quarantine: &str,
    request: &ReplayRequest,
    env: &CommitEnv,
) -> Result<Replayed> {
    let invalid = |message: String| WorkerError::InvalidSpec {
        origin: spec.pipeline.clone(),
        field: quarantine.to_string(),
        message,
    };
    let Some(silver) = quarantine.strip_suffix("_quarantine") else {
        return Err(invalid(format!(
            "{quarantine} is not a quarantine table (`<silver table>_quarantine`)"
        )));
    };
    let table_spec = match (spec.tables.get(silver), table_layer(silver)) {
        (Some(t), Some(Layer::Silver)) => t,
        _ => {
            return Err(invalid(format!(
                "pipeline {} declares no silver table {silver}",
                spec.pipeline
            )));
        }
    };
    if table_spec.merge.is_some() {
        return Err(invalid(format!(
            "{silver} is merged by key; replaying into a merged table is not supported yet"
        )));
    }
    let app_id = AppId::Replay {
        quarantine: quarantine.to_string(),
    };
    let mut silver_table = tables.open(silver).await?;
    let mut quarantine_table = tables.open(quarantine).await?;
    let done = smelter_lake::log::txn_version(&silver_table, &app_id).await?;
    let marked = smelter_lake::log::txn_version(&quarantine_table, &app_id).await?;
    // Decoded as the refine task decodes: an inferred schema as the table records it, the
    // columns `on_incompatible: rescue` keeps in the table's types.
    let held = smelter_lake::log::arrow_schema(&silver_table, silver)?;
    let refiner = crate::tasks::silver_schema::reading(
        silver,
        table_spec,
        Some(held.as_ref()),
        &[],
        &spec.pipeline,
    )?
    .refiner;
    let mut report = Replayed::default();
    let (version, request) = match (done, marked) {
        (Some(done), marked) if marked.is_none_or(|m| m < done) => {
            // An earlier replay reached silver and not the quarantine: finish it as it was.
            report.resumed = true;
            (
                done,
                recorded_request(&silver_table, silver, &app_id, done).await?,
            )
        }
        _ => (
            smelter_lake::log::refresh(&mut quarantine_table, quarantine).await?,
            request.clone(),
        ),
    };
    report.quarantine_version = Some(version);
    let rows = matching(tables, quarantine, version, &request).await?;
    let positions = positions(&rows)?;
    report.replayed = positions.len() as u64;
    if positions.is_empty() && !report.resumed {
        return Ok(report);
    }
    let bronze = BronzeRows::from_batches(rows);
    let head = env.heads.head(&mut silver_table, silver).await?;
    let mut at = SilverAt {
        table: &mut silver_table,
        name: silver,
        version: head.version(),
    };
    let refined = refiner
        .refine(&bronze, &mut at, &mut KeyCache::default())
        .await?;
    report.refined = refined.silver.iter().map(|b| b.num_rows() as u64).sum();
    report.dropped = refined.dropped as u64;
    report.deduplicated = refined.deduplicated as u64;
    if let Some(rules) = refined.quarantine.column_by_name("rule") {
        let rules = arrow::compute::cast(rules, &DataType::Utf8)?;
        for rule in rules.as_string::<i32>().iter().flatten() {
            *report
                .still_quarantined
                .entry(rule.to_string())
                .or_default() += 1;
        }
    }
    if !report.resumed {
        let mut info = std::collections::HashMap::new();
        info.insert(
            REPLAY_KEY.to_string(),
            serde_json::json!({
                "quarantine": quarantine,
                "version": version,
                "rule": request.rule,
                "where": request.predicate,
            }),
        );
        let write = smelter_lake::commit::Write {
            batches: refined.silver,
            mode: WriteMode::Append,
            partition_by: &table_spec.partition_by,
            txns: vec![TxnUpdate::new(&app_id, done, version)],
            metadata: &info,
        };
        match smelter_lake::commit_write(&mut silver_table, silver, write, env).await? {
            CommitOutcome::Committed { version } => report.silver_version = Some(version),
            CommitOutcome::AlreadyCommitted => {
                return Err(WorkerError::Lake(smelter_lake::LakeError::CommitConflict {
                    table: silver.to_string(),
                    message: "another replay of this quarantine committed first; run it again"
                        .into(),
                }));
            }
        }
    }
    env.failpoints.hit("replay.after_silver", || {
        format!("table={silver} quarantine={quarantine} version={version}")
    });
    // The replayed records leave the quarantine (by position: idempotent), then what still
    // fails comes back with its new reason, marking the replay done.
    delete(
        &mut quarantine_table,
        quarantine,
        &AtPositions {
            positions,
            columns: ["topic", "partition", "offset"],
        },
        env,
    )
    .await?;
    let outcome = smelter_lake::commit(
        &mut quarantine_table,
        quarantine,
        vec![refined.quarantine],
        WriteMode::Append,
        &[],
        vec![TxnUpdate::new(&app_id, marked, version)],
        env,
    )
    .await?;
    if outcome == CommitOutcome::AlreadyCommitted {
        return Err(WorkerError::Lake(smelter_lake::LakeError::CommitConflict {
            table: quarantine.to_string(),
            message: "another replay of this quarantine marked it first; run it again".into(),
        }));
    }
    Ok(report)
}

/// The request a replay's silver commit recorded for quarantine version `version`.
async fn recorded_request(
    silver: &DeltaTable,
    name: &str,
    app_id: &AppId,
    version: i64,
) -> Result<ReplayRequest> {
    let key = app_id.to_string();
    let latest = smelter_lake::log::version(silver);
    for v in (0..=latest).rev() {
        let actions = smelter_lake::changes::commit_actions(silver, name, v).await?;
        let Some(actions) = actions else { continue };
        let replayed = actions.iter().any(|a| {
            matches!(a, deltalake::kernel::Action::Txn(t) if t.app_id == key && t.version == version)
        });
        if !replayed {
            continue;
        }
        for action in &actions {
            if let deltalake::kernel::Action::CommitInfo(info) = action
                && let Some(recorded) = info.info.get(REPLAY_KEY)
            {
                // Never a default: replaying another selection than the one silver got
                // would take records out of the quarantine that silver never received.
                return serde_json::from_value(recorded.clone()).map_err(|e| {
                    WorkerError::Lake(smelter_lake::LakeError::Invalid {
                        table: name.to_string(),
                        message: format!(
                            "version {v} records a replay this version cannot read ({e}); \
                             the quarantine was left as it is"
                        ),
                    })
                });
            }
        }
    }
    Err(WorkerError::Lake(smelter_lake::LakeError::Invalid {
        table: name.to_string(),
        message: format!("no commit records the replay of quarantine version {version}"),
    }))
}

/// The rows of `quarantine` at `version` that `request` selects, shaped as bronze rows
/// (topic, partition, offset, payload, error, ingested_at) for the refiner.
async fn matching(
    tables: &TableStore,
    quarantine: &str,
    version: i64,
    request: &ReplayRequest,
) -> Result<Vec<RecordBatch>> {
    let table = tables.open_version(quarantine, version).await?;
    let schema = smelter_lake::log::arrow_schema(&table, quarantine)?;
    let mut conditions = Vec::new();
    if let Some(rule) = &request.rule {
        conditions.push(format!("rule = '{}'", rule.replace('\'', "''")));
    }
    if let Some(predicate) = &request.predicate {
        // Checked first, so that a bad predicate is a clear error naming what is wrong.
        SqlPredicate::new(predicate, &schema, quarantine)?;
        conditions.push(format!("({predicate})"));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("quarantine", table.table_provider().await?)?;
    // In source order, as refine first met them: of two deliveries of one record, dedupe
    // keeps the earlier.
    let sql = format!(
        "SELECT topic, \"partition\", \"offset\", payload, ingested_at FROM quarantine{filter} \
         ORDER BY topic, \"partition\", \"offset\""
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let bronze = bronze_input();
    batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|batch| {
            let columns = bronze
                .fields()
                .iter()
                .map(|field| match batch.column_by_name(field.name()) {
                    Some(column) => Ok(arrow::compute::cast(column, field.data_type())?),
                    None => Ok(new_null_array(field.data_type(), batch.num_rows())),
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            Ok(RecordBatch::try_new(bronze.clone(), columns)?)
        })
        .collect()
}

/// The bronze columns the refiner reads, typed as bronze has them.
fn bronze_input() -> SchemaRef {
    let bronze = schemas::bronze();
    let fields: Vec<Field> = super::BRONZE_INPUT
        .iter()
        .filter_map(|name| bronze.field_with_name(name).ok().cloned())
        .map(|f| f.with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// The source positions of `rows`.
fn positions(rows: &[RecordBatch]) -> Result<HashSet<(String, i32, i64)>> {
    let mut out = HashSet::new();
    for batch in rows {
        let topic = batch.column(0).as_string::<i32>();
        let partition = batch
            .column(1)
            .as_primitive::<arrow::datatypes::Int32Type>();
        let offset = batch
            .column(2)
            .as_primitive::<arrow::datatypes::Int64Type>();
        for row in 0..batch.num_rows() {
            if topic.is_valid(row) {
                out.insert((
                    topic.value(row).to_string(),
                    partition.value(row),
                    offset.value(row),
                ));
            }
        }
    }
    Ok(out)
}
