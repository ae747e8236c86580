//! `smelter backfill TABLE --pipeline FILE [--column C]...`: values a silver table kept in
//! `_rescued_data` before the spec declared their fields, moved into the columns declared
//! since, in one commit (see `smelter_lake::backfill`).

use smelter_common::config::SmelterConfig;
use smelter_common::spec::{FieldType, Layer, SchemaSpec, table_layer};
use smelter_lake::backfill::{Target, backfill};

use crate::cli::BackfillArgs;
use crate::output::Format;
use crate::{CliError, Result};

/// Backfills and prints what moved.
pub async fn run(config: SmelterConfig, args: BackfillArgs) -> Result<()> {
    let text = super::read_file(&args.pipeline)?;
    let spec = super::load_pipeline(&text, &args.pipeline.display().to_string()).await?;
    let table_spec = match (spec.tables.get(&args.table), table_layer(&args.table)) {
        (Some(t), Some(Layer::Silver)) => t,
        _ => {
            return Err(CliError::InvalidArgument(format!(
                "pipeline {} declares no silver table {}",
                spec.pipeline, args.table
            )));
        }
    };
    let Some(schema) = table_spec.parse.as_ref().and_then(|p| p.schema.declared()) else {
        return Err(CliError::InvalidArgument(format!(
            "{} declares no schema (an inferred one grows its columns from `_rescued_data` \
             itself)",
            args.table
        )));
    };
    let mut targets = Vec::new();
    declared(schema, &[], table_spec.flatten, &mut targets);
    if !args.columns.is_empty() {
        for column in &args.columns {
            if !targets.iter().any(|t| &t.column == column) {
                return Err(CliError::InvalidArgument(format!(
                    "{column} is not a declared column of {} that can be backfilled",
                    args.table
                )));
            }
        }
        targets.retain(|t| args.columns.contains(&t.column));
    }
    let (tables, _) =
        super::local_tables(&config, args.data_dir.as_deref(), vec![args.table.clone()]).await?;
    super::require_table(&tables, &args.table).await?;
    let env = super::commit_env(&config, &tables, "backfill").await?;
    let mut table = tables.open(&args.table).await?;
    let done = backfill(&mut table, &args.table, &targets, &env).await?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_value(&done).unwrap_or_default()),
        Format::Table | Format::Csv => {
            for (column, n) in &done.filled {
                println!("{n:>9} values moved into {column}");
            }
            if done.unfit > 0 {
                println!(
                    "{:>9} values left rescued (not of their column's type)",
                    done.unfit
                );
            }
            match done.version {
                Some(v) => println!("{} files rewritten in version {v}", done.files_rewritten),
                None => println!("nothing to backfill"),
            }
        }
    }
    Ok(())
}

/// The columns of `schema` as the table holds them, with the `_rescued_data` key of each:
/// every leaf when flattened (`user_device` from `user.device`), top-level fields otherwise.
fn declared(schema: &SchemaSpec, prefix: &[&str], flatten: bool, out: &mut Vec<Target>) {
    for (name, ty) in &schema.fields {
        let mut path = prefix.to_vec();
        path.push(name);
        match ty {
            FieldType::Struct(inner) if flatten => declared(inner, &path, flatten, out),
            _ => out.push(Target {
                column: path.join("_"),
                key: path.join("."),
            }),
        }
    }
}
