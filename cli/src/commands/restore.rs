//! `smelter restore`, `smelter pause` and `smelter resume`.
//!
//! A restore brings a table back to a version (see `smelter_lake::restore`) *and* keeps
//! the layers one consistent cut, which no single-table restore can:
//!
//! * **gold**: the table alone; its aggregate task recomputes it from silver when it next
//!   runs, as for any gold table.
//! * **silver** to version N: silver and its quarantine go back to what they held having
//!   consumed bronze up to c (the position silver had at N); refine consumes bronze again
//!   from c, under the spec as it is now. Gold tables that read it rebuild. If c lies in
//!   bronze versions a later bronze restore undid, silver at N holds records bronze has
//!   since read again from the source: restoring N would let them in twice, so the restore
//!   goes to the latest version before N positioned outside every undone span.
//! * **bronze** to version N: the cut c is the latest bronze version ≤ N that every silver
//!   table reading it had consumed *exactly* (a silver version consumed whole bronze
//!   versions); bronze goes back to c — its source offsets with it, so ingest reads the
//!   undone records again — and each silver table (and quarantine) to the version that had
//!   consumed c, its position set to the restore's own bronze version (which holds what c
//!   held). Versions between c and N come back from the source too.
//! * **a pipeline at a time T**: each bronze table restored as above to the least bronze
//!   position its silver tables had at T.
//!
//! The pipeline is paused meanwhile (its tasks drain their batch and stop, staying
//! placed) and resumed after, whatever happened: no task races the restore, and every task
//! starts again from the restored positions. `--offline` skips that for tables nothing runs.

use std::collections::BTreeMap;
use std::time::Duration;

use smelter_common::config::SmelterConfig;
use smelter_common::spec::{Layer, PipelineSpec, TableSpec, table_layer};
use smelter_lake::history::{parse_timestamp, version_at};
use smelter_lake::restore::{Restored, restore, txn_history};
use smelter_lake::{AppId, CommitEnv, TableStore};
use smelter_sdk::AdminClient;

use super::lineage::{readers, upstreams};
use crate::cli::{PauseArgs, RestoreArgs};
use crate::output::Format;
use crate::{CliError, Result};

/// How long a pause may take to drain the pipeline's tasks.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(120);

/// `smelter pause` / `smelter resume`.
pub async fn pause(config: &SmelterConfig, args: PauseArgs, paused: bool) -> Result<()> {
    let mut admin =
        AdminClient::connect_with(&args.coordinator, &super::credentials(&config.security)?)
            .await?;
    let changed = admin.set_paused(&args.pipeline, paused).await?;
    if paused {
        admin
            .wait_paused(&args.pipeline, changed.generation, PAUSE_TIMEOUT)
            .await?;
        println!("pipeline {} paused (every task drained)", args.pipeline);
    } else {
        println!("pipeline {} resumed", args.pipeline);
    }
    Ok(())
}

/// What one table went back to.
#[derive(serde::Serialize)]
struct Step {
    table: String,
    #[serde(flatten)]
    restored: Restored,
}

