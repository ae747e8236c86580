//! Data-quality rules: SQL boolean expressions compiled once with DataFusion and evaluated
//! on every decoded batch.
//!
//! As in SQL CHECK constraints, a row violates a rule only when the expression is FALSE;
//! NULL passes. That lets a rule like `price BETWEEN 0 AND 100000` ignore events that have
//! no price at all.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::{and, filter_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use smelter_common::spec::{ExpectationSpec, OnViolation};

use crate::{Result, WorkerError};

/// One compiled rule.
pub struct CompiledExpectation {
    /// The rule as declared.
    pub spec: ExpectationSpec,
    expr: Arc<dyn PhysicalExpr>,
}

impl std::fmt::Debug for CompiledExpectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledExpectation")
            .field("spec", &self.spec)
            .finish()
    }
}

/// Compiles the rules of `table` against `schema`; errors name the rule's field path.
pub fn compile(
    table: &str,
    origin: &str,
    rules: &[ExpectationSpec],
    schema: &SchemaRef,
) -> Result<Vec<CompiledExpectation>> {
    let ctx = SessionContext::new();
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let invalid = |message: String| WorkerError::InvalidSpec {
                origin: origin.to_string(),
                field: format!("tables.{table}.expectations.{i}.expr"),
                message,
            };
            let logical = ctx
                .parse_sql_expr(&rule.expr, &df_schema)
                .map_err(|e| invalid(format!("`{}`: {e}", rule.expr)))?;
            let expr = ctx
                .create_physical_expr(logical, &df_schema)
                .map_err(|e| invalid(format!("`{}`: {e}", rule.expr)))?;
            let data_type = expr
                .data_type(schema.as_ref())
                .map_err(|e| invalid(e.to_string()))?;
            if data_type != DataType::Boolean {
                return Err(invalid(format!(
                    "`{}` is {data_type}, not a boolean",
                    rule.expr
                )));
            }
            Ok(CompiledExpectation {
                spec: rule.clone(),
                expr,
            })
        })
        .collect()
}

impl CompiledExpectation {
    /// A mask that is true for the rows that violate the rule (expression FALSE).
    pub fn violations(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let value = self.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        let result = value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                WorkerError::Query(datafusion::error::DataFusionError::Internal(
                    "expectation is not boolean".into(),
                ))
            })?;
        // FALSE violates; NULL passes.
        let violated = !result.values();
        Ok(BooleanArray::new(
            match result.nulls() {
                Some(nulls) => &violated & nulls.inner(),
                None => violated,
            },
            None,
        ))
    }

    /// The rows of `batch` still in `kept` that violate the rule.
    ///
    /// The rule is evaluated on the whole batch, so the rows earlier rules took out cost
    /// no copy. If that fails (`10 / n` erring on a row an earlier rule took out for
    /// `n = 0`), it is evaluated again on the kept rows alone, which is what the rule is
    /// declared to see.
    pub fn violations_among(
        &self,
        batch: &RecordBatch,
        kept: &BooleanArray,
    ) -> Result<BooleanArray> {
        if kept.true_count() == kept.len() {
            return self.violations(batch);
        }
        if let Ok(all) = self.violations(batch) {
            return Ok(and(&all, kept)?);
        }
        let among = self.violations(&filter_record_batch(batch, kept)?)?;
        let mut among = among.values().iter();
        Ok(kept
            .values()
            .iter()
            .map(|k| Some(k && among.next().unwrap_or(false)))
            .collect())
    }

    /// What to do with violating rows.
    pub fn action(&self) -> OnViolation {
        self.spec.on_violation
    }
}
