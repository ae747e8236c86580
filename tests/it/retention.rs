//! Retention while the pipeline runs: `retention.data` deletes silver's rows older than the
//! window in its time column (a maintenance `DELETE`, gold rebuilt without them),
//! `retention.vacuum_after` vacuums what that delete took out, and `retention.history`
//! bounds time travel; checkpoints keep the tombstones of removed files twice the vacuum
//! delay (`delta.deletedFileRetentionDuration`) and no longer. Time travel past either bound is an error naming the oldest version
//! available and why. The window is derived from the clock at the test's start, so that the
//! cut falls inside the generated events whatever the date; the oracle (the generator's own
//! events, filtered by the cut the maintenance record reports) decides what must be left.

use std::time::Duration;

use deltalake::kernel::Action;
use smelter_common::spec::{PipelineSpec, SourceSpec};
use smelter_sdk::{AdminClient, QueryClient};
use smelter_tests::oracle::{check_gold, check_silver, generator_truth};
use smelter_tests::{TestCluster, bounded_demo};

const EVENTS: u64 = 4_000;
const PARTITIONS: u32 = 2;

/// The demo with silver keeping `data` of rows by `ts` (its files vacuumed after 1 s) and
/// bronze keeping 2 s of history; maintenance looks every 300 ms.
/// (`None`: no data retention.)
fn pipeline(data: Option<Duration>) -> String {
    let text = bounded_demo(EVENTS, PARTITIONS);
    let mut spec: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let tables = spec["tables"].as_mapping_mut().unwrap();
    let set = |table: &mut serde_yaml::Value, key: &str, yaml: String| {
        table
            .as_mapping_mut()
            .unwrap()
            .insert(key.into(), serde_yaml::from_str(&yaml).unwrap());
    };
    for (_, table) in tables.iter_mut() {
        set(
            table,
            "maintenance",
            "{ min_small_files: 3, every: 300ms }".into(),
        );
    }
    set(
        &mut tables["silver.events"],
        "retention",
        match data {
            Some(data) => format!(
                "{{ data: {}ms, column: ts, vacuum_after: 1s }}",
                data.as_millis()
            ),
            None => "{ vacuum_after: 1s }".into(),
        },
    );
    // Once data retention is off, silver's maintenance stops too: nothing moves the
    // oldest readable version while the test reads it.
    set(
        &mut tables["silver.events"],
        "maintenance",
        match data {
            Some(_) => "{ min_small_files: 3, every: 300ms }".into(),
            None => "{ enabled: false }".into(),
        },
    );
    set(
        &mut tables["bronze.events"],
        "retention",
        "{ history: 2s }".into(),
    );
    serde_yaml::to_string(&spec).unwrap()
}

/// The maintenance record of `table`, as `smelter maintenance status` prints it.
fn record(cluster: &TestCluster, table: &str) -> serde_json::Value {
    smelter_tests::smelter_json(&["maintenance", "status", table], cluster.dir())[0]["maintenance"]
        .clone()
}

/// The cut of silver's last data-retention delete, from its predicate in the log.
async fn last_expiry_cut(cluster: &TestCluster) -> i64 {
    let table = cluster.tables.open("silver.events").await.unwrap();
    let log = smelter_lake::history::read_log(&table, "silver.events")
        .await
        .unwrap();
    let predicate = log
        .iter()
        .rev()
        .flat_map(|(_, actions)| actions.iter().flatten())
        .find_map(|action| match action {
            Action::CommitInfo(info) if info.operation.as_deref() == Some("DELETE") => info
                .operation_parameters
                .as_ref()?
                .get("predicate")?
                .as_str()
                .map(str::to_string),
            _ => None,
        })
        .expect("a DELETE in silver's log");
    // `"ts" < CAST('2026-11-01T00:02:31.536Z' AS TIMESTAMP)`
    let quoted = predicate.split('\'').nth(1).expect("a quoted cut");
    smelter_lake::history::parse_timestamp(quoted).expect("an RFC 3339 cut")
}

