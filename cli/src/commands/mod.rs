//! One module per CLI verb; each returns a `Result` the binary turns into an exit code.

pub mod admin;
pub mod backfill;
pub mod bench;
pub mod compact;
pub mod delete;
pub mod history;
pub mod infer;
pub mod lineage;
pub mod maintenance;
pub mod quality;
pub mod replay;
pub mod restore;
pub mod roles;
pub mod up;
pub mod verify;

use std::path::Path;

use smelter_common::spec::PipelineSpec;

use crate::Result;

/// The clickstream pipeline: the benchmarks' and tests' workload.
pub const DEMO_PIPELINE: &str = include_str!("../../../examples/clickstream.yaml");

/// The demo `smelter up --demo` runs (the clickstream, the users table's change stream
/// merged into silver, and gold joining them), embedded so it works from any directory.
pub const SHOP_DEMO: &str = include_str!("../../../examples/shop.yaml");

/// Parses and fully validates a pipeline (schema, expectations, gold SQL).
pub async fn load_pipeline(text: &str, origin: &str) -> Result<PipelineSpec> {
    let spec = PipelineSpec::parse(text, origin)?;
    smelter_worker::tasks::validate::validate_pipeline(&spec, origin).await?;
    Ok(spec)
}

/// Fails with an invalid-argument error (exit 2) naming the root and the tables there
/// unless `table` exists under `tables`.
pub async fn require_table(tables: &smelter_lake::TableStore, table: &str) -> Result<()> {
    if tables.exists(table).await {
        return Ok(());
    }
    let known = tables.list().await;
    Err(crate::CliError::InvalidArgument(format!(
        "table {table} does not exist under {} (tables: {})",
        tables.root().display(),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )))
}

/// The tables of a data directory given on the command line (`DIR/tables`, as `smelter up`
/// lays it out), or of the configured storage (local or S3); and the names asked for, or all.
pub async fn local_tables(
    config: &smelter_common::config::SmelterConfig,
    data_dir: Option<&Path>,
    names: Vec<String>,
) -> Result<(smelter_lake::TableStore, Vec<String>)> {
    let tables = match data_dir {
        Some(dir) => smelter_lake::TableStore::new(dir.join("tables"))?,
        None => smelter_lake::TableStore::from_config(&config.storage)?,
    };
    let names = if names.is_empty() {
        tables.list().await
    } else {
        names
    };
    Ok((tables, names))
}

/// What this process's own commits (compaction, deletes) need: on a cluster that keeps its
/// state in etcd, the tables' commit locks there, so that they queue with the workers'
/// commits and carry an epoch; otherwise the txn compare-and-set alone, as for any writer
/// of a store with put-if-absent. (On a store without it, commits need the locks.)
pub async fn commit_env(
    config: &smelter_common::config::SmelterConfig,
    tables: &smelter_lake::TableStore,
    verb: &str,
) -> Result<smelter_lake::CommitEnv> {
    use smelter_common::config::StoreKind;
    let arbiter = match config.coordinator.store {
        StoreKind::Memory => None,
        StoreKind::Etcd => {
            let store = smelter_common::store::EtcdStore::connect_with(
                &config.coordinator.etcd_endpoint_list(),
                smelter_common::security::tls::etcd(&config.security)?,
            )
            .await?;
            Some(smelter_lake::lock::CommitArbiter::new(
                std::sync::Arc::new(store),
                std::time::Duration::from_millis(config.worker.commit_lock_ttl_ms),
                format!(
                    "{} pid {} smelter {verb}",
                    std::env::var("HOSTNAME").unwrap_or_default(),
                    std::process::id()
                ),
            ))
        }
    };
    Ok(smelter_lake::CommitEnv {
        arbiter,
        log: tables.log_kind(),
        // The crash hooks of the fault suite (`worker.failpoint`), unarmed by default.
        failpoints: smelter_lake::failpoint::Failpoints::parse(config.worker.failpoint.as_deref())?,
        ..Default::default()
    })
}

/// The credentials this process presents to a cluster: the `[security]` section's CA,
/// certificate and token.
pub fn credentials(
    security: &smelter_common::security::SecurityConfig,
) -> Result<smelter_sdk::Credentials> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| crate::CliError::Io {
            context: format!("read {}", path.display()),
            source,
        })
    };
    let tls = match &security.tls_ca {
        None => None,
        Some(ca) => Some(smelter_sdk::TlsOptions {
            ca_pem: read(ca)?,
            identity: match (&security.tls_cert, &security.tls_key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            },
            domain: security.tls_domain.clone(),
        }),
    };
    Ok(smelter_sdk::Credentials {
        tls,
        token: security.token.as_ref().map(|t| t.expose().to_string()),
    })
}

/// Reads a pipeline file.
pub fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| crate::CliError::Io {
        context: format!("read {}", path.display()),
        source,
    })
}