/// `smelter restore`.
pub async fn run(config: SmelterConfig, args: RestoreArgs) -> Result<()> {
    let (tables, _) = super::local_tables(&config, args.data_dir.as_deref(), Vec::new()).await?;
    let env = super::commit_env(&config, &tables, "restore").await?;
    let at_ms = args
        .timestamp
        .as_deref()
        .map(|t| {
            parse_timestamp(t).ok_or_else(|| {
                CliError::InvalidArgument(format!("--timestamp {t:?}: not a timestamp"))
            })
        })
        .transpose()?;
    if let Some(table) = &args.table {
        super::require_table(&tables, table).await?;
    }
    // Pause the pipeline that writes the tables, unless nothing runs them.
    let mut paused = None;
    if !args.offline {
        let mut admin =
            AdminClient::connect_with(&args.coordinator, &super::credentials(&config.security)?)
                .await?;
        let pipeline = match (&args.pipeline, &args.table) {
            (Some(p), _) => p.clone(),
            (None, Some(table)) => pipeline_of(&mut admin, table).await?,
            (None, None) => unreachable!("clap requires a table or a pipeline"),
        };
        let changed = admin.set_paused(&pipeline, true).await?;
        eprintln!("pausing pipeline {pipeline} ...");
        if let Err(error) = admin
            .wait_paused(&pipeline, changed.generation, PAUSE_TIMEOUT)
            .await
        {
            let _ = admin.set_paused(&pipeline, false).await;
            return Err(error.into());
        }
        paused = Some((admin, pipeline));
    }
    let result = plan_and_restore(&tables, &env, &args, at_ms).await;
    if let Some((mut admin, pipeline)) = paused {
        admin.set_paused(&pipeline, false).await?;
        eprintln!("pipeline {pipeline} resumed");
    }
    let (steps, rebuilding) = result?;
    match args.output {
        Format::Json => println!(
            "{}",
            serde_json::json!({ "tables": steps, "rebuilding": rebuilding })
        ),
        Format::Table | Format::Csv => {
            for step in &steps {
                let r = &step.restored;
                println!(
                    "{:<32} version {} -> {} (restore commit {}): {} files out, {} back; {}",
                    step.table,
                    r.was_at,
                    r.restored_to,
                    r.version.map_or("none".into(), |v| v.to_string()),
                    r.files_removed,
                    r.files_added,
                    if r.positions.is_empty() {
                        "positions unchanged".to_string()
                    } else {
                        r.positions.join(" ")
                    }
                );
            }
            for name in &rebuilding {
                println!("{name:<32} rebuilds from the restored tables when the pipeline runs");
            }
        }
    }
    Ok(())
}

/// The pipeline, among those applied to the coordinator, that declares `table` (or the
/// silver table whose quarantine it is).
async fn pipeline_of(admin: &mut AdminClient, table: &str) -> Result<String> {
    let status = admin.status().await?;
    let base = table.strip_suffix("_quarantine").unwrap_or(table);
    for definition in &status.pipelines {
        if let Ok(spec) = PipelineSpec::parse(&definition.spec_yaml, &definition.origin)
            && spec.tables.contains_key(base)
        {
            return Ok(definition.name.clone());
        }
    }
    Err(CliError::InvalidArgument(format!(
        "no pipeline applied to the coordinator writes {table} (use --offline if nothing runs it)"
    )))
}

/// Plans the cut and restores each table; the steps taken and the gold tables that
/// rebuild.
async fn plan_and_restore(
    tables: &TableStore,
    env: &CommitEnv,
    args: &RestoreArgs,
    at_ms: Option<i64>,
) -> Result<(Vec<Step>, Vec<String>)> {
    let mut steps = Vec::new();
    if let Some(pipeline) = &args.pipeline {
        let at_ms = at_ms.expect("clap requires --timestamp with --pipeline");
        let bronzes: Vec<String> = tables
            .list()
            .await
            .into_iter()
            .filter(|t| table_layer(t) == Some(Layer::Bronze))
            .collect();
        let mut any = false;
        for bronze in bronzes {
            let silvers = silver_readers(tables, &bronze).await?;
            let mut cut: Option<i64> = None;
            for silver in &silvers {
                let handle = tables.open(silver).await?;
                let Some(version) = version_at(&handle, silver, at_ms).await? else {
                    continue;
                };
                let consumed = position_at(tables, silver, &bronze, version).await?;
                cut = Some(cut.map_or(consumed, |c| c.min(consumed)));
            }
            let cut = match cut {
                Some(cut) => cut.max(0),
                None if silvers.is_empty() => {
                    let handle = tables.open(&bronze).await?;
                    match version_at(&handle, &bronze, at_ms).await? {
                        Some(v) => v,
                        None => continue,
                    }
                }
                None => 0,
            };
            any = true;
            restore_bronze(tables, env, &bronze, cut, &mut steps).await?;
        }
        if !any {
            return Err(CliError::InvalidArgument(format!(
                "pipeline {pipeline} has no table with a version at or before {}",
                args.timestamp.as_deref().unwrap_or_default()
            )));
        }
    } else {
        let table = args.table.as_deref().expect("clap requires a table");
        let version = match (args.version, at_ms) {
            (Some(v), _) => v,
            (None, Some(at)) => {
                let handle = tables.open(table).await?;
                version_at(&handle, table, at).await?.ok_or_else(|| {
                    CliError::InvalidArgument(format!(
                        "{table} has no version at or before {}",
                        args.timestamp.as_deref().unwrap_or_default()
                    ))
                })?
            }
            (None, None) => unreachable!("clap requires --version or --timestamp"),
        };
        match table_layer(table) {
            Some(Layer::Bronze) => restore_bronze(tables, env, table, version, &mut steps).await?,
            Some(Layer::Silver) if !table.ends_with("_quarantine") => {
                restore_silver(tables, env, table, version, &mut steps).await?
            }
            _ => steps.push(Step {
                table: table.to_string(),
                restored: restore_table(tables, env, table, version, BTreeMap::new()).await?,
            }),
        }
    }
    let mut rebuilding = Vec::new();
    for step in &steps {
        if table_layer(&step.table) == Some(Layer::Silver) && step.restored.version.is_some() {
            for reader in readers(tables, &step.table).await? {
                if table_layer(&reader) == Some(Layer::Gold) && !rebuilding.contains(&reader) {
                    rebuilding.push(reader);
                }
            }
        }
    }
    rebuilding.sort();
    Ok((steps, rebuilding))
}

