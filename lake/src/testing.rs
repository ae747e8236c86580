//! Helpers for tests of this crate and, with the `testing` feature, of the crates above it:
//! a throwaway table and a commit that must land. Test code only: failures panic.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;

use crate::commit::{CommitEnv, CommitOutcome, WriteMode, commit};
use crate::location::TableStore;

/// Commits `batch` without txn actions or a lock, and returns the new version.
pub async fn commit_for_test(
    table: &mut DeltaTable,
    name: &str,
    batch: RecordBatch,
    mode: WriteMode,
    partition_by: &[String],
) -> i64 {
    let outcome = commit(
        table,
        name,
        vec![batch],
        mode,
        partition_by,
        vec![],
        &CommitEnv::default(),
    )
    .await
    .unwrap();
    let CommitOutcome::Committed { version } = outcome else {
        panic!("{name}: expected a commit, got {outcome:?}");
    };
    version
}

/// A table `name` of one `n: Int64` column in a temporary directory, created with `env`;
/// open it with [`Self::store`] for each writer or follower.
pub struct TestTable {
    /// Kept for the table's lifetime.
    pub dir: tempfile::TempDir,
    /// The store holding it.
    pub store: TableStore,
    schema: SchemaRef,
}

impl TestTable {
    /// Creates the table.
    pub async fn create(name: &str, env: &CommitEnv) -> Self {
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let store = TableStore::new(dir.path()).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        store.open_or_create(name, &schema, &[], env).await.unwrap();
        Self { dir, store, schema }
    }

    /// One row holding `n`.
    pub fn batch(&self, n: i64) -> RecordBatch {
        let column = Arc::new(arrow::array::Int64Array::from(vec![n]));
        RecordBatch::try_new(self.schema.clone(), vec![column]).unwrap()
    }
}

/// The partition column of [`positions_batch`] rows.
pub const DAY_COLUMN: &str = "ingest_date";

/// Schema of rows shaped like bronze's: a source position (`topic`, `partition`,
/// `offset`), a `key`, a `payload`, an `error`, and the `ingest_date` partition column.
pub fn positions_schema() -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("payload", DataType::Binary, true),
        Field::new("error", DataType::Utf8, true),
        Field::new(DAY_COLUMN, DataType::Date32, false),
    ]))
}

/// Rows for offsets `offsets` of `topic`/`partition`, all of day 20,000 (2024-10-04), with
/// the key, payload and error each offset is given.
pub fn positions_batch(
    topic: &str,
    partition: i32,
    offsets: std::ops::Range<i64>,
    key: impl Fn(i64) -> String,
    payload: impl Fn(i64) -> String,
    error: impl Fn(i64) -> Option<String>,
) -> RecordBatch {
    use arrow::array::{ArrayRef, BinaryArray, Date32Array, Int32Array, Int64Array, StringArray};
    let n = (offsets.end - offsets.start).max(0) as usize;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(topic, n))),
        Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(
            partition, n,
        ))),
        Arc::new(Int64Array::from_iter_values(offsets.clone())),
        Arc::new(StringArray::from_iter_values(offsets.clone().map(&key))),
        Arc::new(BinaryArray::from_iter_values(
            offsets.clone().map(|o| payload(o).into_bytes()),
        )),
        Arc::new(StringArray::from_iter(offsets.map(&error))),
        Arc::new(Date32Array::from_iter_values(std::iter::repeat_n(
            20_000, n,
        ))),
    ];
    RecordBatch::try_new(positions_schema(), columns).unwrap()
}

/// [`positions_batch`] of topic `events` with key `k<offset>`, payload `{"n":<offset>}`
/// and every `flag_every`-th offset flagged with an error.
pub fn flagged_positions(
    partition: i32,
    offsets: std::ops::Range<i64>,
    flag_every: i64,
) -> RecordBatch {
    positions_batch(
        "events",
        partition,
        offsets,
        |offset| format!("k{offset}"),
        |offset| format!(r#"{{"n":{offset}}}"#),
        |offset| (offset % flag_every == 0).then(|| "flagged".to_string()),
    )
}

/// A bronze-like table `name` partitioned by [`DAY_COLUMN`], in `dir`, given four commits of
/// 300 [`flagged_positions`] rows (every 7th flagged): four files of one partition.
pub async fn four_position_files(dir: &std::path::Path, name: &str, env: &CommitEnv) -> DeltaTable {
    let store = TableStore::new(dir).unwrap();
    let by = [DAY_COLUMN.to_string()];
    let mut table = store
        .open_or_create(name, &positions_schema(), &by, env)
        .await
        .unwrap();
    for from in [0, 300, 600, 900] {
        let batch = flagged_positions(0, from..from + 300, 7);
        commit_for_test(&mut table, name, batch, WriteMode::Append, &by).await;
    }
    table
}
