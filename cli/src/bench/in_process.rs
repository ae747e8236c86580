//! The in-process runs: `smelter up`'s cluster (coordinator and workers in this process,
//! the in-memory coordination store, local tables) on the seeded generator — end to end
//! with and without automatic maintenance, and layer by layer.
//!
//! The process's own CPU counter and peak memory are the pipeline's: nothing else runs in
//! it meanwhile but the check for the end, a probe per table every 250 ms (the limit is
//! measured after, and the peak is rewound before each run).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use smelter_common::config::SmelterConfig;
use smelter_common::spec::PipelineSpec;
use smelter_lake::TableStore;
use smelter_worker::tasks::drained::DrainWatch;

use super::latency::ProduceTimes;
use super::measure::{cpu_seconds, peak_rss_bytes, reset_peak, steal_seconds};
use super::{BenchOptions, EndToEnd, LayerFigures, MaintenanceDone, finish_run, now_ms, wait_for};
use crate::Result;
use crate::local::LocalCluster;
use crate::workload::{bounded_demo, only_layers};
use smelter_sdk::AdminClient;

pub(super) async fn start(
    config: &SmelterConfig,
    dir: &Path,
    workers: u16,
) -> Result<(LocalCluster, TableStore)> {
    let mut config = config.clone();
    config.storage.root = dir.join("tables");
    config.coordinator.listen = "127.0.0.1:0".into();
    config.worker.flight_listen = "127.0.0.1:0".into();
    config.coordinator.http_listen = Some("127.0.0.1:0".into());
    let tables = TableStore::new(&config.storage.root)?;
    let cluster = LocalCluster::start(config, usize::from(workers)).await?;
    Ok((cluster, tables))
}

pub(super) async fn apply(cluster: &LocalCluster, text: &str) -> Result<PipelineSpec> {
    let spec = crate::commands::load_pipeline(text, "bench.yaml").await?;
    AdminClient::connect(&cluster.coordinator_endpoint)
        .await?
        .apply(text, "bench.yaml")
        .await?;
    Ok(spec)
}

/// How often maintenance looks at each table in the run with maintenance on: often
/// enough that a run of a few tens of seconds compacts every streaming table several
/// times, files replaced vacuumed [`MAINTAINED_RETENTION`] after.
pub const MAINTAINED_EVERY: &str = "2s";
/// See [`MAINTAINED_EVERY`].
const MAINTAINED_RETENTION: &str = "5s";

/// The end-to-end run at `options.rate`; with `maintained`, with automatic maintenance
/// every [`MAINTAINED_EVERY`] (the demo's default looks once a minute, after these runs
/// end), and what it did reported.
pub async fn end_to_end(
    config: &SmelterConfig,
    options: &BenchOptions,
    maintained: bool,
) -> Result<EndToEnd> {
    let dir = options
        .work_dir
        .join(format!("in-process-{}", uuid::Uuid::new_v4()));
    let mut text = bounded_demo(options.events, options.partitions, Some(options.rate));
    if maintained {
        text = super::soak::with_maintenance(&text, MAINTAINED_EVERY, MAINTAINED_RETENTION, None)?;
    }
    reset_peak();
    let cpu_before = cpu_seconds(None).unwrap_or(0.0);
    let steal_before = steal_seconds();
    let (cluster, tables) = start(config, &dir, options.workers).await?;
    let start_ms = now_ms();
    let started = Instant::now();
    let spec = apply(&cluster, &text).await?;
    let mut drain = DrainWatch::new(tables.clone(), spec.clone());
    wait_for(
        "the in-process pipeline draining",
        options.timeout,
        async || drain.drained().await,
    )
    .await?;
    let mut run = EndToEnd {
        events: options.events,
        rate: options.rate,
        wall_seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds(None).unwrap_or(0.0) - cpu_before,
        steal_seconds: steal_seconds() - steal_before,
        ..EndToEnd::default()
    };
    run.process_cpu_seconds
        .insert("smelter up".into(), run.cpu_seconds);
    run.peak_rss_bytes
        .insert("smelter up".into(), peak_rss_bytes(None).unwrap_or(0));
    let produced = ProduceTimes::Paced {
        start_ms,
        per_partition_per_ms: options.rate as f64 / f64::from(options.partitions.max(1)) / 1000.0,
    };
    let flight = cluster.flight_endpoints[0].clone();
    let mut finished = finish_run(&mut run, &tables, &spec, &produced, &flight).await;
    if maintained {
        if finished.is_ok() {
            finished = maintenance_done(&tables)
                .await
                .map(|done| run.maintenance = Some(done));
        }
    } else if let (Ok(()), Some(http)) = (&finished, &cluster.http_endpoint) {
        finished = rest_figures(&mut run, http, &tables).await;
    }
    cluster.shutdown().await?;
    finished?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(run)
}

