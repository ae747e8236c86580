//! Table operations while the pipeline runs: automatic maintenance (the coordinator's
//! fourth task kind compacts small files behind the stream and vacuums what it replaced)
//! and `smelter delete --cascade` (a user's rows gone from silver and the bronze records
//! they came from, gold rebuilt without them). The oracle is the generator's own events,
//! with the deleted user's rows taken out by this test.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use deltalake::kernel::Action;
use smelter_tests::oracle::{self, check_bronze, check_gold, check_silver, generator_truth};
use smelter_tests::{TestCluster, bounded_demo, smelter_binary, smelter_json};
use tokio::time::Instant;

/// The demo, paced so every layer commits many small files, with maintenance on every
/// table looking every 300 ms, compacting at 3 small files and vacuuming after 1 s.
fn pipeline() -> String {
    let text = bounded_demo(6_000, 4).replace("      rate: null\n", "      rate: 3000\n");
    let mut spec: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let tables = spec["tables"].as_mapping_mut().unwrap();
    for (_, table) in tables.iter_mut() {
        table.as_mapping_mut().unwrap().insert(
            "maintenance".into(),
            serde_yaml::from_str("{ min_small_files: 3, every: 300ms, retention: 1s }").unwrap(),
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

async fn poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(reason) if Instant::now() >= deadline => panic!("{what}: {reason}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
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
        for (version, added, removed, data_change) in &compactions {
            assert!(
                !data_change,
                "{table} v{version}: compaction changes no data"
            );
            assert!(
                removed.len() >= 3 && added.len() < removed.len(),
                "{table} v{version}: {} files -> {}",
                removed.len(),
                added.len()
            );
        }
        // Vacuum deletes what compaction replaced (retention 1 s, readers caught up), and
        // never a file the table holds.
        let replaced: Vec<String> = compactions
            .iter()
            .flat_map(|(_, _, removed, _)| removed.clone())
            .collect();
        let dir = cluster.tables.path(table);
        poll(
            &format!("{table}: replaced files vacuumed"),
            Duration::from_secs(60),
            async || match replaced.iter().find(|p| dir.join(p).exists()) {
                Some(left) => Err(format!("{left} still there")),
                None => Ok(()),
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
    check_bronze(&cluster.tables, "bronze.events", &truth)
        .await
        .unwrap();
    check_silver(&cluster.tables, "silver.events", &truth)
        .await
        .unwrap();
    poll(
        "gold rebuilt without the user",
        Duration::from_secs(60),
        async || check_gold(&cluster.tables, &cluster.spec, &truth).await,
    )
    .await;
    for table in cluster.tables.list().await {
        oracle::verified(&cluster.tables, &table).await.unwrap();
    }
    // The pipeline goes on consuming: refine did not take the delete's rewritten bronze
    // files for new records (silver stayed exact above), and is drained again.
    cluster.wait_drained(Duration::from_secs(60)).await.unwrap();

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
