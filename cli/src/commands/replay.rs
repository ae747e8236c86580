//! `smelter replay TABLE_quarantine --pipeline FILE [--rule R] [--where PREDICATE]`: the
//! quarantined records refined again under the pipeline's current spec, exactly once,
//! while the pipeline runs (see `smelter_worker::refine::replay`).

use smelter_common::config::SmelterConfig;
use smelter_worker::refine::replay::{ReplayRequest, replay};

use crate::Result;
use crate::cli::ReplayArgs;
use crate::output::Format;

/// Replays and prints what happened to the records.
pub async fn run(config: SmelterConfig, args: ReplayArgs) -> Result<()> {
    let text = super::read_file(&args.pipeline)?;
    let spec = super::load_pipeline(&text, &args.pipeline.display().to_string()).await?;
    let (tables, _) =
        super::local_tables(&config, args.data_dir.as_deref(), vec![args.table.clone()]).await?;
    super::require_table(&tables, &args.table).await?;
    let env = super::commit_env(&config, &tables, "replay").await?;
    let request = ReplayRequest {
        rule: args.rule.clone(),
        predicate: args.predicate.clone(),
    };
    let replayed = replay(&tables, &spec, &args.table, &request, &env).await?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_value(&replayed).unwrap_or_default()),
        Format::Table | Format::Csv => {
            if replayed.resumed {
                println!(
                    "finished the replay of {} version {} an earlier run started",
                    args.table,
                    replayed.quarantine_version.unwrap_or_default()
                );
            }
            println!("{:>9} records replayed", replayed.replayed);
            println!("{:>9} now in silver", replayed.refined);
            println!("{:>9} duplicates of silver rows", replayed.deduplicated);
            println!("{:>9} dropped by expectations", replayed.dropped);
            for (rule, n) in &replayed.still_quarantined {
                println!("{n:>9} quarantined again by {rule}");
            }
        }
    }
    Ok(())
}
