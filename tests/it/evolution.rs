//! Schema evolution while the pipeline runs (docs/schema-evolution.md): the demo starts
//! with a silver schema that leaves out the user's device and reads `quantity` as `int`;
//! mid-run, `smelter apply` of a spec with `user.device` (a new nested field, flattened to
//! `user_device`) and `quantity: long` (a widening) evolves the table in the commit of the
//! first rows that need it — one metadata change, the old files rewritten in the wider
//! type — and no task stalls. A twin silver table that is not flattened gains the nested
//! field inside its `user` struct. Before that, a spec that turns `page.url` into a number is
//! refused by `smelter apply` with exit 2, and nothing changes.
//!
//! The oracle: bronze exactly the generated events; silver each valid event once, every
//! column as its payload gives it — rows refined before the device was declared hold it in
//! `_rescued_data` instead, so nothing is lost —; gold equal to its recomputation; every
//! log replayed clean; and the version before the evolution still reads as it was written.
//! Then `smelter backfill` moves the rescued devices into the new column, and silver is
//! exact with nothing rescued.

use std::process::Command;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use smelter_common::spec::PipelineSpec;
use smelter_harness::wait_until;
use smelter_tests::oracle;
use smelter_tests::{TestCluster, smelter_binary};

const EVENTS: u64 = 60_000;
/// Paced so that the new spec lands while events still arrive (about 10 s of events).
const RATE: u64 = 6_000;

const DEVICE: &str = "user: { id: string, country: string, device: string }";
const NO_DEVICE: &str = "user: { id: string, country: string }";

/// The nested twin: `user` kept as a struct.
const TWIN: &str = "
  silver.raw_events:
    from: bronze.events
    parse: { format: json, schema: { event_id: string, USER } }
";

fn v2() -> String {
    let demo = smelter_cli::workload::bounded_demo(EVENTS, 2, Some(RATE));
    format!(
        "{demo}{}",
        TWIN.replace("USER", "user: { id: string, device: string }")
    )
}

fn v1() -> String {
    let text = v2()
        .replace(DEVICE, NO_DEVICE)
        .replace("quantity: long", "quantity: int")
        .replace(
            "user: { id: string, device: string }",
            "user: { id: string }",
        );
    assert!(!text.contains("device: string"), "v1 declares no device");
    text
}

async fn silver_rows(cluster: &TestCluster) -> u64 {
    let Ok(batches) = oracle::sql(&cluster.tables, "SELECT count(*) FROM silver.events").await
    else {
        return 0;
    };
    batches.first().map_or(0, |b| {
        b.column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0) as u64
    })
}

