//! `column_lineage('gold.hourly_metrics')`: which upstream columns feed each column of a gold
//! table — one row per (column, upstream table, upstream column); a column computed from no
//! column (`count(*)`, a literal) has one row with NULL upstreams. Read from the table's
//! own SQL (kept in its metadata as `smelter.sql`, `smelter_lake::describe`) planned as the
//! refresh plans it, and followed through the logical plan: a projection or an aggregate
//! takes the columns its expression reads, a join puts its sides side by side, a union
//! merges its inputs, and anything else passes its input's columns through (or, for a node
//! this does not know, every input column feeds every output: never less than the truth).

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, LogicalPlan};
use smelter_common::security::Principal;

use super::query::QueryEngine;
use super::scanned::{ReadOnScan, Scanned};

/// The `column_lineage` function of one session.
pub struct ColumnLineageFunction {
    /// Plans the table's SQL.
    pub engine: QueryEngine,
    /// Every table that existed when the session was made.
    pub names: Arc<Vec<String>>,
    /// The client the session plans for (`None`: the pipeline).
    pub caller: Option<Arc<Principal>>,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("column", DataType::Utf8, false),
        Field::new("upstream_table", DataType::Utf8, true),
        Field::new("upstream_column", DataType::Utf8, true),
    ]))
}

impl TableFunctionImpl for ColumnLineageFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(name)), _)] => name.to_ascii_lowercase(),
            _ => {
                return Err(DataFusionError::Plan(
                    "column_lineage takes one table name, as in column_lineage('gold.hourly_metrics')"
                        .into(),
                ));
            }
        };
        let name =
            super::history::readable("column_lineage", name, &self.names, self.caller.as_deref())?;
        Ok(Arc::new(Scanned(LineageTable {
            engine: self.engine.clone(),
            name,
        })))
    }
}

struct LineageTable {
    engine: QueryEngine,
    name: String,
}

impl std::fmt::Debug for ColumnLineageFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnLineageFunction")
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LineageTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineageTable")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Upstream `(table, column)` pairs of each output column of `plan`, in output order.
pub fn sources(plan: &LogicalPlan) -> Vec<BTreeSet<(String, String)>> {
    let from_exprs = |exprs: &[&Expr], input: &LogicalPlan| {
        let inner = sources(input);
        let schema = input.schema();
        exprs
            .iter()
            .map(|expr| {
                let mut out = BTreeSet::new();
                for column in expr.column_refs() {
                    if let Ok(i) = schema.index_of_column(column) {
                        out.extend(inner[i].iter().cloned());
                    }
                }
                out
            })
            .collect()
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            let table = scan.table_name.to_string();
            plan.schema()
                .fields()
                .iter()
                .map(|f| BTreeSet::from([(table.clone(), f.name().clone())]))
                .collect()
        }
        LogicalPlan::Projection(projection) => {
            let exprs: Vec<&Expr> = projection.expr.iter().collect();
            from_exprs(&exprs, &projection.input)
        }
        LogicalPlan::Aggregate(aggregate) => {
            let exprs: Vec<&Expr> = aggregate
                .group_expr
                .iter()
                .chain(&aggregate.aggr_expr)
                .collect();
            from_exprs(&exprs, &aggregate.input)
        }
        LogicalPlan::Window(window) => {
            let mut out = sources(&window.input);
            let exprs: Vec<&Expr> = window.window_expr.iter().collect();
            out.extend(from_exprs(&exprs, &window.input));
            out
        }
        LogicalPlan::Join(join) => {
            let mut out = sources(&join.left);
            out.extend(sources(&join.right));
            out.truncate(plan.schema().fields().len());
            out
        }
        LogicalPlan::Union(union) => {
            let mut out = vec![BTreeSet::new(); plan.schema().fields().len()];
            for input in &union.inputs {
                for (i, columns) in sources(input).into_iter().enumerate() {
                    if let Some(slot) = out.get_mut(i) {
                        slot.extend(columns);
                    }
                }
            }
            out
        }
        other => {
            let inputs = other.inputs();
            let width = plan.schema().fields().len();
            match inputs.as_slice() {
                // Filters, sorts, limits, aliases, distinct: the input's columns, as they are.
                [input] if input.schema().fields().len() == width => sources(input),
                _ => {
                    let all: BTreeSet<_> =
                        inputs.iter().flat_map(|i| sources(i)).flatten().collect();
                    vec![all; width]
                }
            }
        }
    }
}

#[async_trait]
impl ReadOnScan for LineageTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn read(&self) -> Result<RecordBatch> {
        let external = |e: smelter_lake::LakeError| DataFusionError::External(Box::new(e));
        let tables = self.engine.tables();
        let mut table = tables.open(&self.name).await.map_err(external)?;
        let detail = smelter_lake::detail::detail(&mut table, &self.name)
            .await
            .map_err(external)?;
        let Some(sql) = detail.catalog().sql else {
            return Err(DataFusionError::Plan(format!(
                "column_lineage: {} is not defined by SQL (only gold tables are)",
                self.name
            )));
        };
        let planned = self
            .engine
            .plan(&sql, None)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let plan = planned.logical_plan();
        let mut rows: (Vec<String>, Vec<Option<String>>, Vec<Option<String>>) = Default::default();
        for (field, upstream) in plan.schema().fields().iter().zip(sources(plan)) {
            if upstream.is_empty() {
                rows.0.push(field.name().clone());
                rows.1.push(None);
                rows.2.push(None);
            }
            for (table, column) in upstream {
                rows.0.push(field.name().clone());
                rows.1.push(Some(table));
                rows.2.push(Some(column));
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(rows.0)),
            Arc::new(StringArray::from(rows.1)),
            Arc::new(StringArray::from(rows.2)),
        ];
        let batch = RecordBatch::try_new(schema(), columns)?;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::catalog::MemTable;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn each_output_column_names_the_columns_it_reads() {
        let ctx = SessionContext::new();
        let events = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, true),
            Field::new("user_id", DataType::Utf8, true),
            Field::new("price", DataType::Float64, true),
            Field::new("quantity", DataType::Int64, true),
        ]));
        let users = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("tier", DataType::Utf8, true),
        ]));
        ctx.register_table(
            "events",
            Arc::new(MemTable::try_new(events, vec![vec![]]).unwrap()),
        )
        .unwrap();
        ctx.register_table(
            "users",
            Arc::new(MemTable::try_new(users, vec![vec![]]).unwrap()),
        )
        .unwrap();
        let plan = ctx
            .sql(
                "SELECT u.tier, count(*) AS n, sum(e.price * e.quantity) AS revenue \
                 FROM events e JOIN users u ON e.user_id = u.id \
                 WHERE e.ts > 0 GROUP BY u.tier ORDER BY revenue DESC",
            )
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        let found = sources(&plan);
        let names = |i: usize| -> Vec<String> {
            found[i].iter().map(|(t, c)| format!("{t}.{c}")).collect()
        };
        assert_eq!(names(0), ["users.tier"]);
        assert!(
            names(1).is_empty(),
            "count(*) reads no column: {:?}",
            names(1)
        );
        assert_eq!(names(2), ["events.price", "events.quantity"]);
    }
}
