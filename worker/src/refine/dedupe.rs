//! Duplicate removal on key columns: first within the batch (first occurrence wins), then
//! against rows already in the silver table, optionally only within an event-time window
//! around the batch (`within: 1h`), which keeps the lookup to recent files.
//!
//! The lookup runs against the snapshot the next commit will be built on; the refine task
//! is the table's only writer, and a racing owner is rejected by the txn conflict check.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast, filter_record_batch, max, min};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{JoinType, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionContext, col, lit};
use deltalake::DeltaTable;

use crate::Result;

const SEPARATOR: char = '\u{1f}';

/// Composite key of each row as one string (NULL if any key column is NULL).
fn row_keys(batch: &RecordBatch, keys: &[String]) -> Result<Vec<Option<String>>> {
    let columns: Vec<ArrayRef> = keys
        .iter()
        .map(|k| {
            let column = batch.column_by_name(k).ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("no key column {k}"))
            })?;
            cast(column.as_ref(), &DataType::Utf8)
        })
        .collect::<Result<_, _>>()?;
    let strings: Vec<&StringArray> = columns
        .iter()
        .filter_map(|c| c.as_any().downcast_ref::<StringArray>())
        .collect();
    Ok((0..batch.num_rows())
        .map(|row| {
            let mut key = String::new();
            for (i, s) in strings.iter().enumerate() {
                if s.is_null(row) {
                    return None;
                }
                if i > 0 {
                    key.push(SEPARATOR);
                }
                key.push_str(s.value(row));
            }
            Some(key)
        })
        .collect())
}

/// Removes rows whose key repeats within the batch or already exists in `table`.
/// Returns the remaining rows and how many were removed.
pub async fn dedupe(
    batch: RecordBatch,
    keys: &[String],
    window: Option<(&str, Duration)>,
    table: &DeltaTable,
) -> Result<(RecordBatch, usize)> {
    if batch.num_rows() == 0 {
        return Ok((batch, 0));
    }
    let row_keys = row_keys(&batch, keys)?;
    let existing = existing_keys(&batch, keys, window, table).await?;
    let mut seen = HashSet::with_capacity(row_keys.len());
    let keep: BooleanArray = row_keys
        .iter()
        .map(|key| {
            Some(
                key.as_ref()
                    .is_none_or(|k| !existing.contains(k) && seen.insert(k.clone())),
            )
        })
        .collect();
    let kept = filter_record_batch(&batch, &keep)?;
    let removed = batch.num_rows() - kept.num_rows();
    Ok((kept, removed))
}

async fn existing_keys(
    batch: &RecordBatch,
    keys: &[String],
    window: Option<(&str, Duration)>,
    table: &DeltaTable,
) -> Result<HashSet<String>> {
    if crate::tables::row_count(table) == 0 {
        return Ok(HashSet::new());
    }
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| crate::WorkerError::delta("dedupe", e))?;
    let provider = table.table_provider().await?;
    let mut existing = ctx.read_table(provider)?;
    if let Some((ts_column, within)) = window
        && let Some(ts) = batch
            .column_by_name(ts_column)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        && let (Some(lo), Some(hi)) = (min(ts), max(ts))
    {
        let pad = within.as_micros() as i64;
        let bound = |v: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(v),
                Some("UTC".into()),
            ))
        };
        existing = existing.filter(
            col(ts_column)
                .gt_eq(bound(lo - pad))
                .and(col(ts_column).lt_eq(bound(hi + pad))),
        )?;
    }
    // Only this batch's keys matter: semi-join the table against them.
    let key_columns: Vec<ArrayRef> = keys
        .iter()
        .filter_map(|k| batch.column_by_name(k).cloned())
        .collect();
    let key_schema = Arc::new(Schema::new(
        keys.iter()
            .zip(&key_columns)
            .map(|(k, c)| Field::new(format!("__k_{k}"), c.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let key_batch = RecordBatch::try_new(key_schema.clone(), key_columns)?;
    let candidates = ctx.read_table(Arc::new(MemTable::try_new(
        key_schema,
        vec![vec![key_batch]],
    )?))?;
    let left: Vec<String> = keys.to_vec();
    let right: Vec<String> = keys.iter().map(|k| format!("__k_{k}")).collect();
    let left_refs: Vec<&str> = left.iter().map(String::as_str).collect();
    let right_refs: Vec<&str> = right.iter().map(String::as_str).collect();
    let found = existing
        .select(keys.iter().map(|k| col(k.as_str())).collect::<Vec<_>>())?
        .join(
            candidates,
            JoinType::LeftSemi,
            &left_refs,
            &right_refs,
            None,
        )?
        .collect()
        .await?;
    let mut out = HashSet::new();
    for batch in found {
        out.extend(row_keys(&batch, keys)?.into_iter().flatten());
    }
    Ok(out)
}
