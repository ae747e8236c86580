//! The data files of a commit, written before (and outside) the commit lock: a failed or
//! superseded attempt leaves them unreferenced, and nothing reads them.

use std::sync::Arc;

use arrow::compute::kernels::cmp::not_distinct;
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use indexmap::IndexMap;

use crate::{LakeError, Result};

/// Data files written for one commit.
pub(super) struct Written {
    pub(super) files: Vec<Add>,
    /// The schema the files were encoded with (the table's, less partition columns).
    pub(super) file_schema: arrow::datatypes::SchemaRef,
    pub(super) partition_columns: Vec<String>,
}

/// Writes `batches` as data files of `table` (not yet referenced by its log).
pub(super) async fn write_files(
    table: &DeltaTable,
    name: &str,
    batches: &[RecordBatch],
) -> Result<Written> {
    write_files_as(table, name, batches, None).await
}

/// [`write_files`], encoded with `schema` instead of the table's when given: the schema
/// an evolving commit gives the table (see [`crate::evolve`]).
pub(super) async fn write_files_as(
    table: &DeltaTable,
    name: &str,
    batches: &[RecordBatch],
    schema: Option<&arrow::datatypes::SchemaRef>,
) -> Result<Written> {
    let partition_by = table
        .snapshot()
        .map_err(|e| LakeError::delta(name, e))?
        .metadata()
        .partition_columns()
        .to_vec();
    let writer = match schema {
        None => RecordBatchWriter::for_table(table),
        Some(schema) => {
            let options = table.log_store().config().options().raw.clone();
            RecordBatchWriter::try_new(
                table.table_url().as_str(),
                Arc::clone(schema),
                Some(partition_by.clone()),
                Some(options),
            )
        }
    };
    let mut writer = writer
        .map_err(|e| LakeError::delta(name, e))?
        .with_writer_properties(crate::file_format::writer_properties());
    let table_schema = writer.arrow_schema();
    let file_fields: Vec<usize> = (0..table_schema.fields().len())
        .filter(|&i| !partition_by.contains(table_schema.field(i).name()))
        .collect();
    let file_schema = Arc::new(table_schema.project(&file_fields)?);
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let written = match single_partition(batch, &partition_by)? {
            Some(values) => writer
                .write_partition(
                    batch.clone(),
                    &values,
                    deltalake::writer::WriteMode::Default,
                )
                .await
                .map(drop),
            None => writer.write(batch.clone()).await,
        };
        written.map_err(|e| LakeError::delta(name, e))?;
    }
    let files = writer
        .flush()
        .await
        .map_err(|e| LakeError::delta(name, e))?;
    Ok(Written {
        files,
        file_schema,
        partition_columns: partition_by,
    })
}

/// The partition values of `batch` when all its rows share them (the usual case: bronze
/// rows of one day), so that the writer takes the batch as it is. delta-rs's own split
/// sorts and copies every column of every batch.
/// (Generic over the kernel's `Scalar`, which deltalake does not re-export.)
fn single_partition<Scalar: ScalarExt>(
    batch: &RecordBatch,
    partition_by: &[String],
) -> Result<Option<IndexMap<String, Scalar>>> {
    if partition_by.is_empty() {
        return Ok(None);
    }
    let mut values = IndexMap::with_capacity(partition_by.len());
    for name in partition_by {
        let Some(column) = batch.column_by_name(name) else {
            return Ok(None);
        };
        let first = arrow::array::Scalar::new(column.slice(0, 1));
        if not_distinct(column, &first)?.true_count() != column.len() {
            return Ok(None);
        }
        let Some(value) = Scalar::from_array(column.as_ref(), 0) else {
            return Ok(None);
        };
        values.insert(name.clone(), value);
    }
    Ok(Some(values))
}
