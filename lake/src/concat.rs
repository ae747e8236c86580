//! Compaction without decoding: a bin of small files becomes one file holding their row
//! groups as they are, column chunks copied byte for byte.
//!
//! Why: maintenance behind a stream compacts every byte a table receives at least once.
//! Decoding the rows and encoding them again (dictionaries, Snappy, statistics) is most
//! of that work — 72% of the maintenance task's CPU in a profile of the in-process bench
//! — while a copy of the encoded chunks costs a read and a write. The trade: a copied
//! file keeps its writers' row groups, so it is read in as many pieces as it was written.
//! That is why only bins whose row groups are each at least [`COPY_MIN_ROW_GROUP_BYTES`]
//! are copied: below that, the per-row-group overhead of readers (a seek, a chunk header,
//! statistics per chunk) is no longer small against the data, and the bin is decoded and
//! written as one row group instead, as `smelter compact` (Delta's OPTIMIZE) always does.
//!
//! What makes a copy exact: every input has the same Parquet schema and the same
//! key-value metadata (the Arrow schema readers decode with), or the bin is not copied;
//! the page indexes are carried over with their offsets moved (readers prune pages with
//! them); the file's rows are checked against the inputs' `numRecords`; and its Delta
//! statistics are merged from the inputs' ([`crate::stats_merge`]), never tighter than
//! the rows.

use std::sync::Arc;

use arrow::datatypes::Fields;
use bytes::Bytes;
use datafusion::object_store::{ObjectStoreExt, PutPayload};
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use deltalake::parquet::column::writer::ColumnCloseResult;
use deltalake::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::file::writer::SerializedFileWriter;

use crate::heads::LiveFile;
use crate::{LakeError, Result};

/// The least compressed size of every row group of a bin for maintenance to copy the bin.
pub const COPY_MIN_ROW_GROUP_BYTES: i64 = 64 * 1024;

/// One input, read whole.
struct Input {
    bytes: Bytes,
    metadata: ParquetMetaData,
}

/// Writes the files of `bin` (one partition) as one file of `table` by copying their row
/// groups: the new file's add action (not yet in the log), or `None` when the bin is not
/// one to copy — a row group under `least_row_group_bytes` compressed, or inputs laid out
/// differently (see the module docs) — and must be rewritten from its rows.
pub async fn concat(
    table: &DeltaTable,
    name: &str,
    fields: &Fields,
    bin: &[&LiveFile],
    least_row_group_bytes: i64,
) -> Result<Option<Add>> {
    let Some(first) = bin.first() else {
        return Ok(None);
    };
    let stats: Option<Vec<&str>> = bin.iter().map(|f| f.stats()).collect();
    let Some(stats) = stats.and_then(|s| crate::stats_merge::merge(fields, &s)) else {
        return Ok(None);
    };
    let store = table.object_store();
    let mut inputs = Vec::with_capacity(bin.len());
    for file in bin {
        let bytes = crate::changes::file_bytes(table, name, file.path()).await?;
        let metadata = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .parse_and_finish(&bytes)
            .map_err(|e| LakeError::delta(name, e.into()))?;
        let small = metadata
            .row_groups()
            .iter()
            .any(|rg| rg.compressed_size() < least_row_group_bytes);
        if small || !same_layout(&metadata, inputs.first().map(|i: &Input| &i.metadata)) {
            return Ok(None);
        }
        if let Some(rows) = file.rows()
            && rows != metadata.file_metadata().num_rows() as u64
        {
            return Err(LakeError::generic(
                name,
                format!(
                    "{} holds {} rows, its statistics say {rows}",
                    file.path(),
                    metadata.file_metadata().num_rows()
                ),
            ));
        }
        inputs.push(Input { bytes, metadata });
    }
    let data = copy_row_groups(&inputs).map_err(|e| LakeError::delta(name, e.into()))?;
    drop(inputs);
    let file_name = format!("part-00000-{}-c000.snappy.parquet", uuid::Uuid::new_v4());
    let relative = match first.path().rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{file_name}"),
        None => file_name,
    };
    let size = data.len() as i64;
    let path = deltalake::Path::from_url_path(&relative)
        .map_err(|e| LakeError::generic(name, format!("bad path {relative}: {e}")))?;
    store
        .put(&path, PutPayload::from(data))
        .await
        .map_err(|e| LakeError::delta(name, e.into()))?;
    Ok(Some(Add {
        path: relative,
        size,
        partition_values: first.partition_values().clone(),
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: false,
        stats: Some(stats),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }))
}

/// Whether a file laid out as `next` can follow `first` in one file: the same Parquet
/// schema and key-value metadata (the Arrow schema).
fn same_layout(next: &ParquetMetaData, first: Option<&ParquetMetaData>) -> bool {
    let Some(first) = first else { return true };
    let (a, b) = (first.file_metadata(), next.file_metadata());
    a.schema_descr().root_schema() == b.schema_descr().root_schema()
        && a.key_value_metadata() == b.key_value_metadata()
}

/// The bytes of one Parquet file holding every row group of `inputs`, in order.
fn copy_row_groups(inputs: &[Input]) -> deltalake::parquet::errors::Result<Vec<u8>> {
    let first = inputs[0].metadata.file_metadata();
    let properties = WriterProperties::builder()
        .set_created_by(format!("smelter {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(first.key_value_metadata().cloned())
        .build();
    let capacity = inputs.iter().map(|i| i.bytes.len()).sum();
    let mut writer = SerializedFileWriter::new(
        Vec::with_capacity(capacity),
        first.schema_descr().root_schema_ptr(),
        Arc::new(properties),
    )?;
    for input in inputs {
        let metadata = &input.metadata;
        for (index, row_group) in metadata.row_groups().iter().enumerate() {
            let column_indexes = metadata.column_index().and_then(|c| c.get(index));
            let offset_indexes = metadata.offset_index().and_then(|o| o.get(index));
            let mut out = writer.next_row_group()?;
            for (column, chunk) in row_group.columns().iter().enumerate() {
                out.append_column(
                    &input.bytes,
                    ColumnCloseResult {
                        bytes_written: chunk.compressed_size() as u64,
                        rows_written: row_group.num_rows() as u64,
                        metadata: chunk.clone(),
                        bloom_filter: None,
                        column_index: column_indexes.and_then(|c| c.get(column)).cloned(),
                        offset_index: offset_indexes.and_then(|o| o.get(column)).cloned(),
                    },
                )?;
            }
            out.close()?;
        }
    }
    writer.into_inner()
}
