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

/// The formats users land: CSV (a `;` delimiter, quoted fields with separators, quotes and
/// a newline, empty fields, a row with too few fields), NDJSON plain, gzip and zstd, and
/// Parquet — each its own source, refined into silver. Every row arrives exactly once with
/// its values typed as declared (CSV's text read into `long`, `decimal`, `boolean`,
/// `timestamp`); the short CSV row lands in bronze flagged and is quarantined naming its
/// row; bronze keeps each record's file and position. Expected values come from the rows
/// the test wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csv_compressed_ndjson_parquet_and_avro_files_refine_exactly() {
    use std::io::Write as _;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (csv_dir, json_dir, parquet_dir) = (
        dir.path().join("csv"),
        dir.path().join("json"),
        dir.path().join("parquet"),
    );
    for d in [&csv_dir, &json_dir, &parquet_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // CSV: 300 rows, then one short row.
    let mut csv = String::from("id;qty;price;paid;at;note\n");
    for i in 0..300 {
        let note = if i % 50 == 0 {
            "\"a; \"\"quoted\"\"\nnote\"".to_string()
        } else {
            String::new()
        };
        csv.push_str(&format!(
            "c{i};{};{}.{:02};{};2026-11-01T10:00:{:02}Z;{note}\n",
            i % 5,
            i,
            i % 100,
            i % 2 == 0,
            i % 60
        ));
    }
    csv.push_str("short;1\n");
    std::fs::write(csv_dir.join("orders.csv"), &csv).unwrap();
    // NDJSON: 100 lines in each of a plain, a gzip and a zstd file.
    let ndjson = |from: usize| -> Vec<u8> {
        (from..from + 100)
            .map(|i| format!("{{\"id\":\"j{i}\",\"qty\":{}}}\n", i % 7))
            .collect::<String>()
            .into_bytes()
    };
    std::fs::write(json_dir.join("a.ndjson"), ndjson(0)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&ndjson(100)).unwrap();
    std::fs::write(json_dir.join("b.ndjson.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(
        json_dir.join("c.ndjson.zst"),
        zstd::encode_all(ndjson(200).as_slice(), 3).unwrap(),
    )
    .unwrap();
    // Parquet: 250 rows.
    let ids: Vec<String> = (0..250).map(|i| format!("p{i}")).collect();
    let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(arrow::array::StringArray::from(ids)) as arrow::array::ArrayRef,
        ),
        (
            "qty",
            Arc::new(arrow::array::Int64Array::from_iter_values(0..250)) as arrow::array::ArrayRef,
        ),
    ])
    .unwrap();
    let mut file = Vec::new();
    let mut writer =
        deltalake::parquet::arrow::ArrowWriter::try_new(&mut file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    std::fs::write(parquet_dir.join("part-0.parquet"), file).unwrap();
    // Avro: 120 records with a nested record and an optional field, in two files.
    let avro_dir = dir.path().join("avro");
    std::fs::create_dir_all(&avro_dir).unwrap();
    for (file, from) in [("a.avro", 0), ("b.avro", 60)] {
        use arrow::array::{ArrayRef, Int64Array, StringArray, StructArray};
        use arrow::datatypes::{DataType, Field};
        let range = from..from + 60;
        let customer = StructArray::from(vec![(
            Arc::new(Field::new("id", DataType::Utf8, false)),
            Arc::new(StringArray::from_iter_values(
                range.clone().map(|i| format!("u{}", i % 9)),
            )) as ArrayRef,
        )]);
        let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from_iter_values(
                    range.clone().map(|i| format!("a{i}")),
                )) as ArrayRef,
            ),
            (
                "qty",
                Arc::new(Int64Array::from_iter_values(range.clone().map(|i| i * 3))) as ArrayRef,
            ),
            ("customer", Arc::new(customer) as ArrayRef),
            (
                "coupon",
                Arc::new(StringArray::from_iter(
                    range.clone().map(|i| (i % 4 == 0).then(|| format!("k{i}"))),
                )) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut writer =
            arrow_avro::writer::AvroWriter::new(Vec::new(), batch.schema().as_ref().clone())
                .unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        std::fs::write(avro_dir.join(file), writer.into_inner()).unwrap();
    }

    let text = format!(
        r#"
pipeline: formats
sources:
  csv_orders: {{ files: {{ path: "{}", format: csv, csv: {{ delimiter: ";" }} }} }}
  json_orders: {{ files: {{ path: "{}" }} }}
  parquet_orders: {{ files: {{ path: "{}", format: parquet }} }}
  avro_orders: {{ files: {{ path: "{}", format: avro }} }}
tables:
  bronze.avro_orders: {{ from: avro_orders }}
  bronze.csv_orders: {{ from: csv_orders }}
  bronze.json_orders: {{ from: json_orders }}
  bronze.parquet_orders: {{ from: parquet_orders }}
  silver.csv_orders:
    from: bronze.csv_orders
    parse: {{ format: csv, schema: {{ id: string, qty: long, price: "decimal(10,2)", paid: boolean, at: timestamp, note: string }} }}
  silver.json_orders:
    from: bronze.json_orders
    parse: {{ format: json, schema: {{ id: string, qty: long }} }}
  silver.parquet_orders:
    from: bronze.parquet_orders
    parse: {{ format: json, schema: {{ id: string, qty: long }} }}
  silver.avro_orders:
    from: bronze.avro_orders
    parse: {{ format: json, schema: {{ id: string, qty: long, customer: {{ id: string }}, coupon: string }} }}
    flatten: true
"#,
        csv_dir.display(),
        json_dir.display(),
        parquet_dir.display(),
        avro_dir.display()
    );
    let cluster = TestCluster::start(2, &text).await.unwrap();
    cluster
        .wait_drained(Duration::from_secs(120))
        .await
        .unwrap();
    let tables = &cluster.tables;

    let rows = oracle_rows(
        tables,
        "SELECT id, CAST(qty AS VARCHAR), CAST(price AS VARCHAR), CAST(paid AS VARCHAR), \
         CAST(CAST(at AS BIGINT) AS VARCHAR), note FROM silver.csv_orders",
    )
    .await;
    let expected: BTreeSet<Vec<String>> = (0..300)
        .map(|i| {
            vec![
                format!("c{i}"),
                (i % 5).to_string(),
                format!("{i}.{:02}", i % 100),
                (i % 2 == 0).to_string(),
                (1_793_527_200_000_000i64 + (i % 60) as i64 * 1_000_000).to_string(),
                if i % 50 == 0 {
                    "a; \"quoted\"\nnote".to_string()
                } else {
                    "NULL".to_string()
                },
            ]
        })
        .collect();
    assert_eq!(rows, expected, "every CSV row once, typed as declared");
    let quarantined = oracle_rows(
        tables,
        "SELECT topic, CAST(\"offset\" AS VARCHAR), rule, reason FROM silver.csv_orders_quarantine",
    )
    .await;
    assert_eq!(
        quarantined,
        BTreeSet::from([vec![
            "orders.csv".to_string(),
            "300".to_string(),
            "_ingest".to_string(),
            "row 300: 2 fields, the header names 6".to_string(),
        ]]),
    );
    let json = oracle_rows(
        tables,
        "SELECT id, CAST(qty AS VARCHAR) FROM silver.json_orders",
    )
    .await;
    let expected: BTreeSet<Vec<String>> = (0..300)
        .map(|i| vec![format!("j{i}"), (i % 7).to_string()])
        .collect();
    assert_eq!(json, expected, "plain, gzip and zstd lines once each");
    let files = oracle_rows(
        tables,
        "SELECT topic, CAST(count(*) AS VARCHAR), CAST(max(\"offset\") AS VARCHAR) FROM bronze.json_orders GROUP BY topic",
    )
    .await;
    assert_eq!(
        files,
        ["a.ndjson", "b.ndjson.gz", "c.ndjson.zst"]
            .iter()
            .map(|f| vec![f.to_string(), "100".to_string(), "99".to_string()])
            .collect::<BTreeSet<_>>(),
        "bronze keeps each record's file and line"
    );
    let parquet = oracle_rows(
        tables,
        "SELECT id, CAST(qty AS VARCHAR) FROM silver.parquet_orders",
    )
    .await;
    let expected: BTreeSet<Vec<String>> = (0..250)
        .map(|i| vec![format!("p{i}"), i.to_string()])
        .collect();
    assert_eq!(parquet, expected, "every Parquet row once");
    let avro = oracle_rows(
        tables,
        "SELECT id, CAST(qty AS VARCHAR), customer_id, coupon, _topic FROM silver.avro_orders",
    )
    .await;
    let expected: BTreeSet<Vec<String>> = (0..120)
        .map(|i| {
            vec![
                format!("a{i}"),
                (i * 3).to_string(),
                format!("u{}", i % 9),
                if i % 4 == 0 {
                    format!("k{i}")
                } else {
                    "NULL".into()
                },
                if i < 60 { "a.avro" } else { "b.avro" }.to_string(),
            ]
        })
        .collect();
    assert_eq!(
        avro, expected,
        "every Avro record once, nested and optional fields typed"
    );
    for table in tables.list().await {
        check_log(tables, &table).unwrap();
    }
}

