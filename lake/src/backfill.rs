//! Backfill: values a table kept in `_rescued_data` — fields its records carried before
//! the spec declared them — moved into the columns declared since (see [`crate::evolve`]).
//!
//! One rewrite commit (`UPDATE`, `dataChange = true`, under the commit lock like any
//! rewrite): each file holding a row whose column is null and whose `_rescued_data` has
//! the field is rewritten with the value in the column and the field taken out of
//! `_rescued_data` (null once nothing is left). A value that does not fit the column's type
//! stays rescued. Readers downstream see rows rewritten and rebuild (incremental gold
//! starts over). Running it again finds nothing left: a backfill is idempotent.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::kernels::zip::zip;
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::DeltaTable;
use deltalake::protocol::DeltaOperation;
use serde_json::{Map, Value};

use crate::changes::{self, DataFile};
use crate::commit::{CommitEnv, Rewrite, RewriteOutcome, rewrite};
use crate::log::{arrow_schema, refresh};
use crate::{LakeError, Result};

/// The column rescued values are kept in.
pub const RESCUED_COLUMN: &str = "_rescued_data";

/// A column to fill, and the `_rescued_data` key its values were kept under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The table's column.
    pub column: String,
    /// The key in `_rescued_data` (the field's dotted path, `user.device`).
    pub key: String,
}

/// What a backfill did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backfill {
    /// The table version of the backfill, if anything was filled.
    pub version: Option<i64>,
    /// Values moved into each column.
    pub filled: BTreeMap<String, u64>,
    /// Rescued values left where they were: they do not fit their column's type.
    pub unfit: u64,
    /// Files rewritten.
    pub files_rewritten: u64,
}

/// How many times a backfill plans again after another rewrite took its files.
const PLANS: usize = 5;

/// Moves the rescued values of `targets` into their columns (see the module docs).
pub async fn backfill(
    table: &mut DeltaTable,
    name: &str,
    targets: &[Target],
    env: &CommitEnv,
) -> Result<Backfill> {
    for _ in 0..PLANS {
        refresh(table, name).await?;
        let schema = arrow_schema(table, name)?;
        if schema.field_with_name(RESCUED_COLUMN).is_err() {
            return Err(LakeError::Invalid {
                table: name.to_string(),
                message: format!("{name} has no {RESCUED_COLUMN} column to backfill from"),
            });
        }
        if crate::log::table_property(table, crate::describe::CHANGE_DATA_FEED_PROPERTY)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Err(LakeError::Unsupported {
                location: name.to_string(),
                message: "a backfill of a table with the change data feed is not supported yet"
                    .into(),
            });
        }
        let targets: Vec<(&Target, DataType)> = targets
            .iter()
            .filter_map(|t| {
                let field = schema.field_with_name(&t.column).ok()?;
                Some((t, field.data_type().clone()))
            })
            .collect();
        let mut report = Backfill::default();
        let head = env.heads.head(table, name).await?;
        let mut removes = Vec::new();
        let mut groups = Vec::new();
        for file in head.files() {
            let data_file = DataFile {
                path: file.path().to_string(),
                partition_values: file.partition_values().clone(),
                rows: file.rows(),
                offer: None,
            };
            let mut rows = Vec::new();
            let mut changed = false;
            for batch in changes::read(table, name, &data_file, None, &env.recent).await? {
                let batch = changes::conform(&batch, &data_file, &schema)?;
                let (batch, filled) = fill(&batch, &targets, &mut report)?;
                changed |= filled;
                rows.push(batch);
            }
            if changed {
                removes.push(data_file.path);
                groups.push(rows);
            }
        }
        if removes.is_empty() {
            return Ok(report);
        }
        report.files_rewritten = removes.len() as u64;
        let columns: Vec<&str> = targets.iter().map(|(t, _)| t.column.as_str()).collect();
        let outcome = rewrite(
            table,
            name,
            Rewrite {
                removes,
                groups,
                copied: Vec::new(),
                readds: Vec::new(),
                changes: Vec::new(),
                operation: DeltaOperation::Update {
                    predicate: Some(format!(
                        "backfill {} from {RESCUED_COLUMN}",
                        columns.join(", ")
                    )),
                },
                data_change: true,
                txns: Vec::new(),
                metadata: Default::default(),
                table_metadata: None,
            },
            env,
        )
        .await?;
        match outcome {
            RewriteOutcome::Committed { version, .. } => {
                report.version = Some(version);
                tracing::info!(table = name, version, filled = ?report.filled, "backfilled");
                return Ok(report);
            }
            RewriteOutcome::Superseded { path } => {
                tracing::info!(table = name, %path, "backfill superseded by another rewrite; planning again");
            }
            RewriteOutcome::AlreadyCommitted => {
                return Err(LakeError::CommitConflict {
                    table: name.to_string(),
                    message: "a backfill moves no txn".into(),
                });
            }
        }
    }
    Err(LakeError::CommitConflict {
        table: name.to_string(),
        message: format!("other rewrites took the files of {PLANS} backfill plans in a row"),
    })
}

