//! `smelter bench`: the clickstream workload through the whole pipeline, in process and as
//! a cluster on a Kafka broker, measured against the limit of the bare stages on the same
//! events in the same run (BENCHMARKS.md).
//!
//! Every figure is CPU-seconds or a ratio measured in one run, never a wall-clock promise:
//! the machine is shared. Nothing here asserts a speed; the result is a JSON document
//! (BENCHMARKS.md explains each field).
//!
//! * [`in_process`]: an end-to-end run paced at `--rate` (latency, CPU per event, peak
//!   memory, commit shapes, Flight queries), then an unpaced run layer by layer (the
//!   pipeline applied with bronze only, then silver, then gold) for per-layer CPU.
//! * [`cluster`]: coordinator and workers as separate processes on etcd, fed through a
//!   Kafka topic by a paced producer; CPU and peak memory per process.
//! * [`limit`]: the bare stages. [`latency`]: produce-to-gold latency from the Delta logs.
//! * [`check`]: every run's tables against what its events must give; a run that lost or
//!   doubled rows fails instead of reporting a figure.
//! * [`rest`]: the REST API's latency and CPU at the end of the in-process run.
//! * [`table_ops`]: snapshot open time with and without checkpoints, and the CPU of
//!   compaction and vacuum per GB.
//! * [`cdc`]: merging a change stream (SCD 1 and 2) against appends and a bare delta-rs
//!   `MERGE` of the same batches.

pub mod cdc;
pub mod cdc_latency;
pub mod check;
pub mod cluster;
pub mod files_run;
pub mod formats;
pub mod in_process;
pub mod latency;
pub mod limit;
pub mod measure;
pub mod rest;
pub mod soak;
pub mod table_ops;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use smelter_common::spec::PipelineSpec;
use smelter_lake::TableStore;

use crate::{CliError, Result};
use latency::{CommitShape, Latency};
use limit::Limit;
use smelter_sdk::QueryClient;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events per run.
    pub events: u64,
    /// Produce rate of the end-to-end runs, events per second.
    pub rate: u64,
    /// Source partitions.
    pub partitions: u32,
    /// Workers.
    pub workers: u16,
    /// Where the runs keep their tables (a fresh directory under it per run).
    pub work_dir: std::path::PathBuf,
    /// Give up on a run after this long.
    pub timeout: Duration,
    /// Runs of each end-to-end pipeline (see [`least_cpu_of`]).
    pub runs: u32,
    /// An S3-compatible endpoint for the cluster run's tables (local disk when `None`).
    pub s3_endpoint: Option<String>,
    /// `RUST_LOG` of the cluster run's processes.
    pub cluster_log: String,
}

/// Three queries a dashboard would run, over gold and silver.
pub const QUERIES: [(&str, &str); 3] = [
    (
        "gold_hourly_last_day",
        "SELECT hour, event_type, events, users, revenue FROM gold.hourly_metrics \
         ORDER BY hour DESC, event_type LIMIT 96",
    ),
    (
        "gold_segments",
        "SELECT segment, count(*) AS users, sum(spend) AS spend FROM gold.user_segments \
         GROUP BY segment ORDER BY segment",
    ),
    (
        "silver_country_funnel",
        "SELECT user_country, event_type, count(*) AS events FROM silver.events \
         GROUP BY user_country, event_type ORDER BY user_country, event_type",
    ),
];

/// Latency of one query over Flight SQL.
#[derive(Debug, Clone, Serialize)]
pub struct QueryLatency {
    /// Short name.
    pub name: String,
    /// The SQL.
    pub sql: String,
    /// Rows returned.
    pub rows: usize,
    /// Median over the runs, milliseconds.
    pub p50_ms: f64,
    /// Slowest run, milliseconds.
    pub max_ms: f64,
}

/// Runs each of [`QUERIES`] `runs` times against `endpoint`.
pub async fn query_latencies(endpoint: &str, runs: usize) -> Result<Vec<QueryLatency>> {
    let mut client = QueryClient::connect(endpoint).await?;
    let mut out = Vec::new();
    for (name, sql) in QUERIES {
        let mut times = Vec::with_capacity(runs);
        let mut rows = 0;
        for _ in 0..runs.max(1) {
            let started = Instant::now();
            let batches = client.query(sql).await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            rows = batches.iter().map(|b| b.num_rows()).sum();
        }
        times.sort_by(f64::total_cmp);
        out.push(QueryLatency {
            name: name.to_string(),
            sql: sql.to_string(),
            rows,
            p50_ms: times[times.len() / 2],
            max_ms: times[times.len() - 1],
        });
    }
    Ok(out)
}

