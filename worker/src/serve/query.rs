//! Read-only SQL over the Delta tables, shared by gold refreshes and Flight SQL.
//!
//! Each layer (`bronze`, `silver`, `gold`) is a schema whose tables are opened lazily, when
//! a query names them, at their latest version (or a pinned one), so a query reads only
//! what it references and always sees committed data only. DDL, DML and other statements
//! are refused by the planner's `SQLOptions`; each session has a memory limit.
//!
//! A client's query is planned for its caller ([`QueryEngine::plan_for`]): tables outside
//! the caller's grants are not listed, and naming one (anywhere: a join, a subquery, a CTE)
//! fails planning with [`Forbidden`], which Flight SQL answers with `PERMISSION_DENIED`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use smelter_common::config::QueryConfig;
use smelter_common::security::Principal;

use super::memory::WorkerMemory;
use super::time_travel;
use crate::Result;
use smelter_lake::TableStore;

/// Plans SQL over the tables of one storage root.
#[derive(Clone)]
pub struct QueryEngine {
    tables: TableStore,
    limits: QueryConfig,
    /// Client engines: the memory all their queries share (see [`super::memory`]).
    clients: Option<WorkerMemory>,
}

/// The catalog the layers are schemas of, as Flight SQL's catalog calls and
/// `information_schema` name it (queries name tables `layer.table`).
pub const CATALOG: &str = "smelter";

/// The layers, as schemas of [`CATALOG`].
pub const LAYERS: [&str; 3] = ["bronze", "silver", "gold"];

/// The SQL statements clients may run: queries only.
pub fn read_only() -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A query named a table its caller may not read.
#[derive(Debug, thiserror::Error)]
#[error("{caller} may not read {table}")]
pub struct Forbidden {
    /// The table (`layer.name`).
    pub table: String,
    /// Who asked.
    pub caller: String,
}

impl Forbidden {
    /// The `Forbidden` somewhere in `error`'s chain of sources.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Forbidden> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(forbidden) = error.downcast_ref::<Forbidden>() {
                return Some(forbidden);
            }
            current = error.source();
        }
        None
    }
}

/// One layer of tables, opened on first use by a query.
#[derive(Debug)]
struct LayerSchema {
    layer: &'static str,
    tables: TableStore,
    /// Every table that existed when the query's session was made (`layer.name`).
    names: Arc<Vec<String>>,
    /// Tables fixed at a version (`layer.name`, version).
    pinned: Vec<(String, i64)>,
    /// The client the session plans for (`None`: the pipeline itself, which reads all).
    caller: Option<Arc<Principal>>,
}

impl LayerSchema {
    fn may_read(&self, full: &str) -> bool {
        self.caller.as_ref().is_none_or(|c| c.may_read(full))
    }
}

#[async_trait]
impl SchemaProvider for LayerSchema {
    fn table_names(&self) -> Vec<String> {
        let prefix = format!("{}.", self.layer);
        self.names
            .iter()
            .filter(|n| self.may_read(n))
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        // `name@changes:F:T`: its change data feed (a resolved `table_changes`).
        if let Some((base, from, to)) = super::table_changes::marked(name) {
            let full = format!("{}.{base}", self.layer);
            if let Some(caller) = self.caller.as_ref().filter(|c| !c.may_read(&full)) {
                return Err(DataFusionError::External(Box::new(Forbidden {
                    table: full,
                    caller: caller.name.clone(),
                })));
            }
            let table = self
                .tables
                .open(&full)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            return super::table_changes::provider(table, &full, from, to).map(Some);
        }
        // `name@vN`: the table at version N (a resolved `VERSION AS OF`).
        let (name, travel) = match time_travel::pinned(name) {
            Some((base, version)) => (base, Some(version)),
            None => (name, None),
        };
        let full = format!("{}.{name}", self.layer);
        if !self.names.contains(&full) {
            return Ok(None);
        }
        if let Some(caller) = self.caller.as_ref().filter(|c| !c.may_read(&full)) {
            return Err(DataFusionError::External(Box::new(Forbidden {
                table: full,
                caller: caller.name.clone(),
            })));
        }
        let pinned = self
            .pinned
            .iter()
            .find(|(n, _)| *n == full)
            .map(|(_, v)| *v);
        let table = match travel.or(pinned) {
            Some(version) => self.tables.open_version(&full, version).await,
            None => self.tables.open(&full).await,
        }
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // Local tables use DataFusion's built-in file store; remote stores register theirs
        // with the session when they are added.
        Ok(Some(table.table_provider().await?))
    }