/// The rows of `query` as text (NULL for null), as a set.
async fn oracle_rows(tables: &smelter_lake::TableStore, query: &str) -> BTreeSet<Vec<String>> {
    use arrow::array::{Array, AsArray};
    let mut out = BTreeSet::new();
    for batch in sql(tables, query).await.unwrap() {
        let columns: Vec<arrow::array::ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            out.insert(
                columns
                    .iter()
                    .map(|c| {
                        if c.is_null(row) {
                            "NULL".to_string()
                        } else {
                            c.as_string::<i32>().value(row).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

/// A bronze restore to before some files were read puts their ends back (-1) with their
/// positions: ingest reads those files again, each record once, and records their ends
/// again; a file finished before the cut stays unopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bronze_restore_reads_the_files_it_took_back_again_once() {
    use smelter_lake::{AppId, log};
    let landing = tempfile::tempdir().unwrap();
    let lines = |file: &str, n: usize| -> String {
        (0..n)
            .map(|i| format!("{{\"order_id\":\"{file}-{i}\",\"amount\":{},\"customer\":{{\"id\":\"c{}\"}}}}\n", i + 1, i % 3))
            .collect()
    };
    let spec = pipeline(landing.path());
    let cluster = TestCluster::start(2, &spec).await.unwrap();
    let mut versions = Vec::new();
    for (file, n) in [("a.ndjson", 5), ("b.ndjson", 7), ("c.ndjson", 4)] {
        std::fs::write(landing.path().join(file), lines(file, n)).unwrap();
        cluster
            .wait_for_rows(
                Duration::from_secs(60),
                &format!("SELECT count(*) FROM bronze.orders WHERE topic = '{file}'"),
                &[&n.to_string()],
            )
            .await
            .unwrap();
        cluster.wait_drained(Duration::from_secs(60)).await.unwrap();
        versions.push(
            cluster
                .tables
                .open("bronze.orders")
                .await
                .unwrap()
                .version()
                .unwrap(),
        );
    }
    let coordinator = cluster.coordinator_endpoint();
    let cut = versions[0].to_string();
    let report = smelter_tests::smelter_json(
        &[
            "restore",
            "bronze.orders",
            "--version",
            &cut,
            "--coordinator",
            &coordinator,
        ],
        cluster.dir(),
    );
    let text = report.to_string();
    for file in ["b.ndjson", "c.ndjson"] {
        assert!(
            text.contains(&format!("orders/{file}/end=")),
            "{file}'s end not moved: {text}"
        );
    }
    assert!(!text.contains("orders/a.ndjson/end="), "{text}");
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();

    let expected: BTreeSet<(String, i32, i64)> =
        [("a.ndjson", 5), ("b.ndjson", 7), ("c.ndjson", 4)]
            .iter()
            .flat_map(|(f, n)| (0..*n).map(move |i| (f.to_string(), 0, i)))
            .collect();
    exact(
        "bronze.orders after the restore",
        bronze_positions(&cluster.tables).await,
        &expected,
    )
    .unwrap();
    let table = cluster.tables.open("bronze.orders").await.unwrap();
    assert!(
        table.version().unwrap() > versions[2] + 1,
        "nothing was read again"
    );
    for (file, n) in [("a.ndjson", 5), ("b.ndjson", 7), ("c.ndjson", 4)] {
        let end = log::txn_version(&table, &AppId::source_end("orders", file))
            .await
            .unwrap();
        assert_eq!(end, Some(n - 1), "{file}");
    }
}
