//! Table operations while the pipeline runs: automatic maintenance (the coordinator's
//! fourth task kind compacts small files behind the stream and vacuums what it replaced)
//! and `smelter delete --cascade` (a user's rows gone from silver and the bronze records
//! they came from, gold rebuilt without them) — after the stream drained, and for 1% of
//! the users while the generator runs at 20,000 events/s. The oracle is the generator's
//! own events, with the deleted users' records taken out by this test.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use arrow::array::AsArray as _;
use deltalake::kernel::Action;
use smelter_tests::oracle::{self, check_bronze, check_gold, check_silver, generator_truth};
use smelter_tests::{TestCluster, bounded_demo, smelter_binary, smelter_json};

/// The demo, paced so every layer commits many small files, with maintenance on every
/// table looking every 300 ms, compacting at 3 small files and vacuuming after 1 s.
fn pipeline() -> String {
    let text = bounded_demo(6_000, 4).replace("      rate: null\n", "      rate: 3000\n");
    let mut spec: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let tables = spec["tables"].as_mapping_mut().unwrap();
    for (name, table) in tables.iter_mut() {
        // Silver's compacted files are written in Z-order over one column: sorted by it.
        let zorder = if name.as_str() == Some("silver.events") {
            ", zorder_by: [user_id]"
        } else {
            ""
        };
        table.as_mapping_mut().unwrap().insert(
            "maintenance".into(),
            serde_yaml::from_str(&format!(
                "{{ min_small_files: 3, every: 300ms, retention: 1s{zorder} }}"
            ))
            .unwrap(),
        );
    }
    serde_yaml::to_string(&spec).unwrap()
}

/// The versions of `table` whose Delta operation is `operation`, with the paths each added
/// and removed, and whether every action said `dataChange`.
async fn commits_of(
    cluster: &TestCluster,
    table: &str,
    operation: &str,
) -> Vec<(i64, Vec<String>, Vec<String>, bool)> {
    let handle = cluster.tables.open(table).await.unwrap();
    let entries = smelter_lake::history::entries(&handle, table, None)
        .await
        .unwrap();
    let mut out = Vec::new();
    for entry in entries
        .iter()
        .filter(|e| e.delta_operation.as_deref() == Some(operation))
    {
        let actions = smelter_lake::changes::commit_actions(&handle, table, entry.version)
            .await
            .unwrap()
            .unwrap();
        let (mut added, mut removed, mut data_change) = (Vec::new(), Vec::new(), false);
        for action in actions {
            match action {
                Action::Add(add) => {
                    data_change |= add.data_change;
                    added.push(add.path);
                }
                Action::Remove(remove) => {
                    data_change |= remove.data_change;
                    removed.push(remove.path);
                }
                _ => {}
            }
        }
        out.push((entry.version, added, removed, data_change));
    }
    out
}

/// The `user_id` column of one data file of `table`, or `None` if the file is gone (a
/// later compaction replaced it and vacuum deleted it).
async fn user_ids(cluster: &TestCluster, table: &str, path: &str) -> Option<Vec<Option<String>>> {
    let file = smelter_lake::changes::DataFile {
        path: path.to_string(),
        partition_values: Default::default(),
        rows: None,
        offer: None,
    };
    let handle = cluster.tables.open(table).await.unwrap();
    let columns = std::collections::HashSet::from(["user_id".to_string()]);
    let batches =
        smelter_lake::changes::read(&handle, table, &file, Some(&columns), &Default::default())
            .await
            .ok()?;
    Some(
        batches
            .iter()
            .flat_map(|b| oracle::optional_strings(b.column(0)))
            .collect(),
    )
}

