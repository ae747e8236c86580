//! What a table holds or gained, as data files: the files a range of versions added, or
//! every file of a snapshot, read with only the columns a task needs.
//!
//! Downstream tasks read these instead of rescanning their upstream table (refine reads
//! bronze's new files, incremental gold reads silver's). Files added without `dataChange`
//! (compaction) are skipped: their rows were already there. A range that also removed rows
//! with `dataChange` (delete, restore, merge), changed the metadata or the protocol, or
//! added files with deletion vectors is marked [`Range::rewritten`]: its added files alone
//! do not say what the table now holds, and a reader that folds additions must start over.
//! The files such a rewrite adds are not in [`Range::added`]: they hold rows the table had
//! before (what a delete kept of a file, what a restore brings back), which a reader of
//! new rows (refine) has already seen.
//!
//! A commit that wrote Delta's change data (a merge, an update or a delete on a table with
//! the change data feed) is a rewrite too, even a merge that only inserted, and says
//! exactly which rows it took out and put in: its `cdc` files are in
//! [`Range::change_files`] (its added files are not in [`Range::added`]), and a reader that
//! can retract rows (incremental gold) follows them instead of starting over. Only a rewrite without them ([`Range::opaque`]: a
//! restore, a metadata or protocol change, deletion vectors, a delete or merge on a table
//! without the feed) leaves such a reader no choice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, StringArray, new_null_array};
use arrow::datatypes::SchemaRef;
use datafusion::object_store::ObjectStoreExt;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::exchange::Offer;
use crate::recent_files::RecentFiles;
use crate::{LakeError, Result};

/// Rows decoded from Parquet per batch.
const READ_BATCH_ROWS: usize = 16 * 1024;

/// One data file of a table.
#[derive(Debug, Clone, Default)]
pub struct DataFile {
    /// Path relative to the table root, as the log writes it (URL-encoded).
    pub path: String,
    /// Partition column values, as the log writes them.
    pub partition_values: HashMap<String, Option<String>>,
    /// Rows in the file, when the log's statistics say.
    pub rows: Option<u64>,
    /// Where the worker that wrote the file offers its rows (see [`crate::exchange`]).
    pub offer: Option<Offer>,
}

/// The data files versions `from..=to` added.
#[derive(Debug, Default)]
pub struct Range {
    /// Files added with `dataChange`, in commit order.
    pub added: Vec<DataFile>,
    /// Whether the range did more than append (see the module docs).
    pub rewritten: bool,
    /// The change data files of the rewrites that wrote them, in commit order: rows with
    /// a `_change_type` column ([`crate::change_data`]).
    pub change_files: Vec<DataFile>,
    /// Whether a rewrite in the range left no change data saying what it changed.
    pub opaque: bool,
}

/// The actions of commit `version` of `table`, read from its commit entry; `None` when the
/// entry is not in the log (never written, or cleaned up).
pub async fn commit_actions(
    table: &DeltaTable,
    name: &str,
    version: i64,
) -> Result<Option<Vec<Action>>> {
    let delta = |e| LakeError::delta(name, e);
    match table
        .log_store()
        .read_commit_entry(version as u64)
        .await
        .map_err(delta)?
    {
        Some(bytes) => Ok(Some(
            deltalake::logstore::get_actions(version as u64, &bytes).map_err(delta)?,
        )),
        None => Ok(None),
    }
}

/// The version a `RESTORE` commit brought its table back to.
pub fn restored_to(actions: &[Action]) -> Option<i64> {
    actions.iter().find_map(|action| match action {
        Action::CommitInfo(info) if info.operation.as_deref() == Some("RESTORE") => {
            let version = info.operation_parameters.as_ref()?.get("version")?;
            Some(
                version
                    .as_i64()
                    .or_else(|| version.as_str()?.parse().ok())
                    .unwrap_or(-1),
            )
        }
        _ => None,
    })
}

