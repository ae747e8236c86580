//! Maintenance under load (`smelter bench --soak-secs N`): the demo pipeline in process at
//! `--rate` for N seconds with automatic maintenance on every table — compaction once 16
//! small files gather, checkpoints by the commit path, vacuum of replaced files after 30 s,
//! log entries older than [`HISTORY`] cleaned up — looking every [`MAINTENANCE_EVERY`].
//! Every `--soak-sample-secs` it samples each table: its live files (from its log), the
//! time to open its latest snapshot from storage (what every reader and writer pays after a
//! restart), what that reads (log entries, the checkpoint's actions and tombstones:
//! `smelter_lake::log_size`), and what maintenance has done so far
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

/// History every table keeps during the soak: the log holds about this much of its
/// commits (without it, Delta's 30 days: a log growing with every commit of the run).
pub const HISTORY: &str = "2m";

/// Opens per table and sample: the sample keeps the fastest.
const OPENS: usize = 3;

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
    /// Time to open the latest snapshot from storage, milliseconds: the least of
    /// [`OPENS`] opens in a row (the load of the pipeline around it only ever adds).
    pub open_ms: f64,
    /// Objects under `_delta_log`.
    pub log_entries: u64,
    /// Actions in the latest checkpoint.
    pub checkpoint_actions: u64,
    /// Of those, `remove` tombstones.
    pub checkpoint_tombstones: u64,
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
    /// Per table: the median snapshot open time of the samples 30–90 s in.
    pub open_ms_first_minute: BTreeMap<String, f64>,
    /// The same over the source's last minute (the pipeline still under load).
    pub open_ms_last_minute: BTreeMap<String, f64>,
    /// Per table: the most tombstones a checkpoint carried.
    pub max_checkpoint_tombstones: BTreeMap<String, u64>,
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
    let text = with_maintenance(
        &bounded_demo(events, options.partitions, Some(options.rate)),
        MAINTENANCE_EVERY,
        "30s",
        Some(HISTORY),
    )?;
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

/// The demo with maintenance looking at every table `every` (a spec duration: `10s`),
/// compacting at 16 small files and vacuuming replaced files `retention` after; with
/// `history`, every table keeps that much history (log entries older are cleaned up).
pub(super) fn with_maintenance(
    text: &str,
    every: &str,
    retention: &str,
    history: Option<&str>,
) -> Result<String> {
    let mut spec: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| bench_error(format!("demo spec: {e}")))?;
    let tables = spec["tables"]
        .as_mapping_mut()
        .ok_or_else(|| bench_error("demo spec has no tables"))?;
    let maintenance: serde_yaml::Value = serde_yaml::from_str(&format!(
        "{{ min_small_files: 16, every: {every}, retention: {retention} }}"
    ))
    .map_err(|e| bench_error(format!("maintenance: {e}")))?;
    let history: Option<serde_yaml::Value> = history
        .map(|h| serde_yaml::from_str(&format!("{{ history: {h} }}")))
        .transpose()
        .map_err(|e| bench_error(format!("retention: {e}")))?;
    for (_, table) in tables.iter_mut() {
        if let Some(table) = table.as_mapping_mut() {
            table.insert("maintenance".into(), maintenance.clone());
            if let Some(history) = &history {
                table.insert("retention".into(), history.clone());
            }
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
        let mut open_ms = f64::MAX;
        let mut table = None;
        for _ in 0..OPENS {
            let opening = Instant::now();
            let opened = tables.open(&name).await?;
            open_ms = open_ms.min(opening.elapsed().as_secs_f64() * 1000.0);
            table = Some(opened);
        }
        let Some(mut table) = table else {
            continue;
        };
        let log = smelter_lake::log_size::log_size(&table, &name).await?;
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
                log_entries: log.entries,
                checkpoint_actions: log.checkpoint_actions,
                checkpoint_tombstones: log.checkpoint_tombstones,
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
                .map(|(name, t)| {
                    format!(
                        "{name} {} files, {} log entries, {} tombstones ({} ms)",
                        t.files,
                        t.log_entries,
                        t.checkpoint_tombstones,
                        t.open_ms.round()
                    )
                })
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
    let mut max_tombstones: BTreeMap<String, u64> = BTreeMap::new();
    for sample in &samples {
        for (name, table) in &sample.tables {
            let most = max_files.entry(name.clone()).or_default();
            *most = (*most).max(table.files);
            let most = max_tombstones.entry(name.clone()).or_default();
            *most = (*most).max(table.checkpoint_tombstones);
        }
    }
    let end = soak.seconds as f64;
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
        open_ms_first_minute: median_open_ms(&samples, 30.0, 90.0),
        open_ms_last_minute: median_open_ms(&samples, (end - 60.0).max(0.0), end),
        max_checkpoint_tombstones: max_tombstones,
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

/// Per table, the median open time of the samples taken from `from` to `to` seconds in.
fn median_open_ms(samples: &[Sample], from: f64, to: f64) -> BTreeMap<String, f64> {
    let mut opens: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for sample in samples
        .iter()
        .filter(|s| s.at_seconds >= from && s.at_seconds <= to)
    {
        for (name, table) in &sample.tables {
            opens.entry(name.clone()).or_default().push(table.open_ms);
        }
    }
    opens
        .into_iter()
        .map(|(name, mut ms)| {
            ms.sort_by(f64::total_cmp);
            (name, ms[ms.len() / 2])
        })
        .collect()
}