/// The silver tables (not quarantines) that read `bronze`.
async fn silver_readers(tables: &TableStore, bronze: &str) -> Result<Vec<String>> {
    Ok(readers(tables, bronze)
        .await?
        .into_iter()
        .filter(|t| table_layer(t) == Some(Layer::Silver) && !t.ends_with("_quarantine"))
        .collect())
}

/// Restores one table with `positions` overriding the txns it puts back.
async fn restore_table(
    tables: &TableStore,
    env: &CommitEnv,
    name: &str,
    version: i64,
    positions: BTreeMap<AppId, i64>,
) -> Result<Restored> {
    let mut table = tables.open(name).await?;
    Ok(restore(&mut table, name, version, &positions, env).await?)
}

/// The position in `upstream` that `table` had at `version` (-1: none yet).
async fn position_at(
    tables: &TableStore,
    table: &str,
    upstream: &str,
    version: i64,
) -> Result<i64> {
    let handle = tables.open(table).await?;
    let history = txn_history(&handle, table, &AppId::upstream(table, upstream)).await?;
    let found = history.iter().find(|(v, _)| *v == version).ok_or_else(|| {
        CliError::InvalidArgument(format!(
            "{table} version {version} is no longer in its log; restore to a later one"
        ))
    })?;
    Ok(found.1.unwrap_or(-1))
}

/// The latest version of `table` whose position in `upstream` is at most `cut` (version 0,
/// the empty table, when none is), and that position.
async fn version_consumed(
    tables: &TableStore,
    table: &str,
    upstream: &str,
    cut: i64,
) -> Result<(i64, i64)> {
    let handle = tables.open(table).await?;
    let history = txn_history(&handle, table, &AppId::upstream(table, upstream)).await?;
    Ok(history
        .iter()
        .rev()
        .find_map(|(v, p)| p.filter(|p| *p <= cut).map(|p| (*v, p)))
        .unwrap_or((0, -1)))
}

/// `silver`'s `version` (at bronze position `consumed`), or if that position lies in bronze
/// versions a later bronze restore undid, the latest earlier version positioned outside
/// every such span (version 0, the empty table, if none is), with its position.
///
/// A silver version positioned inside an undone span holds rows of the undone bronze
/// versions, whose records ingest has since read again from the source into new bronze
/// versions; refine, going on from that position, skips the undone versions and reads the
/// new ones — the same records a second time.
async fn clear_of_undone(
    tables: &TableStore,
    silver: &str,
    bronze: &str,
    version: i64,
    consumed: i64,
) -> Result<(i64, i64)> {
    let handle = tables.open(bronze).await?;
    let latest = smelter_lake::log::version(&handle);
    // `(c + 1, R)`: the versions a restore at R to c undid. R itself holds what c held.
    let spans = smelter_lake::changes::undone(&handle, bronze, -1, latest).await?;
    let inside = |p: i64| spans.iter().any(|(lo, hi)| *lo <= p && p < *hi);
    if !inside(consumed) {
        return Ok((version, consumed));
    }
    let handle = tables.open(silver).await?;
    let history = txn_history(&handle, silver, &AppId::upstream(silver, bronze)).await?;
    let clear = history
        .iter()
        .rev()
        .filter(|(v, _)| *v <= version)
        .map(|(v, p)| (*v, p.unwrap_or(-1)))
        .find(|(_, p)| !inside(*p))
        .unwrap_or((0, -1));
    tracing::info!(
        table = silver,
        asked = version,
        restoring = clear.0,
        "the version asked for read bronze versions a restore undid; restoring an earlier one"
    );
    Ok(clear)
}

