//! Delta's change data feed, as a merge writes it: the rows a commit inserted, updated
//! (pre- and post-image) and deleted, in Parquet files under `_change_data/` with a
//! `_change_type` column, referenced by the commit's `cdc` actions.
//!
//! Readers of the feed (Spark's `table_changes`, delta-rs's `load_cdf`, Smelter's
//! `table_changes()`) take a commit's `cdc` files when it has them, and otherwise its added
//! files as inserts and removed files as deletes — which is why appends need none. Like
//! data files, change files are written before the commit and unreferenced if it fails.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::object_store::ObjectStoreExt as _;
use deltalake::DeltaTable;
use deltalake::kernel::AddCDCFile;

use crate::{LakeError, Result};

/// The column naming each row's change.
pub const CHANGE_TYPE: &str = "_change_type";

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// A new row.
    Insert,
    /// A row as it was before an update.
    UpdatePreimage,
    /// A row as an update left it.
    UpdatePostimage,
    /// A row deleted.
    Delete,
}

impl ChangeType {
    /// The name Delta's change data feed gives it.
    pub fn name(self) -> &'static str {
        match self {
            ChangeType::Insert => "insert",
            ChangeType::UpdatePreimage => "update_preimage",
            ChangeType::UpdatePostimage => "update_postimage",
            ChangeType::Delete => "delete",
        }
    }
}

/// `batch` with a `_change_type` column saying `change` for every row.
pub fn tagged(batch: &RecordBatch, change: ChangeType) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(CHANGE_TYPE, DataType::Utf8, false));
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(StringArray::from(vec![
        change.name();
        batch.num_rows()
    ])));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Writes `batches` (rows already [`tagged`]) as one change data file of `table`, not yet
/// referenced by its log; `None` when there are no rows.
pub async fn write(
    table: &DeltaTable,
    name: &str,
    batches: &[RecordBatch],
) -> Result<Option<AddCDCFile>> {
    let Some(first) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    {
        let mut writer = deltalake::parquet::arrow::ArrowWriter::try_new(
            &mut bytes,
            first.schema(),
            Some(crate::file_format::writer_properties()),
        )
        .map_err(|e| LakeError::delta(name, e.into()))?;
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            writer
                .write(batch)
                .map_err(|e| LakeError::delta(name, e.into()))?;
        }
        writer
            .close()
            .map_err(|e| LakeError::delta(name, e.into()))?;
    }
    let path = format!(
        "_change_data/cdc-{}.c000.snappy.parquet",
        uuid::Uuid::new_v4()
    );
    let size = bytes.len() as i64;
    table
        .object_store()
        .put(&deltalake::Path::from(path.as_str()), bytes.into())
        .await
        .map_err(|e| LakeError::delta(name, e.into()))?;
    Ok(Some(AddCDCFile {
        path,
        size,
        partition_values: Default::default(),
        data_change: false,
        tags: None,
    }))
}
