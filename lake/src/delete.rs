//! Deleting rows: every file holding a matching row is rewritten without it (or removed,
//! when nothing of it is left), in one [`rewrite`](crate::commit::rewrite) commit recorded
//! as a Delta `DELETE` — under the commit lock, while the pipeline's writers run.
//!
//! Why files are rewritten rather than marked with deletion vectors: every reader of a
//! Smelter table (refine, incremental gold, other engines at reader version 1) reads files
//! whole, and a right-to-be-forgotten delete must leave no copy of the row in the current
//! version. Older versions still reference the old files until vacuum removes them.
//!
//! Downstream: the commit removes rows, so [`crate::changes::range`] marks it rewritten —
//! gold rebuilds from the table as it now stands, and refine skips the files the delete
//! wrote (their rows are not new). Txn positions are untouched: ingest never re-reads a
//! deleted position.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::kernels::boolean::not;
use arrow::compute::{filter_record_batch, prep_null_mask_filter};
use arrow::datatypes::{DataType, Int32Type, Int64Type, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::protocol::DeltaOperation;

use crate::changes::{self, DataFile};
use crate::commit::{CommitEnv, DELETED_POSITIONS_KEY, Rewrite, RewriteOutcome, rewrite};
use crate::log::{arrow_schema, refresh};
use crate::{LakeError, Result};

/// Which rows a delete takes.
pub trait RowSelector: Send + Sync {
    /// `true` for each row of `batch` (shaped as the table's schema) to delete; null keeps.
    fn select(&self, batch: &RecordBatch) -> Result<BooleanArray>;
    /// What the log records as the delete's predicate.
    fn describe(&self) -> String;
}

/// Rows matching a SQL predicate over the table's columns.
pub struct SqlPredicate {
    sql: String,
    expr: Arc<dyn PhysicalExpr>,
}

impl SqlPredicate {
    /// Compiles `sql` against `schema`; an error names what is wrong (an unknown column, a
    /// predicate that is not boolean).
    pub fn new(sql: &str, schema: &SchemaRef, table: &str) -> Result<Self> {
        let invalid = |message: String| LakeError::Invalid {
            table: table.to_string(),
            message,
        };
        let ctx = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let expr = ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| invalid(format!("--where {sql:?}: {}", e.strip_backtrace())))?;
        let expr = ctx
            .create_physical_expr(expr, &df_schema)
            .map_err(|e| invalid(format!("--where {sql:?}: {}", e.strip_backtrace())))?;
        let kind = expr
            .data_type(schema)
            .map_err(|e| invalid(format!("--where {sql:?}: {}", e.strip_backtrace())))?;
        if kind != DataType::Boolean {
            return Err(invalid(format!(
                "--where {sql:?} is a {kind}, not a condition"
            )));
        }
        Ok(Self {
            sql: sql.to_string(),
            expr,
        })
    }
}

impl RowSelector for SqlPredicate {
    fn select(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let value = self.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        Ok(value.as_boolean().clone())
    }

    fn describe(&self) -> String {
        self.sql.clone()
    }
}

/// A source position: topic (or file), partition, offset.
pub type Position = (String, i32, i64);

/// Rows at given source positions, named by the table's own position columns (bronze and
/// quarantine: `topic`, `partition`, `offset`; silver: `_topic`, `_partition`, `_offset`).
pub struct AtPositions {
    /// The positions.
    pub positions: HashSet<Position>,
    /// The table's topic, partition and offset columns.
    pub columns: [&'static str; 3],
}

impl RowSelector for AtPositions {
    fn select(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                LakeError::Arrow(arrow::error::ArrowError::SchemaError(format!(
                    "no column {name}"
                )))
            })
        };
        let [topic, partition, offset] = self.columns;
        let topics = column(topic)?.as_string::<i32>().clone();
        let partitions = column(partition)?.as_primitive::<Int32Type>().clone();
        let offsets = column(offset)?.as_primitive::<Int64Type>().clone();
        Ok((0..batch.num_rows())
            .map(|i| {
                Some(self.positions.contains(&(
                    topics.value(i).to_string(),
                    partitions.value(i),
                    offsets.value(i),
                )))
            })
            .collect())
    }

    fn describe(&self) -> String {
        format!("{} source positions", self.positions.len())
    }
}

/// Rows another selector picks that were ingested up to a cut: at most the given last
/// offset of their source partition (a partition the cut does not name is not in it).
pub struct UpToOffsets<'a> {
    /// The selector narrowed.
    pub inner: &'a dyn RowSelector,
    /// The last offset in the cut of each (topic, partition).
    pub last: std::collections::HashMap<(String, i32), i64>,
    /// The table's topic, partition and offset columns.
    pub columns: [&'static str; 3],
}

