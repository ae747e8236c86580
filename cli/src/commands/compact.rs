//! `smelter compact [TABLE...]`: rewrites small files into larger ones in maintenance
//! commits under the commit lock — one per slice of about `target_file_mb` of input, so
//! memory stays bounded however many small files a table has — safe while the pipeline
//! runs (see `smelter_lake::compact`).

use smelter_common::config::SmelterConfig;
use smelter_lake::compact::{CompactOptions, compact};

use crate::Result;
use crate::cli::CompactArgs;
use crate::output::Format;

/// Compacts the named tables (or all) and prints what changed.
pub async fn run(config: SmelterConfig, args: CompactArgs) -> Result<()> {
    let (store, names) =
        super::local_tables(&config, args.data_dir.as_deref(), args.tables).await?;
    let env = super::commit_env(&config, &store, "compact").await?;
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let mut table = store.open(&name).await?;
        let compaction = compact(&mut table, &name, CompactOptions::default(), &env).await?;
        if args.output != Format::Json {
            println!(
                "{name:<32} {} files -> {}{}",
                compaction.files_removed,
                compaction.files_added,
                compaction
                    .version
                    .map(|v| match compaction.commits {
                        1 => format!("  (version {v})"),
                        n => format!("  ({n} commits, up to version {v})"),
                    })
                    .unwrap_or_else(|| "  (nothing to do)".into())
            );
        }
        results.push(serde_json::json!({ "table": name, "compaction": compaction }));
    }
    if args.output == Format::Json {
        println!("{}", serde_json::Value::Array(results));
    }
    Ok(())
}
