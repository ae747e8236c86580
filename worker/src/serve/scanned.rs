//! The table a table function (`table_history`, `table_positions`, `table_detail`,
//! `column_lineage`) returns: one batch, read from the tables' logs when a query scans it,
//! not when it is planned — so a query that is only planned reads nothing.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// What a table function reads when its table is scanned.
#[async_trait]
pub trait ReadOnScan: std::fmt::Debug + Send + Sync {
    /// The batch's schema, known when the query is planned.
    fn schema(&self) -> SchemaRef;
    /// The rows.
    async fn read(&self) -> Result<RecordBatch>;
}

/// A table function's table (see the module docs).
#[derive(Debug)]
pub struct Scanned<R>(pub R);

#[async_trait]
impl<R: ReadOnScan + 'static> TableProvider for Scanned<R> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.0.read().await?;
        MemTable::try_new(self.0.schema(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
