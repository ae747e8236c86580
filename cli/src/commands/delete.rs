//! `smelter delete TABLE --where PREDICATE [--cascade [--pipeline FILE]]`: deletes matching
//! rows in one commit per table, under the commit lock, while the pipeline runs (see
//! `smelter_lake::delete`).
//!
//! `--cascade` on a silver table also deletes the bronze and quarantine records the rows
//! came from, so a user's records are gone from every layer. Gold tables that read the
//! silver table see a commit that removed rows and rebuild from it on their next pass; they
//! are reported, not written here. Ingest positions are untouched: nothing is read again.
//!
//! With `--pipeline FILE` the records are found by content (each payload refined as silver
//! would, see `smelter_worker::refine::matching`), and the delete covers one cut of the
//! stream in every layer: what bronze held when its delete chose its rows.
//!
//! 1. wait until silver has refined every bronze version there is now (`--wait-secs`;
//!    nothing is deleted if it does not);
//! 2. delete from bronze every record whose refined row matches, choosing from version
//!    `C` (the cut; its ingest txns give the last offset of each source partition);
//! 3. wait until silver has refined every version up to `C` — records refine read from
//!    the files bronze's delete replaced are in silver (or the quarantine) by then;
//! 4. delete from silver the rows matching the predicate whose source offset is within
//!    the cut, and from the quarantine the records matching by content within the cut.
//!
//! So every record ingested up to `C` is gone from every layer, re-sent copies and
//! quarantined ones included (`bronze_cut` in the report is `C`); records ingested after
//! it are new data, kept in every layer alike. Should step 3 time out, bronze's records are
//! already gone and the command says to run it again once refine has caught up (every step
//! is idempotent). Without `--pipeline`, bronze and quarantine records are deleted at the
//! deleted silver rows' source positions only: a re-sent copy, a quarantined record or one
//! not yet refined stays.

use std::time::{Duration, Instant};

use smelter_common::config::SmelterConfig;
use smelter_common::spec::{Layer, TableSpec, table_layer};
use smelter_lake::delete::{
    AtPositions, Deletion, ROW_ORIGIN, SOURCE_POSITION, SqlPredicate, UpToOffsets, delete,
};
use smelter_lake::log::{arrow_schema, refresh, txn_version};
use smelter_lake::{AppId, CommitEnv, TableStore};
use smelter_worker::refine::matching::RecordsMatching;

use crate::cli::DeleteArgs;
use crate::output::Format;
use crate::{CliError, Result};

/// Deletes, cascades when asked, and prints what was deleted per table.
pub async fn run(config: SmelterConfig, args: DeleteArgs) -> Result<()> {
    let (tables, _) =
        super::local_tables(&config, args.data_dir.as_deref(), vec![args.table.clone()]).await?;
    super::require_table(&tables, &args.table).await?;
    let layer = table_layer(&args.table);
    if args.cascade && layer != Some(Layer::Silver) {
        return Err(CliError::InvalidArgument(format!(
            "--cascade deletes a silver table's rows from the layers around it; {} is not a silver table",
            args.table
        )));
    }
    let env = super::commit_env(&config, &tables, "delete").await?;
    let mut table = tables.open(&args.table).await?;
    let schema = arrow_schema(&table, &args.table)?;
    let predicate = SqlPredicate::new(&args.predicate, &schema, &args.table)
        .map_err(|e| CliError::InvalidArgument(e.to_string()))?;
    let mut bronze_cut = None;
    let (report, rebuilt) = if let Some(pipeline) = args.pipeline.as_ref().filter(|_| args.cascade)
    {
        let cascade = by_content(&tables, &env, &args, pipeline, &predicate).await?;
        bronze_cut = cascade.bronze_cut;
        let rebuilt = super::lineage::readers(&tables, &args.table).await?;
        (cascade.report, rebuilt)
    } else {
        let deleted = delete(&mut table, &args.table, &predicate, &env).await?;
        let mut report = vec![(args.table.clone(), deleted.clone())];
        let mut rebuilt = Vec::new();
        if args.cascade {
            report.extend(by_positions(&tables, &env, &args.table, &deleted).await?);
            rebuilt = super::lineage::readers(&tables, &args.table).await?;
        }
        (report, rebuilt)
    };
    match args.output {
        Format::Json => {
            let tables: Vec<_> = report
                .iter()
                .map(|(name, d)| serde_json::json!({ "table": name, "deleted": d }))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "tables": tables,
                    "rebuilding": rebuilt,
                    "matched_by": if args.pipeline.is_some() { "content" } else { "positions" },
                    "bronze_cut": bronze_cut,
                })
            );
        }
        Format::Table | Format::Csv => {
            for (name, d) in &report {
                println!(
                    "{name:<32} {:>9} rows deleted  {} files -> {}{}",
                    d.rows_deleted,
                    d.files_removed,
                    d.files_added,
                    d.version
                        .map(|v| format!("  (version {v})"))
                        .unwrap_or_else(|| "  (nothing matched)".into())
                );
            }
            for name in &rebuilt {
                println!("{name:<32} rebuilds from the new version on its next pass");
            }
        }
    }
    Ok(())
}