async fn refused(client: &mut QueryClient, sql: &str) -> String {
    match client.query(sql).await {
        Ok(batches) => panic!("{sql} answered {} batches", batches.len()),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_expires_old_rows_and_bounds_time_travel() {
    // The events run from the generator's start, 200 ms apart per partition: put the cut
    // 150 s in, as the clock stands now.
    let probe = PipelineSpec::parse(&bounded_demo(EVENTS, PARTITIONS), "p.yaml").unwrap();
    let Some(SourceSpec::Generator(generator)) = probe.sources.get("events") else {
        panic!("the demo's source is a generator");
    };
    let start_ms =
        smelter_lake::history::parse_timestamp(&generator.start).expect("the generator's start");
    let now_ms = chrono::Utc::now().timestamp_millis();
    let window = Duration::from_millis((now_ms - (start_ms + 150_000)) as u64);
    let text = pipeline(Some(window));
    let spec = PipelineSpec::parse(&text, "p.yaml").unwrap();
    let cluster = TestCluster::start(2, &text).await.unwrap();

    // The expiry happened (rows deleted by a maintenance DELETE), and the vacuum after it
    // deleted files older versions need.
    let status = smelter_harness::wait_until(
        Duration::from_secs(120),
        "silver's old rows expired and their files vacuumed",
        async || {
            if !cluster.tables.exists("silver.events").await {
                return Err("no silver table yet".to_string());
            }
            let status = record(&cluster, "silver.events");
            if status["rows_expired"].as_u64().unwrap_or(0) > 0
                && status["readable_from"].as_i64().is_some()
            {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    )
    .await
    .unwrap();
    eprintln!("silver's maintenance record: {status}");

    // Stop the expiry (the cut moves with the clock): the spec applied again without
    // `retention.data`. Gold then catches up with the last delete. The oracle's cut is the
    // last DELETE's own predicate, read from silver's log.
    let mut admin = AdminClient::connect(&cluster.coordinator_endpoint())
        .await
        .unwrap();
    admin.apply(&pipeline(None), "p.yaml").await.unwrap();
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();
    // Silver holds exactly the events at or after the last cut; gold is computed from them
    // alone (it rebuilt after each delete). Asked until it holds: a delete the old
    // maintenance task had under way may still land, and gold catches up after it.
    let truth_after = |cut_ms: i64| {
        let mut truth = generator_truth(&spec);
        truth
            .silver
            .retain(|_, row| row.ts_us.is_none_or(|ts| ts >= cut_ms * 1000));
        truth
    };
    let all = generator_truth(&spec).silver.len();
    let cut_ms = smelter_harness::wait_until(
        Duration::from_secs(60),
        "silver and gold after the cut",
        async || {
            let cut_ms = last_expiry_cut(&cluster).await;
            let truth = truth_after(cut_ms);
            check_silver(&cluster.tables, "silver.events", &truth).await?;
            check_gold(&cluster.tables, &spec, &truth).await?;
            Ok::<_, String>(cut_ms)
        },
    )
    .await
    .unwrap();
    let kept = truth_after(cut_ms).silver.len();
    assert!(kept < all && kept > 0, "{kept} of {all} rows kept");
    assert!(
        cut_ms > start_ms + 100_000 && cut_ms < start_ms + 300_000,
        "the cut {cut_ms} falls inside the events"
    );
    let status = record(&cluster, "silver.events");
    // Bronze keeps every record.
    let bronze = cluster
        .query("SELECT count(*) FROM bronze.events")
        .await
        .unwrap();
    let bronze_rows =
        arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(bronze[0].column(0))
            .value(0);
    assert_eq!(bronze_rows as u64, EVENTS);

    // Time travel: before the vacuumed delete, silver's versions are gone, and the error
    // says which is the oldest available (the record's `readable_from`) and why; that one
    // reads. Asked until the record and the answer agree: a pass of the maintenance task
    // the new spec replaced may still move it once.
    let endpoint = cluster.flight_endpoints()[0].clone();
    let mut client = QueryClient::connect(&endpoint).await.unwrap();
    let readable = smelter_harness::wait_until(
        Duration::from_secs(30),
        "the oldest available silver version named and readable",
        async || {
            let readable = record(&cluster, "silver.events")["readable_from"]
                .as_i64()
                .ok_or("no readable_from")?;
            let message = refused(
                &mut client,
                "SELECT count(*) FROM silver.events VERSION AS OF 1",
            )
            .await;
            if !(message.contains("data files were vacuumed")
                && message.contains(&format!("the oldest available is version {readable}")))
            {
                return Err(message);
            }
            client
                .query(&format!(
                    "SELECT count(*) FROM silver.events VERSION AS OF {readable}"
                ))
                .await
                .map_err(|e| e.to_string())?;
            Ok(readable)
        },
    )
    .await
    .unwrap();
    assert!(readable > 1, "{status}");
    // Bronze keeps 2 s of history, as its Delta metadata says: once its last commit is
    // older than that, only the latest version is available.
    let table = cluster.tables.open("bronze.events").await.unwrap();
    let latest = smelter_lake::log::version(&table);
    assert_eq!(
        table
            .snapshot()
            .unwrap()
            .metadata()
            .configuration()
            .get("delta.logRetentionDuration")
            .map(String::as_str),
        Some("interval 2 seconds")
    );
    let message = smelter_harness::wait_until(
        Duration::from_secs(30),
        "bronze's history past its retention",
        async || {
            let message = refused(
                &mut client,
                "SELECT count(*) FROM bronze.events VERSION AS OF 0",
            )
            .await;
            if message.contains(&format!("the oldest available is version {latest}")) {
                Ok(message)
            } else {
                Err(message)
            }
        },
    )
    .await
    .unwrap();
    assert!(
        message.contains("history retention (interval 2 seconds)"),
        "{message}"
    );
    client
        .query(&format!(
            "SELECT count(*) FROM bronze.events VERSION AS OF {latest}"
        ))
        .await
        .unwrap();

    // Checkpoints drop the tombstones of removed files once they are twice the vacuum
    // delay old: silver's (vacuumed after 1 s) after 2 s; gold's (maintenance's default
    // week) are kept two weeks — both tables have had files removed (gold overwrites
    // itself at every refresh).
    let tombstones_kept = |table: &deltalake::DeltaTable| {
        table
            .snapshot()
            .unwrap()
            .metadata()
            .configuration()
            .get("delta.deletedFileRetentionDuration")
            .cloned()
    };
    let gold = cluster.tables.open("gold.hourly_metrics").await.unwrap();
    assert_eq!(
        tombstones_kept(&gold).as_deref(),
        Some("interval 1209600 seconds")
    );
    deltalake::checkpoints::create_checkpoint(&gold, None)
        .await
        .unwrap();
    let log = smelter_lake::log_size::log_size(&gold, "gold.hourly_metrics")
        .await
        .unwrap();
    assert!(log.checkpoint_tombstones > 0, "gold: {log:?}");
    let silver = cluster.tables.open("silver.events").await.unwrap();
    assert_eq!(
        tombstones_kept(&silver).as_deref(),
        Some("interval 2 seconds")
    );
    // (That checkpoints then drop them: `smelter_lake::log_size`'s tests.)
}
