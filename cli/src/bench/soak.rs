//! Maintenance under load (`smelter bench --soak-secs N`): the demo pipeline in process at
//! `--rate` for N seconds with automatic maintenance on every table — compaction once 16
//! small files gather, checkpoints by the commit path, vacuum of replaced files after 30 s
//! — looking every [`MAINTENANCE_EVERY`]. Every `--soak-sample-secs` it samples each table:
//! its live files (from its log), the time to open its latest snapshot from storage (what
//! every reader and writer pays after a restart), and what maintenance has done so far
//! (its record beside the log); and the workers' failed commit attempts per table (from
//! their heartbeats: a pipeline writer that maintenance made retry shows there).
//!
//! The tables are local, or on an S3-compatible store with `--s3-endpoint` (with
//! `--s3-no-conditional-put`, the store is treated as one without put-if-absent: log
//! writes are arbitrated through the commit locks). The run is checked at the end like
//! every bench run: every event exactly where it belongs in every layer, or the bench
//! fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use smelter_common::config::{SmelterConfig, StorageConfig};
use smelter_lake::TableStore;
use smelter_sdk::AdminClient;
use smelter_worker::tasks::drained::DrainWatch;

use super::BenchOptions;
use super::measure::{cpu_seconds, peak_rss_bytes, reset_peak};
use crate::local::LocalCluster;
use crate::workload::bounded_demo;
use crate::{CliError, Result};

fn bench_error(message: impl Into<String>) -> CliError {
    CliError::Bench(message.into())
}

/// How often maintenance looks at each table during the soak.
pub const MAINTENANCE_EVERY: &str = "10s";

/// What the soak is asked to do.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long the source produces, seconds.
    pub seconds: u64,
    /// Seconds between samples.
    pub sample_every: u64,
    /// Treat the S3 store as one without put-if-absent (arbitrated log writes).
    pub no_conditional_put: bool,
}

/// One table at one sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableSample {
    /// Latest version.
    pub version: i64,
    /// Live data files.
    pub files: u64,
    /// Of those, small ones.
    pub small_files: u64,
    /// Time to open the latest snapshot from storage, milliseconds.
    pub open_ms: f64,
    /// Compactions maintenance committed so far.
    pub compactions: u64,
    /// Files its vacuums deleted so far.
    pub files_vacuumed: u64,
    /// Failed commit attempts of every worker on the table so far.
    pub failed_commit_attempts: u64,
}

/// Every table at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the source started.
    pub at_seconds: f64,
    /// Per table.
    pub tables: BTreeMap<String, TableSample>,
}

/// The soak's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakFigures {
    /// Seconds the source produced for, and at what rate.
    pub seconds: u64,
    /// Events per second asked for.
    pub rate: u64,
    /// Events produced.
    pub events: u64,
    /// `local`, or the S3 endpoint (and `arbitrated` without put-if-absent).
    pub store: String,
    /// From the start to every layer holding every event, seconds.
    pub wall_seconds: f64,
    /// CPU of the process (pipeline and maintenance), seconds.
    pub cpu_seconds: f64,
    /// Peak resident memory, bytes.
    pub peak_rss_bytes: u64,
    /// The samples, in time order (the last once every layer held every event).
    pub samples: Vec<Sample>,
    /// Per table: the most live files any sample saw.
    pub max_files: BTreeMap<String, u64>,
    /// Per table: snapshot open time at the sample nearest one minute and at the last.
    pub open_ms_first_minute: BTreeMap<String, f64>,
    /// See `open_ms_first_minute`.
    pub open_ms_last: BTreeMap<String, f64>,
    /// Per table: failed commit attempts over the run.
    pub failed_commit_attempts: BTreeMap<String, u64>,
    /// The rows each layer held at the end, checked against the events.
    pub checked: super::check::Counts,
}

