//! Which schema a refine task writes its silver table with, decided when it starts:
//!
//! * **declared** — the spec's, which the table takes or grows to (`smelter_lake::evolve`);
//! * **inferred** (`parse.schema: infer`) — the table's own, or for a table not created
//!   yet the one the first records suggest; grown pass by pass ([`crate::refine::inferred`]);
//! * **rescued** (`on_incompatible: rescue`) — the spec's, but each column the table cannot
//!   take keeps the table's type and rescues the values it does not take
//!   ([`crate::refine::incompatible`]);
//! * **started over** (`on_incompatible: new_version`) — the spec's, after the table was
//!   replaced ([`start_over`]).
//!
//! Start-over order and why it is safe to crash anywhere: silver's schema is replaced and
//! its rows removed first, with its bronze position set to -1 (nothing refined); the
//! quarantine is emptied next, position -1 too. A silver position of -1 with a quarantine
//! ahead of it can only mean that quarantine rows were written for ranges silver has not
//! committed since it started over (the second step did not run, or a pass died between its
//! two commits): those ranges are refined again in any case, so [`finish_start_over`]
//! empties the quarantine before the first pass, and each record is quarantined once.

use deltalake::DeltaTable;
use smelter_common::spec::{OnIncompatible, ParseSchema, SchemaSpec, TableSpec};
use smelter_lake::{AppId, CommitOutcome, TxnUpdate, WriteMode, log};

use super::TaskEnv;
use crate::refine::decode::Rescue;
use crate::refine::{self, Refiner, incompatible, inferred};
use crate::tasks::schemas;
use crate::{Result, WorkerError};

/// How a refine task reads its records.
pub struct Reading {
    /// The refiner, for the schema below.
    pub refiner: Refiner,
    /// The schema it currently infers with (`parse.schema: infer`), which passes grow.
    pub inferred: Option<SchemaSpec>,
}

impl Reading {
    /// The refiner of an inferred table whose schema is now `schema`.
    pub fn inferring(
        table: &str,
        spec: &TableSpec,
        schema: SchemaSpec,
        origin: &str,
    ) -> Result<Self> {
        let mut declared = spec.clone();
        if let Some(parse) = declared.parse.as_mut() {
            parse.schema = ParseSchema::Declared(schema.clone());
        }
        Ok(Self {
            refiner: Refiner::rescuing(table, &declared, origin, Some(&Rescue::All))?,
            inferred: Some(schema),
        })
    }
}

/// How the refine task of `table` reads, given the table as it is (`held`, if it exists).
/// For an inferred table not created yet, `first` holds the first records' payloads.
pub fn reading(
    table: &str,
    spec: &TableSpec,
    held: Option<&arrow::datatypes::Schema>,
    first: &[Vec<u8>],
    origin: &str,
) -> Result<Reading> {
    let inferring = spec.parse.as_ref().is_some_and(|p| p.schema.inferred());
    if inferring {
        let schema = match held {
            Some(held) => schemas::recorded_schema(held),
            None => inferred::first(first.iter().map(Vec::as_slice)).unwrap_or_default(),
        };
        return Reading::inferring(table, spec, schema, origin);
    }
    if spec.on_incompatible == OnIncompatible::Rescue
        && let Some(held) = held
        && let Some((conformed, rescue)) = incompatible::rescue_conflicts(spec, held)
    {
        tracing::info!(%table, ?rescue, "columns the table cannot take keep its types; their other values are rescued");
        return Ok(Reading {
            refiner: Refiner::rescuing(table, &conformed, origin, Some(&rescue))?,
            inferred: None,
        });
    }
    Ok(Reading {
        refiner: Refiner::new(table, spec, origin)?,
        inferred: None,
    })
}