/// The files versions `from..=to` of `table` added, read from the commit entries.
///
/// A restore in the range to a version c the reader had reached (c ≥ `from` - 1) undid
/// the versions after c: they and the restore itself are skipped, and the reader goes on
/// as if the table had gone from c straight to the versions after the restore — the same
/// rows, without the undone ones. A restore to before the reader's position is a rewrite.
pub async fn range(table: &DeltaTable, name: &str, from: i64, to: i64) -> Result<Range> {
    range_skipping(table, name, from, to, &[]).await
}

/// The versions in `(after, latest]` a later restore in that span undid for a reader at
/// `after`: `(c + 1, R)` for each restore at R to a version c ≥ `after`, inclusive. A
/// reader that reads the span in several ranges passes them to [`range_skipping`]: a
/// range that ends before the restore cannot see it. (Restores run while the pipeline's
/// tasks are paused, so a task learns them when it starts.)
pub async fn undone(
    table: &DeltaTable,
    name: &str,
    after: i64,
    latest: i64,
) -> Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for version in (after + 1)..=latest {
        let Some(actions) = commit_actions(table, name, version).await? else {
            continue;
        };
        if let Some(restored) = restored_to(&actions)
            && restored >= after
        {
            out.push((restored + 1, version));
        }
    }
    Ok(out)
}

/// [`range`], also skipping the versions in `undone` (see [`undone`]).
pub async fn range_skipping(
    table: &DeltaTable,
    name: &str,
    from: i64,
    to: i64,
    undone: &[(i64, i64)],
) -> Result<Range> {
    let mut range = Range::default();
    let mut commits = Vec::with_capacity((to - from + 1).max(0) as usize);
    for version in from..=to {
        if undone.iter().any(|(lo, hi)| (*lo..=*hi).contains(&version)) {
            continue;
        }
        let Some(actions) = commit_actions(table, name, version).await? else {
            return Err(LakeError::generic(
                name,
                format!("commit {version} is missing from the log"),
            ));
        };
        commits.push((version, actions));
    }
    let mut undone = HashSet::new();
    for (version, actions) in commits.iter().rev() {
        if undone.contains(version) {
            continue;
        }
        if let Some(restored) = restored_to(actions)
            && restored >= from - 1
        {
            undone.extend(restored + 1..=*version);
        }
    }
    for (version, actions) in commits {
        if undone.contains(&version) {
            continue;
        }
        let rewrite = actions.iter().any(|a| match a {
            Action::Remove(remove) => remove.data_change,
            // A restore that only puts files back still rewinds the table.
            Action::CommitInfo(info) => info.operation.as_deref() == Some("RESTORE"),
            _ => false,
        });
        // A commit with change data is read from it alone, as Delta's readers of the feed
        // do: its added files also hold rows it did not change (what a rewritten file
        // kept), and a merge that only inserts removes nothing but is no append either.
        let has_changes = actions.iter().any(|a| matches!(a, Action::Cdc(_)));
        let explained = has_changes
            && !actions.iter().any(|a| match a {
                Action::CommitInfo(info) => info.operation.as_deref() == Some("RESTORE"),
                Action::Add(add) => add.deletion_vector.is_some(),
                _ => false,
            });
        let rewrite = rewrite || has_changes;
        range.rewritten |= rewrite;
        range.opaque |= rewrite && !explained;
        for action in actions {
            match action {
                Action::Cdc(cdc) if explained => range.change_files.push(DataFile {
                    path: cdc.path,
                    partition_values: cdc.partition_values.into_iter().collect(),
                    rows: None,
                    offer: None,
                }),
                Action::Add(add) if add.data_change && !rewrite => {
                    let dv = add.deletion_vector.is_some();
                    range.rewritten |= dv;
                    range.opaque |= dv;
                    let offer = Offer::from_tags(add.tags.as_ref());
                    // An offer is taken only for as many rows as the log says the file has.
                    let rows = offer
                        .as_ref()
                        .and_then(|_| num_records(add.stats.as_deref()));
                    range.added.push(DataFile {
                        rows,
                        path: add.path,
                        partition_values: add.partition_values.into_iter().collect(),
                        offer,
                    });
                }
                Action::Metadata(_) | Action::Protocol(_) => {
                    range.rewritten = true;
                    range.opaque = true;
                }
                _ => {}
            }
        }
    }
    Ok(range)
}

