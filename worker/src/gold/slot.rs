//! Physical plans planned once and run again over new rows.
//!
//! An incremental refresh runs the same few plans (partial aggregate, distinct pairs, state
//! merge) over a few thousand new rows each time. Planning them from SQL-shaped logical
//! plans (analysis, optimizer passes, physical planning) cost as much CPU as running them.
//! A [`Slot`] is a table whose rows are whatever was last [`Slot::fill`]ed: a plan built
//! over it reads the slot when it runs, not when it is planned, so it can be kept. Each run
//! goes through [`Prepared::run`], which takes a fresh copy of the plan's nodes first:
//! DataFusion operators register their metrics on the node for every execution, and a kept
//! plan would otherwise grow with every refresh.
//!
//! Only plans whose shape Smelter builds are kept (aggregates over a slot). The plan that
//! finishes a refresh holds the query as written (sorts, limits, `HAVING`), and operators
//! such as a sort with a limit keep state between runs that a reset may not cover; it runs
//! once per refresh and is still planned each time.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::SessionContext;

use crate::Result;

/// Rows handed to the plans that read this slot on their next runs.
#[derive(Debug)]
pub struct Slot {
    schema: SchemaRef,
    rows: Mutex<Vec<RecordBatch>>,
}

impl Slot {
    /// An empty slot of rows shaped as `schema`.
    pub fn new(schema: SchemaRef) -> Arc<Self> {
        Arc::new(Self {
            schema,
            rows: Mutex::new(Vec::new()),
        })
    }

    /// The rows the next runs read (the previous ones are dropped).
    pub fn fill(&self, rows: Vec<RecordBatch>) {
        *self.rows.lock().unwrap_or_else(|e| e.into_inner()) = rows;
    }

    /// The slot as a table to plan over.
    pub fn table(self: &Arc<Self>) -> Result<Arc<dyn TableProvider>> {
        let stream: Arc<dyn PartitionStream> = self.clone();
        Ok(Arc::new(StreamingTable::try_new(
            self.schema.clone(),
            vec![stream],
        )?))
    }
}

impl PartitionStream for Slot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(rows.into_iter().map(Ok)),
        ))
    }
}

/// A physical plan kept for running again.
#[derive(Debug)]
pub struct Prepared {
    plan: Arc<dyn ExecutionPlan>,
}

impl Prepared {
    /// Plans `plan` in `ctx` once.
    pub async fn new(ctx: &SessionContext, plan: LogicalPlan) -> Result<Self> {
        let plan = ctx.state().create_physical_plan(&plan).await?;
        Ok(Self { plan })
    }

    /// The plan's output schema.
    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Runs the plan over what its slots hold now.
    pub async fn run(&self, ctx: &SessionContext) -> Result<Vec<RecordBatch>> {
        let plan = reset_plan_states(self.plan.clone())?;
        Ok(datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(schema: &SchemaRef, keys: &[&str], values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap()
    }

    /// One plan, run three times over three fillings, answers for each filling; its node
    /// metrics do not pile up across runs.
    #[tokio::test]
    async fn a_kept_plan_reads_what_the_slot_holds_when_it_runs() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let ctx = SessionContext::new();
        let slot = Slot::new(schema.clone());
        let plan = ctx
            .read_table(slot.table().unwrap())
            .unwrap()
            .aggregate(
                vec![datafusion::prelude::col("k")],
                vec![datafusion::functions_aggregate::expr_fn::sum(
                    datafusion::prelude::col("v"),
                )],
            )
            .unwrap()
            .sort(vec![datafusion::prelude::col("k").sort(true, false)])
            .unwrap()
            .into_unoptimized_plan();
        let prepared = Prepared::new(&ctx, plan).await.unwrap();
        let text = |rows: Vec<RecordBatch>| {
            arrow::util::pretty::pretty_format_batches(&rows)
                .unwrap()
                .to_string()
        };
        slot.fill(vec![batch(&schema, &["a", "b", "a"], &[1, 2, 3])]);
        let first = text(prepared.run(&ctx).await.unwrap());
        assert!(first.contains("| a | 4 "), "{first}");
        assert!(first.contains("| b | 2 "), "{first}");
        slot.fill(vec![
            batch(&schema, &["c"], &[10]),
            batch(&schema, &["c"], &[5]),
        ]);
        let second = text(prepared.run(&ctx).await.unwrap());
        assert!(second.contains("| c | 15 "), "{second}");
        assert!(!second.contains("| a "), "{second}");
        slot.fill(Vec::new());
        assert!(
            prepared
                .run(&ctx)
                .await
                .unwrap()
                .iter()
                .all(|b| b.num_rows() == 0)
        );
        let metrics = prepared.plan.metrics().map_or(0, |m| m.iter().count());
        assert_eq!(metrics, 0, "the kept plan itself never runs");
    }
}
