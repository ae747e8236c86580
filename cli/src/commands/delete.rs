//! `smelter delete TABLE --where PREDICATE [--cascade]`: deletes matching rows in one commit
//! per table, under the commit lock, while the pipeline runs (see `smelter_lake::delete`).
//!
//! `--cascade` on a silver table also deletes, by source position (`_topic`, `_partition`,
//! `_offset`), the bronze records the deleted rows came from and any quarantined copies of
//! them, so a user's records are gone from every layer. Gold tables that read the silver
//! table see a commit that removed rows and rebuild from it on their next pass; they are
//! reported, not written here. Ingest positions are untouched: nothing is read again.

use smelter_common::config::SmelterConfig;
use smelter_common::spec::{Layer, TableSpec, table_layer};
use smelter_lake::delete::{AtPositions, Deletion, SqlPredicate, delete};
use smelter_lake::log::arrow_schema;

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
    let deleted = delete(&mut table, &args.table, &predicate, &env).await?;
    let mut report = vec![(args.table.clone(), deleted.clone())];
    let mut rebuilt = Vec::new();
    if args.cascade {
        let mut around: Vec<String> = super::lineage::upstreams(&tables, &args.table).await?;
        if around.is_empty() {
            return Err(CliError::InvalidArgument(format!(
                "{} has no refine commit naming the bronze table it reads; nothing to cascade to",
                args.table
            )));
        }
        around.push(TableSpec::quarantine_name(&args.table));
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
                delete(&mut table, &name, &selector, &env).await?
            };
            report.push((name, deletion));
        }
        rebuilt = super::lineage::readers(&tables, &args.table).await?;
    }
    match args.output {
        Format::Json => {
            let tables: Vec<_> = report
                .iter()
                .map(|(name, d)| serde_json::json!({ "table": name, "deleted": d }))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "tables": tables, "rebuilding": rebuilt })
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
