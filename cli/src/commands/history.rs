//! `smelter history TABLE`: a table's commits read straight from its Delta log (no
//! cluster needed), newest first — the same entries as SQL's `table_history('TABLE')`.

use smelter_common::config::SmelterConfig;
use smelter_lake::history::{Entry, entries};

use crate::Result;
use crate::cli::HistoryArgs;
use crate::output::Format;

/// Prints the history of one table.
pub async fn run(config: SmelterConfig, args: HistoryArgs) -> Result<()> {
    let (tables, _) =
        super::local_tables(&config, args.data_dir.as_deref(), vec![args.table.clone()]).await?;
    super::require_table(&tables, &args.table).await?;
    let table = tables.open(&args.table).await?;
    let entries = entries(&table, &args.table, args.limit).await?;
    match args.output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        ),
        Format::Table | Format::Csv => print!("{}", render(&entries)),
    }
    Ok(())
}

fn render(entries: &[Entry]) -> String {
    let mut out = format!(
        "{:>7}  {:<24}  {:<9}  {:>9}  {:>5}  {:>7}  {:>6}  consumed; writer\n",
        "version", "time (UTC)", "operation", "rows", "files", "removed", "epoch"
    );
    for e in entries {
        let time = e
            .timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:>7}  {:<24}  {:<9}  {:>9}  {:>5}  {:>7}  {:>6}  {}{}\n",
            e.version,
            time,
            e.operation,
            e.rows_added,
            e.files_added,
            e.files_removed,
            e.epoch.map(|e| e.to_string()).unwrap_or_default(),
            e.consumed.join(" "),
            e.writer
                .as_deref()
                .map(|w| format!("; {w}"))
                .unwrap_or_default()
        ));
    }
    out
}