/// `--cascade` without `--pipeline`: the bronze and quarantine records at the source
/// positions of the silver rows `deleted` took.
async fn by_positions(
    tables: &TableStore,
    env: &CommitEnv,
    silver: &str,
    deleted: &Deletion,
) -> Result<Vec<(String, Deletion)>> {
    let mut around: Vec<String> = super::lineage::upstreams(tables, silver).await?;
    if around.is_empty() {
        return Err(CliError::InvalidArgument(format!(
            "{silver} has no refine commit naming the bronze table it reads; nothing to cascade to"
        )));
    }
    around.push(TableSpec::quarantine_name(silver));
    let mut report = Vec::new();
    for name in around {
        if !tables.exists(&name).await {
            continue;
        }
        let mut table = tables.open(&name).await?;
        let selector = AtPositions {
            positions: deleted.positions.clone(),
            columns: ["topic", "partition", "offset"],
        };
        let deletion = if selector.positions.is_empty() {
            Deletion::default()
        } else {
            delete(&mut table, &name, &selector, env).await?
        };
        report.push((name, deletion));
    }
    Ok(report)
}

/// What a cascade by content deleted, and the last bronze version it covers.
struct ByContent {
    report: Vec<(String, Deletion)>,
    bronze_cut: Option<i64>,
}

/// `--cascade --pipeline FILE`: steps 1 to 4 of the module docs.
async fn by_content(
    tables: &TableStore,
    env: &CommitEnv,
    args: &DeleteArgs,
    pipeline: &std::path::Path,
    predicate: &SqlPredicate,
) -> Result<ByContent> {
    let origin = pipeline.display().to_string();
    let spec = super::load_pipeline(&super::read_file(pipeline)?, &origin).await?;
    let silver = args.table.as_str();
    let declared = spec.tables.get(silver).ok_or_else(|| {
        CliError::InvalidArgument(format!("{silver} is not declared in {origin}"))
    })?;
    let bronze = declared.from.as_str();
    let matching = RecordsMatching::new(silver, declared, &origin, &args.predicate)
        .map_err(|e| CliError::InvalidArgument(e.to_string()))?;
    super::require_table(tables, bronze).await?;
    let wait = Duration::from_secs(args.wait_secs);

    let mut bronze_table = tables.open(bronze).await?;
    let head = smelter_lake::log::version(&bronze_table);
    refined_up_to(tables, silver, bronze, head, wait)
        .await
        .map_err(|why| CliError::Unfinished(format!("{why}; nothing was deleted")))?;
    let from_bronze = delete(&mut bronze_table, bronze, &matching, env).await?;
    // The cut: the bronze version whose records the delete chose from. Records appended
    // after it are new data, in every layer.
    let cut = from_bronze.read_version.unwrap_or(head);
    let last = cut_offsets(tables, bronze, cut).await?;
    refined_up_to(tables, silver, bronze, cut, wait)
        .await
        .map_err(|why| {
            CliError::Unfinished(format!(
                "{why}; {bronze} lost its {} matching records up to version {cut}, but \
                 {silver} may still take some from versions it has not refined: run this \
                 command again once the pipeline has caught up",
                from_bronze.rows_deleted
            ))
        })?;
    let mut silver_table = tables.open(silver).await?;
    let in_silver = UpToOffsets {
        inner: predicate,
        last: last.clone(),
        columns: ROW_ORIGIN,
    };
    let from_silver = delete(&mut silver_table, silver, &in_silver, env).await?;
    let mut report = vec![
        (silver.to_string(), from_silver),
        (bronze.to_string(), from_bronze),
    ];
    let quarantine = TableSpec::quarantine_name(silver);
    if tables.exists(&quarantine).await {
        let mut table = tables.open(&quarantine).await?;
        let in_quarantine = UpToOffsets {
            inner: &matching,
            last,
            columns: SOURCE_POSITION,
        };
        let deleted = delete(&mut table, &quarantine, &in_quarantine, env).await?;
        report.push((quarantine, deleted));
    }
    Ok(ByContent {
        report,
        bronze_cut: Some(cut),
    })
}

/// The last source offset of each (topic, partition) `bronze` held at `version`, from its
/// ingest txns.
async fn cut_offsets(
    tables: &TableStore,
    bronze: &str,
    version: i64,
) -> Result<std::collections::HashMap<(String, i32), i64>> {
    let table = tables.open_version(bronze, version).await?;
    let txns = smelter_lake::txns::all_txns(&table, bronze).await?;
    Ok(txns
        .into_iter()
        .filter_map(|(app_id, offset)| match AppId::parse(&app_id)? {
            AppId::Source {
                topic, partition, ..
            } => Some(((topic, partition), offset)),
            _ => None,
        })
        .collect())
}

/// Waits until `silver` has refined `bronze` up to version `version` (its txn for bronze
/// says so), polling until `wait` has passed; the error says how far it got.
async fn refined_up_to(
    tables: &TableStore,
    silver: &str,
    bronze: &str,
    version: i64,
    wait: Duration,
) -> std::result::Result<(), String> {
    let app_id = AppId::upstream(silver, bronze);
    let deadline = Instant::now() + wait;
    let mut table = tables.open(silver).await.map_err(|e| e.to_string())?;
    let mut told = false;
    loop {
        let consumed = txn_version(&table, &app_id)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(-1);
        if consumed >= version {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{silver} has refined {bronze} up to version {consumed}, not {version}, after {}s",
                wait.as_secs()
            ));
        }
        if !told {
            eprintln!("waiting for {silver} to refine {bronze} up to version {version}");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        refresh(&mut table, silver)
            .await
            .map_err(|e| e.to_string())?;
    }
}
