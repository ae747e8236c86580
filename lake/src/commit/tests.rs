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

/// Rows with a new nested field, a new column and a widened type evolve the table in the
/// commit that carries them: one metadata change, the old files rewritten in the wider type
/// (`dataChange = false`), the version before still reading as it was, and rows of a type
/// the table cannot take refused with the column's name.
#[tokio::test]
async fn rows_of_a_wider_schema_evolve_the_table_in_their_commit() {
    use arrow::array::{ArrayRef, AsArray, Int32Array, Int64Array, StringArray, StructArray};
    use arrow::datatypes::{DataType, Field, Fields, Int64Type, Schema};
    use std::sync::Arc;
    let env = CommitEnv::default();
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path()).unwrap();
    let user = |names: &[&str]| -> Fields {
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>()
            .into()
    };
    let v1 = Arc::new(Schema::new(vec![
        Field::new("quantity", DataType::Int32, true),
        Field::new("user", DataType::Struct(user(&["id"])), true),
    ]));
    let mut table = store
        .open_or_create("silver.t", &v1, &[], &env)
        .await
        .unwrap();
    let old = RecordBatch::try_new(
        v1.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef,
            Arc::new(StructArray::new(
                user(&["id"]),
                vec![Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef],
                None,
            )),
        ],
    )
    .unwrap();
    async fn write(
        table: &mut DeltaTable,
        env: &CommitEnv,
        batch: RecordBatch,
        from: Option<i64>,
        to: i64,
    ) -> Result<CommitOutcome> {
        let txn = TxnUpdate::new(&AppId::upstream("silver.t", "bronze.t"), from, to);
        let batches = vec![batch];
        commit(
            table,
            "silver.t",
            batches,
            WriteMode::Append,
            &[],
            vec![txn],
            env,
        )
        .await
    }
    assert_eq!(
        write(&mut table, &env, old, None, 1).await.unwrap(),
        CommitOutcome::Committed { version: 1 }
    );
    let v2 = Arc::new(Schema::new(vec![
        Field::new("quantity", DataType::Int64, true),
        Field::new("user", DataType::Struct(user(&["id", "device"])), true),
        Field::new("channel", DataType::Utf8, true),
    ]));
    let new = RecordBatch::try_new(
        v2.clone(),
        vec![
            Arc::new(Int64Array::from(vec![3_000_000_000])) as ArrayRef,
            Arc::new(StructArray::new(
                user(&["id", "device"]),
                vec![
                    Arc::new(StringArray::from(vec!["c"])) as ArrayRef,
                    Arc::new(StringArray::from(vec!["ios"])),
                ],
                None,
            )),
            Arc::new(StringArray::from(vec!["web"])),
        ],
    )
    .unwrap();
    assert_eq!(
        write(&mut table, &env, new, Some(1), 2).await.unwrap(),
        CommitOutcome::Committed { version: 2 }
    );
    // One commit: the metadata, the new rows, and the old file rewritten without data change.
    let entry = std::fs::read_to_string(
        dir.path()
            .join("silver/t/_delta_log/00000000000000000002.json"),
    )
    .unwrap();
    let actions: Vec<serde_json::Value> = entry
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |kind: &str| actions.iter().filter(|a| a.get(kind).is_some()).count();
    assert_eq!(
        (count("metaData"), count("add"), count("remove")),
        (1, 2, 1)
    );
    let unchanged = actions
        .iter()
        .filter_map(|a| a.get("add"))
        .filter(|add| add["dataChange"] == false)
        .count();
    assert_eq!(unchanged, 1, "the rewritten file changes no data: {entry}");
    let info = actions.iter().find_map(|a| a.get("commitInfo")).unwrap();
    assert_eq!(
        info[EVOLVED_KEY],
        "added user.device, channel; widened quantity int to long"
    );
    let read = |table: DeltaTable, sql: &'static str| async move {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    };
    let latest = store.open("silver.t").await.unwrap();
    let rows = read(
        latest,
        "SELECT quantity, \"user\"['id'] AS id, \"user\"['device'] AS device, channel FROM t ORDER BY id",
    )
    .await;
    let batch = arrow::compute::concat_batches(&rows[0].schema(), &rows).unwrap();
    let quantity = batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(
        quantity.values().to_vec(),
        vec![1, 2, 3_000_000_000],
        "old rows read in the wider type"
    );
    assert_eq!(batch.column(2).null_count(), 2);
    let channel = arrow::compute::cast(batch.column(3), &DataType::Utf8).unwrap();
    assert_eq!(channel.as_string::<i32>().value(2), "web");
    // The version before reads as it was written.
    let before = store.open_version("silver.t", 1).await.unwrap();
    let schema = before.snapshot().unwrap().snapshot().arrow_schema();
    assert_eq!(
        schema.field_with_name("quantity").unwrap().data_type(),
        &DataType::Int32
    );
    assert!(schema.field_with_name("channel").is_err());
    assert_eq!(
        read(before, "SELECT count(*) FROM t").await[0].num_rows(),
        1
    );
    // Rows the table cannot take: refused, naming the column, nothing written.
    let text = Arc::new(Schema::new(vec![Field::new(
        "quantity",
        DataType::Utf8,
        true,
    )]));
    let bad = RecordBatch::try_new(
        text,
        vec![Arc::new(StringArray::from(vec!["x"])) as ArrayRef],
    )
    .unwrap();
    let error = write(&mut table, &env, bad, Some(2), 3).await.unwrap_err();
    assert_eq!(error.retry(), Retry::Permanent);
    assert!(error.to_string().contains("column quantity"), "{error}");
    assert_eq!(latest_version(&table, "silver.t", 2).await.unwrap(), 2);
    // Rows without the added columns (an older writer's) are written with them null.
    let narrow = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "quantity",
            DataType::Int32,
            true,
        )])),
        vec![Arc::new(Int32Array::from(vec![7])) as ArrayRef],
    )
    .unwrap();
    assert_eq!(
        write(&mut table, &env, narrow, Some(2), 3).await.unwrap(),
        CommitOutcome::Committed { version: 3 }
    );
}