/// The payloads an inferred table's first schema comes from: the first records of its
/// bronze table, once it has any (`None` until then).
pub async fn first_records(
    env: &TaskEnv,
    spec: &TableSpec,
    refiner: &Refiner,
) -> Result<Option<Vec<Vec<u8>>>> {
    if !env.tables.exists(&spec.from).await {
        return Ok(None);
    }
    let bronze = env.tables.open(&spec.from).await?;
    let latest = log::latest_version(&bronze, &spec.from, log::version(&bronze)).await?;
    if latest < 0 {
        return Ok(None);
    }
    let to = latest.min(env.config.refine_max_versions as i64 - 1).max(0);
    let undone = smelter_lake::changes::undone(&bronze, &spec.from, -1, to).await?;
    let rows = refine::read_versions(
        &bronze,
        &spec.from,
        (0, to),
        &undone,
        &env.commits.recent,
        &refiner.extra_bronze_columns(),
    )
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let sample = spec
        .parse
        .as_ref()
        .and_then(|p| p.sample)
        .unwrap_or(inferred::DEFAULT_SAMPLE);
    Ok(Some(refiner.json_payloads(&rows, sample).await?))
}

/// Starts `silver` over under `refiner`'s schema if the spec says so and the table cannot
/// take it (see the module docs); true if it did.
pub async fn start_over(
    env: &TaskEnv,
    (name, spec): (&str, &TableSpec),
    silver: &mut DeltaTable,
    quarantine: &mut DeltaTable,
    refiner: &Refiner,
) -> Result<bool> {
    if spec.on_incompatible != OnIncompatible::NewVersion {
        return Ok(false);
    }
    let held = log::arrow_schema(silver, name)?;
    let Some(conflict) = incompatible::conflict(&held, refiner.silver_schema()) else {
        return Ok(false);
    };
    let why = format!(
        "on_incompatible: new_version — column {}: {}",
        conflict.column, conflict.message
    );
    let app_id = AppId::upstream(name, &spec.from);
    let at = log::txn_version(silver, &app_id).await?;
    let txns = vec![TxnUpdate::new(&app_id, at, -1)];
    let replaced = smelter_lake::commit::replace_schema(
        silver,
        name,
        refiner.silver_schema(),
        txns,
        &why,
        &env.commits,
    )
    .await?;
    moved(name, replaced)?;
    env.commits
        .failpoints
        .hit("refine.started_over", || format!("table={name}"));
    tracing::warn!(table = name, %why, "silver started over under the new schema; bronze is refined again");
    finish_start_over(env, (name, spec), silver, quarantine).await?;
    Ok(true)
}

/// Empties the quarantine of a silver table that started over, if it is ahead of silver's
/// position of -1 (see the module docs).
pub async fn finish_start_over(
    env: &TaskEnv,
    (name, spec): (&str, &TableSpec),
    silver: &DeltaTable,
    quarantine: &mut DeltaTable,
) -> Result<()> {
    let at = log::txn_version(silver, &AppId::upstream(name, &spec.from)).await?;
    let quarantine_name = TableSpec::quarantine_name(name);
    let quarantine_app = AppId::upstream(&quarantine_name, &spec.from);
    let quarantined = log::txn_version(quarantine, &quarantine_app).await?;
    if at != Some(-1) || quarantined.is_none_or(|q| q == -1) {
        return Ok(());
    }
    let emptied = smelter_lake::commit(
        quarantine,
        &quarantine_name,
        Vec::new(),
        WriteMode::Overwrite,
        &[],
        vec![TxnUpdate::new(&quarantine_app, quarantined, -1)],
        &env.commits,
    )
    .await?;
    moved(&quarantine_name, emptied)?;
    // The task reads its positions from the table as loaded, which the lean commit path
    // does not bring forward.
    log::refresh(quarantine, &quarantine_name).await?;
    tracing::info!(table = %quarantine_name, "quarantine emptied: its records are refined again");
    Ok(())
}

/// A start-over commit that found its position moved: another writer is at work on the
/// table; the task stops and is started again.
fn moved(name: &str, outcome: CommitOutcome) -> Result<()> {
    match outcome {
        CommitOutcome::Committed { .. } => Ok(()),
        CommitOutcome::AlreadyCommitted => {
            Err(WorkerError::Lake(smelter_lake::LakeError::CommitConflict {
                table: name.to_string(),
                message: "its position moved while it was started over".into(),
            }))
        }
    }
}
