//! `smelter up`: the whole system in one process, until Ctrl-C (or until done).

use std::io::IsTerminal;
use std::time::Duration;

use smelter_common::config::SmelterConfig;
use tokio_util::sync::CancellationToken;

use super::{SHOP_DEMO, load_pipeline, read_file};
use crate::cli::UpArgs;
use crate::local::LocalCluster;
use crate::progress::ProgressView;
use crate::{CliError, Result};
use smelter_sdk::AdminClient;

/// Runs `smelter up`.
pub async fn run(
    mut config: SmelterConfig,
    args: UpArgs,
    shutdown: CancellationToken,
) -> Result<()> {
    let (text, origin) = match (&args.pipeline, args.demo) {
        (Some(path), _) => (read_file(path)?, path.display().to_string()),
        (None, _) => (SHOP_DEMO.to_string(), "examples/shop.yaml".to_string()),
    };
    // Reject a bad spec before anything starts.
    let spec = load_pipeline(&text, &origin).await?;
    config.storage.root = args.data_dir.join("tables");
    // The tables a previous run left must be able to take what this spec writes.
    let tables = smelter_lake::TableStore::from_config(&config.storage)?;
    smelter_worker::tasks::validate::check_existing_tables(&spec, &tables, &origin).await?;
    if let Some(address) = &args.flight_addr {
        config.worker.flight_listen = address.clone();
    }
    if let Some(address) = &args.coordinator_addr {
        config.coordinator.listen = address.clone();
    }
    if let Some(address) = &args.http_addr {
        config.coordinator.http_listen = Some(address.clone());
    }
    let cluster = LocalCluster::start(config.clone(), usize::from(args.workers)).await?;
    let result = serve(&cluster, &text, &origin, &spec, &config, &args, &shutdown).await;
    tracing::info!("shutting down: committing in-flight batches");
    let stopped = cluster.shutdown().await;
    result.and(stopped)
}

async fn serve(
    cluster: &LocalCluster,
    text: &str,
    origin: &str,
    spec: &smelter_common::spec::PipelineSpec,
    config: &SmelterConfig,
    args: &UpArgs,
    shutdown: &CancellationToken,
) -> Result<()> {
    let credentials = super::credentials(&config.security)?;
    let mut admin = AdminClient::connect_with(&cluster.coordinator_endpoint, &credentials).await?;
    let applied = admin.apply(text, origin).await?;
    tracing::info!(
        pipeline = %applied.pipeline,
        tasks = applied.tasks,
        coordinator = %cluster.coordinator_endpoint,
        http = cluster.http_endpoint.as_deref().unwrap_or("off"),
        flight = %cluster.flight_endpoints[0],
        data = %config.storage.root.display(),
        "smelter is up"
    );
    if std::io::stderr().is_terminal() {
        eprintln!(
            "smelter is up: pipeline `{}` ({} tasks), tables in {}\n  Flight SQL  {}\n  control     {}\n  try: smelter query \"SELECT * FROM gold.hourly_metrics ORDER BY hour DESC LIMIT 5\"{}\n  Ctrl-C stops (in-flight batches are committed first)\n",
            applied.pipeline,
            applied.tasks,
            config.storage.root.display(),
            cluster.flight_endpoints[0],
            cluster.coordinator_endpoint,
            if cluster.flight_endpoints[0].ends_with(":8815") {
                String::new()
            } else {
                format!(" --endpoint {}", cluster.flight_endpoints[0])
            },
        );
    }
    let tables = smelter_lake::TableStore::from_config(&config.storage)?;
    let mut view = ProgressView::new(std::io::stderr().is_terminal());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut drain = smelter_worker::tasks::drained::DrainWatch::new(tables, spec.clone());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match admin.status().await {
            Ok(status) => view.show(&status),
            Err(error) => tracing::warn!(%error, "cannot read status"),
        }
        if args.exit_when_done && drain.drained().await.map_err(CliError::Worker)? {
            tracing::info!("all sources processed through gold; exiting");
            return Ok(());
        }
    }
}
