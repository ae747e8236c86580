//! `smelter infer --pipeline FILE --source NAME [--sample N]`: reads the first records of a
//! source (nothing committed, every partition from its start) and prints the schema they
//! suggest as spec YAML, to paste into a silver table's `parse` and pin (see
//! `smelter_worker::refine::infer`).

use std::time::Duration;

use smelter_worker::refine::infer::infer;
use smelter_worker::source::sample::sample;

use crate::cli::InferArgs;
use crate::output::Format;
use crate::{CliError, Result};

/// Samples, infers, prints.
pub async fn run(args: InferArgs) -> Result<()> {
    let text = super::read_file(&args.pipeline)?;
    let spec = super::load_pipeline(&text, &args.pipeline.display().to_string()).await?;
    let Some(source) = spec.sources.get(&args.source) else {
        let known: Vec<&String> = spec.sources.keys().collect();
        return Err(CliError::InvalidArgument(format!(
            "pipeline {} has no source {} (sources: {known:?})",
            spec.pipeline, args.source
        )));
    };
    let idle = Duration::from_secs(args.idle_secs.max(1));
    let records = sample(&spec.pipeline, &args.source, source, args.sample, idle).await?;
    let inferred = infer(records.iter().filter_map(|r| r.payload.as_deref()));
    match args.output {
        Format::Json => {
            println!(
                "{}",
                serde_json::json!({
                    "source": args.source,
                    "records": inferred.records,
                    "not_objects": inferred.not_objects,
                    "schema": inferred.schema,
                    "conflicts": inferred.conflicts,
                    "only_null": inferred.only_null,
                })
            );
        }
        Format::Table | Format::Csv => {
            println!(
                "# inferred from {} records of source `{}`{}",
                inferred.records,
                args.source,
                if inferred.not_objects > 0 {
                    format!(" ({} were not JSON objects)", inferred.not_objects)
                } else {
                    String::new()
                }
            );
            for conflict in &inferred.conflicts {
                let seen: Vec<String> = conflict
                    .seen
                    .iter()
                    .map(|(kind, n)| format!("{kind} ({n})"))
                    .collect();
                println!(
                    "# `{}` was seen as {}: declared {} (records with another type are quarantined)",
                    conflict.field,
                    seen.join(" and "),
                    conflict.declared
                );
            }
            for field in &inferred.only_null {
                println!("# `{field}` was only ever null: declared string");
            }
            let Some(schema) = &inferred.schema else {
                return Err(CliError::InvalidArgument(format!(
                    "no record of source {} was a JSON object with a field",
                    args.source
                )));
            };
            let yaml = serde_yaml::to_string(schema)
                .map_err(|e| CliError::InvalidArgument(e.to_string()))?;
            println!("parse:\n  format: json\n  schema:");
            for line in yaml.lines() {
                println!("    {line}");
            }
        }
    }
    Ok(())
}
