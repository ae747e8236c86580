//! How Smelter encodes its data files: plain Parquet with Snappy, as delta-rs writes by
//! default, with smaller dictionary and data pages.
//!
//! * **Dictionary pages of at most 128 KiB.** Parquet dictionary-encodes every column
//!   until its dictionary passes this size, then falls back to plain encoding for the
//!   rest of the column chunk. Unique columns (a bronze payload, an event id) never
//!   repeat a value, so every value interned before the fallback is work and bytes
//!   spent on nothing; at the 1 MiB default that was every event id of a bronze file and
//!   thousands of payloads. Columns of few values (an event type, a country, thousands
//!   of users) still fit.
//! * **Data pages of at most 256 KiB.** The writer assembles each page in fresh buffers
//!   (levels and values, then the compressed copy). At the 1 MiB default those are above
//!   the allocator's largest size class, each a mapping of its own that is returned and
//!   faulted in again, page by page, at the next commit; the smaller pages come from
//!   size classes whose memory is reused.
//!
//! Commits and compaction (`smelter compact`) write with these properties, and so does
//! the bench's limit (`smelter bench`), so the limit and the pipeline pay for the same
//! files.

use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;

/// Largest dictionary page before a column chunk falls back to plain encoding.
pub const DICTIONARY_PAGE_BYTES: usize = 128 * 1024;

/// Largest data page.
pub const DATA_PAGE_BYTES: usize = 256 * 1024;

/// The properties every data file of a table is written with.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_created_by(format!("smelter {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .set_data_page_size_limit(DATA_PAGE_BYTES)
        .build()
}

#[cfg(test)]
mod tests {
    use deltalake::parquet::basic::{Encoding, PageType};
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};

    use bytes::Bytes;
    use deltalake::DeltaTable;

    use super::{DATA_PAGE_BYTES, DICTIONARY_PAGE_BYTES};
    use crate::changes;
    use crate::commit::{CommitEnv, WriteMode};
    use crate::compact::compact;
    use crate::location::TableStore;
    use crate::testing::{DAY_COLUMN, commit_for_test, positions_batch, positions_schema};

    const NAME: &str = "bronze.events";

    /// An empty bronze-like table (partitioned by day) in a temporary directory.
    async fn bronze(dir: &tempfile::TempDir) -> DeltaTable {
        let store = TableStore::new(dir.path()).unwrap();
        let by = [DAY_COLUMN.to_string()];
        store
            .open_or_create(NAME, &positions_schema(), &by, &CommitEnv::default())
            .await
            .unwrap()
    }

    /// Appends records `from..from + n`, with 40-byte keys and 300-byte payloads, all
    /// distinct, in one commit; the table version it made.
    async fn append(table: &mut DeltaTable, from: i64, n: i64) -> i64 {
        let batch = positions_batch(
            "events",
            0,
            from..from + n,
            |offset| format!("{offset:040}"),
            |offset| format!(r#"{{"n":{offset},"pad":"{:>280}"}}"#, offset),
            |_| None,
        );
        let by = [DAY_COLUMN.to_string()];
        commit_for_test(table, NAME, batch, WriteMode::Append, &by).await
    }

    /// The one data file `version` added, opened as Parquet.
    async fn added_file(table: &DeltaTable, version: i64) -> SerializedFileReader<Bytes> {
        let added = changes::range(table, NAME, version, version)
            .await
            .unwrap()
            .added;
        assert_eq!(added.len(), 1, "{added:?}");
        open(table, &added[0].path).await
    }

    /// The data file at `path` (as the log names it), opened as Parquet.
    async fn open(table: &DeltaTable, path: &str) -> SerializedFileReader<Bytes> {
        let bytes = changes::file_bytes(table, NAME, path).await.unwrap();
        SerializedFileReader::new(bytes).unwrap()
    }

    /// A committed bronze file: its unique columns fell back to plain encoding after a
    /// dictionary of at most [`DICTIONARY_PAGE_BYTES`], its repeated ones stayed
    /// dictionary-encoded, and no data page is larger than [`DATA_PAGE_BYTES`].
    #[tokio::test]
    async fn committed_files_use_small_dictionaries_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = bronze(&dir).await;
        let version = append(&mut table, 0, 8_000).await;
        let reader = added_file(&table, version).await;
        let metadata = reader.metadata().file_metadata();
        assert!(metadata.created_by().unwrap().starts_with("smelter "));
        let columns = metadata.schema_descr();
        let index = |name: &str| {
            (0..columns.num_columns())
                .find(|&i| columns.column(i).name() == name)
                .unwrap()
        };
        let row_group = reader.get_row_group(0).unwrap();
        let pages = |column: usize| {
            let mut pages = Vec::new();
            let mut reader = row_group.get_column_page_reader(column).unwrap();
            while let Some(page) = reader.get_next_page().unwrap() {
                pages.push((page.page_type(), page.encoding(), page.buffer().len()));
            }
            pages
        };
        for column in ["key", "payload"] {
            let pages = pages(index(column));
            let (kind, _, dictionary) = pages[0];
            assert_eq!(kind, PageType::DICTIONARY_PAGE, "{column}");
            // Checked after each small run of values: it may pass the limit by a few.
            let slack = DICTIONARY_PAGE_BYTES / 16;
            assert!(
                dictionary <= DICTIONARY_PAGE_BYTES + slack,
                "{column}: {dictionary}"
            );
            assert!(
                pages
                    .iter()
                    .any(|(_, encoding, _)| *encoding == Encoding::PLAIN),
                "{column} falls back to plain: {pages:?}"
            );
        }
        let topic = pages(index("topic"));
        assert!(
            topic[1..]
                .iter()
                .all(|(_, encoding, _)| *encoding == Encoding::RLE_DICTIONARY),
            "{topic:?}"
        );
        // About 2.4 MB of payloads: ten pages or so, each within the limit as decoded
        // (checked between small runs of values, so it may pass by a few).
        let payload = pages(index("payload"));
        assert!(payload.len() >= 9, "{} pages", payload.len());
        for (_, _, size) in &payload {
            assert!(*size <= DATA_PAGE_BYTES + DATA_PAGE_BYTES / 16, "{size}");
        }
    }

    /// Compaction writes its files the same way.
    #[tokio::test]
    async fn compacted_files_are_written_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = bronze(&dir).await;
        for from in [0, 100, 200] {
            append(&mut table, from, 100).await;
        }
        let compaction = compact(&mut table, NAME, Default::default(), &Default::default())
            .await
            .unwrap();
        assert_eq!(compaction.files_removed, 3);
        // A compaction adds no data (`dataChange = false`): its file is the table's one.
        table.update_state().await.unwrap();
        let files = changes::snapshot(&table, NAME).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        let reader = open(&table, &files[0].path).await;
        let created_by = reader.metadata().file_metadata().created_by().unwrap();
        assert!(created_by.starts_with("smelter "), "{created_by}");
    }
}
