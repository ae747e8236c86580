//! Verbs that talk to a running cluster: query, tables, status, apply; and validate.

use smelter_proto::ClusterStatus;
use smelter_sdk::status_json;

use smelter_common::config::SmelterConfig;

use super::{credentials, load_pipeline, read_file};
use crate::Result;
use crate::cli::{ApplyArgs, QueryArgs, StatusArgs, TablesArgs, ValidateArgs};
use crate::output::{Format, render_batches};
use crate::progress::by_table;
use smelter_sdk::{AdminClient, QueryClient};

/// `smelter query`.
pub async fn query(config: &SmelterConfig, args: QueryArgs) -> Result<()> {
    let mut client =
        QueryClient::connect_with(&args.endpoint, &credentials(&config.security)?).await?;
    let batches = client.query(&args.sql).await?;
    println!("{}", render_batches(&batches, args.output)?);
    Ok(())
}

/// `smelter tables`.
pub async fn tables(config: &SmelterConfig, args: TablesArgs) -> Result<()> {
    let sql = "SELECT table_schema AS layer, table_name AS name FROM information_schema.tables \
               WHERE table_schema IN ('bronze', 'silver', 'gold') ORDER BY 1, 2";
    let mut client =
        QueryClient::connect_with(&args.endpoint, &credentials(&config.security)?).await?;
    println!(
        "{}",
        render_batches(&client.query(sql).await?, args.output)?
    );
    Ok(())
}

/// `smelter validate`.
pub async fn validate(args: ValidateArgs) -> Result<()> {
    let text = read_file(&args.file)?;
    let spec = load_pipeline(&text, &args.file.display().to_string()).await?;
    println!(
        "{}: pipeline `{}` is valid ({} sources, {} tables)",
        args.file.display(),
        spec.pipeline,
        spec.sources.len(),
        spec.tables.len()
    );
    Ok(())
}

/// `smelter apply`.
pub async fn apply(config: &SmelterConfig, args: ApplyArgs) -> Result<()> {
    let text = read_file(&args.file)?;
    let origin = args.file.display().to_string();
    load_pipeline(&text, &origin).await?;
    let applied = AdminClient::connect_with(&args.coordinator, &credentials(&config.security)?)
        .await?
        .apply(&text, &origin)
        .await?;
    println!(
        "pipeline `{}` applied: revision {}, {} tasks",
        applied.pipeline, applied.revision, applied.tasks
    );
    Ok(())
}

/// `smelter status`.
pub async fn status(config: &SmelterConfig, args: StatusArgs) -> Result<()> {
    let status = AdminClient::connect_with(&args.coordinator, &credentials(&config.security)?)
        .await?
        .status()
        .await?;
    match args.output {
        Format::Json => println!("{}", status_json(&status)),
        Format::Table | Format::Csv => print!("{}", status_text(&status)),
    }
    Ok(())
}

fn status_text(status: &ClusterStatus) -> String {
    let mut out = format!(
        "leader {} ({})  generation {}\n\nworkers\n",
        status.leader, status.leader_endpoint, status.generation
    );
    for w in &status.workers {
        out.push_str(&format!(
            "  {}  flight {}  {} task(s)  lease {} ms  fenced commits {}\n",
            w.worker_id, w.flight_endpoint, w.tasks, w.lease_expires_in_ms, w.commits_fenced
        ));
    }
    if !status.source_errors.is_empty() {
        out.push_str("\nsources failing\n");
        for e in &status.source_errors {
            out.push_str(&format!("  {}/{}: {}\n", e.pipeline, e.source, e.error));
        }
    }
    out.push_str("\ntasks\n");
    for t in &status.tasks {
        let task = t.task.clone().unwrap_or_default();
        let report = t.report.clone().unwrap_or_default();
        let offset = if task.kind() == smelter_proto::TaskKind::Ingest {
            format!(" offset {:>10}", report.committed_offset)
        } else {
            String::new()
        };
        let state = if t.releasing_from.is_empty() {
            report.state().label().to_string()
        } else {
            "hand-off".to_string()
        };
        out.push_str(&format!(
            "  {:<45} {:<36} {:<8} rows {:>10} lag {:>6}{offset}{}\n",
            task.task_id,
            t.worker_id,
            state,
            report.rows_committed,
            report.lag,
            if report.error.is_empty() {
                String::new()
            } else {
                format!("  error: {}", report.error)
            }
        ));
        for failed in &report.failed_checks {
            out.push_str(&format!("      check failing: {failed}\n"));
        }
    }
    out.push_str("\ntables\n");
    // The tasks above show the maintenance task; it has no table of its own.
    for (table, p) in by_table(status)
        .into_iter()
        .filter(|(t, _)| !t.starts_with('('))
    {
        out.push_str(&format!(
            "  {:<32} rows {:>12}  quarantined {:>8}  duplicates {:>8}\n",
            table, p.rows, p.quarantined, p.deduplicated
        ));
    }
    out
}
