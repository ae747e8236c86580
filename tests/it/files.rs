//! The files source: NDJSON files picked up as they arrive, each line ingested exactly
//! once; bad lines and oversized records end up in quarantine with a reason.

use std::collections::BTreeSet;
use std::time::Duration;

use smelter_tests::TestCluster;
use smelter_tests::oracle::{check_log, exact, positions, sql};

async fn bronze_positions(tables: &smelter_lake::TableStore) -> Vec<(String, i32, i64)> {
    positions(
        &sql(
            tables,
            "SELECT topic, \"partition\", \"offset\" FROM bronze.orders",
        )
        .await
        .unwrap(),
    )
}

fn pipeline(dir: &std::path::Path) -> String {
    format!(
        r#"
pipeline: orders
sources:
  landing:
    files: {{ path: "{}" }}
tables:
  bronze.orders: {{ from: landing }}
  silver.orders:
    from: bronze.orders
    parse: {{ format: json, schema: {{ order_id: string, amount: double, customer: {{ id: string }} }} }}
    flatten: true
    dedupe: {{ keys: [order_id] }}
    expectations:
      - {{ name: positive, expr: "amount > 0", on_violation: quarantine }}
      - {{ name: known_customer, expr: "customer_id <> 'nobody'", on_violation: drop }}
  gold.totals:
    from: silver.orders
    sql: SELECT customer_id, count(*) AS orders, sum(amount) AS total FROM silver.orders GROUP BY customer_id
    keys: [customer_id]
"#,
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_are_ingested_once_and_bad_lines_quarantined() {
    let landing = tempfile::tempdir().unwrap();
    let big = format!(
        r#"{{"order_id":"big","amount":1,"pad":"{}"}}"#,
        "x".repeat(1_100_000)
    );
    let first = [
        r#"{"order_id":"o1","amount":10.5,"customer":{"id":"c1"}}"#,
        r#"{"order_id":"o2","amount":-3,"customer":{"id":"c1"}}"#,
        "",
        r#"{"order_id":"o3","amount":"ten","customer":{"id":"c2"}}"#,
        r#"{"order_id":"o1","amount":10.5,"customer":{"id":"c1"}}"#,
        r#"{"order_id":"o4","amount":7,"customer":{"id":"nobody"}}"#,
        "not json at all",
        &big,
        r#"{"order_id":"o5","amount":2,"customer":{"id":"c2"},"coupon":"X1"}"#,
    ]
    .join("\n");
    std::fs::write(landing.path().join("a.ndjson"), format!("{first}\n")).unwrap();
    std::fs::write(landing.path().join("ignored.csv"), "order_id\no9\n").unwrap();

    let mut cluster = TestCluster::start(2, &pipeline(landing.path()))
        .await
        .unwrap();
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();

    // A second file arrives while running, first under a temporary name.
    let tmp = landing.path().join(".b.ndjson");
    std::fs::write(&tmp, "{\"order_id\":\"o6\",\"amount\":1,\"customer\":{\"id\":\"c3\"}}\n{\"order_id\":\"o5\",\"amount\":2,\"customer\":{\"id\":\"c2\"}}\n").unwrap();
    std::fs::rename(&tmp, landing.path().join("b.ndjson")).unwrap();
    cluster
        .wait_for_rows(
            Duration::from_secs(60),
            "SELECT count(*) FROM bronze.orders WHERE topic = 'b.ndjson'",
            &["2"],
        )
        .await
        .unwrap();
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();

    let mut expected: BTreeSet<(String, i32, i64)> = [0, 1, 3, 4, 5, 6, 7, 8]
        .iter()
        .map(|&l| ("a.ndjson".to_string(), 0, l))
        .collect();
    expected.insert(("b.ndjson".into(), 0, 0));
    expected.insert(("b.ndjson".into(), 0, 1));
    let bronze = bronze_positions(&cluster.tables).await;
    exact("bronze.orders", bronze, &expected).unwrap();

    let quarantine = sql(&cluster.tables, "SELECT topic, \"partition\", \"offset\", rule, reason FROM silver.orders_quarantine ORDER BY \"offset\"").await.unwrap();
    let rows = smelter_tests::oracle::rows(&quarantine).unwrap();
    let expected_quarantine: BTreeSet<(String, i32, i64)> = [1, 3, 6, 7]
        .iter()
        .map(|&l| ("a.ndjson".to_string(), 0, l))
        .collect();
    exact("quarantine", positions(&quarantine), &expected_quarantine).unwrap();
    let text = rows.join("\n");
    assert!(text.contains("positive | violates `amount > 0`"), "{text}");
    assert!(
        text.contains("_schema | field `amount`: expected double, got string \"ten\""),
        "{text}"
    );
    assert!(text.contains("_parse | invalid JSON"), "{text}");
    assert!(text.contains("_ingest | record of 1100"), "{text}");

    let silver = smelter_tests::oracle::rows(
        &sql(
            &cluster.tables,
            "SELECT order_id, customer_id, _rescued_data FROM silver.orders",
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        silver,
        vec![
            "o1 | c1 | NULL",
            "o5 | c2 | {\"coupon\":\"X1\"}",
            "o6 | c3 | NULL"
        ],
        "o1 and o5 deduped, o4 dropped"
    );
    let gold = smelter_tests::oracle::rows(
        &sql(&cluster.tables, "SELECT * FROM gold.totals")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        gold,
        vec!["c1 | 1 | 10.5000", "c2 | 1 | 2.0000", "c3 | 1 | 1.0000"]
    );
    for table in cluster.tables.list().await {
        check_log(&cluster.tables, &table).unwrap();
    }

    // A restart reads the directory again but ingests no file a second time.
    let bronze_version = cluster
        .tables
        .open("bronze.orders")
        .await
        .unwrap()
        .version();
    cluster.restart(1, &pipeline(landing.path())).await.unwrap();
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        cluster
            .tables
            .open("bronze.orders")
            .await
            .unwrap()
            .version(),
        bronze_version,
        "a restart re-ingested files"
    );
    let bronze = bronze_positions(&cluster.tables).await;
    exact("bronze.orders after restart", bronze, &expected).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applying_a_changed_spec_restarts_its_tasks() {
    let landing = tempfile::tempdir().unwrap();
    let line = |id: &str, amount: u32| {
        format!("{{\"order_id\":\"{id}\",\"amount\":{amount},\"customer\":{{\"id\":\"c\"}}}}\n")
    };
    std::fs::write(landing.path().join("1.ndjson"), line("a", 50)).unwrap();
    let original = pipeline(landing.path());
    let cluster = TestCluster::start(1, &original).await.unwrap();
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();

    // A stricter rule, applied to the running cluster, governs the next file.
    let stricter = original.replace(
        "expr: \"amount > 0\"",
        "expr: \"amount > 0 AND amount < 10\"",
    );
    let mut admin = smelter_sdk::AdminClient::connect(&cluster.coordinator_endpoint())
        .await
        .unwrap();
    let applied = admin.apply(&stricter, "orders.yaml").await.unwrap();
    assert_eq!(applied.revision, 2);
    std::fs::write(landing.path().join("2.ndjson"), line("b", 50)).unwrap();
    cluster
        .wait_for_rows(
            Duration::from_secs(60),
            "SELECT reason FROM silver.orders_quarantine WHERE \"offset\" = 0 AND topic = '2.ndjson'",
            &["violates `amount > 0 AND amount < 10`"],
        )
        .await
        .unwrap();
    let silver = smelter_tests::oracle::rows(
        &sql(&cluster.tables, "SELECT order_id FROM silver.orders")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        silver,
        vec!["a"],
        "a was refined under the old rule and stays"
    );
}
