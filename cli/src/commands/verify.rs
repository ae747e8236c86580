//! `smelter verify [TABLE...]`: replays Delta logs straight from storage (no cluster
//! needed) and reports every broken exactly-once invariant; exit 1 if any.

use smelter_common::config::SmelterConfig;
use smelter_lake::verify::{Report, verify};

use crate::cli::VerifyArgs;
use crate::output::Format;
use crate::{CliError, Result};

/// Runs the verifier over the named tables (or all) and prints the reports.
pub async fn run(config: SmelterConfig, args: VerifyArgs) -> Result<()> {
    let (tables, names) =
        super::local_tables(&config, args.data_dir.as_deref(), args.tables).await?;
    let mut reports = Vec::with_capacity(names.len());
    for name in &names {
        reports.push(verify(&tables, name).await?);
    }
    match args.output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        ),
        Format::Table | Format::Csv => {
            for report in &reports {
                print!("{}", render(report));
            }
        }
    }
    let dirty = reports.iter().filter(|r| !r.is_clean()).count();
    if dirty > 0 {
        return Err(CliError::VerifyFailed { tables: dirty });
    }
    Ok(())
}

fn render(report: &Report) -> String {
    let mut out = format!(
        "{}  versions {}..={}  live files {}  txn ids {}{}  {}\n",
        report.table,
        report.first_version,
        report.last_version,
        report.live_files,
        report.txns.len(),
        if report.partitions.is_empty() {
            String::new()
        } else {
            format!("  partitions {}", report.partitions.len())
        },
        if report.is_clean() { "clean" } else { "FAILED" }
    );
    for finding in &report.findings {
        out.push_str(&format!("  {:<20} {}\n", finding.check, finding.message));
    }
    out
}
