//! The files-source run: the demo's clickstream (its generator's events, with their
//! duplicates and invalid records) written as six NDJSON files, and the demo pipeline —
//! bronze, silver, three gold tables — reading them with its files source, in process until
//! drained. When a Python with polars and the `deltalake` package is given, the same job
//! done by a short polars script (`scripts/bench_polars.py`, embedded) on the same files is
//! measured in the same run: what a user would compare Smelter with.
//!
//! Both are checked: the rows each layer holds must be what the generator's labels say
//! (bronze every line once, silver every valid event once, the quarantine every invalid
//! one, gold counting every silver row), for Smelter and for the script alike; a run that
//! does not hold them fails instead of reporting a figure.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use smelter_common::config::SmelterConfig;
use smelter_worker::serve::query::QueryEngine;
use smelter_worker::source::generator::{Clickstream, EventKind};
use smelter_worker::tasks::drained::DrainWatch;

use super::check::{Counts, count};
use super::measure::{cpu_seconds, peak_rss_bytes, reset_peak};
use super::{BenchOptions, wait_for};
use crate::workload::{demo_events, files_demo};
use crate::{CliError, Result};

/// The files the events are written to.
const FILES: u32 = 6;

/// The polars script, run with the given Python.
const POLARS_SCRIPT: &str = include_str!("../../../scripts/bench_polars.py");

/// Figures of the files-source run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FilesRun {
    /// Events written (lines over all files).
    pub events: u64,
    /// NDJSON files.
    pub files: u32,
    /// Smelter: the demo pipeline on its files source, in process.
    pub smelter: Job,
    /// The polars script on the same files, if a Python was given.
    pub polars: Option<Job>,
    /// Smelter's events per CPU-second over the script's.
    pub smelter_to_polars: Option<f64>,
}

/// One way of doing the job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Job {
    /// CPU-seconds (user and system) of the process doing it.
    pub cpu_seconds: f64,
    /// Wall seconds.
    pub wall_seconds: f64,
    /// Events per CPU-second (computed here, not reported by the script).
    #[serde(default)]
    pub events_per_cpu_second: f64,
    /// Peak resident memory, bytes (0 if unknown).
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// What its tables held, as checked.
    #[serde(default)]
    pub checked: Counts,
}