    fn table_exist(&self, name: &str) -> bool {
        let name = time_travel::pinned(name).map_or(name, |(base, _)| base);
        let name = super::table_changes::marked(name).map_or(name, |(base, _, _)| base);
        self.names.contains(&format!("{}.{name}", self.layer))
    }
}

impl QueryEngine {
    /// An engine over `tables` with per-query `limits` (for the pipeline's own queries).
    pub fn new(tables: TableStore, limits: QueryConfig) -> Self {
        Self {
            tables,
            limits,
            clients: None,
        }
    }

    /// Where the engine's tables are.
    pub fn tables(&self) -> &TableStore {
        &self.tables
    }

    /// An engine for client queries: each within `limits.memory_limit_mb`, and all of them
    /// together within `limits.worker_memory_limit_mb`.
    pub fn for_clients(tables: TableStore, limits: QueryConfig) -> Self {
        let shared = WorkerMemory::new(limits.worker_memory_limit_mb << 20);
        Self {
            tables,
            limits,
            clients: Some(shared),
        }
    }

    /// Bytes the client queries hold now (0 for the pipeline's engines).
    pub fn client_memory(&self) -> usize {
        self.clients.as_ref().map_or(0, WorkerMemory::reserved)
    }

    /// The limits applied to each query.
    pub fn limits(&self) -> &QueryConfig {
        &self.limits
    }

    /// A session with the three layers registered; `pinned` fixes one table at a version.
    pub async fn session(&self, pinned: Option<(&str, i64)>) -> Result<SessionContext> {
        let pinned: Vec<(&str, i64)> = pinned.into_iter().collect();
        self.session_with(&pinned, SessionConfig::new(), None).await
    }

    /// A session that plans every query as one partition: for the many small plans of an
    /// incremental gold refresh, where splitting the input costs more than it saves.
    pub async fn serial_session(&self) -> Result<SessionContext> {
        self.session_with(&[], SessionConfig::new().with_target_partitions(1), None)
            .await
    }

