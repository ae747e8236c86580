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
//!
//! Memory: the inputs are read one at a time and the new file goes out as it grows (a
//! multipart upload once it passes a part's size), so a copy holds about one input and one
//! part, whatever the bin's size.

use std::sync::Arc;

use arrow::datatypes::Fields;
use bytes::Bytes;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
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

/// Parts of the new file are uploaded this large (a multipart upload's parts must be at
/// least 5 MiB but the last).
const PART_BYTES: usize = 8 * 1024 * 1024;

/// Parts uploading at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Writes the files of `bin` (one partition) as one file of `table` by copying their row
/// groups: the new file's add action (not yet in the log), or `None` when the bin is not
/// one to copy — a row group under `least_row_group_bytes` compressed, or inputs laid out
/// differently (see the module docs) — and must be rewritten from its rows.
///
/// The inputs are read one at a time and the new file is streamed out as their row groups
/// are appended (see [`Output`]), so a copy holds about one input and one part in memory,
/// not the whole bin twice. A bin found not to be copyable after the upload began (a later
/// input laid out differently) aborts it.
pub async fn concat(
    table: &DeltaTable,
    name: &str,
    fields: &Fields,
    bin: &[&LiveFile],
    least_row_group_bytes: i64,
) -> Result<Option<Add>> {
    concat_in_parts(table, name, fields, bin, least_row_group_bytes, PART_BYTES).await
}

