//! Checks of a pipeline spec that need the query planner: expectation expressions and
//! gold SQL are planned against the schemas the pipeline will produce, before anything
//! runs. Errors name the file and the field.

use std::sync::Arc;

use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use smelter_common::spec::{Layer, PipelineSpec, TableSpec};

use crate::refine::Refiner;
use crate::tasks::schemas;
use crate::{Result, WorkerError};

/// Validates everything [`PipelineSpec::parse`] cannot: expectations and gold SQL.
pub async fn validate_pipeline(spec: &PipelineSpec, origin: &str) -> Result<()> {
    let ctx = SessionContext::new();
    let catalog = ctx.catalog("datafusion").ok_or_else(|| {
        datafusion::error::DataFusionError::Internal("default catalog missing".into())
    })?;
    for layer in ["bronze", "silver", "gold"] {
        catalog.register_schema(layer, Arc::new(MemorySchemaProvider::new()))?;
    }
    for (name, table) in &spec.tables {
        let schema = match smelter_common::spec::table_layer(name) {
            Some(Layer::Bronze) => schemas::bronze(),
            Some(Layer::Silver) => {
                let refiner = Refiner::new(name, table, origin)?;
                let quarantine = TableSpec::quarantine_name(name);
                register(&ctx, &quarantine, schemas::quarantine())?;
                refiner.silver_schema().clone()
            }
            _ => continue,
        };
        register(&ctx, name, schema)?;
    }
    // Gold tables over a silver table whose schema is inferred (or over such gold tables)
    // are planned once its columns are known, at run time.
    let mut unknown: std::collections::HashSet<&str> = spec
        .tables_in(Layer::Silver)
        .filter(|(_, t)| t.parse.as_ref().is_some_and(|p| p.schema.inferred()))
        .map(|(name, _)| name.as_str())
        .collect();
    for (name, table) in spec.tables_in(Layer::Gold) {
        if table.upstreams().any(|u| unknown.contains(u.as_str())) {
            unknown.insert(name);
            continue;
        }
        let sql = table.sql.as_deref().unwrap_or_default();
        let invalid = |field: &str, message: String| WorkerError::InvalidSpec {
            origin: origin.to_string(),
            field: format!("tables.{name}.{field}"),
            message,
        };
        let options = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = ctx
            .sql_with_options(sql, options)
            .await
            .map_err(|e| invalid("sql", e.find_root().to_string()))?;
        let columns: Vec<String> = frame
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for key in &table.keys {
            if !columns.contains(key) {
                return Err(invalid(
                    "keys",
                    format!(
                        "`{key}` is not a column of the SQL result ({})",
                        columns.join(", ")
                    ),
                ));
            }
        }
        let gold_schema = schemas::delta_schema(frame.schema().as_arrow());
        register(&ctx, name, gold_schema)?;
    }
    Ok(())
}

/// Checks that the silver tables `spec` declares and `tables` already holds can take the
/// rows the spec makes: their schemas may grow with it (see `smelter_lake::evolve`), and a
/// column whose type the table cannot take is refused here, naming it, before anything
/// runs. (`smelter apply` on a cluster checks the new spec against the running one.)
pub async fn check_existing_tables(
    spec: &PipelineSpec,
    tables: &smelter_lake::TableStore,
    origin: &str,
) -> Result<()> {
    for (name, table) in spec.tables_in(Layer::Silver) {
        // A merged table's columns do not change; an inferred one's follow the table; and
        // `on_incompatible` says what to do with columns the table cannot take.
        let handled = table.on_incompatible != smelter_common::spec::OnIncompatible::Refuse
            || table.parse.as_ref().is_some_and(|p| p.schema.inferred());
        if table.merge.is_some() || handled || !tables.exists(name).await {
            continue;
        }
        let existing = tables.open(name).await?;
        let held = smelter_lake::log::arrow_schema(&existing, name)?;
        let refiner = Refiner::new(name, table, origin)?;
        if smelter_lake::evolve::has_timestamp_ntz(refiner.silver_schema())
            && !smelter_lake::evolve::has_timestamp_ntz(&held)
        {
            return Err(WorkerError::InvalidSpec {
                origin: origin.to_string(),
                field: format!("tables.{name}.parse.schema"),
                message: format!(
                    "a timestamp_ntz column needs Delta's timestampNtz table feature, which {name} \
                     was not created with; declare it in a new table"
                ),
            });
        }
        if let Err(refused) = smelter_lake::evolve::plan(&held, refiner.silver_schema()) {
            return Err(WorkerError::InvalidSpec {
                origin: origin.to_string(),
                field: format!("tables.{name}.parse.schema.{}", refused.column),
                message: format!(
                    "the table holds {}; {} (a table can gain columns and widen int to \
                     long, float to double, date to timestamp; `on_incompatible: rescue` or \
                     `new_version` says what to do with other changes)",
                    name, refused.message
                ),
            });
        }
    }
    Ok(())
}

fn register(ctx: &SessionContext, name: &str, schema: arrow::datatypes::SchemaRef) -> Result<()> {
    let (layer, short) = name.split_once('.').unwrap_or(("bronze", name));
    let table = MemTable::try_new(schema, vec![vec![]])?;
    ctx.register_table(TableReference::partial(layer, short), Arc::new(table))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../../../examples/clickstream.yaml");

    #[tokio::test]
    async fn demo_validates() {
        let spec = PipelineSpec::parse(DEMO, "demo").unwrap();
        validate_pipeline(&spec, "demo").await.unwrap();
    }

    /// The validation error of the demo with `from` replaced by `to`.
    async fn error_for(from: &str, to: &str) -> String {
        assert!(DEMO.contains(from), "the demo has no `{from}`");
        let spec = PipelineSpec::parse(&DEMO.replace(from, to), "p.yaml").unwrap();
        validate_pipeline(&spec, "p.yaml")
            .await
            .unwrap_err()
            .to_string()
    }

    #[tokio::test]
    async fn bad_expression_and_sql_name_the_field() {
        let err = error_for("user_id IS NOT NULL", "user_idd IS NOT NULL").await;
        assert!(
            err.contains("tables.silver.events.expectations.0.expr") && err.contains("user_idd"),
            "{err}"
        );
        let err = error_for(
            "count(DISTINCT session_id) AS sessions",
            "count(DISTINCT sesion_id) AS sessions",
        )
        .await;
        assert!(
            err.contains("tables.gold.daily_summary.sql") && err.contains("sesion_id"),
            "{err}"
        );
        let err = error_for("keys: [day]", "keys: [date]").await;
        assert!(err.contains("tables.gold.daily_summary.keys"), "{err}");
        let err = error_for("expr: \"user_id IS NOT NULL\"", "expr: \"user_id\"").await;
        assert!(err.contains("not a boolean"), "{err}");
    }
}