/// A table created with a `timestamp_ntz` column has Delta's `timestampNtz` feature
/// (reader 3, writer 7), and the lean path still writes its commits; a table without one
/// refuses to gain one by evolution (the feature would be missing).
#[tokio::test]
async fn timestamp_ntz_tables_commit_lean_and_others_do_not_gain_the_type() {
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let env = CommitEnv::default();
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::new(dir.path()).unwrap();
    let ntz = DataType::Timestamp(TimeUnit::Microsecond, None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, true),
        Field::new("local", ntz.clone(), true),
    ]));
    let mut table = store
        .open_or_create("silver.ntz", &schema, &[], &env)
        .await
        .unwrap();
    let protocol = table.snapshot().unwrap().protocol().clone();
    assert_eq!(
        (protocol.min_reader_version(), protocol.min_writer_version()),
        (3, 7)
    );
    assert_eq!(
        CommitPath::choose(&table, WriteMode::Append),
        CommitPath::Lean
    );
    let rows = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                1_793_527_200_000_000,
                0,
            ])),
        ],
    )
    .unwrap();
    let outcome = commit(
        &mut table,
        "silver.ntz",
        vec![rows],
        WriteMode::Append,
        &[],
        vec![],
        &env,
    )
    .await
    .unwrap();
    assert_eq!(outcome, CommitOutcome::Committed { version: 1 });
    refresh(&mut table, "silver.ntz").await.unwrap();
    assert_eq!(row_count(&table), 2);

    let plain = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let mut other = store
        .open_or_create("silver.plain", &plain, &[], &env)
        .await
        .unwrap();
    let wider = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("local", ntz, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(TimestampMicrosecondArray::from(vec![0])),
        ],
    )
    .unwrap();
    let refused = commit(
        &mut other,
        "silver.plain",
        vec![wider],
        WriteMode::Append,
        &[],
        vec![],
        &env,
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("timestampNtz"), "{refused}");
    assert_eq!(refused.retry(), Retry::Permanent);
    assert_eq!(latest_version(&other, "silver.plain", 0).await.unwrap(), 0);
}
