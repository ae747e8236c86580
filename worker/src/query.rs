//! Read-only SQL over the Delta tables, shared by gold refreshes and Flight SQL.
//!
//! Every table under the storage root is registered as `layer.name` in a fresh DataFusion
//! session per query, at its latest version (or a pinned one), so a query always sees
//! committed data only. DDL, DML and other statements are refused by the planner's
//! `SQLOptions`; each session has a memory limit.

use std::sync::Arc;

use datafusion::catalog::MemorySchemaProvider;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::common::TableReference;
use smelter_common::config::QueryConfig;

use crate::Result;
use crate::tables::TableStore;

/// Plans SQL over the tables of one storage root.
#[derive(Clone)]
pub struct QueryEngine {
    tables: TableStore,
    limits: QueryConfig,
}

/// The SQL statements clients may run: queries only.
fn read_only() -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

impl QueryEngine {
    /// An engine over `tables` with per-query `limits`.
    pub fn new(tables: TableStore, limits: QueryConfig) -> Self {
        Self { tables, limits }
    }

    /// The limits applied to each query.
    pub fn limits(&self) -> &QueryConfig {
        &self.limits
    }

    /// A session with every table registered; `pinned` fixes one table at a version.
    pub async fn session(&self, pinned: Option<(&str, i64)>) -> Result<SessionContext> {
        let mut config = SessionConfig::new().with_information_schema(true);
        config.options_mut().execution.parquet.schema_force_view_types = false;
        let runtime = RuntimeEnvBuilder::new().with_memory_limit(self.limits.memory_limit_mb * 1024 * 1024, 1.0).build_arc()?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let catalog = ctx.catalog("datafusion").ok_or_else(|| datafusion::error::DataFusionError::Internal("default catalog missing".into()))?;
        for layer in ["bronze", "silver", "gold"] {
            catalog.register_schema(layer, Arc::new(MemorySchemaProvider::new()))?;
        }
        for name in self.tables.list() {
            let table = match pinned {
                Some((pinned_name, version)) if pinned_name == name => self.tables.open_version(&name, version).await?,
                _ => self.tables.open(&name).await?,
            };
            table.update_datafusion_session(&ctx.state()).map_err(|e| crate::WorkerError::delta(&name, e))?;
            let provider = table.table_provider().await?;
            let (layer, short) = name.split_once('.').unwrap_or(("bronze", &name));
            ctx.register_table(TableReference::partial(layer, short), provider)?;
        }
        Ok(ctx)
    }

    /// Plans a read-only query.
    pub async fn plan(&self, sql: &str, pinned: Option<(&str, i64)>) -> Result<DataFrame> {
        let ctx = self.session(pinned).await?;
        Ok(ctx.sql_with_options(sql, read_only()).await?)
    }
}

