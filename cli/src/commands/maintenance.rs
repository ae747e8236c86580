//! `smelter maintenance status [TABLE...]`: what automatic maintenance did to each table —
//! passes, compactions, vacuums, the last failure — from the record the maintenance task
//! keeps beside each table's log (`smelter_lake::maintenance_record`), with the table's
//! files as they stand now. Read from storage alone: no cluster needed.

use serde::Serialize;
use smelter_common::config::SmelterConfig;
use smelter_lake::maintenance_record::{self, MaintenanceRecord};

use crate::Result;
use crate::cli::MaintenanceStatusArgs;
use crate::output::Format;

/// One table's line.
#[derive(Debug, Serialize)]
struct TableStatus {
    table: String,
    version: i64,
    /// Live data files now, how many are small, and their bytes.
    files: u64,
    small_files: u64,
    bytes: u64,
    /// `None`: no maintenance pass has run on the table.
    maintenance: Option<MaintenanceRecord>,
}

/// Prints the maintenance status of the given tables (all tables when none are given).
pub async fn status(config: SmelterConfig, args: MaintenanceStatusArgs) -> Result<()> {
    let (tables, names) =
        super::local_tables(&config, args.data_dir.as_deref(), args.tables.clone()).await?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        super::require_table(&tables, &name).await?;
        let mut table = tables.open(&name).await?;
        let record = maintenance_record::read(&table, &name).await?;
        let detail = smelter_lake::detail::detail(&mut table, &name).await?;
        out.push(TableStatus {
            table: name,
            version: detail.version,
            files: detail.files,
            small_files: detail.small_files,
            bytes: detail.bytes,
            maintenance: record,
        });
    }
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default()),
        Format::Table | Format::Csv => print!("{}", render(&out)),
    }
    Ok(())
}

fn time(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn render(tables: &[TableStatus]) -> String {
    let mut out = format!(
        "{:<32} {:>7} {:>6} {:>6} {:>9}  {:<19} {:>6}  {:<28}  {:<24}  error\n",
        "table",
        "version",
        "files",
        "small",
        "MB",
        "last pass (UTC)",
        "passes",
        "compacted",
        "vacuumed"
    );
    for t in tables {
        let (last, passes, compacted, vacuumed, error) = match &t.maintenance {
            None => ("never".to_string(), 0, String::new(), String::new(), ""),
            Some(r) => (
                time(r.last_pass_unix_ms),
                r.passes,
                format!(
                    "{} files -> {} in {} commits",
                    r.files_compacted, r.files_written, r.compactions
                ),
                format!("{} files, {} MB", r.files_vacuumed, mb(r.bytes_vacuumed)),
                r.last_error.as_deref().unwrap_or(""),
            ),
        };
        out.push_str(&format!(
            "{:<32} {:>7} {:>6} {:>6} {:>9}  {:<19} {:>6}  {:<28}  {:<24}  {}\n",
            t.table,
            t.version,
            t.files,
            t.small_files,
            mb(t.bytes),
            last,
            passes,
            compacted,
            vacuumed,
            error
        ));
    }
    out
}
