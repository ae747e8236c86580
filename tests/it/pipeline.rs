//! The clickstream pipeline end to end in an in-process cluster: bronze exact, silver and
//! quarantine exact, gold equal to an independent recomputation, all served over Flight SQL.

use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use smelter_common::spec::TableSpec;
use smelter_tests::oracle::{self, check_bronze, check_pipeline, check_silver, generator_truth};
use smelter_tests::{TestCluster, bounded_demo};

fn count(batches: &[arrow::record_batch::RecordBatch]) -> i64 {
    batches
        .iter()
        .map(|b| {
            b.column(0)
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .sum::<i64>()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickstream_is_exact_through_every_layer() {
    let pipeline = bounded_demo(20_000, 4);
    let cluster = TestCluster::start(2, &pipeline).await.unwrap();
    cluster
        .wait_drained(Duration::from_secs(120))
        .await
        .unwrap();

    let truth = generator_truth(&cluster.spec);
    assert!(
        truth.duplicates > 50 && truth.quarantine.len() > 30,
        "the workload must contain duplicates and invalid events"
    );
    check_pipeline(&cluster.tables, &cluster.spec, &truth)
        .await
        .unwrap();
    let names = cluster.tables.list().await;
    for expected in smelter_tests::DEMO_TABLES {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(
        TableSpec::quarantine_name("silver.events"),
        "silver.events_quarantine"
    );
    // Money is exact: the revenue gold sums is a decimal, as silver's price (the oracle
    // above compared both digit for digit, silver in integer cents).
    for (table, column) in [
        ("gold.hourly_metrics", "revenue"),
        ("gold.daily_summary", "revenue"),
        ("gold.user_segments", "spend"),
    ] {
        let opened = cluster.tables.open(table).await.unwrap();
        let schema = smelter_lake::log::arrow_schema(&opened, table).unwrap();
        let ty = schema.field_with_name(column).unwrap().data_type().clone();
        assert!(
            matches!(ty, arrow::datatypes::DataType::Decimal128(_, 2)),
            "{table}.{column} is {ty}"
        );
    }

    // Every layer over Flight SQL, through both workers.
    for endpoint in cluster.flight_endpoints() {
        let mut client = smelter_sdk::QueryClient::connect(&endpoint).await.unwrap();
        assert_eq!(
            count(
                &client
                    .query("SELECT count(*) FROM bronze.events")
                    .await
                    .unwrap()
            ),
            20_000
        );
        assert_eq!(
            count(
                &client
                    .query("SELECT count(*) FROM silver.events")
                    .await
                    .unwrap()
            ),
            truth.silver.len() as i64
        );
        let gold = client
            .query("SELECT sum(events) FROM gold.hourly_metrics")
            .await
            .unwrap();
        assert_eq!(
            count(&gold),
            truth.silver.len() as i64,
            "hourly events add up to silver rows"
        );
    }
    let users = cluster.query("SELECT count(*) FROM gold.user_segments WHERE segment IN ('vip','buyer','shopper','browser')").await.unwrap();
    let all_users = oracle::sql(
        &cluster.tables,
        "SELECT count(DISTINCT user_id) FROM silver.events",
    )
    .await
    .unwrap();
    assert_eq!(count(&users), count(&all_users));

    // `smelter compact` rewrites bronze's many small files; every layer stays exact.
    let files = async || {
        let table = cluster.tables.open("bronze.events").await.unwrap();
        table.get_file_uris().unwrap().count()
    };
    let files_before = files().await;
    let report = smelter_tests::smelter_json(&["compact", "bronze.events"], cluster.dir());
    assert!(
        report[0]["compaction"]["files_removed"].as_u64().unwrap() > 1,
        "{report}"
    );
    let files_after = files().await;
    assert!(
        files_after < files_before,
        "{files_before} -> {files_after} files"
    );
    check_pipeline(&cluster.tables, &cluster.spec, &truth)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flight_sql_rejects_bad_and_mutating_sql_with_clear_errors() {
    let cluster = TestCluster::start(1, &bounded_demo(500, 1)).await.unwrap();
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();
    let err = cluster.query("SELEC 1").await.unwrap_err();
    assert!(
        err.contains("SELEC") || err.contains("syntax") || err.contains("Expected"),
        "{err}"
    );
    let err = cluster
        .query("SELECT * FROM silver.nope")
        .await
        .unwrap_err();
    assert!(err.contains("silver.nope") || err.contains("nope"), "{err}");
    for statement in [
        "DROP TABLE silver.events",
        "INSERT INTO gold.daily_summary SELECT * FROM gold.daily_summary",
        "CREATE TABLE x AS SELECT 1",
        "COPY silver.events TO '/tmp/smelter-copy.parquet'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let err = cluster.query(statement).await.unwrap_err();
        assert!(err.contains("not supported"), "{statement}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/smelter-copy.parquet").exists());
    let rows = cluster
        .query("SELECT count(*) FROM silver.events")
        .await
        .unwrap();
    assert!(count(&rows) > 0, "silver survived the attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_restart_resumes_without_reingesting() {
    let pipeline = bounded_demo(6_000, 3);
    let mut cluster = TestCluster::start(2, &pipeline).await.unwrap();
    cluster.wait_drained(Duration::from_secs(90)).await.unwrap();
    let versions: Vec<Option<u64>> = {
        let mut v = Vec::new();
        for table in cluster.tables.list().await {
            v.push(cluster.tables.open(&table).await.unwrap().version());
        }
        v
    };
    cluster.restart(3, &pipeline).await.unwrap();
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();
    // Nothing new to read: no new bronze or silver commits after the restart.
    for (table, before) in cluster.tables.list().await.into_iter().zip(versions) {
        if table.starts_with("bronze.") || table.starts_with("silver.") {
            let after = cluster.tables.open(&table).await.unwrap().version();
            assert_eq!(
                after, before,
                "{table} was written again after a restart with nothing to do"
            );
        }
    }
    let truth = generator_truth(&cluster.spec);
    check_bronze(&cluster.tables, "bronze.events", &truth)
        .await
        .unwrap();
    check_silver(&cluster.tables, "silver.events", &truth)
        .await
        .unwrap();
}
