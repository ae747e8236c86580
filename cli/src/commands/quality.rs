//! `smelter quality TABLE [--since T]`: the data-quality figures refine recorded in a
//! silver table's commits (rows in and out, quarantined and warned per rule, dropped,
//! deduplicated, nulls per column), summed, and the table checks of the latest commit that
//! evaluated them (silver and gold) — read from the Delta log, no cluster needed;
//! the same sums as `GET /tables/{name}/quality` ([`smelter_common::quality`]).

use smelter_common::config::SmelterConfig;
use smelter_common::quality::QualitySummary;
use smelter_lake::history::entries;

use crate::cli::QualityArgs;
use crate::output::Format;
use crate::{CliError, Result};

/// Prints the quality figures of one table.
pub async fn run(config: SmelterConfig, args: QualityArgs) -> Result<()> {
    let since_ms = match args.since.as_deref() {
        None => None,
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| {
                    CliError::InvalidArgument(format!(
                        "--since must be an RFC 3339 time (2026-11-01T10:00:00Z): {e}"
                    ))
                })?
                .timestamp_millis(),
        ),
    };
    let (tables, _) =
        super::local_tables(&config, args.data_dir.as_deref(), vec![args.table.clone()]).await?;
    super::require_table(&tables, &args.table).await?;
    let table = tables.open(&args.table).await?;
    let mut log = entries(&table, &args.table, None).await?;
    log.sort_by_key(|e| e.version);
    let mut summary = QualitySummary::default();
    let mut commits = 0;
    for entry in log {
        let Some(quality) = entry.quality else {
            continue;
        };
        if since_ms.is_some_and(|since| entry.timestamp_ms.is_none_or(|t| t < since)) {
            continue;
        }
        commits += 1;
        summary.add(entry.version, entry.timestamp_ms, quality);
    }
    let mut out = summary.into_json();
    out["table"] = args.table.clone().into();
    out["since"] = args.since.clone().into();
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default()),
        Format::Table | Format::Csv => print!(
            "{}",
            render(&args.table, commits, &out["totals"], &out["checks"])
        ),
    }
    Ok(())
}

fn render(
    table: &str,
    commits: usize,
    totals: &serde_json::Value,
    checks: &serde_json::Value,
) -> String {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let mut out = format!("{table}: {commits} commits with quality figures\n");
    // Gold commits record their checks only; silver's record what refine did to the rows.
    if table.starts_with("silver.") {
        out.push_str(&format!(
            "  rows in {}, out {}, dropped {}, deduplicated {}\n",
            n(&totals["rows_in"]),
            n(&totals["rows_out"]),
            n(&totals["dropped"]),
            n(&totals["deduplicated"])
        ));
    }
    for kind in ["quarantined", "warned"] {
        if let Some(rules) = totals[kind].as_object().filter(|r| !r.is_empty()) {
            out.push_str(&format!("  {kind}:\n"));
            for (rule, count) in rules {
                out.push_str(&format!("    {rule:<24} {:>10}\n", n(count)));
            }
        }
    }
    if let Some(outcomes) = checks["outcomes"].as_array() {
        out.push_str(&format!("  checks at version {}:\n", checks["version"]));
        for outcome in outcomes {
            out.push_str(&format!(
                "    {:<4} {:<36} {}\n",
                if outcome["ok"].as_bool() == Some(true) {
                    "ok"
                } else {
                    "FAIL"
                },
                outcome["check"].as_str().unwrap_or_default(),
                outcome["detail"].as_str().unwrap_or_default()
            ));
        }
    }
    if let Some(columns) = totals["columns"].as_object().filter(|c| !c.is_empty()) {
        out.push_str("  nulls per column:\n");
        for (column, figures) in columns {
            out.push_str(&format!(
                "    {column:<24} {:>10} of {:>10} ({:.2}%)\n",
                n(&figures["nulls"]),
                n(&figures["rows"]),
                figures["null_fraction"].as_f64().unwrap_or(0.0) * 100.0
            ));
        }
    }
    out
}