impl RowSelector for UpToOffsets<'_> {
    fn select(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let chosen = self.inner.select(batch)?;
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                LakeError::Arrow(arrow::error::ArrowError::SchemaError(format!(
                    "no column {name}"
                )))
            })
        };
        let [topic, partition, offset] = self.columns;
        let topics = arrow::compute::cast(column(topic)?, &DataType::Utf8)?;
        let topics = topics.as_string::<i32>();
        let partitions = column(partition)?.as_primitive::<Int32Type>().clone();
        let offsets = column(offset)?.as_primitive::<Int64Type>().clone();
        Ok((0..batch.num_rows())
            .map(|i| {
                let in_cut = self
                    .last
                    .get(&(topics.value(i).to_string(), partitions.value(i)))
                    .is_some_and(|last| offsets.value(i) <= *last);
                Some(chosen.is_valid(i) && chosen.value(i) && in_cut)
            })
            .collect())
    }

    fn describe(&self) -> String {
        format!("({}) ingested up to a cut", self.inner.describe())
    }
}

/// What a delete did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Deletion {
    /// The table version of the delete, if anything matched.
    pub version: Option<i64>,
    /// The table version whose rows it chose from: rows appended by commits that landed
    /// between that and the delete's own version are not part of it.
    pub read_version: Option<i64>,
    /// Rows deleted.
    pub rows_deleted: u64,
    /// Files taken out.
    pub files_removed: u64,
    /// Files written with the rows they kept.
    pub files_added: u64,
    /// The source positions of the deleted rows, when the table has position columns (for
    /// a cascade).
    #[serde(skip)]
    pub positions: HashSet<Position>,
}

/// How many times a delete plans again after another rewrite took its files.
const PLANS: usize = 5;

/// The position columns of a bronze or quarantine table.
pub const SOURCE_POSITION: [&str; 3] = ["topic", "partition", "offset"];
/// The position columns of a silver table (where each row came from in its source).
pub const ROW_ORIGIN: [&str; 3] = ["_topic", "_partition", "_offset"];

