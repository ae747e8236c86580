//! Eight writers appending to one table at once, each committing under the table's commit
//! lock on real etcd with its own txn appId, while compactions rewrite the same table:
//! every append lands exactly once, log versions are contiguous, the writer epoch only
//! grows, and each txn version is committed once.
//! `SMELTER_RACE_SECONDS` makes it longer (the documented soak uses 60).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use smelter_common::store::{CoordinationStore, EtcdStore};
use smelter_lake::compact::compact;
use smelter_lake::lock::CommitArbiter;
use smelter_lake::{AppId, CommitEnv, CommitOutcome, TableStore, TxnUpdate, WriteMode, log};
use smelter_tests::oracle::{rows, sql, verified};
use smelter_tests::services::Etcd;
use tokio::time::Instant;

const WRITERS: usize = 8;
const ROWS_PER_COMMIT: i64 = 50;
const TABLE: &str = "bronze.race";

fn batch(schema: &Arc<Schema>, writer: usize, seq: i64) -> RecordBatch {
    let n = ROWS_PER_COMMIT as usize;
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![format!("w{writer}"); n])),
            Arc::new(Int64Array::from(vec![seq; n])),
            Arc::new(Int64Array::from_iter_values(0..ROWS_PER_COMMIT)),
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_racing_on_one_table_lose_nothing() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let seconds: u64 = std::env::var("SMELTER_RACE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let tables = TableStore::new(dir.path()).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("writer", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("row", DataType::Int64, false),
    ]));
    tables
        .open_or_create(TABLE, &schema, &[], &CommitEnv::default())
        .await
        .unwrap();

    let until = Instant::now() + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for writer in 0..WRITERS {
        let tables = tables.clone();
        let schema = schema.clone();
        let endpoint = etcd.endpoint.clone();
        handles.push(tokio::spawn(async move {
            // Each writer is its own client, as separate workers would be.
            let store: Arc<dyn CoordinationStore> =
                Arc::new(EtcdStore::connect(&[endpoint]).await.unwrap());
            let commits = CommitEnv {
                arbiter: Some(CommitArbiter::new(
                    store,
                    Duration::from_secs(2),
                    format!("w{writer}"),
                )),
                ..Default::default()
            };
            let mut table = tables.open(TABLE).await.unwrap();
            let app_id = AppId::source("race", "writers", writer as i32);
            let mut seq = 0i64;
            while Instant::now() < until {
                let previous = (seq > 0).then_some(seq - 1);
                let outcome = smelter_lake::commit(
                    &mut table,
                    TABLE,
                    vec![batch(&schema, writer, seq)],
                    WriteMode::Append,
                    &[],
                    vec![TxnUpdate::new(&app_id, previous, seq)],
                    &commits,
                )
                .await
                .unwrap();
                assert!(
                    matches!(outcome, CommitOutcome::Committed { .. }),
                    "w{writer} seq {seq}: nobody else writes this appId, so it must land"
                );
                seq += 1;
            }
            seq
        }));
    }
    // Maintenance on the same table meanwhile: compactions racing with the appends.
    let compactor = {
        let tables = tables.clone();
        let endpoint = etcd.endpoint.clone();
        tokio::spawn(async move {
            // Under the commit lock like the writers: it queues with them.
            let store: Arc<dyn CoordinationStore> =
                Arc::new(EtcdStore::connect(&[endpoint]).await.unwrap());
            let commits = CommitEnv {
                arbiter: Some(CommitArbiter::new(
                    store,
                    Duration::from_secs(2),
                    "compactor".into(),
                )),
                ..Default::default()
            };
            let mut table = tables.open(TABLE).await.unwrap();
            let mut compactions = 0;
            let mut compacted_at = log::version(&table);
            while Instant::now() < until {
                // Compact whenever the appends have added another 16 versions (small files).
                table.update_state().await.unwrap();
                if log::version(&table) < compacted_at + 16 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                compacted_at = log::version(&table);
                match compact(&mut table, TABLE, Default::default(), &commits).await {
                    Ok(done) if done.version.is_some() => compactions += 1,
                    Ok(_) => {}
                    Err(error) => panic!("a compaction under the lock must land: {error}"),
                }
            }
            compactions
        })
    };
    let mut commits = Vec::new();
    for handle in handles {
        commits.push(handle.await.unwrap());
    }
    let total: i64 = commits.iter().sum();
    let compactions = compactor.await.unwrap();
    eprintln!(
        "{WRITERS} writers made {total} commits and {compactions} compactions in {seconds} s: {commits:?}"
    );
    assert!(
        compactions > 0,
        "maintenance commits landed among the appends"
    );
    assert!(
        commits.iter().all(|c| *c > 0),
        "every writer got commits in"
    );

    // The log: contiguous, epochs strictly increasing, each txn version once, files present.
    verified(&tables, TABLE).await.unwrap();
    let table = tables.open(TABLE).await.unwrap();
    assert_eq!(
        log::version(&table),
        total + compactions,
        "one version per append or compaction after the create"
    );
    for (writer, count) in commits.iter().enumerate() {
        assert_eq!(
            log::txn_version(&table, &AppId::source("race", "writers", writer as i32))
                .await
                .unwrap(),
            Some(count - 1)
        );
    }
    assert!(
        log::txn_version(&table, &AppId::Epoch)
            .await
            .unwrap()
            .is_some(),
        "every commit carries the writer epoch"
    );
    // No lost or doubled append: each (writer, seq) has exactly its rows.
    let found = rows(
        &sql(
            &tables,
            "SELECT count(*), count(DISTINCT writer || '/' || CAST(seq AS VARCHAR)), \
             max(n), min(n) FROM (SELECT writer, seq, count(*) AS n FROM bronze.race \
             GROUP BY writer, seq)",
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        found,
        vec![format!(
            "{total} | {total} | {ROWS_PER_COMMIT} | {ROWS_PER_COMMIT}"
        )]
    );
}
