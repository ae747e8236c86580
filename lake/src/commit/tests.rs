//! The commit path against real tables: partitions, heads, overwrites.

use deltalake::DeltaTable;

use super::*;
use crate::compact::compact;
use crate::location::TableStore;
use crate::log::{latest_version, refresh, row_count, version};
use crate::testing::TestTable;

async fn put(
    table: &mut DeltaTable,
    t: &TestTable,
    n: i64,
    mode: WriteMode,
    env: &CommitEnv,
) -> i64 {
    let outcome = commit(table, "silver.t", vec![t.batch(n)], mode, &[], vec![], env)
        .await
        .unwrap();
    let CommitOutcome::Committed { version } = outcome else {
        panic!("expected a commit, got {outcome:?}");
    };
    version
}

/// A batch of one partition is written as it is, a batch of several is split by
/// delta-rs: both land in the same partition directories, readable by their values.
#[tokio::test]
async fn batches_of_one_partition_land_where_split_batches_do() {
    use arrow::array::{Date32Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let env = CommitEnv::default();
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path()).unwrap();
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, true),
        Field::new("day", DataType::Date32, true),
    ]));
    let by = ["day".to_string()];
    let mut table = store
        .open_or_create("bronze.t", &schema, &by, &env)
        .await
        .unwrap();
    let batch = |n: Vec<i64>, days: Vec<i32>| {
        let columns: Vec<arrow::array::ArrayRef> = vec![
            std::sync::Arc::new(Int64Array::from(n)),
            std::sync::Arc::new(Date32Array::from(days)),
        ];
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    };
    // 20778 is 2026-11-21, 20779 the day after.
    let one_day = batch(vec![1, 2, 3], vec![20778; 3]);
    let two_days = batch(vec![4, 5], vec![20778, 20779]);
    for b in [one_day, two_days] {
        commit(
            &mut table,
            "bronze.t",
            vec![b],
            WriteMode::Append,
            &by,
            vec![],
            &env,
        )
        .await
        .unwrap();
    }
    let head = env.heads.head(&mut table, "bronze.t").await.unwrap();
    let mut dirs: Vec<String> = head
        .files()
        .map(|f| f.path().split('/').next().unwrap().to_string())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["day=2026-11-21", "day=2026-11-21", "day=2026-11-22"]);
    refresh(&mut table, "bronze.t").await.unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let rows = ctx
        .sql("SELECT CAST(day AS VARCHAR) AS day, sum(n) AS n FROM t GROUP BY day ORDER BY day")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string();
    assert!(text.contains("| 2026-11-21 | 10 |"), "{text}");
    assert!(text.contains("| 2026-11-22 | 5  |"), "{text}");
}

#[tokio::test]
async fn commits_move_the_head_not_the_loaded_snapshot() {
    let env = CommitEnv::default();
    let t = TestTable::create("silver.t", &env).await;
    let mut writer = t.store.open("silver.t").await.unwrap();
    let mut follower = t.store.open("silver.t").await.unwrap();
    let start = version(&follower);
    for n in 0..3 {
        let committed = put(&mut writer, &t, n, WriteMode::Append, &env).await;
        assert_eq!(committed, start + n + 1);
        // The head follows the commit without reading it back; the snapshot stays.
        let head = env.heads.head(&mut writer, "silver.t").await.unwrap();
        assert_eq!(head.version(), committed);
        assert_eq!(head.rows(), Some(n as u64 + 1));
        assert_eq!(version(&writer), start);
    }
    // A follower sees the new versions by probing, and a refresh loads them.
    assert_eq!(
        latest_version(&follower, "silver.t", start).await.unwrap(),
        start + 3
    );
    assert_eq!(version(&follower), start);
    assert_eq!(refresh(&mut follower, "silver.t").await.unwrap(), start + 3);
    assert_eq!(row_count(&follower), 3);
    assert_eq!(refresh(&mut follower, "silver.t").await.unwrap(), start + 3);
}

/// An overwrite removes exactly the files the log holds at its version, including
/// those other writers added and a compaction (through delta-rs) put in place of them.
#[tokio::test]
async fn overwrites_remove_what_other_writers_and_compaction_left() {
    let (env_a, env_b) = (CommitEnv::default(), CommitEnv::default());
    let t = TestTable::create("silver.t", &env_a).await;
    let mut a = t.store.open("silver.t").await.unwrap();
    let mut b = t.store.open("silver.t").await.unwrap();
    for n in 0..3 {
        put(&mut a, &t, n, WriteMode::Append, &env_a).await;
    }
    put(&mut b, &t, 3, WriteMode::Append, &env_b).await;
    let mut maintenance = t.store.open("silver.t").await.unwrap();
    let compaction = compact(&mut maintenance, "silver.t", Default::default(), &env_b)
        .await
        .unwrap();
    assert_eq!(compaction.files_removed, 4);
    put(&mut a, &t, 10, WriteMode::Overwrite, &env_a).await;

    let reader = t.store.open("silver.t").await.unwrap();
    assert_eq!(row_count(&reader), 1);
    let head = env_a.heads.head(&mut a, "silver.t").await.unwrap();
    assert_eq!(head.rows(), Some(1));
    assert_eq!(head.version(), version(&reader));
    let files: Vec<String> = reader
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.path().into_owned())
        .collect();
    let head_files: Vec<&str> = head.files().map(|f| f.path()).collect();
    assert_eq!(head_files, files);
}