/// Writes the events, runs Smelter (and the script, with `python`) on them, checks both.
pub async fn measure(
    config: &SmelterConfig,
    options: &BenchOptions,
    events: u64,
    python: Option<&Path>,
) -> Result<FilesRun> {
    let dir = options
        .work_dir
        .join(format!("files-run-{}", uuid::Uuid::new_v4()));
    let input = dir.join("input");
    let expected = write_events(&input, events)?;
    let mut run = FilesRun {
        events,
        files: FILES,
        smelter: smelter(config, options, &dir, &input, &expected).await?,
        ..FilesRun::default()
    };
    if let Some(python) = python {
        let polars = polars(python, &dir, &input, &expected)?;
        run.smelter_to_polars = Some(
            run.smelter.events_per_cpu_second / polars.events_per_cpu_second.max(f64::EPSILON),
        );
        run.polars = Some(polars);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(run)
}

/// The demo generator's first `events` events over [`FILES`] partitions, one file per
/// partition; what the layers must hold once they are refined.
fn write_events(input: &Path, events: u64) -> Result<Counts> {
    let io = |context: String| move |source| CliError::Io { context, source };
    std::fs::create_dir_all(input).map_err(io(format!("create {}", input.display())))?;
    let mut generator = demo_events(FILES);
    generator.count = Some(events);
    let clickstream = Clickstream::new(&generator)?;
    let mut expected = Counts {
        bronze: events,
        ..Counts::default()
    };
    for partition in 0..FILES as i32 {
        let mut text = Vec::new();
        for offset in 0..clickstream.partition_count(partition).unwrap_or(0) {
            let event = clickstream.event(partition, offset);
            match event.kind {
                EventKind::Valid => expected.silver += 1,
                EventKind::Duplicate { .. } => {}
                EventKind::Malformed | EventKind::MissingUser | EventKind::BadPrice => {
                    expected.quarantine += 1
                }
            }
            text.extend_from_slice(&event.payload);
            text.push(b'\n');
        }
        // Written aside and renamed: the files source takes a file whole.
        let path = input.join(format!("events-{partition}.ndjson"));
        let staged = input.join(format!(".events-{partition}.ndjson"));
        std::fs::write(&staged, text).map_err(io(format!("write {}", staged.display())))?;
        std::fs::rename(&staged, &path).map_err(io(format!("rename to {}", path.display())))?;
    }
    expected.gold_events = expected.silver;
    Ok(expected)
}

/// The demo on its files source, in process, until drained; checked.
async fn smelter(
    config: &SmelterConfig,
    options: &BenchOptions,
    dir: &Path,
    input: &Path,
    expected: &Counts,
) -> Result<Job> {
    reset_peak();
    let cpu_before = cpu_seconds(None).unwrap_or(0.0);
    let started = Instant::now();
    let (cluster, tables) =
        super::in_process::start(config, &dir.join("smelter"), options.workers).await?;
    let spec = super::in_process::apply(&cluster, &files_demo(input)).await?;
    let mut drain = DrainWatch::new(tables.clone(), spec);
    let drained = wait_for(
        "the files-source pipeline draining",
        options.timeout,
        async || drain.drained().await,
    )
    .await;
    let mut job = Job {
        cpu_seconds: cpu_seconds(None).unwrap_or(0.0) - cpu_before,
        wall_seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(None).unwrap_or(0),
        ..Job::default()
    };
    let checked = match drained {
        Ok(_) => counts(&tables).await,
        Err(error) => Err(error),
    };
    cluster.shutdown().await?;
    job.checked = checked?;
    job.events_per_cpu_second = super::limit::rate(expected.bronze, job.cpu_seconds);
    same("Smelter", &job.checked, expected)?;
    Ok(job)
}

/// What Smelter's tables hold.
async fn counts(tables: &smelter_lake::TableStore) -> Result<Counts> {
    let engine = QueryEngine::new(tables.clone(), Default::default());
    Ok(Counts {
        bronze: count(&engine, "SELECT count(*) FROM bronze.events").await?,
        silver: count(&engine, "SELECT count(*) FROM silver.events").await?,
        quarantine: count(&engine, "SELECT count(*) FROM silver.events_quarantine").await?,
        gold_events: count(&engine, "SELECT sum(events) FROM gold.daily_summary").await?,
    })
}

/// The polars script on the same files, with `python`; its report, checked.
fn polars(python: &Path, dir: &Path, input: &Path, expected: &Counts) -> Result<Job> {
    let script = dir.join("bench_polars.py");
    std::fs::write(&script, POLARS_SCRIPT).map_err(|source| CliError::Io {
        context: format!("write {}", script.display()),
        source,
    })?;
    let output = std::process::Command::new(python)
        .arg(&script)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(dir.join("polars"))
        .output()
        .map_err(|source| CliError::Io {
            context: format!("run {}", python.display()),
            source,
        })?;
    if !output.status.success() {
        return Err(CliError::Bench(format!(
            "the polars script failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let mut job: Job = serde_json::from_slice(&output.stdout).map_err(|e| {
        CliError::Bench(format!(
            "the polars script's report: {e}: {}",
            String::from_utf8_lossy(&output.stdout)
        ))
    })?;
    job.events_per_cpu_second = super::limit::rate(expected.bronze, job.cpu_seconds);
    same("the polars script", &job.checked, expected)?;
    Ok(job)
}

/// An error unless `found` is `expected`.
fn same(who: &str, found: &Counts, expected: &Counts) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(CliError::Bench(format!(
        "{who}'s tables are not what the files must give: found {found:?}, expected {expected:?}"
    )))
}