/// `batch` with the rescued values of `targets` moved into their null columns; whether
/// anything moved.
fn fill(
    batch: &RecordBatch,
    targets: &[(&Target, DataType)],
    report: &mut Backfill,
) -> Result<(RecordBatch, bool)> {
    let Some(rescued) = batch.column_by_name(RESCUED_COLUMN) else {
        return Ok((batch.clone(), false));
    };
    if rescued.null_count() == rescued.len() {
        return Ok((batch.clone(), false));
    }
    let rescued = arrow::compute::cast(rescued, &DataType::Utf8)?;
    let rescued = rescued.as_string::<i32>();
    let mut objects: Vec<Option<Map<String, Value>>> = (0..batch.num_rows())
        .map(|row| {
            rescued
                .is_valid(row)
                .then(|| serde_json::from_str(rescued.value(row)).ok())
                .flatten()
        })
        .collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let mut moved = false;
    for (target, ty) in targets {
        let Some(index) = batch.schema().index_of(&target.column).ok() else {
            continue;
        };
        let current = &columns[index];
        let candidates: Vec<Option<Value>> = (0..batch.num_rows())
            .map(|row| {
                if current.is_valid(row) {
                    return None;
                }
                objects[row].as_ref()?.get(&target.key).cloned()
            })
            .collect();
        if candidates.iter().all(Option::is_none) {
            continue;
        }
        let decoded = decode(&candidates, ty)?;
        let take = arrow::array::BooleanArray::from_iter(
            (0..batch.num_rows()).map(|row| Some(decoded.is_valid(row))),
        );
        let filled = take.true_count() as u64;
        report.unfit += candidates.iter().flatten().count() as u64 - filled;
        if filled == 0 {
            continue;
        }
        columns[index] = zip(&take, &decoded, current)?;
        *report.filled.entry(target.column.clone()).or_default() += filled;
        for (row, object) in objects.iter_mut().enumerate() {
            if take.value(row)
                && let Some(object) = object
            {
                object.remove(&target.key);
            }
        }
        moved = true;
    }
    if !moved {
        return Ok((batch.clone(), false));
    }
    let index = batch.schema().index_of(RESCUED_COLUMN)?;
    columns[index] = Arc::new(StringArray::from_iter(objects.iter().map(|object| {
        object
            .as_ref()
            .filter(|o| !o.is_empty())
            .map(|o| Value::Object(o.clone()).to_string())
    })));
    Ok((RecordBatch::try_new(batch.schema(), columns)?, true))
}

/// `values` as an array of `ty`, decoded by arrow's JSON reader (RFC 3339 text to
/// timestamps, numbers or numeric text to decimals, ...); a value that does not fit is
/// null.
fn decode(values: &[Option<Value>], ty: &DataType) -> Result<ArrayRef> {
    let schema = Arc::new(Schema::new(vec![Field::new("v", ty.clone(), true)]));
    let rows: Vec<Value> = values
        .iter()
        .map(|v| serde_json::json!({ "v": v.clone().unwrap_or(Value::Null) }))
        .collect();
    if let Ok(array) = decode_rows(&schema, &rows) {
        return Ok(array);
    }
    // A value that does not fit fails the whole decode: one row at a time, nulls for those.
    let arrays = rows
        .iter()
        .map(|row| {
            decode_rows(&schema, std::slice::from_ref(row))
                .unwrap_or_else(|_| arrow::array::new_null_array(ty, 1))
        })
        .collect::<Vec<_>>();
    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
    Ok(arrow::compute::concat(&refs)?)
}

fn decode_rows(schema: &Arc<Schema>, rows: &[Value]) -> Result<ArrayRef> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder.serialize(rows)?;
    let batch = decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    Ok(batch.column(0).clone())
}