/// What maintenance did to the run's tables, summed from their maintenance records.
async fn maintenance_done(tables: &TableStore) -> Result<MaintenanceDone> {
    let mut done = MaintenanceDone {
        every: MAINTAINED_EVERY.to_string(),
        ..MaintenanceDone::default()
    };
    for name in tables.list().await {
        let mut table = tables.open(&name).await?;
        let detail = smelter_lake::detail::detail(&mut table, &name).await?;
        done.files.insert(name.clone(), detail.files);
        if let Some(record) = smelter_lake::maintenance_record::read(&table, &name).await? {
            done.compactions += record.compactions;
            done.files_compacted += record.files_compacted;
            done.files_vacuumed += record.files_vacuumed;
        }
    }
    Ok(done)
}

/// The REST API's figures against the finished run's tables (see [`super::rest`]).
async fn rest_figures(run: &mut EndToEnd, http: &str, tables: &TableStore) -> Result<()> {
    let name = "gold.hourly_metrics";
    let mut gold = tables.open(name).await?;
    let gold_rows = smelter_lake::detail::detail(&mut gold, name).await?.rows as usize;
    let per_second = run.cpu_seconds / run.wall_seconds.max(f64::EPSILON);
    run.rest = Some(super::rest::measure(http, per_second, gold_rows).await?);
    Ok(())
}

/// The unpaced run, one layer at a time: bronze alone, then silver on top of it, then gold.
/// Returns the figures per layer (limit fields left for the caller) and the bronze bytes.
pub async fn layer_by_layer(
    config: &SmelterConfig,
    options: &BenchOptions,
) -> Result<(BTreeMap<String, LayerFigures>, u64)> {
    let dir = options
        .work_dir
        .join(format!("layers-{}", uuid::Uuid::new_v4()));
    let text = bounded_demo(options.events, options.partitions, None);
    let (cluster, tables) = start(config, &dir, options.workers).await?;
    let mut layers = BTreeMap::new();
    let mut outcome = Ok(());
    for (layer, upto) in [
        ("bronze", &["bronze"][..]),
        ("silver", &["bronze", "silver"][..]),
        ("gold", &["bronze", "silver", "gold"][..]),
    ] {
        let step = async {
            let text = only_layers(&text, upto)?;
            let cpu_before = cpu_seconds(None).unwrap_or(0.0);
            let spec = apply(&cluster, &text).await?;
            let mut drain = DrainWatch::new(tables.clone(), spec);
            let wall = wait_for(
                &format!("the {layer} layer draining"),
                options.timeout,
                async || drain.drained().await,
            )
            .await?;
            let cpu = cpu_seconds(None).unwrap_or(0.0) - cpu_before;
            Ok::<_, crate::CliError>(LayerFigures {
                cpu_seconds: cpu,
                wall_seconds: wall.as_secs_f64(),
                events_per_cpu_second: super::limit::rate(options.events, cpu),
                ..LayerFigures::default()
            })
        };
        match step.await {
            Ok(figures) => {
                tracing::info!(layer, cpu_seconds = figures.cpu_seconds, "layer done");
                layers.insert(layer.to_string(), figures);
            }
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    let bronze_bytes = match &outcome {
        Ok(()) => {
            let table = tables.open("bronze.events").await?;
            smelter_lake::history::commits(&table, "bronze.events")
                .await?
                .iter()
                .map(|c| c.bytes_added)
                .sum()
        }
        Err(_) => 0,
    };
    cluster.shutdown().await?;
    outcome?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((layers, bronze_bytes))
}
