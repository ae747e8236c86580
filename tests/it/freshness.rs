//! Freshness without waiting for the poll: in one process, a downstream task learns of its
//! upstream's commits from the committer (`smelter_lake::signals`) as well as from probing
//! the log, so a refine pass starts as soon as ingest commits and a gold refresh as soon as
//! refine does.

use std::time::Duration;

use smelter_lake::{AppId, history};
use smelter_tests::TestCluster;
use smelter_tests::oracle::{check_pipeline, generator_truth};

/// With polls ten minutes apart the pipeline still drains in seconds, pass after pass:
/// every refine pass and gold refresh after the first look was started by an announcement
/// of a commit made by a worker of the same process (two workers, so some of them by the
/// other worker). The oracle then holds on every table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_tasks_wake_on_commits_made_in_their_process() {
    let events = 4_000;
    let pipeline = smelter_cli::workload::bounded_demo(events, 2, Some(2_000));
    let poll = Duration::from_secs(600);
    let cluster = TestCluster::start_with(2, &pipeline, |config| {
        config.worker.poll_interval_ms = poll.as_millis() as u64;
    })
    .await
    .unwrap();
    assert_eq!(cluster.config.worker.poll_interval_ms, 600_000);
    // A tenth of one poll interval: draining by polling alone could not finish in time.
    cluster.wait_drained(poll / 10).await.unwrap();
    let truth = generator_truth(&cluster.spec);
    check_pipeline(&cluster.tables, &cluster.spec, &truth)
        .await
        .unwrap();
    // Several bronze commits (the generator is paced over two seconds), each taken up by
    // refine in its own pass or folded with others, and gold refreshed more than once.
    let passes = |table: &str, upstream: &str| {
        let (tables, table, upstream) = (
            cluster.tables.clone(),
            table.to_string(),
            upstream.to_string(),
        );
        async move {
            let log = tables.open(&table).await.unwrap();
            let app_id = AppId::upstream(&table, &upstream).to_string();
            history::commits(&log, &table)
                .await
                .unwrap()
                .iter()
                .filter(|c| c.txns.iter().any(|(app, _)| *app == app_id))
                .count()
        }
    };
    let bronze = cluster.tables.open("bronze.events").await.unwrap();
    let bronze_commits = history::commits(&bronze, "bronze.events")
        .await
        .unwrap()
        .iter()
        .filter(|c| c.files_added > 0)
        .count();
    assert!(bronze_commits >= 3, "{bronze_commits} bronze commits");
    let refined = passes("silver.events", "bronze.events").await;
    assert!(refined >= 2, "{refined} refine passes");
    let refreshed = passes("gold.hourly_metrics", "silver.events").await;
    assert!(refreshed >= 2, "{refreshed} gold refreshes");
}
