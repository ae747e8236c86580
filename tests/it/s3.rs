//! Tables on an S3-compatible store (moto, started by the harness): the whole pipeline
//! through gold on `s3://lake/tables`, exact and verified; the put-if-absent probe that
//! keeps Smelter off stores that could let two commits overwrite each other; and commits
//! arbitrated by the commit locks on a store used without conditional writes.

use std::collections::HashMap;
use std::time::Duration;

use smelter_common::config::SmelterConfig;
use smelter_lake::storage::{probe, s3_store};
use smelter_tests::services::Moto;
use smelter_tests::{TestCluster, bounded_demo};

fn on_moto(moto: &Moto, config: &mut SmelterConfig) {
    config.storage.root = "s3://lake/tables".into();
    config.storage.s3_endpoint = Some(moto.endpoint.clone());
    config.storage.s3_region = Some("us-east-1".into());
    config.storage.s3_allow_http = true;
    config.storage.s3_access_key_id = Some("smelter".into());
    config.storage.s3_secret_access_key = Some("smelter".into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_exactly_once_on_s3() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket("lake");
    let cluster = TestCluster::start_with(2, &bounded_demo(10_000, 4), |c| on_moto(&moto, c))
        .await
        .unwrap();
    cluster
        .wait_drained(Duration::from_secs(180))
        .await
        .unwrap();
    assert!(!cluster.tables.is_local());
    assert!(
        !cluster.dir().join("tables").exists(),
        "nothing was written to the local disk"
    );
    cluster.check_generated().await.unwrap();
    // And served over Flight SQL from the bucket.
    let rows = smelter_tests::oracle::rows(
        &cluster
            .query("SELECT count(*) FROM bronze.events")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rows, vec!["10000".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_put_if_absent_is_refused() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket("lake");
    let mut config = SmelterConfig::default();
    on_moto(&moto, &mut config);
    let url = url::Url::parse("s3://lake/tables/").unwrap();
    let prefix = object_store::path::Path::from("tables");

    let safe = s3_store(&url, &config.storage.s3_options()).unwrap();
    assert!(probe(safe.as_ref(), &prefix).await.unwrap());

    // The same bucket through a client that may not use conditional writes: a second
    // "create" of a key would overwrite, so a worker must refuse to start on it.
    let mut options: HashMap<String, String> = config.storage.s3_options();
    options.insert("aws_conditional_put".into(), "disabled".into());
    let unsafe_store = s3_store(&url, &options).unwrap();
    assert!(!probe(unsafe_store.as_ref(), &prefix).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_without_put_if_absent_run_only_with_commit_arbitration() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket("lake");
    let store = |arbitration: bool| {
        let mut config = SmelterConfig::default();
        on_moto(&moto, &mut config);
        config.storage.s3_conditional_put = false;
        config.storage.commit_arbitration = arbitration;
        smelter_lake::TableStore::from_config(&config.storage).unwrap()
    };
    let refused = store(false).check_commit_safety(true).await.unwrap_err();
    assert!(
        refused.to_string().contains("commit_arbitration"),
        "{refused}"
    );
    let no_locks = store(true).check_commit_safety(false).await.unwrap_err();
    assert!(
        no_locks.to_string().contains("coordination store"),
        "{no_locks}"
    );
    store(true).check_commit_safety(true).await.unwrap();

    // With arbitration, the pipeline runs exactly once on that store: every log write,
    // table creation included, happens under the table's commit lock.
    let cluster = TestCluster::start_with(2, &bounded_demo(6_000, 4), |c| {
        on_moto(&moto, c);
        c.storage.root = "s3://lake/arbitrated".into();
        c.storage.s3_conditional_put = false;
        c.storage.commit_arbitration = true;
    })
    .await
    .unwrap();
    cluster
        .wait_drained(Duration::from_secs(180))
        .await
        .unwrap();
    cluster.check_generated().await.unwrap();
}

/// `n` NDJSON lines of file `file`, gzipped; line `i` is `{"id":"<file>#<i>","n":i}`, and
/// every 10th line is not JSON.
fn gz_lines(file: &str, n: usize) -> Vec<u8> {
    use std::io::Write as _;
    let text: String = (0..n)
        .map(|i| {
            if i % 10 == 9 {
                format!("not json {i}\n")
            } else {
                format!("{{\"id\":\"{file}#{i}\",\"n\":{i}}}\n")
            }
        })
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_on_an_s3_prefix_spread_over_partitions_are_ingested_once() {
    use object_store::ObjectStoreExt as _;
    use smelter_lake::{AppId, log};
    use smelter_tests::oracle::{exact, positions, sql};
    use std::collections::BTreeSet;

    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket("lake");
    moto.create_bucket("landing");
    let mut config = SmelterConfig::default();
    on_moto(&moto, &mut config);
    let landing = s3_store(
        &url::Url::parse("s3://landing/").unwrap(),
        &config.storage.s3_options(),
    )
    .unwrap();
    // What landed, by name under the prefix: its line count.
    let mut files: Vec<(String, usize)> = Vec::new();
    let put = async |name: &str, body: Vec<u8>| {
        landing
            .put(&format!("events/{name}").into(), body.into())
            .await
            .unwrap();
    };
    for day in 1..=4 {
        for part in 0..6 {
            let name = format!("2026/12/{day:02}/part-{part:03}.ndjson.gz");
            let lines = 15 + (day * 7 + part * 3) % 20;
            put(&name, gz_lines(&name, lines)).await;
            files.push((name, lines));
        }
    }
    // Not read: outside the pattern, a marker, a file still in flight.
    put("other/x.ndjson.gz", gz_lines("x", 5)).await;
    put("2026/12/01/_SUCCESS", Vec::new()).await;
    put("2026/12/01/part-100.ndjson.gz.tmp", gz_lines("t", 5)).await;

    let pipeline = r#"
pipeline: landed
sources:
  landing:
    files: { path: "s3://landing/events", pattern: "2026/**/*.ndjson.gz", partitions: 3 }
tables:
  bronze.events: { from: landing }
  silver.events:
    from: bronze.events
    parse: { format: json, schema: { id: string, n: long } }
"#;
    let mut cluster = TestCluster::start_with(2, pipeline, |c| on_moto(&moto, c))
        .await
        .unwrap();
    cluster
        .wait_drained(Duration::from_secs(180))
        .await
        .unwrap();
    // More land while it runs.
    for part in 0..6 {
        let name = format!("2026/12/05/part-{part:03}.ndjson.gz");
        put(&name, gz_lines(&name, 12)).await;
        files.push((name, 12));
    }
    cluster
        .wait_drained(Duration::from_secs(180))
        .await
        .unwrap();

    let expected: BTreeSet<(String, i32, i64)> = files
        .iter()
        .flat_map(|(name, lines)| (0..*lines as i64).map(move |i| (name.clone(), 0, i)))
        .collect();
    let bronze = positions(
        &sql(
            &cluster.tables,
            "SELECT topic, \"partition\", \"offset\" FROM bronze.events",
        )
        .await
        .unwrap(),
    );
    exact("bronze.events", bronze, &expected).unwrap();
    let valid: BTreeSet<String> = files
        .iter()
        .flat_map(|(name, lines)| {
            (0..*lines)
                .filter(|i| i % 10 != 9)
                .map(move |i| format!("{name}#{i} | {i}"))
        })
        .collect();
    let silver: BTreeSet<String> = smelter_tests::oracle::rows(
        &sql(&cluster.tables, "SELECT id, n FROM silver.events")
            .await
            .unwrap(),
    )
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(silver, valid);

    // Every file is recorded as read to its end, at its last line.
    let table = cluster.tables.open("bronze.events").await.unwrap();
    for (name, lines) in &files {
        let end = log::txn_version(&table, &AppId::source_end("landed", name))
            .await
            .unwrap();
        assert_eq!(end, Some(*lines as i64 - 1), "{name}");
    }
    // Both workers ingested: the three partitions of work were spread over them.
    let writers: BTreeSet<String> = smelter_lake::history::entries(&table, "bronze.events", None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.operation == "ingest")
        .filter_map(|e| e.writer)
        .collect();
    assert_eq!(writers.len(), 2, "ingest writers: {writers:?}");

    // A restart on one worker takes all partitions and ingests nothing twice.
    let version = table.version();
    cluster.restart(1, pipeline).await.unwrap();
    cluster
        .wait_drained(Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(
        cluster
            .tables
            .open("bronze.events")
            .await
            .unwrap()
            .version(),
        version,
        "a restart re-ingested files"
    );
}
