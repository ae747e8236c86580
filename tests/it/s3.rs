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
