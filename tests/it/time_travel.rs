//! Time travel and history against a finished pipeline: `VERSION AS OF` and
//! `TIMESTAMP AS OF` over Flight SQL (in joins, with bad versions and timestamps refused
//! with what there is), `table_history(...)`, and `smelter history` from the binary.
//! The expected rows of a version come from delta-rs opening that version directly.

use std::process::Command;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use smelter_sdk::QueryClient;
use smelter_tests::{TestCluster, bounded_demo, smelter_binary, smelter_json};

fn single_i64(batches: &[arrow::record_batch::RecordBatch]) -> i64 {
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().iter().flatten())
        .sum()
}

async fn count(client: &mut QueryClient, sql: &str) -> i64 {
    single_i64(&client.query(sql).await.unwrap())
}

/// Rows of `table` at `version`, counted by DataFusion over delta-rs's own snapshot of it.
async fn rows_at(cluster: &TestCluster, table: &str, version: i64) -> i64 {
    let delta = cluster.tables.open_version(table, version).await.unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", delta.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT count(*) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    single_i64(&batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_read_any_kept_version_and_history_says_what_each_commit_did() {
    // Paced, so that every layer commits several versions (batches close every 300 ms).
    let pipeline = bounded_demo(6_000, 4).replace("      rate: null\n", "      rate: 3000\n");
    let cluster = TestCluster::start(2, &pipeline).await.unwrap();
    cluster
        .wait_drained(Duration::from_secs(120))
        .await
        .unwrap();
    let endpoint = cluster.flight_endpoints()[0].clone();
    let mut client = QueryClient::connect(&endpoint).await.unwrap();

    let silver = cluster.tables.open("silver.events").await.unwrap();
    let latest = smelter_lake::log::version(&silver);
    assert!(latest >= 3, "the run made {latest} silver versions");
    let history = smelter_lake::history::entries(&silver, "silver.events", None)
        .await
        .unwrap();
    assert_eq!(history.len() as i64, latest + 1);
    for version in [1, latest / 2, latest] {
        let expected = rows_at(&cluster, "silver.events", version).await;
        let sql = format!("SELECT count(*) FROM silver.events VERSION AS OF {version}");
        assert_eq!(count(&mut client, &sql).await, expected, "{sql}");
        // The same version by its commit time, written as users write timestamps.
        let entry = history.iter().find(|e| e.version == version).unwrap();
        let at = chrono::DateTime::from_timestamp_millis(entry.timestamp_ms.unwrap()).unwrap();
        let sql = format!(
            "SELECT count(*) FROM silver.events TIMESTAMP AS OF '{}'",
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        let by_time = count(&mut client, &sql).await;
        // Commits in the same millisecond: the latest of them.
        let same_ms = history
            .iter()
            .filter(|e| e.timestamp_ms == entry.timestamp_ms)
            .map(|e| e.version)
            .max()
            .unwrap();
        assert_eq!(
            by_time,
            rows_at(&cluster, "silver.events", same_ms).await,
            "{sql}"
        );
    }
    // Two versions of one table in one query.
    let middle = latest / 2;
    let joined = count(
        &mut client,
        &format!(
            "SELECT count(*) FROM silver.events VERSION AS OF {middle} old \
         JOIN silver.events new ON old.event_id = new.event_id"
        ),
    )
    .await;
    assert_eq!(joined, rows_at(&cluster, "silver.events", middle).await);

    // Out of range, unparsable: refused, saying what there is.
    for (sql, expected) in [
        (
            format!("SELECT * FROM silver.events VERSION AS OF {}", latest + 5),
            format!("its versions are 0 to {latest}"),
        ),
        (
            "SELECT * FROM silver.events TIMESTAMP AS OF '2001-01-01T00:00:00Z'".to_string(),
            "has no version as of".to_string(),
        ),
        (
            "SELECT * FROM silver.events TIMESTAMP AS OF 'last tuesday'".to_string(),
            "not a timestamp".to_string(),
        ),
        (
            "SELECT * FROM gold.nope VERSION AS OF 1".to_string(),
            "does not exist".to_string(),
        ),
    ] {
        let error = client.query(&sql).await.unwrap_err();
        assert!(error.is_invalid_input(), "{sql}: {error}");
        assert!(error.to_string().contains(&expected), "{sql}: {error}");
    }

    // table_history: one row per version, newest first, saying what each consumed.
    let batches = client
        .query(
            "SELECT version, operation, array_to_string(consumed, ' ') AS consumed, epoch \
             FROM table_history('silver.events') ORDER BY version DESC",
        )
        .await
        .unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as i64, latest + 1);
    let first = &batches[0];
    assert_eq!(first.column(0).as_primitive::<Int64Type>().value(0), latest);
    assert_eq!(first.column(1).as_string::<i32>().value(0), "refine");
    assert!(
        first
            .column(2)
            .as_string::<i32>()
            .value(0)
            .contains("silver.events/bronze.events="),
        "{:?}",
        first.column(2)
    );
    let ingest = count(
        &mut client,
        "SELECT count(*) FROM table_history('bronze.events') WHERE operation = 'ingest' \
         AND rows_added > 0",
    )
    .await;
    assert!(ingest > 0);
    let error = client
        .query("SELECT * FROM table_history('gold.nope')")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");

    // The binary reads the log itself: no cluster needed.
    let root = cluster.dir();
    let printed = smelter_json(&["history", "silver.events", "--limit", "3"], root);
    let printed = printed.as_array().unwrap();
    assert_eq!(printed.len(), 3);
    assert_eq!(printed[0]["version"], latest);
    assert_eq!(printed[0]["operation"], "refine");
    let writer = printed[0]["writer"].as_str().unwrap_or_default();
    assert!(
        writer.contains(&format!("pid {}", std::process::id())),
        "{writer}"
    );
    assert!(printed[0]["epoch"].as_i64().is_some());
    // Where the refine commit's time went, as it recorded it (milliseconds per stage).
    let stages = &printed[0]["stages"];
    for stage in ["read", "refine", "quarantine", "write", "lockWait"] {
        let ms = stages[stage].as_f64();
        assert!(ms.is_some_and(|ms| ms >= 0.0), "{stage}: {stages}");
    }
    assert!(stages["write"].as_f64().unwrap() > 0.0, "{stages}");
    let out = Command::new(smelter_binary())
        .args(["history", "silver.nope"])
        .arg("--data-dir")
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("silver.nope does not exist"));
}