/// Runs `smelter apply FILE` against the cluster: exit code and stderr.
fn apply(cluster: &TestCluster, text: &str, file: &str) -> (i32, String) {
    let path = cluster.dir().join(file);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(smelter_binary())
        .arg("apply")
        .arg(&path)
        .args(["--coordinator", &cluster.coordinator_endpoint()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The silver commits that changed the table's metadata after it was created.
fn metadata_commits(cluster: &TestCluster, table: &str) -> Vec<(i64, Vec<serde_json::Value>)> {
    let log = cluster.tables.path(table).join("_delta_log");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&log).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) = name
            .strip_suffix(".json")
            .and_then(|v| v.parse::<i64>().ok())
        else {
            continue;
        };
        let actions: Vec<serde_json::Value> = std::fs::read_to_string(entry.path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if version > 0 && actions.iter().any(|a| a.get("metaData").is_some()) {
            out.push((version, actions));
        }
    }
    out.sort_by_key(|(v, _)| *v);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spec_that_adds_a_nested_field_and_widens_a_type_evolves_silver_while_it_runs() {
    let first = v1();
    let mut cluster = TestCluster::start(2, &first).await.unwrap();
    wait_until(Duration::from_secs(60), "silver to hold rows", async || {
        (silver_rows(&cluster).await > 0)
            .then_some(())
            .ok_or("none yet")
    })
    .await
    .unwrap();

    // An incompatible change: refused at apply, exit 2, naming the column; nothing changes.
    let (code, stderr) = apply(
        &cluster,
        &first.replace(
            "page: { url: string, referrer: string }",
            "page: { url: long, referrer: string }",
        ),
        "bad.yaml",
    );
    assert_eq!(code, 2, "refused as invalid input: {stderr}");
    assert!(
        stderr.contains("silver.events.parse.schema.page_url")
            && stderr.contains("from string to long"),
        "{stderr}"
    );

    let (code, stderr) = apply(&cluster, &v2(), "v2.yaml");
    assert_eq!(code, 0, "{stderr}");
    cluster.spec = PipelineSpec::parse(&v2(), "v2.yaml").unwrap();
    cluster
        .wait_drained(Duration::from_secs(240))
        .await
        .unwrap();

    // One commit evolved silver.events: the device added, quantity widened, the files
    // written before rewritten in it without data change.
    let evolved = metadata_commits(&cluster, "silver.events");
    let evolutions: Vec<&(i64, Vec<serde_json::Value>)> = evolved
        .iter()
        .filter(|(_, actions)| {
            actions
                .iter()
                .any(|a| a["commitInfo"][smelter_lake::commit::EVOLVED_KEY].is_string())
        })
        .collect();
    assert_eq!(evolutions.len(), 1, "one evolving commit: {evolved:?}");
    let (version, actions) = evolutions[0];
    let info = actions.iter().find_map(|a| a.get("commitInfo")).unwrap();
    assert_eq!(
        info[smelter_lake::commit::EVOLVED_KEY],
        "added user_device; widened quantity int to long"
    );
    let rewritten = actions
        .iter()
        .filter(|a| a["add"]["dataChange"] == false)
        .count();
    let removed = actions.iter().filter(|a| a.get("remove").is_some()).count();
    assert!(rewritten > 0 && removed > 0, "old files rewritten: {info}");
    assert!(
        actions.iter().any(|a| a["add"]["dataChange"] == true),
        "the rows that needed the change are in the same commit"
    );
    // The version before reads as it was: no device, quantity an int.
    let before = cluster
        .tables
        .open_version("silver.events", version - 1)
        .await
        .unwrap();
    let schema = smelter_lake::log::arrow_schema(&before, "silver.events").unwrap();
    assert_eq!(
        schema.field_with_name("quantity").unwrap().data_type(),
        &DataType::Int32
    );
    assert!(schema.field_with_name("user_device").is_err());

    // The oracle on every layer; rows refined before the change keep the device rescued.
    let truth = oracle::generator_truth(&cluster.spec);
    oracle::check_bronze(&cluster.tables, "bronze.events", &truth)
        .await
        .unwrap();
    let rescued = oracle::check_silver_with(
        &cluster.tables,
        "silver.events",
        &truth,
        &[("user_device", "user.device")],
    )
    .await
    .unwrap();
    assert!(
        rescued > 0 && rescued < truth.silver.len(),
        "the change landed mid-run: {rescued} of {} rows refined before it",
        truth.silver.len()
    );
    oracle::check_gold(&cluster.tables, &cluster.spec, &truth)
        .await
        .unwrap();
    for table in cluster.tables.list().await {
        oracle::check_log(&cluster.tables, &table).unwrap();
        oracle::verified(&cluster.tables, &table).await.unwrap();
    }

    // The nested twin: `user` gained `device`; rows before it rescued it, none lost.
    let batches = oracle::sql(
        &cluster.tables,
        "SELECT event_id, \"user\"['device'] AS device, _rescued_data FROM silver.raw_events",
    )
    .await
    .unwrap();
    let (mut with, mut rescued_twin) = (0, 0);
    for batch in &batches {
        let device = arrow::compute::cast(batch.column(1), &DataType::Utf8).unwrap();
        let rescued = arrow::compute::cast(batch.column(2), &DataType::Utf8).unwrap();
        for row in 0..batch.num_rows() {
            if device.is_valid(row) {
                with += 1;
            } else if rescued
                .as_string::<i32>()
                .value(row)
                .contains("\"user.device\"")
            {
                rescued_twin += 1;
            }
        }
    }
    assert!(
        with > 0 && rescued_twin > 0,
        "{with} rows with a device, {rescued_twin} rescued"
    );
    assert_eq!(
        metadata_commits(&cluster, "silver.raw_events").len(),
        1,
        "the twin evolved in one commit"
    );

    // On request, the rescued devices move into the new column while the pipeline runs:
    // then silver is exact with nothing rescued at all, and gold (rebuilt) still is.
    let backfill = || {
        let out = Command::new(smelter_binary())
            .args([
                "backfill",
                "silver.events",
                "--output",
                "json",
                "--pipeline",
            ])
            .arg(cluster.dir().join("v2.yaml"))
            .arg("--data-dir")
            .arg(cluster.dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let done = backfill();
    assert_eq!(done["filled"]["user_device"], rescued, "{done}");
    assert_eq!(done["unfit"], 0, "{done}");
    assert!(done["version"].is_i64(), "{done}");
    oracle::check_silver(&cluster.tables, "silver.events", &truth)
        .await
        .unwrap();
    assert_eq!(
        backfill()["version"],
        serde_json::Value::Null,
        "nothing left"
    );
    cluster
        .wait_drained(Duration::from_secs(120))
        .await
        .unwrap();
    oracle::check_gold(&cluster.tables, &cluster.spec, &truth)
        .await
        .unwrap();
    cluster.stop().await.unwrap();
}

/// The evolving commit broken on purpose: `smelter up` with the new spec is aborted at the
/// commit that evolves silver — its rows and the rewritten files in storage, its log entry
/// not written (the hook's line in the log says so, with the files). The table must still
/// have its old schema, the files must be orphans, and the rerun must evolve it in exactly
/// one commit with every row exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_evolving_commit_leaves_the_old_schema_and_the_rerun_evolves_once() {
    use smelter_tests::processes::{smelter_up, smelter_up_logging, wait_exit};
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pipeline = dir.path().join("pipeline.yaml");
    let demo = |count: u64| smelter_cli::workload::bounded_demo(count, 2, None);
    let old = demo(10_000)
        .replace(DEVICE, NO_DEVICE)
        .replace("quantity: long", "quantity: int");
    std::fs::write(&pipeline, &old).unwrap();
    let mut first = smelter_up(&data, &pipeline, &["--exit-when-done"], &[]);
    assert!(
        wait_exit(&mut first, Duration::from_secs(120))
            .await
            .unwrap()
            .success()
    );

    let new = demo(20_000);
    std::fs::write(&pipeline, &new).unwrap();
    let log = dir.path().join("crash.log");
    let mut crashing = smelter_up_logging(
        &data,
        &pipeline,
        &["--exit-when-done"],
        &[("SMELTER__WORKER__FAILPOINT", "commit.evolving:1")],
        &log,
    );
    let status = wait_exit(&mut crashing, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(status.signal(), Some(6), "died of SIGABRT ({status})");
    let reached = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["failpoint"] == "commit.evolving")
        .expect("the hook's line in the log");
    let detail = reached["detail"].as_str().unwrap();
    assert!(detail.starts_with("table=silver.events "), "{detail}");
    let tables = smelter_lake::TableStore::new(data.join("tables")).unwrap();
    let files: Vec<&str> = detail
        .split_once("files=")
        .unwrap()
        .1
        .split(',')
        .filter(|f| !f.is_empty())
        .collect();
    assert!(
        files.len() >= 2,
        "the rows and the rewritten files: {detail}"
    );
    let latest = tables.open("silver.events").await.unwrap();
    let schema = smelter_lake::log::arrow_schema(&latest, "silver.events").unwrap();
    assert_eq!(
        schema.field_with_name("quantity").unwrap().data_type(),
        &DataType::Int32,
        "the schema did not change"
    );
    for file in &files {
        assert!(
            tables.path("silver.events").join(file).exists(),
            "{file} written"
        );
    }
    let logs: String = std::fs::read_dir(tables.path("silver.events").join("_delta_log"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    for file in &files {
        assert!(!logs.contains(file), "{file} is referenced by no version");
    }

    let mut again = smelter_up(&data, &pipeline, &["--exit-when-done"], &[]);
    assert!(
        wait_exit(&mut again, Duration::from_secs(180))
            .await
            .unwrap()
            .success()
    );
    let spec = PipelineSpec::parse(&new, "pipeline.yaml").unwrap();
    let truth = oracle::generator_truth(&spec);
    oracle::check_bronze(&tables, "bronze.events", &truth)
        .await
        .unwrap();
    let rescued = oracle::check_silver_with(
        &tables,
        "silver.events",
        &truth,
        &[("user_device", "user.device")],
    )
    .await
    .unwrap();
    assert!(rescued > 0, "rows of the first run keep the device rescued");
    oracle::check_gold(&tables, &spec, &truth).await.unwrap();
    let mut evolutions = 0;
    for table in tables.list().await {
        oracle::check_log(&tables, &table).unwrap();
        oracle::verified(&tables, &table).await.unwrap();
    }
    let log_dir = tables.path("silver.events").join("_delta_log");
    for entry in std::fs::read_dir(&log_dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        evolutions += usize::from(text.contains(smelter_lake::commit::EVOLVED_KEY));
    }
    assert_eq!(evolutions, 1, "the rerun evolved silver in one commit");
}