/// Deletes the rows `selector` picks from `table`, in one commit (see the module docs).
/// The deleted rows' source positions are returned when the table has position columns
/// (`topic`/`partition`/`offset`, or silver's `_topic`/`_partition`/`_offset`); a table
/// that records positions (bronze, quarantine) also gets them in the commit's `commitInfo`
/// ([`DELETED_POSITIONS_KEY`]), so that `smelter verify` knows the offsets it no longer
/// holds were deleted, not lost.
pub async fn delete(
    table: &mut DeltaTable,
    name: &str,
    selector: &dyn RowSelector,
    env: &CommitEnv,
) -> Result<Deletion> {
    for _ in 0..PLANS {
        refresh(table, name).await?;
        let schema = arrow_schema(table, name)?;
        let has = |columns: [&str; 3]| columns.iter().all(|c| schema.field_with_name(c).is_ok());
        let positions = [SOURCE_POSITION, ROW_ORIGIN]
            .into_iter()
            .find(|columns| has(*columns));
        let head = env.heads.head(table, name).await?;
        let mut deletion = Deletion {
            read_version: Some(head.version()),
            ..Deletion::default()
        };
        let mut removes = Vec::new();
        let mut groups = Vec::new();
        // A table with the change data feed records the deleted rows themselves (without
        // them, readers would see each rewritten file's rows deleted and inserted again).
        let change_data_feed =
            crate::log::table_property(table, crate::describe::CHANGE_DATA_FEED_PROPERTY)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let mut deleted_rows = Vec::new();
        for file in head.files() {
            if file.has_deletion_vector() {
                return Err(LakeError::Unsupported {
                    location: name.to_string(),
                    message: format!(
                        "{} has a deletion vector; Smelter rewrites whole files",
                        file.path()
                    ),
                });
            }
            let data_file = DataFile {
                path: file.path().to_string(),
                partition_values: file.partition_values().clone(),
                rows: file.rows(),
                offer: None,
            };
            let mut kept = Vec::new();
            let mut deleted = 0u64;
            for batch in changes::read(table, name, &data_file, None, &env.recent).await? {
                let batch = changes::conform(&batch, &data_file, &schema)?;
                let chosen = selector.select(&batch)?;
                // Null keeps the row, as SQL's WHERE does.
                let chosen = if chosen.null_count() > 0 {
                    prep_null_mask_filter(&chosen)
                } else {
                    chosen
                };
                let matches = chosen.true_count() as u64;
                if matches == 0 {
                    kept.push(batch);
                    continue;
                }
                deleted += matches;
                if let Some(columns) = positions {
                    collect_positions(
                        &filter_record_batch(&batch, &chosen)?,
                        columns,
                        &mut deletion.positions,
                    )?;
                }
                if change_data_feed {
                    deleted_rows.push(crate::change_data::tagged(
                        &filter_record_batch(&batch, &chosen)?,
                        crate::change_data::ChangeType::Delete,
                    )?);
                }
                let rest = filter_record_batch(&batch, &not(&chosen)?)?;
                if rest.num_rows() > 0 {
                    kept.push(rest);
                }
            }
            if deleted == 0 {
                continue;
            }
            deletion.rows_deleted += deleted;
            deletion.files_removed += 1;
            removes.push(data_file.path);
            if !kept.is_empty() {
                groups.push(kept);
            }
        }
        if removes.is_empty() {
            return Ok(deletion);
        }
        let mut metadata = std::collections::HashMap::new();
        if positions == Some(SOURCE_POSITION) {
            metadata.insert(
                DELETED_POSITIONS_KEY.to_string(),
                position_runs(&deletion.positions),
            );
        }
        let changes = crate::change_data::write(table, name, &deleted_rows).await?;
        let outcome = rewrite(
            table,
            name,
            Rewrite {
                removes,
                groups,
                copied: Vec::new(),
                readds: Vec::new(),
                changes: changes.into_iter().collect(),
                operation: DeltaOperation::Delete {
                    predicate: Some(selector.describe()),
                },
                data_change: true,
                txns: Vec::new(),
                metadata,
                table_metadata: None,
            },
            env,
        )
        .await?;
        match outcome {
            RewriteOutcome::Committed {
                version,
                files_added,
            } => {
                deletion.version = Some(version);
                deletion.files_added = files_added as u64;
                tracing::info!(
                    table = name,
                    version,
                    rows = deletion.rows_deleted,
                    "deleted"
                );
                return Ok(deletion);
            }
            RewriteOutcome::Superseded { path } => {
                tracing::info!(table = name, %path, "delete superseded by another rewrite; planning again");
            }
            RewriteOutcome::AlreadyCommitted => unreachable!("a delete moves no txn"),
        }
    }
    Err(LakeError::CommitConflict {
        table: name.to_string(),
        message: format!("other rewrites took the files of {PLANS} delete plans in a row"),
    })
}

/// `positions` as `{"topic/partition": [[first, last], ...]}`, runs of offsets.
fn position_runs(positions: &HashSet<Position>) -> serde_json::Value {
    let mut by_partition: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (topic, partition, offset) in positions {
        by_partition
            .entry(format!("{topic}/{partition}"))
            .or_default()
            .push(*offset);
    }
    let mut out = serde_json::Map::new();
    for (key, mut offsets) in by_partition {
        offsets.sort_unstable();
        let mut runs: Vec<[i64; 2]> = Vec::new();
        for offset in offsets {
            match runs.last_mut() {
                Some(run) if run[1] + 1 == offset => run[1] = offset,
                _ => runs.push([offset, offset]),
            }
        }
        out.insert(key, serde_json::json!(runs));
    }
    serde_json::Value::Object(out)
}

/// Reads a [`DELETED_POSITIONS_KEY`] entry back: runs of offsets per `topic/partition`.
pub fn deleted_runs(value: &serde_json::Value) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    if let Some(partitions) = value.as_object() {
        for (key, runs) in partitions {
            for run in runs.as_array().into_iter().flatten() {
                if let (Some(first), Some(last)) = (run[0].as_i64(), run[1].as_i64()) {
                    out.push((key.clone(), first, last));
                }
            }
        }
    }
    out
}

fn collect_positions(
    batch: &RecordBatch,
    [topic, partition, offset]: [&str; 3],
    into: &mut HashSet<Position>,
) -> Result<()> {
    let (Some(topics), Some(partitions), Some(offsets)) = (
        batch.column_by_name(topic),
        batch.column_by_name(partition),
        batch.column_by_name(offset),
    ) else {
        return Ok(());
    };
    let topics = topics.as_string::<i32>();
    let partitions = partitions.as_primitive::<Int32Type>();
    let offsets = offsets.as_primitive::<Int64Type>();
    for i in 0..batch.num_rows() {
        if topics.is_valid(i) {
            into.insert((
                topics.value(i).to_string(),
                partitions.value(i),
                offsets.value(i),
            ));
        }
    }
    Ok(())
}