/// One end-to-end run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndToEnd {
    /// Events produced.
    pub events: u64,
    /// Produce rate asked for, events per second.
    pub rate: u64,
    /// From the first event due to the last one visible in gold, seconds.
    pub wall_seconds: f64,
    /// CPU-seconds of every Smelter process (the producer excluded).
    pub cpu_seconds: f64,
    /// `events / cpu_seconds`.
    pub events_per_cpu_second: f64,
    /// That figure over the limit's.
    pub fraction_of_limit: f64,
    /// That figure over the third-party limit's (`limit.third_party_*`).
    pub fraction_of_third_party_limit: f64,
    /// Peak resident memory per process, bytes.
    pub peak_rss_bytes: BTreeMap<String, u64>,
    /// CPU-seconds per process.
    pub process_cpu_seconds: BTreeMap<String, f64>,
    /// Steal time of the whole machine during the run (see [`measure::steal_seconds`]).
    pub steal_seconds: f64,
    /// Produce-to-gold latency.
    pub latency: Latency,
    /// Data commits per table.
    pub commits: BTreeMap<String, CommitShape>,
    /// Flight SQL query latency once everything is in.
    pub queries: Vec<QueryLatency>,
    /// The rows each layer held, checked against the events (see [`check`]).
    pub checked: check::Counts,
    /// CPU-seconds etcd spent during the run (cluster runs, when its pid is known).
    pub etcd_cpu_seconds: Option<f64>,
    /// The REST API's latency and CPU once everything is in (in-process runs).
    pub rest: Option<rest::RestFigures>,
    /// Where the workers' downstream tasks found the rows of the files they read —
    /// memory, another worker over the exchange, storage — with the bytes read from
    /// storage and the time spent decoding them (cluster runs).
    pub file_reads: Option<smelter_lake::recent_files::Reads>,
    /// Where the tables were: `local` or the S3 endpoint (cluster runs).
    pub store: Option<String>,
    /// What automatic maintenance did during the run (the in-process run with
    /// maintenance on).
    pub maintenance: Option<MaintenanceDone>,
    /// Every run of this pipeline, in order; the figures above are those of the run with
    /// the least CPU.
    pub runs: Vec<RunSummary>,
}

/// What maintenance did to a run's tables, from their maintenance records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintenanceDone {
    /// How often it looked at each table.
    pub every: String,
    /// Compactions committed, over every table.
    pub compactions: u64,
    /// Files those compactions rewrote.
    pub files_compacted: u64,
    /// Files vacuums deleted.
    pub files_vacuumed: u64,
    /// Live data files per table at the end.
    pub files: BTreeMap<String, u64>,
}

/// One of several runs of an end-to-end pipeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// CPU-seconds of every Smelter process.
    pub cpu_seconds: f64,
    /// `events / cpu_seconds`.
    pub events_per_cpu_second: f64,
    /// Produce-to-gold latency, p99, milliseconds.
    pub p99_ms: f64,
    /// Steal time of the whole machine during the run.
    pub steal_seconds: f64,
}

/// Runs an end-to-end pipeline `runs` times and keeps the run with the least CPU, the way
/// the limit keeps each stage's least: on a shared machine other load only ever adds CPU
/// time (cache and core contention do not show as steal), and single runs of one build
/// moved by a quarter. Every run is listed in [`EndToEnd::runs`].
pub async fn least_cpu_of<T>(
    runs: u32,
    mut one: impl AsyncFnMut() -> Result<(EndToEnd, T)>,
) -> Result<(EndToEnd, T)> {
    let mut least = LeastCpu::default();
    for _ in 0..runs.max(1) {
        let (run, extra) = one().await?;
        least.offer(run, extra);
    }
    Ok(least.finish())
}

/// Two variants of an end-to-end pipeline run `runs` times each, alternating (first,
/// second, first, …) so that both see the same machine; the run with the least CPU of
/// each, as [`least_cpu_of`].
pub async fn least_cpu_alternating(
    runs: u32,
    mut one: impl AsyncFnMut(usize) -> Result<EndToEnd>,
) -> Result<(EndToEnd, EndToEnd)> {
    let mut least = [LeastCpu::default(), LeastCpu::default()];
    for _ in 0..runs.max(1) {
        for (variant, least) in least.iter_mut().enumerate() {
            least.offer(one(variant).await?, ());
        }
    }
    let [first, second] = least;
    Ok((first.finish().0, second.finish().0))
}

/// The run with the least CPU so far, and every run's summary.
struct LeastCpu<T> {
    best: Option<(EndToEnd, T)>,
    summaries: Vec<RunSummary>,
}

impl<T> Default for LeastCpu<T> {
    fn default() -> Self {
        Self {
            best: None,
            summaries: Vec::new(),
        }
    }
}