/// `numRecords` of an add action's statistics.
fn num_records(stats: Option<&str>) -> Option<u64> {
    let stats: serde_json::Value = serde_json::from_str(stats?).ok()?;
    stats.get("numRecords")?.as_u64()
}

/// Every data file of the table's loaded snapshot. Fails on files with deletion vectors,
/// whose rows cannot be read from the file alone.
pub fn snapshot(table: &DeltaTable, name: &str) -> Result<Vec<DataFile>> {
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    snapshot
        .log_data()
        .iter()
        .map(|file| {
            if file.deletion_vector_descriptor().is_some() {
                return Err(LakeError::generic(
                    name,
                    format!("{} has a deletion vector", file.path()),
                ));
            }
            Ok(DataFile {
                path: file.path().into_owned(),
                partition_values: file.partition_values_map(),
                rows: file.num_records().map(|n| n as u64),
                offer: None,
            })
        })
        .collect()
}

/// The bytes of the data file at `path` (as the log writes it), read whole from storage.
pub async fn file_bytes(table: &DeltaTable, name: &str, path: &str) -> Result<bytes::Bytes> {
    let location = deltalake::Path::from_url_path(path)
        .map_err(|e| LakeError::generic(name, format!("bad path {path}: {e}")))?;
    table
        .object_store()
        .get(&location)
        .await
        .map_err(|e| LakeError::delta(name, e.into()))?
        .bytes()
        .await
        .map_err(|e| LakeError::delta(name, e.into()))
}

/// The rows of `file`, with only the columns whose top-level names are in `columns` (all
/// of them when `None`), as the file stores them: from `recent` if this worker committed
/// the file lately, else from the worker that offers them if it answers in time with the
/// rows the offer names (see [`crate::exchange`]), else from storage.
pub async fn read(
    table: &DeltaTable,
    name: &str,
    file: &DataFile,
    columns: Option<&HashSet<String>>,
    recent: &RecentFiles,
) -> Result<Vec<RecordBatch>> {
    let table_uri = table.table_url().as_str();
    if let Some(rows) = recent.get(table_uri, &file.path, columns) {
        return Ok(rows);
    }
    if let Some(offer) = &file.offer
        && let Some(rows) =
            crate::exchange::take(recent, table_uri, &file.path, file.rows, offer).await
        && let Some(rows) = crate::recent_files::project(&rows, columns)
    {
        return Ok(rows);
    }
    let data = file_bytes(table, name, &file.path).await?;
    let decoding = std::time::Instant::now();
    let size = data.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| LakeError::delta(name, e.into()))?;
    let builder = match columns {
        Some(columns) => {
            let roots: Vec<usize> = builder
                .schema()
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| columns.contains(f.name()))
                .map(|(i, _)| i)
                .collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            builder.with_projection(mask)
        }
        None => builder,
    };
    let reader = builder
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| LakeError::delta(name, e.into()))?;
    let rows = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    recent.counters().storage(size, decoding.elapsed());
    Ok(rows)
}

/// `batch` (rows of `file`) shaped as `schema`: columns matched by name and cast to the
/// schema's types, partition columns filled from the file's partition values, and columns
/// (or nested fields) the file lacks — added to the table after it was written — null.
pub fn conform(batch: &RecordBatch, file: &DataFile, schema: &SchemaRef) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column: ArrayRef = match batch.column_by_name(field.name()) {
                Some(column) => column.clone(),
                None => match file.partition_values.get(field.name()) {
                    Some(value) => Arc::new(StringArray::from(vec![value.as_deref(); rows])),
                    None => new_null_array(field.data_type(), rows),
                },
            };
            // Nested fields the file lacks are null too, widened types cast up.
            crate::evolve::conform_array(&column, field.data_type())
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}