/// Runs the soak (see the module docs).
pub async fn run(
    config: &SmelterConfig,
    options: &BenchOptions,
    soak: &SoakOptions,
) -> Result<SoakFigures> {
    let id = uuid::Uuid::new_v4().to_string();
    let dir = options.work_dir.join(format!("soak-{id}"));
    let events = options.rate * soak.seconds;
    let text = with_maintenance(&bounded_demo(
        events,
        options.partitions,
        Some(options.rate),
    ))?;
    let mut config = config.clone();
    let mut store = "local".to_string();
    config.storage = match &options.s3_endpoint {
        Some(endpoint) => {
            store = endpoint.clone();
            let mut storage = super::cluster::s3_storage(endpoint, &id).await?;
            if soak.no_conditional_put {
                storage.s3_conditional_put = false;
                storage.commit_arbitration = true;
                store.push_str(" (arbitrated)");
            }
            storage
        }
        None => StorageConfig {
            root: dir.join("tables"),
            ..Default::default()
        },
    };
    config.coordinator.listen = "127.0.0.1:0".into();
    config.worker.flight_listen = "127.0.0.1:0".into();
    let tables = TableStore::from_config(&config.storage)?;
    reset_peak();
    let cpu_before = cpu_seconds(None).unwrap_or(0.0);
    let cluster = LocalCluster::start(config, usize::from(options.workers)).await?;
    let spec = crate::commands::load_pipeline(&text, "soak.yaml").await?;
    let mut admin = AdminClient::connect(&cluster.coordinator_endpoint).await?;
    admin.apply(&text, "soak.yaml").await?;
    let started = Instant::now();
    let mut drain = DrainWatch::new(tables.clone(), spec.clone());
    let mut samples = Vec::new();
    let every = Duration::from_secs(soak.sample_every.max(1));
    let deadline = started + Duration::from_secs(soak.seconds) + options.timeout;
    let mut next = started + every;
    loop {
        let drained = drain.drained().await?;
        if drained || Instant::now() >= next {
            samples.push(sample(&tables, &mut admin, started).await?);
            next += every;
            eprintln!(
                "bench: soak at {:.0}s: {}",
                started.elapsed().as_secs_f64(),
                brief(samples.last())
            );
        }
        if drained {
            break;
        }
        if Instant::now() >= deadline {
            return Err(bench_error(format!(
                "soak: not drained {:?} after the source's end",
                options.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds(None).unwrap_or(0.0) - cpu_before;
    let generator = super::check::generator_of(&spec, &crate::workload::demo_events(1));
    let checked = super::check::check_run(&tables, &generator, events).await?;
    cluster.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures(
        soak,
        options.rate,
        events,
        store,
        wall_seconds,
        cpu_seconds,
        samples,
        checked,
    ))
}

/// The demo with maintenance looking at every table every [`MAINTENANCE_EVERY`],
/// compacting at 16 small files and vacuuming replaced files after 30 s.
fn with_maintenance(text: &str) -> Result<String> {
    let mut spec: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| bench_error(format!("demo spec: {e}")))?;
    let tables = spec["tables"]
        .as_mapping_mut()
        .ok_or_else(|| bench_error("demo spec has no tables"))?;
    let maintenance: serde_yaml::Value = serde_yaml::from_str(&format!(
        "{{ min_small_files: 16, every: {MAINTENANCE_EVERY}, retention: 30s }}"
    ))
    .map_err(|e| bench_error(format!("maintenance: {e}")))?;
    for (_, table) in tables.iter_mut() {
        if let Some(table) = table.as_mapping_mut() {
            table.insert("maintenance".into(), maintenance.clone());
        }
    }
    serde_yaml::to_string(&spec).map_err(|e| bench_error(format!("demo spec: {e}")))
}

/// Every table now.
async fn sample(tables: &TableStore, admin: &mut AdminClient, started: Instant) -> Result<Sample> {
    let at_seconds = started.elapsed().as_secs_f64();
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    for worker in admin.status().await?.workers {
        for timings in worker.timings {
            *failed.entry(timings.table).or_default() += timings.failed_attempts;
        }
    }
    let mut out = BTreeMap::new();
    for name in tables.list().await {
        let opening = Instant::now();
        let mut table = tables.open(&name).await?;
        let open_ms = opening.elapsed().as_secs_f64() * 1000.0;
        let detail = smelter_lake::detail::detail(&mut table, &name).await?;
        let record = smelter_lake::maintenance_record::read(&table, &name)
            .await?
            .unwrap_or_default();
        out.insert(
            name.clone(),
            TableSample {
                version: detail.version,
                files: detail.files,
                small_files: detail.small_files,
                open_ms,
                compactions: record.compactions,
                files_vacuumed: record.files_vacuumed,
                failed_commit_attempts: failed.get(&name).copied().unwrap_or(0),
            },
        );
    }
    Ok(Sample {
        at_seconds,
        tables: out,
    })
}

/// One line of progress: files per table.
fn brief(sample: Option<&Sample>) -> String {
    sample
        .map(|s| {
            s.tables
                .iter()
                .map(|(name, t)| format!("{name} {} files ({} ms)", t.files, t.open_ms.round()))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn figures(
    soak: &SoakOptions,
    rate: u64,
    events: u64,
    store: String,
    wall_seconds: f64,
    cpu_seconds: f64,
    samples: Vec<Sample>,
    checked: super::check::Counts,
) -> SoakFigures {
    let mut max_files: BTreeMap<String, u64> = BTreeMap::new();
    for sample in &samples {
        for (name, table) in &sample.tables {
            let most = max_files.entry(name.clone()).or_default();
            *most = (*most).max(table.files);
        }
    }
    let per_table = |sample: Option<&Sample>, pick: fn(&TableSample) -> f64| {
        sample
            .map(|s| s.tables.iter().map(|(n, t)| (n.clone(), pick(t))).collect())
            .unwrap_or_default()
    };
    let first_minute = samples.iter().min_by(|a, b| {
        (a.at_seconds - 60.0)
            .abs()
            .total_cmp(&(b.at_seconds - 60.0).abs())
    });
    let last = samples.last();
    SoakFigures {
        seconds: soak.seconds,
        rate,
        events,
        store,
        wall_seconds,
        cpu_seconds,
        peak_rss_bytes: peak_rss_bytes(None).unwrap_or(0),
        max_files,
        open_ms_first_minute: per_table(first_minute, |t| t.open_ms),
        open_ms_last: per_table(last, |t| t.open_ms),
        failed_commit_attempts: last
            .map(|s| {
                s.tables
                    .iter()
                    .map(|(n, t)| (n.clone(), t.failed_commit_attempts))
                    .collect()
            })
            .unwrap_or_default(),
        samples,
        checked,
    }
}