impl<T> LeastCpu<T> {
    fn offer(&mut self, run: EndToEnd, extra: T) {
        self.summaries.push(RunSummary {
            cpu_seconds: run.cpu_seconds,
            events_per_cpu_second: run.events_per_cpu_second,
            p99_ms: run.latency.p99_ms,
            steal_seconds: run.steal_seconds,
        });
        if self
            .best
            .as_ref()
            .is_none_or(|(b, _)| run.cpu_seconds < b.cpu_seconds)
        {
            self.best = Some((run, extra));
        }
    }

    /// The least; called after at least one run.
    fn finish(self) -> (EndToEnd, T) {
        let (mut run, extra) = self.best.expect("at least one run");
        run.runs = self.summaries;
        (run, extra)
    }
}

/// One layer of the layer-by-layer run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LayerFigures {
    /// CPU-seconds the layer took (its tasks alone running).
    pub cpu_seconds: f64,
    /// Wall seconds until the layer had consumed everything.
    pub wall_seconds: f64,
    /// `events / cpu_seconds`.
    pub events_per_cpu_second: f64,
    /// The same events through the layer's bare stages.
    pub limit_events_per_cpu_second: f64,
    /// The first over the second.
    pub fraction_of_limit: f64,
}

/// The whole result document.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchReport {
    /// Smelter's version.
    pub version: String,
    /// When it ran (UTC, RFC 3339).
    pub date: String,
    /// `release` or `debug`: only release figures mean anything.
    pub build: String,
    /// CPUs the machine offers.
    pub cores: usize,
    /// Events per run, partitions, rate.
    pub workload: serde_json::Value,
    /// The bare stages on the same events.
    pub limit: Limit,
    /// In process: the end-to-end run.
    pub in_process: Option<EndToEnd>,
    /// In process: the same run with automatic maintenance every few seconds (compaction,
    /// checkpoints, vacuum), alternated with it.
    pub in_process_maintained: Option<EndToEnd>,
    /// Its CPU over the run without, less one: what maintenance costs the pipeline.
    pub maintenance_cpu_overhead: Option<f64>,
    /// In process: layer by layer.
    pub layers: BTreeMap<String, LayerFigures>,
    /// Bronze bytes written per wall-second of the bronze layer alone, MB/s.
    pub bronze_mb_per_second: f64,
    /// As a cluster on a Kafka broker.
    pub cluster: Option<EndToEnd>,
    /// Snapshot open times, compaction and vacuum costs (in-process runs).
    pub table_ops: Option<table_ops::TableOps>,
    /// Merging a change stream (in-process runs, `--cdc-changes` above 0).
    pub cdc: Option<cdc::CdcBench>,
    /// Change-to-gold latency of a paced change stream (in-process, `--cdc-seconds`
    /// above 0).
    pub cdc_latency: Option<cdc_latency::CdcLatency>,
    /// Reading each file format (in-process runs, `--format-rows` above 0).
    pub formats: Option<formats::Formats>,
    /// The demo on its files source over NDJSON files, against a polars script doing the
    /// same job (in-process runs, `--files-events` above 0).
    pub files_source: Option<files_run::FilesRun>,
    /// Maintenance under load (`--soak-secs`; then nothing else runs).
    pub soak: Option<soak::SoakFigures>,
}

/// Waits until `done` says so, checking every 250 ms, for at most `timeout`; how long it
/// took. In process, a check runs in the measured process: it must stay cheap (see
/// [`smelter_worker::tasks::drained::DrainWatch`]). An error from `done` counts as "not
/// yet", and the last one is reported should time run out.
pub async fn wait_for<F, E>(what: &str, timeout: Duration, mut done: F) -> Result<Duration>
where
    F: AsyncFnMut() -> std::result::Result<bool, E>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    smelter_harness::wait_until_every(CHECK_EVERY, timeout, what, async || match done().await {
        Ok(true) => Ok(()),
        Ok(false) => Err(String::new()),
        Err(error) => Err(error.to_string()),
    })
    .await
    .map_err(CliError::Bench)?;
    Ok(started.elapsed())
}

/// How often the benchmark checks whether a run is done.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Milliseconds since the epoch, now.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Latency, commit shapes and queries of a finished run over `tables`.
pub async fn finish_run(
    run: &mut EndToEnd,
    tables: &TableStore,
    spec: &PipelineSpec,
    produced: &latency::ProduceTimes,
    flight: &str,
) -> Result<()> {
    let generator = check::generator_of(spec, &crate::workload::demo_events(1));
    run.checked = check::check_run(tables, &generator, run.events).await?;
    let histories = latency::Histories::read(tables, spec).await?;
    run.latency = latency::latency(&histories, spec, produced);
    run.commits = histories.shapes();
    run.events_per_cpu_second = limit::rate(run.events, run.cpu_seconds);
    run.queries = query_latencies(flight, 5).await?;
    Ok(())
}
