//! `table_positions('layer.name', version)`: what a table had consumed at one version — its
//! txn positions (`smelter_lake::history::positions_at`): per source partition the last
//! offset (bronze), per upstream table the last version read (silver, gold). Followed from
//! gold down, they say which upstream versions and source offsets a version was computed
//! from (the HTTP lineage of one version is built from it). Grants apply as for any read.

use std::sync::Arc;

use super::scanned::{ReadOnScan, Scanned};
use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use smelter_common::security::Principal;
use smelter_lake::{AppId, TableStore};

/// The `table_positions` function of one session.
#[derive(Debug)]
pub struct PositionsFunction {
    /// Where the tables are.
    pub tables: TableStore,
    /// Every table that existed when the session was made.
    pub names: Arc<Vec<String>>,
    /// The client the session plans for (`None`: the pipeline).
    pub caller: Option<Arc<Principal>>,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("app_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        // The upstream table, or the source topic (file) for a source partition.
        Field::new("upstream", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, true),
        Field::new("position", DataType::Int64, false),
    ]))
}

impl TableFunctionImpl for PositionsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let usage = || {
            DataFusionError::Plan(
                "table_positions takes a table name and a version, as in \
                 table_positions('gold.hourly_metrics', 12)"
                    .into(),
            )
        };
        let (name, version) = match args.exprs() {
            [
                Expr::Literal(ScalarValue::Utf8(Some(name)), _),
                Expr::Literal(version, _),
            ] => (
                name.to_ascii_lowercase(),
                version
                    .cast_to(&DataType::Int64)
                    .ok()
                    .and_then(|v| match v {
                        ScalarValue::Int64(Some(v)) => Some(v),
                        _ => None,
                    })
                    .ok_or_else(usage)?,
            ),
            _ => return Err(usage()),
        };
        let name =
            super::history::readable("table_positions", name, &self.names, self.caller.as_deref())?;
        Ok(Arc::new(Scanned(PositionsTable {
            tables: self.tables.clone(),
            name,
            version,
        })))
    }
}

/// One table's positions at one version, read from its log when scanned.
#[derive(Debug)]
struct PositionsTable {
    tables: TableStore,
    name: String,
    version: i64,
}

#[async_trait]
impl ReadOnScan for PositionsTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn read(&self) -> Result<RecordBatch> {
        let plan_error = |e: smelter_lake::LakeError| match e {
            smelter_lake::LakeError::Invalid { .. } => DataFusionError::Plan(e.to_string()),
            other => DataFusionError::External(Box::new(other)),
        };
        let table = self.tables.open(&self.name).await.map_err(plan_error)?;
        let positions = smelter_lake::history::positions_at(&table, &self.name, self.version)
            .await
            .map_err(plan_error)?;
        let mut rows: (
            Vec<String>,
            Vec<&str>,
            Vec<String>,
            Vec<Option<i32>>,
            Vec<i64>,
        ) = Default::default();
        for (app_id, position) in &positions {
            let (kind, upstream, partition) = match app_id {
                AppId::Source {
                    topic, partition, ..
                } => ("source", topic.clone(), Some(*partition)),
                AppId::SourceEnd { topic, .. } => ("source_end", topic.clone(), None),
                AppId::Upstream { upstream, .. } => ("upstream", upstream.clone(), None),
                AppId::Replay { quarantine } => ("replay", quarantine.clone(), None),
                AppId::Epoch => continue,
            };
            rows.0.push(app_id.to_string());
            rows.1.push(kind);
            rows.2.push(upstream);
            rows.3.push(partition);
            rows.4.push(*position);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(rows.0)),
            Arc::new(StringArray::from(rows.1)),
            Arc::new(StringArray::from(rows.2)),
            Arc::new(Int32Array::from(rows.3)),
            Arc::new(Int64Array::from(rows.4)),
        ];
        let batch = RecordBatch::try_new(schema(), columns)?;
        Ok(batch)
    }
}