/// Polls `check` until it passes (the harness's `wait_until`), failing the test with the
/// last reason at the deadline.
async fn poll<T>(
    what: &str,
    timeout: Duration,
    check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    smelter_harness::wait_until(timeout, what, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_compacts_behind_the_stream_and_delete_cascades_through_the_layers() {
    let cluster = TestCluster::start(2, &pipeline()).await.unwrap();
    cluster
        .wait_drained(Duration::from_secs(180))
        .await
        .unwrap();
    let mut truth = generator_truth(&cluster.spec);

    // Compaction happened on the streaming tables, as maintenance commits.
    for table in ["bronze.events", "silver.events"] {
        let compactions = poll(
            &format!("{table} compacted"),
            Duration::from_secs(60),
            async || {
                let found = commits_of(&cluster, table, "OPTIMIZE").await;
                if found.is_empty() {
                    Err("no compaction yet".into())
                } else {
                    Ok(found)
                }
            },
        )
        .await;
        let dir = cluster.tables.path(table);
        let mut zordered = 0;
        for (version, added, removed, data_change) in &compactions {
            assert!(
                !data_change,
                "{table} v{version}: compaction changes no data"
            );
            if table == "silver.events" {
                // A later compaction may have replaced (and vacuumed) an earlier one's file.
                for path in added.iter().filter(|p| dir.join(p).exists()) {
                    let users = match user_ids(&cluster, table, path).await {
                        Some(users) => users,
                        None => continue,
                    };
                    zordered += 1;
                    let mut sorted = users.clone();
                    sorted.sort_by(|a, b| match (a, b) {
                        (None, None) => std::cmp::Ordering::Equal,
                        (None, _) => std::cmp::Ordering::Greater,
                        (_, None) => std::cmp::Ordering::Less,
                        (Some(a), Some(b)) => a.cmp(b),
                    });
                    assert!(
                        users.len() > 1 && users == sorted,
                        "{path}: not in user_id order"
                    );
                }
            }
            assert!(
                removed.len() >= 3 && added.len() < removed.len(),
                "{table} v{version}: {} files -> {}",
                removed.len(),
                added.len()
            );
        }
        if table == "silver.events" {
            assert!(
                zordered > 0,
                "no compacted silver file left to check the order of"
            );
        }
        // Vacuum deletes what compaction replaced (retention 1 s, readers caught up), and
        // never a file the table holds.
        let replaced: Vec<String> = compactions
            .iter()
            .flat_map(|(_, _, removed, _)| removed.clone())
            .collect();
        poll(
            &format!("{table}: replaced files vacuumed"),
            Duration::from_secs(60),
            async || match replaced.iter().find(|p| dir.join(p).exists()) {
                Some(left) => Err(format!("{left} still there")),
                None => Ok(()),
            },
        )
        .await;
        // `smelter maintenance status` reports what the log shows maintenance did: as
        // many compactions, files in and out as the OPTIMIZE commits, and every file they
        // replaced vacuumed (nothing else took files out of these tables). Polled: the
        // record is stored after a pass ends, and maintenance goes on meanwhile.
        poll(
            &format!("{table}: maintenance status matches the log"),
            Duration::from_secs(60),
            async || {
                let log = commits_of(&cluster, table, "OPTIMIZE").await;
                let removed: usize = log.iter().map(|c| c.2.len()).sum();
                let added: usize = log.iter().map(|c| c.1.len()).sum();
                let status = smelter_json(&["maintenance", "status", table], cluster.dir());
                let record = &status[0]["maintenance"];
                let reported = (
                    record["compactions"].as_u64(),
                    record["files_compacted"].as_u64(),
                    record["files_written"].as_u64(),
                    record["files_vacuumed"].as_u64(),
                );
                let expected = (
                    Some(log.len() as u64),
                    Some(removed as u64),
                    Some(added as u64),
                    Some(removed as u64),
                );
                if status[0]["table"] != table || reported != expected {
                    return Err(format!("reported {reported:?}, log {expected:?}: {status}"));
                }
                let last = &record["last_compaction"];
                if last["version"].as_i64() != log.iter().map(|c| c.0).max()
                    || record["bytes_vacuumed"].as_u64().unwrap_or(0) == 0
                    || !record["last_error"].is_null()
                    || record["passes"].as_u64() < Some(log.len() as u64)
                {
                    return Err(format!("record inconsistent: {status}"));
                }
                Ok(())
            },
        )
        .await;
        let live =
            smelter_lake::changes::snapshot(&cluster.tables.open(table).await.unwrap(), table)
                .unwrap();
        for file in live {
            assert!(
                dir.join(&file.path).exists(),
                "{table}: live file {} deleted",
                file.path
            );
        }
    }
    // Rows unchanged by maintenance: the whole oracle holds.
    oracle::check_pipeline(&cluster.tables, &cluster.spec, &truth)
        .await
        .unwrap();

    // The user with the most silver rows asks to be forgotten.
    let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
    for row in truth.silver.values() {
        if let Some(user) = &row.text[3] {
            *per_user.entry(user.clone()).or_default() += 1;
        }
    }
    let (user, rows) = per_user
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(u, n)| (u.clone(), *n))
        .unwrap();
    assert!(rows >= 2, "the workload has a user with several events");
    let gone: BTreeSet<oracle::Position> = truth
        .silver
        .values()
        .filter(|r| r.text[3].as_deref() == Some(user.as_str()))
        .map(|r| r.position.clone())
        .collect();
    let predicate = format!("user_id = '{user}'");
    let report = smelter_json(
        &[
            "delete",
            "silver.events",
            "--where",
            &predicate,
            "--cascade",
        ],
        cluster.dir(),
    );
    let deleted = |table: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap_or_else(|| panic!("{table} not in {report}"))["deleted"]["rows_deleted"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(deleted("silver.events"), rows as u64, "{report}");
    assert_eq!(deleted("bronze.events"), rows as u64, "{report}");
    assert_eq!(deleted("silver.events_quarantine"), 0, "{report}");
    let rebuilding: Vec<&str> = report["rebuilding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        rebuilding,
        [
            "gold.daily_summary",
            "gold.hourly_metrics",
            "gold.user_segments"
        ],
        "{report}"
    );
    let deletes = commits_of(&cluster, "silver.events", "DELETE").await;
    assert_eq!(deletes.len(), 1);
    assert!(deletes[0].3, "a delete changes data");

    // The oracle without the user: bronze and silver exact at once; gold once its tasks
    // have rebuilt from the new silver version.
    truth
        .silver
        .retain(|_, r| r.text[3].as_deref() != Some(user.as_str()));
    truth.bronze.retain(|p| !gone.contains(p));
    exact_after_a_delete(&cluster, &truth).await;
    // The pipeline goes on consuming: refine did not take the delete's rewritten bronze
    // files for new records (silver stayed exact above), and is drained again.
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();

    // The human rendering lists every table, maintained or not.
    let out = Command::new(smelter_binary())
        .args(["maintenance", "status", "--data-dir"])
        .arg(cluster.dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in cluster.tables.list().await {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{table} "))),
            "{table} missing from:\n{text}"
        );
    }

    // Bad requests: a clear message and exit 2, nothing deleted.
    for (args, expected) in [
        (
            vec!["delete", "silver.events", "--where", "no_such_column = 1"],
            "no_such_column",
        ),
        (
            vec!["delete", "silver.events", "--where", "quantity + 1"],
            "not a condition",
        ),
        (
            vec!["delete", "bronze.events", "--where", "true", "--cascade"],
            "not a silver table",
        ),
        (
            vec!["delete", "silver.nope", "--where", "true"],
            "does not exist",
        ),
        (
            vec!["maintenance", "status", "silver.nope"],
            "does not exist",
        ),
    ] {
        let out = Command::new(smelter_binary())
            .args(&args)
            .arg("--data-dir")
            .arg(cluster.dir())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    check_silver(&cluster.tables, "silver.events", &truth)
        .await
        .unwrap();
}

/// After a cascade: bronze and silver exact at once, gold once its tasks have rebuilt from
/// the new silver version (its recomputation over the remaining silver), every log clean.
async fn exact_after_a_delete(cluster: &TestCluster, truth: &oracle::Truth) {
    check_bronze(&cluster.tables, "bronze.events", truth)
        .await
        .unwrap();
    check_silver(&cluster.tables, "silver.events", truth)
        .await
        .unwrap();
    poll(
        "gold equal to its recomputation over the remaining silver",
        Duration::from_secs(120),
        async || check_gold(&cluster.tables, &cluster.spec, truth).await,
    )
    .await;
    for table in cluster.tables.list().await {
        oracle::verified(&cluster.tables, &table).await.unwrap();
    }
}

/// Waits for the pipeline to drain, then holds every layer to the oracle.
async fn drained_and_exact(cluster: &TestCluster, truth: &oracle::Truth) {
    cluster
        .wait_drained(Duration::from_secs(180))
        .await
        .unwrap();
    oracle::check_pipeline(&cluster.tables, &cluster.spec, truth)
        .await
        .unwrap();
}

/// Runs `smelter restore ARGS` against the cluster (paused meanwhile) and returns its JSON.
fn restore(cluster: &TestCluster, args: &[&str]) -> serde_json::Value {
    let coordinator = cluster.coordinator_endpoint();
    let mut all = vec!["restore"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--coordinator", &coordinator]);
    smelter_json(&all, cluster.dir())
}

/// The step of `table` in a restore's report.
fn step<'a>(report: &'a serde_json::Value, table: &str) -> &'a serde_json::Value {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("{table} not in {report}"))
}

/// Restores while the pipeline is deployed: bronze to a middle version (ingest reads the
/// undone records again from the source, silver follows from the cut), then silver alone
/// (refined again from its bronze position), then the whole pipeline to a time. After each,
/// the pipeline drains again and every layer equals the oracle — nothing lost, nothing
/// twice — and the logs verify; each restore is shown to have happened (a RESTORE commit
/// that removed files, positions put back, rows ingested again after it, the pipeline
/// paused and resumed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_keep_the_layers_one_cut_and_reprocess_exactly_once() {
    // Paced: every layer commits many versions.
    let pipeline = bounded_demo(6_000, 4).replace("      rate: null\n", "      rate: 2000\n");
    let cluster = TestCluster::start(2, &pipeline).await.unwrap();
    cluster
        .wait_drained(Duration::from_secs(180))
        .await
        .unwrap();
    let truth = generator_truth(&cluster.spec);
    oracle::check_pipeline(&cluster.tables, &cluster.spec, &truth)
        .await
        .unwrap();
    let latest = |table: &str| {
        let tables = cluster.tables.clone();
        let table = table.to_string();
        async move { smelter_lake::log::version(&tables.open(&table).await.unwrap()) }
    };

    // 1. Bronze back to the middle of its history.
    let bronze_latest = latest("bronze.events").await;
    assert!(
        bronze_latest >= 6,
        "the run made {bronze_latest} bronze versions"
    );
    // The cut: a version in the first half of bronze's history at which the most source
    // partitions are part-way (the partitions' readers start at different moments, so at
    // the middle version some may be done and others not begun), read from the log.
    let bronze_log = smelter_lake::history::commits(
        &cluster.tables.open("bronze.events").await.unwrap(),
        "bronze.events",
    )
    .await
    .unwrap();
    let mut offsets: BTreeMap<String, i64> = BTreeMap::new();
    let mut after: Vec<(i64, BTreeMap<String, i64>)> = Vec::new();
    for commit in &bronze_log {
        for (app, offset) in &commit.txns {
            if app.starts_with("clickstream/events/") {
                offsets.insert(app.clone(), *offset);
            }
        }
        after.push((commit.version, offsets.clone()));
    }
    let behind = |at: &BTreeMap<String, i64>| -> usize {
        offsets
            .iter()
            .filter(|(p, last)| at.get(*p).is_none_or(|o| o < last))
            .count()
    };
    let (cut_version, moved) = after
        .iter()
        .filter(|(v, _)| *v > 0 && *v <= bronze_latest / 2)
        .map(|(v, at)| (*v, behind(at)))
        .max_by_key(|(v, n)| (*n, *v))
        .unwrap();
    assert_eq!(offsets.len(), 4, "{offsets:?}");
    assert!(
        moved >= 2,
        "at most {moved} partitions part-way by version {cut_version}"
    );
    let middle = cut_version.to_string();
    let report = restore(&cluster, &["bronze.events", "--version", &middle]);
    let bronze = step(&report, "bronze.events");
    let cut = bronze["restored_to"].as_i64().unwrap();
    assert!(cut <= bronze_latest / 2 && cut > 0, "{report}");
    let restore_version = bronze["version"].as_i64().expect("a restore commit");
    assert!(bronze["files_removed"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        bronze["positions"].as_array().unwrap().len(),
        moved,
        "every source partition part-way at the cut goes back: {report}"
    );
    let silver = step(&report, "silver.events");
    assert_eq!(
        silver["positions"][0],
        format!(
            "silver.events/bronze.events={}->{restore_version}",
            silver["positions"][0]
                .as_str()
                .unwrap()
                .split(['=', '-'])
                .nth(1)
                .unwrap()
        ),
        "silver is positioned at the restore's own bronze version: {report}"
    );
    cluster
        .wait_drained(Duration::from_secs(180))
        .await
        .unwrap();
    // The undone records came back from the source, after the restore.
    let handle = cluster.tables.open("bronze.events").await.unwrap();
    let reingested: u64 = smelter_lake::history::entries(&handle, "bronze.events", None)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.version > restore_version)
        .map(|e| e.rows_added)
        .sum();
    assert!(reingested > 0, "ingest read the undone records again");
    let entries = smelter_lake::history::entries(&handle, "bronze.events", None)
        .await
        .unwrap();
    let entry = entries
        .iter()
        .find(|e| e.version == restore_version)
        .unwrap();
    assert_eq!(entry.operation, "restore");
    oracle::check_pipeline(&cluster.tables, &cluster.spec, &truth)
        .await
        .unwrap();

    // 2. Silver alone, to a version that had read bronze versions step 1 undid: silver
    // then held records ingest has since read again, so the restore goes back further, to
    // the latest version positioned outside the undone span, and refines on from there.
    let handle = cluster.tables.open("silver.events").await.unwrap();
    let app = smelter_lake::AppId::upstream("silver.events", "bronze.events");
    let positions = smelter_lake::restore::txn_history(&handle, "silver.events", &app)
        .await
        .unwrap();
    let (asked, _) = *positions
        .iter()
        .find(|(_, p)| p.is_some_and(|p| p > cut && p < restore_version))
        .expect("silver read some of the versions step 1 undid");
    let asked = asked.to_string();
    let report = restore(&cluster, &["silver.events", "--version", &asked]);
    let silver = step(&report, "silver.events");
    assert!(silver["version"].is_i64(), "{report}");
    let restored_to = silver["restored_to"].as_i64().unwrap();
    let (_, position) = positions
        .iter()
        .find(|(v, _)| *v == restored_to)
        .copied()
        .unwrap();
    assert!(
        restored_to < asked.parse().unwrap() && position.unwrap_or(-1) <= cut,
        "restored to v{restored_to} at bronze {position:?}, cut {cut}: {report}"
    );
    step(&report, "silver.events_quarantine");
    assert_eq!(
        report["rebuilding"],
        serde_json::json!([
            "gold.daily_summary",
            "gold.hourly_metrics",
            "gold.user_segments"
        ])
    );
    drained_and_exact(&cluster, &truth).await;

    // 3. The whole pipeline back to the time of an early silver commit.
    let handle = cluster.tables.open("silver.events").await.unwrap();
    let entries = smelter_lake::history::entries(&handle, "silver.events", None)
        .await
        .unwrap();
    let at = entries
        .iter()
        .filter(|e| e.operation == "refine" && e.rows_added > 0)
        .min_by_key(|e| e.version)
        .and_then(|e| e.timestamp_ms)
        .unwrap();
    let at = chrono::DateTime::from_timestamp_millis(at)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let report = restore(&cluster, &["--pipeline", "clickstream", "--timestamp", &at]);
    step(&report, "bronze.events");
    step(&report, "silver.events");
    drained_and_exact(&cluster, &truth).await;

    // The pipeline was paused and resumed three times, and runs.
    let status = smelter_sdk::AdminClient::connect(&cluster.coordinator_endpoint())
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    let definition = &status.pipelines[0];
    assert_eq!((definition.revision, definition.paused), (7, false));
    assert!(status.tasks.iter().all(|t| {
        t.report
            .as_ref()
            .is_some_and(|r| r.state() != smelter_proto::TaskState::Paused)
    }));

    // Versions that are not there: exit 2, saying which are.
    let out = Command::new(smelter_binary())
        .args([
            "restore",
            "gold.hourly_metrics",
            "--version",
            "100000",
            "--offline",
        ])
        .arg("--data-dir")
        .arg(cluster.dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("versions kept are 0 to"), "{stderr}");
}

/// Who each source record belongs to, read from its payload with serde_json (nothing of the
/// product's decoding): `None` for records without a user (malformed, user missing).
fn users_of_records(
    spec: &smelter_common::spec::PipelineSpec,
) -> BTreeMap<oracle::Position, (Option<String>, Vec<u8>)> {
    let Some(smelter_common::spec::SourceSpec::Generator(generator)) = spec.sources.get("events")
    else {
        panic!("the demo's source is a generator");
    };
    let events = smelter_worker::source::generator::Clickstream::new(generator).unwrap();
    let topic = events.topic("events");
    let mut out = BTreeMap::new();
    for partition in 0..generator.partitions as i32 {
        for offset in 0..events.partition_count(partition).unwrap() {
            let event = events.event(partition, offset);
            let user = serde_json::from_slice::<serde_json::Value>(&event.payload)
                .ok()
                .and_then(|v| v["user"]["id"].as_str().map(str::to_string));
            out.insert((topic.clone(), partition, offset), (user, event.payload));
        }
    }
    out
}

/// The right-to-be-forgotten case at speed: 1% of the users deleted with
/// `--cascade --pipeline` while the generator produces 20,000 events a second. The delete
/// must land mid-stream (asserted: bronze goes on taking records after its cut, some of
/// them of the deleted users); afterwards no layer holds a record of a deleted user up to
/// the cut — re-sent copies and quarantined records included —, every other record is
/// there exactly once, and gold equals its recomputation over the remaining silver. The
/// oracle reads each record's user from the payload with serde_json and the tables with
/// delta-rs; the cut (the source offsets bronze held before its delete) from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cascade_forgets_one_percent_of_users_while_the_generator_runs() {
    const EVENTS: u64 = 120_000;
    let text = bounded_demo(EVENTS, 4).replace("      rate: null\n", "      rate: 8000\n");
    assert!(text.contains("rate: 8000"), "the generator is paced");
    let cluster = TestCluster::start(2, &text).await.unwrap();
    let pipeline_file = cluster.dir().join("pipeline.yaml");
    std::fs::write(&pipeline_file, &text).unwrap();
    let records = users_of_records(&cluster.spec);
    let users: BTreeSet<&String> = records.values().filter_map(|(u, _)| u.as_ref()).collect();
    // Every hundredth user, in id order: 1%.
    let forgotten: BTreeSet<String> = users.iter().step_by(100).map(|u| (*u).clone()).collect();
    assert!(
        forgotten.len() * 100 >= users.len() && forgotten.len() >= 10,
        "{} of {} users",
        forgotten.len(),
        users.len()
    );

    // Mid-stream: silver holds a fifth of the events, the source is far from done.
    poll(
        "silver holding a fifth of the events",
        Duration::from_secs(120),
        async || {
            let rows = match cluster.tables.open("silver.events").await {
                Ok(table) => smelter_lake::log::row_count(&table),
                Err(e) => return Err(e.to_string()),
            };
            if rows >= EVENTS / 5 {
                Ok(())
            } else {
                Err(format!("{rows} rows"))
            }
        },
    )
    .await;
    let list: Vec<String> = forgotten.iter().map(|u| format!("'{u}'")).collect();
    let predicate = format!("user_id IN ({})", list.join(", "));
    let dir = cluster.dir().to_path_buf();
    let file = pipeline_file.display().to_string();
    let report = tokio::task::spawn_blocking(move || {
        smelter_json(
            &[
                "delete",
                "silver.events",
                "--where",
                &predicate,
                "--cascade",
                "--pipeline",
                &file,
            ],
            &dir,
        )
    })
    .await
    .unwrap();
    assert_eq!(report["matched_by"], "content", "{report}");
    let cut_version = report["bronze_cut"].as_i64().expect("a cut");
    let deleted = |table: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap_or_else(|| panic!("{table} not in {report}"))["deleted"]
            .clone()
    };
    let bronze_delete = deleted("bronze.events")["version"]
        .as_i64()
        .expect("bronze lost records");
    assert!(bronze_delete > cut_version, "{report}");
    cluster
        .wait_drained(Duration::from_secs(300))
        .await
        .unwrap();

    // The cut, from the log: the last offset of each partition bronze held at the version
    // its delete chose from.
    let before = cluster
        .tables
        .open_version("bronze.events", cut_version)
        .await
        .unwrap();
    let topic = records.keys().next().unwrap().0.clone();
    let mut cut = BTreeMap::new();
    for partition in 0..4 {
        let app_id = smelter_lake::AppId::source(&cluster.spec.pipeline, &topic, partition);
        let last = smelter_lake::log::txn_version(&before, &app_id)
            .await
            .unwrap()
            .unwrap_or(-1);
        cut.insert(partition, last);
    }
    let gone = |position: &oracle::Position| {
        records[position]
            .0
            .as_ref()
            .is_some_and(|u| forgotten.contains(u))
            && position.2 <= cut[&position.1]
    };
    // The fault happened: records kept arriving after the cut, the deleted users' too.
    let after_cut: Vec<&oracle::Position> = records.keys().filter(|p| p.2 > cut[&p.1]).collect();
    let theirs_after = after_cut
        .iter()
        .filter(|p| {
            records[**p]
                .0
                .as_ref()
                .is_some_and(|u| forgotten.contains(u))
        })
        .count();
    assert!(
        after_cut.len() as u64 >= EVENTS / 10 && theirs_after > 0,
        "the delete landed mid-stream: {} records after the cut, {theirs_after} of deleted users",
        after_cut.len()
    );
    let gone_count = records.keys().filter(|p| gone(p)).count();
    assert_eq!(
        deleted("bronze.events")["rows_deleted"].as_u64(),
        Some(gone_count as u64),
        "bronze lost exactly the deleted users' records up to the cut: {report}"
    );

    let mut truth = generator_truth(&cluster.spec);
    truth.bronze.retain(|p| !gone(p));
    truth.quarantine.retain(|p, _| !gone(p));
    truth.silver.retain(|_, row| !gone(&row.position));
    // A deleted event re-sent after the cut is a record of its own: silver may take it as
    // a new row (nothing of the original is left to dedupe against) or drop it (the refine
    // task still remembers the key). Whichever happened, the expected row follows silver.
    let by_id = oracle::sql(
        &cluster.tables,
        "SELECT event_id, _offset, _partition FROM silver.events",
    )
    .await
    .unwrap();
    let mut in_silver: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    for batch in &by_id {
        let ids = oracle::strings(batch.column(0));
        let offsets = batch
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let partitions = batch
            .column(2)
            .as_primitive::<arrow::datatypes::Int32Type>();
        for (i, id) in ids.into_iter().enumerate() {
            in_silver.insert(id, (partitions.value(i), offsets.value(i)));
        }
    }
    let mut resent = 0;
    for (position, (user, payload)) in &records {
        let Some(user) = user.as_ref().filter(|u| forgotten.contains(*u)) else {
            continue;
        };
        let Ok(row) = oracle::ExpectedRow::decode(position.clone(), payload) else {
            continue;
        };
        let id = row.event_id().to_string();
        if gone(position) || truth.silver.contains_key(&id) || !truth.bronze.contains(position) {
            continue;
        }
        if in_silver.get(&id) == Some(&(position.1, position.2))
            && row.text[3].as_deref() == Some(user)
        {
            truth.silver.insert(id, row);
            resent += 1;
        }
    }
    tracing::info!(
        resent,
        gone_count,
        "re-sent copies of deleted events taken as new rows"
    );
    exact_after_a_delete(&cluster, &truth).await;
}