    async fn session_with(
        &self,
        pinned: &[(&str, i64)],
        config: SessionConfig,
        caller: Option<Arc<Principal>>,
    ) -> Result<SessionContext> {
        let names = Arc::new(self.tables.list().await);
        let mut config = config
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, "public");
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let per_query = self.limits.memory_limit_mb << 20;
        let runtime = match &self.clients {
            Some(shared) => RuntimeEnvBuilder::new().with_memory_pool(shared.query(per_query)),
            None => RuntimeEnvBuilder::new().with_memory_limit(per_query, 1.0),
        }
        .build_arc()?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        crate::serve::functions::register(&ctx);
        ctx.register_udtf(
            "table_history",
            Arc::new(super::history::HistoryFunction {
                tables: self.tables.clone(),
                names: names.clone(),
                caller: caller.clone(),
            }),
        );
        ctx.register_udtf(
            "column_lineage",
            Arc::new(super::column_lineage::ColumnLineageFunction {
                engine: self.clone(),
                names: names.clone(),
                caller: caller.clone(),
            }),
        );
        ctx.register_udtf(
            "table_detail",
            Arc::new(super::detail::DetailFunction {
                tables: self.tables.clone(),
                names: names.clone(),
                caller: caller.clone(),
            }),
        );
        ctx.register_udtf(
            "table_positions",
            Arc::new(super::positions::PositionsFunction {
                tables: self.tables.clone(),
                names: names.clone(),
                caller: caller.clone(),
            }),
        );
        let catalog = ctx
            .catalog(CATALOG)
            .ok_or_else(|| DataFusionError::Internal("default catalog missing".into()))?;
        for layer in LAYERS {
            let schema = LayerSchema {
                layer,
                tables: self.tables.clone(),
                names: names.clone(),
                pinned: pinned.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
                caller: caller.clone(),
            };
            catalog.register_schema(layer, Arc::new(schema))?;
        }
        Ok(ctx)
    }

    /// Plans a read-only query.
    pub async fn plan(&self, sql: &str, pinned: Option<(&str, i64)>) -> Result<DataFrame> {
        let pinned: Vec<(&str, i64)> = pinned.into_iter().collect();
        self.plan_at(sql, &pinned).await
    }

    /// Plans a read-only query with each of `pinned`'s tables at its version (a gold query
    /// over several upstreams reads each at the version its txn records).
    pub async fn plan_at(&self, sql: &str, pinned: &[(&str, i64)]) -> Result<DataFrame> {
        let ctx = self
            .session_with(pinned, SessionConfig::new(), None)
            .await?;
        let sql = time_travel::rewrite(sql, &self.tables).await?;
        let sql = super::table_changes::rewrite(&sql, &self.tables).await?;
        Ok(ctx.sql_with_options(&sql, read_only()).await?)
    }

    /// The tables `caller` may read, per layer (`(layer, table, schema)`, in name order),
    /// at their latest versions: what Flight SQL's `GetTables` lists.
    pub async fn tables_for(
        &self,
        caller: &Principal,
    ) -> Result<Vec<(&'static str, String, arrow::datatypes::SchemaRef)>> {
        let ctx = self
            .session_with(&[], SessionConfig::new(), Some(Arc::new(caller.clone())))
            .await?;
        let catalog = ctx
            .catalog(CATALOG)
            .ok_or_else(|| DataFusionError::Internal("default catalog missing".into()))?;
        let mut out = Vec::new();
        for layer in LAYERS {
            let Some(schema) = catalog.schema(layer) else {
                continue;
            };
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                // A table may vanish between the listing and the open (a test dropping
                // its data directory): it is simply not listed.
                if let Some(table) = schema.table(&name).await? {
                    out.push((layer, name, table.schema()));
                }
            }
        }
        Ok(out)
    }

    /// The primary key of every table named `table` the caller may read (in layer
    /// `schema`, when given): the columns its catalog description names
    /// (`smelter_lake::describe::KEY_PROPERTY`, a gold table's `keys`), in order. Tables
    /// without one are left out, as Flight SQL's GetPrimaryKeys expects.
    pub async fn primary_keys(
        &self,
        caller: &Principal,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Vec<(&'static str, String, Vec<String>)>> {
        let external = |e: smelter_lake::LakeError| DataFusionError::External(Box::new(e));
        let mut out = Vec::new();
        for layer in LAYERS
            .into_iter()
            .filter(|l| schema.is_none_or(|s| s == *l))
        {
            let name = format!("{layer}.{table}");
            if !caller.may_read(&name) || !self.tables.exists(&name).await {
                continue;
            }
            let mut opened = self.tables.open(&name).await.map_err(external)?;
            let detail = smelter_lake::detail::detail(&mut opened, &name)
                .await
                .map_err(external)?;
            let keys = detail.catalog().keys;
            if !keys.is_empty() {
                out.push((layer, table.to_string(), keys));
            }
        }
        Ok(out)
    }

    /// [`plan_for`](Self::plan_for) with values bound to the query's placeholders (`$1`,
    /// `$2`, ...), checked against the types the plan expects.
    pub async fn plan_with_params(
        &self,
        sql: &str,
        caller: &Principal,
        params: Option<datafusion::common::ParamValues>,
    ) -> Result<DataFrame> {
        let frame = self.plan_for(sql, caller).await?;
        Ok(match params {
            Some(params) => frame.with_param_values(params)?,
            None => frame,
        })
    }

    /// Plans a read-only query for `caller`: only the tables it is granted exist for it.
    #[tracing::instrument(name = "plan_query", skip_all, fields(caller = %caller.name, sql_bytes = sql.len()))]
    pub async fn plan_for(&self, sql: &str, caller: &Principal) -> Result<DataFrame> {
        let ctx = self
            .session_with(&[], SessionConfig::new(), Some(Arc::new(caller.clone())))
            .await?;
        let sql = time_travel::rewrite(sql, &self.tables).await?;
        let sql = super::table_changes::rewrite(&sql, &self.tables).await?;
        Ok(ctx.sql_with_options(&sql, read_only()).await?)
    }
}