/// [`concat`], uploading in parts of `part_bytes`.
async fn concat_in_parts(
    table: &DeltaTable,
    name: &str,
    fields: &Fields,
    bin: &[&LiveFile],
    least_row_group_bytes: i64,
    part_bytes: usize,
) -> Result<Option<Add>> {
    let Some(first) = bin.first() else {
        return Ok(None);
    };
    let stats: Option<Vec<&str>> = bin.iter().map(|f| f.stats()).collect();
    let Some(stats) = stats.and_then(|s| crate::stats_merge::merge(fields, &s)) else {
        return Ok(None);
    };
    let store = table.object_store();
    let file_name = format!("part-00000-{}-c000.snappy.parquet", uuid::Uuid::new_v4());
    let relative = match first.path().rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{file_name}"),
        None => file_name,
    };
    let path = deltalake::Path::from_url_path(&relative)
        .map_err(|e| LakeError::generic(name, format!("bad path {relative}: {e}")))?;
    let delta = |e: object_store::Error| LakeError::delta(name, e.into());
    let mut out: Option<Output> = None;
    let copied = async {
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
            if small || !same_layout(&metadata, out.as_ref().map(|o| &o.first)) {
                return Ok(false);
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
            let output = match &mut out {
                Some(output) => output,
                None => {
                    let writer =
                        writer_like(&metadata).map_err(|e| LakeError::delta(name, e.into()))?;
                    out.insert(Output {
                        writer,
                        first: metadata.clone(),
                        size: 0,
                        pending: Vec::new(),
                        pending_bytes: 0,
                        part_bytes,
                        upload: None,
                    })
                }
            };
            // Room for the input's chunks at once: a buffer grown by doubling would copy
            // them again and leave the allocator blocks of every size in between.
            output.writer.inner_mut().reserve_exact(bytes.len());
            append_row_groups(&mut output.writer, &bytes, &metadata)
                .map_err(|e| LakeError::delta(name, e.into()))?;
            output
                .writer
                .flush()
                .map_err(|e| LakeError::generic(name, e.to_string()))?;
            let written = std::mem::take(output.writer.inner_mut());
            output
                .send(&store, &path, Bytes::from(written))
                .await
                .map_err(delta)?;
        }
        Ok(true)
    }
    .await;
    let Some(output) = out else {
        return copied.map(|_| None);
    };
    let size = match copied {
        Ok(true) => output
            .finish(&store, &path)
            .await
            .map_err(|e| LakeError::delta(name, e))?,
        Ok(false) => {
            output.abort(name).await;
            return Ok(None);
        }
        Err(error) => {
            output.abort(name).await;
            return Err(error);
        }
    };
    Ok(Some(Add {
        path: relative,
        size: size as i64,
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

/// The new file as it is written: the Parquet writer, whose buffer is handed on after each
/// input, and where it goes — held back until a part's worth has gathered (a file smaller
/// than that is put whole, in one request), then a multipart upload.
struct Output {
    writer: SerializedFileWriter<Vec<u8>>,
    /// The first input's metadata: every other must be laid out the same.
    first: ParquetMetaData,
    /// Bytes written so far.
    size: u64,
    /// What was written before the upload began.
    pending: Vec<Bytes>,
    pending_bytes: usize,
    /// The size of the upload's parts.
    part_bytes: usize,
    upload: Option<WriteMultipart>,
}

impl Output {
    /// Hands `bytes`, the next bytes of the file, on.
    async fn send(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        path: &deltalake::Path,
        bytes: Bytes,
    ) -> object_store::Result<()> {
        self.size += bytes.len() as u64;
        if let Some(upload) = &mut self.upload {
            upload.put(bytes);
            return upload.wait_for_capacity(PARTS_IN_FLIGHT).await;
        }
        self.pending_bytes += bytes.len();
        self.pending.push(bytes);
        if self.pending_bytes >= self.part_bytes {
            let started = store.put_multipart(path).await?;
            let mut upload = WriteMultipart::new_with_chunk_size(started, self.part_bytes);
            for bytes in self.pending.drain(..) {
                upload.put(bytes);
            }
            self.pending_bytes = 0;
            upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            self.upload = Some(upload);
        }
        Ok(())
    }

    /// Writes the footer and stores the rest: the file's size.
    async fn finish(
        mut self,
        store: &Arc<dyn ObjectStore>,
        path: &deltalake::Path,
    ) -> std::result::Result<u64, deltalake::DeltaTableError> {
        let footer = Bytes::from(self.writer.into_inner()?);
        self.size += footer.len() as u64;
        match self.upload {
            Some(mut upload) => {
                upload.put(footer);
                upload.finish().await?;
            }
            None => {
                self.pending.push(footer);
                store
                    .put(path, self.pending.into_iter().collect::<PutPayload>())
                    .await?;
            }
        }
        Ok(self.size)
    }

    /// Gives the file up (an upload under way is aborted; what the store keeps of it is
    /// unreferenced and harmless).
    async fn abort(self, name: &str) {
        if let Some(upload) = self.upload
            && let Err(error) = upload.abort().await
        {
            tracing::warn!(table = name, %error, "aborting a compaction's upload failed");
        }
    }
}

/// Whether a file laid out as `next` can follow `first` in one file: the same Parquet
/// schema and key-value metadata (the Arrow schema).
fn same_layout(next: &ParquetMetaData, first: Option<&ParquetMetaData>) -> bool {
    let Some(first) = first else { return true };
    let (a, b) = (first.file_metadata(), next.file_metadata());
    a.schema_descr().root_schema() == b.schema_descr().root_schema()
        && a.key_value_metadata() == b.key_value_metadata()
}

/// A writer for a file laid out as `first` (its schema and key-value metadata).
fn writer_like(
    first: &ParquetMetaData,
) -> deltalake::parquet::errors::Result<SerializedFileWriter<Vec<u8>>> {
    let first = first.file_metadata();
    let properties = WriterProperties::builder()
        .set_created_by(format!("smelter {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(first.key_value_metadata().cloned())
        .build();
    SerializedFileWriter::new(
        Vec::new(),
        first.schema_descr().root_schema_ptr(),
        Arc::new(properties),
    )
}

/// Appends every row group of the file `bytes` (described by `metadata`) to `writer`, its
/// column chunks copied as they are, page indexes carried over.
fn append_row_groups(
    writer: &mut SerializedFileWriter<Vec<u8>>,
    bytes: &Bytes,
    metadata: &ParquetMetaData,
) -> deltalake::parquet::errors::Result<()> {
    for (index, row_group) in metadata.row_groups().iter().enumerate() {
        let column_indexes = metadata.column_index().and_then(|c| c.get(index));
        let offset_indexes = metadata.offset_index().and_then(|o| o.get(index));
        let mut out = writer.next_row_group()?;
        for (column, chunk) in row_group.columns().iter().enumerate() {
            out.append_column(
                bytes,
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::CommitEnv;
    use crate::testing::four_position_files;

    const NAME: &str = "bronze.events";

    #[tokio::test]
    async fn a_file_streamed_in_parts_is_the_file_put_whole() {
        let dir = tempfile::tempdir().unwrap();
        let env = CommitEnv::default();
        let mut table = four_position_files(dir.path(), NAME, &env).await;
        let head = env.heads.head(&mut table, NAME).await.unwrap();
        let mut bin: Vec<&LiveFile> = head.files().collect();
        bin.sort_by_key(|f| f.path().to_string());
        let inputs: i64 = bin.iter().map(|f| f.size()).sum();
        let schema = crate::log::arrow_schema(&table, NAME).unwrap();
        let mut files = Vec::new();
        // Whole (one put), and in parts far smaller than one input (a multipart upload
        // begun after the first input, many parts).
        for part_bytes in [usize::MAX, 1024] {
            let add = concat_in_parts(&table, NAME, schema.fields(), &bin, 0, part_bytes)
                .await
                .unwrap()
                .expect("the bin is copied");
            assert!(
                add.size > 1024 && add.size < inputs,
                "{} of {inputs}",
                add.size
            );
            let bytes = crate::changes::file_bytes(&table, NAME, &add.path)
                .await
                .unwrap();
            assert_eq!(bytes.len() as i64, add.size);
            let metadata = ParquetMetaDataReader::new()
                .parse_and_finish(&bytes)
                .unwrap();
            assert_eq!(metadata.file_metadata().num_rows(), 1_200);
            assert_eq!(metadata.num_row_groups(), 4);
            files.push(bytes);
        }
        assert!(files[0] == files[1], "the same bytes either way");
    }
}