/// Silver to `version`: silver and its quarantine back to bronze position c (silver's at
/// `version`), both consuming bronze again from there.
async fn restore_silver(
    tables: &TableStore,
    env: &CommitEnv,
    silver: &str,
    version: i64,
    steps: &mut Vec<Step>,
) -> Result<()> {
    let upstream = upstreams(tables, silver).await?;
    let [bronze] = upstream.as_slice() else {
        return Err(CliError::InvalidArgument(format!(
            "{silver} must read exactly one bronze table to be restored (its log names {upstream:?})"
        )));
    };
    let consumed = position_at(tables, silver, bronze, version).await?;
    let (version, consumed) = clear_of_undone(tables, silver, bronze, version, consumed).await?;
    steps.push(Step {
        table: silver.to_string(),
        restored: restore_table(tables, env, silver, version, BTreeMap::new()).await?,
    });
    let quarantine = TableSpec::quarantine_name(silver);
    if tables.exists(&quarantine).await {
        let (at, _) = version_consumed(tables, &quarantine, bronze, consumed).await?;
        steps.push(Step {
            table: quarantine.clone(),
            restored: restore_table(tables, env, &quarantine, at, BTreeMap::new()).await?,
        });
    }
    Ok(())
}

/// Bronze to (at most) `version`: the cut every silver reader consumed exactly, bronze back
/// to it with its source offsets, each silver and quarantine back to the version that had
/// consumed it, positioned at the restore's own bronze version.
async fn restore_bronze(
    tables: &TableStore,
    env: &CommitEnv,
    bronze: &str,
    version: i64,
    steps: &mut Vec<Step>,
) -> Result<()> {
    let silvers = silver_readers(tables, bronze).await?;
    // Lower the cut until every silver table consumed it exactly.
    let mut cut = version;
    let mut at: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        let mut lowest = cut;
        for silver in &silvers {
            let (v, consumed) = version_consumed(tables, silver, bronze, cut).await?;
            at.insert(silver.clone(), v);
            lowest = lowest.min(consumed);
        }
        if lowest == cut {
            break;
        }
        cut = lowest.max(0);
        if lowest < 0 {
            for silver in &silvers {
                at.insert(silver.clone(), 0);
            }
            break;
        }
    }
    let restored = restore_table(tables, env, bronze, cut, BTreeMap::new()).await?;
    let bronze_now = match restored.version {
        Some(v) => v,
        None => tables
            .open(bronze)
            .await
            .map(|t| smelter_lake::log::version(&t))?,
    };
    steps.push(Step {
        table: bronze.to_string(),
        restored,
    });
    for silver in &silvers {
        let version = at[silver];
        let positions = BTreeMap::from([(AppId::upstream(silver, bronze), bronze_now)]);
        steps.push(Step {
            table: silver.clone(),
            restored: restore_table(tables, env, silver, version, positions).await?,
        });
        let quarantine = TableSpec::quarantine_name(silver);
        if tables.exists(&quarantine).await {
            let (version, _) = version_consumed(tables, &quarantine, bronze, cut).await?;
            let positions = BTreeMap::from([(AppId::upstream(&quarantine, bronze), bronze_now)]);
            steps.push(Step {
                table: quarantine.clone(),
                restored: restore_table(tables, env, &quarantine, version, positions).await?,
            });
        }
    }
    Ok(())
}
