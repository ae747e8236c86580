//! `smelter bench` kept working: a tiny run in process and one as a cluster on real etcd and
//! a real broker. Nothing here judges speed (benchmarks are not timed tests); the checks
//! are that every figure is there and consistent with the events put through.

use std::process::Command;

use std::time::Duration;

use smelter_cli::bench::check::{check_run as check_tables, generator_of};
use smelter_lake::testing::commit_for_test;
use smelter_lake::{WriteMode, changes};
use smelter_tests::services::{Etcd, Tansu};
use smelter_tests::{TestCluster, bounded_demo, smelter_binary};

fn bench(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(smelter_binary())
        .args(["bench", "--output", "json", "--work-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .expect("run smelter bench");
    assert!(
        out.status.success(),
        "smelter bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench prints its JSON result")
}

/// Checks one end-to-end run of `events` events.
fn check_run(run: &serde_json::Value, events: u64, processes: &[&str]) {
    assert_eq!(run["events"], events);
    // Every event bronze holds became visible in gold, with a latency.
    assert_eq!(run["latency"]["events"], events, "{run}");
    assert_eq!(run["latency"]["not_visible"], 0);
    let (p50, p99) = (
        run["latency"]["p50_ms"].as_f64().unwrap(),
        run["latency"]["p99_ms"].as_f64().unwrap(),
    );
    assert!(0.0 <= p50 && p50 <= p99, "p50 {p50}, p99 {p99}");
    // Each event reached bronze, then silver, then gold: so do the percentiles.
    let stage = |name: &str, q: &str| run["latency"]["stages"][name][q].as_f64().unwrap();
    for (q, gold) in [("p50_ms", p50), ("p99_ms", p99)] {
        let (bronze, silver) = (stage("bronze", q), stage("silver", q));
        assert!(
            0.0 <= bronze && bronze <= silver && silver <= gold,
            "{q}: bronze {bronze}, silver {silver}, gold {gold}"
        );
    }
    // The same per second of production: every second has its events, each reaching
    // bronze, silver and gold in that order, and none is slower than the run's worst.
    let seconds = run["latency"]["by_second"].as_array().unwrap();
    assert!(!seconds.is_empty(), "{run}");
    let worst = run["latency"]["max_ms"].as_f64().unwrap();
    for second in seconds {
        let at = |k: &str| second[k].as_f64().unwrap();
        assert!(
            at("bronze_p99_ms") <= at("silver_p99_ms")
                && at("silver_p99_ms") <= at("p99_ms")
                && at("p50_ms") <= at("p99_ms")
                && at("p99_ms") <= worst,
            "{second}"
        );
    }
    // Each stage's latency split into its parts: shares that sum to one, with the parts
    // the commits recorded among them (in process there is no commit lock to wait for).
    for (name, recorded) in [
        ("bronze", &["write"][..]),
        ("silver", &["read", "refine", "write"][..]),
        ("gold", &["refresh", "write"][..]),
    ] {
        let breakdown = &run["latency"]["breakdown"][name];
        assert!(
            breakdown["mean_ms"].as_f64().unwrap() > 0.0,
            "{name}: {breakdown}"
        );
        let shares = breakdown["shares"].as_object().unwrap();
        let sum: f64 = shares.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{name}: shares sum to {sum}");
        for part in recorded {
            assert!(
                shares[*part].as_f64().unwrap() > 0.0,
                "{name}: no time recorded for {part}: {breakdown}"
            );
        }
    }
    assert!(run["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(run["fraction_of_limit"].as_f64().unwrap() > 0.0);
    for process in processes {
        assert!(
            run["peak_rss_bytes"][process].as_u64().unwrap() > 1 << 20,
            "{process}"
        );
    }
    for table in ["bronze.events", "silver.events", "gold.hourly_metrics"] {
        assert!(
            run["commits"][table]["commits"].as_u64().unwrap() >= 1,
            "{table}"
        );
    }
    let queries = run["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 3);
    assert!(queries.iter().all(|q| q["rows"].as_u64().unwrap() > 0));
    // The run checked its own tables against the events.
    let checked = &run["checked"];
    assert_eq!(checked["bronze"], events, "{checked}");
    let (silver, quarantine) = (
        checked["silver"].as_u64().unwrap(),
        checked["quarantine"].as_u64().unwrap(),
    );
    assert!(
        silver > 0 && quarantine > 0 && silver + quarantine <= events,
        "{checked}"
    );
    assert_eq!(checked["gold_events"], silver);
}

#[test]
fn bench_runs_in_process_with_every_figure() {
    // A Python with polars and deltalake (scripts/services.sh links it).
    let Some(bench_python) = smelter_tests::services::binary("bench-python") else {
        return;
    };
    let report = bench(&[
        "--events",
        "20000",
        "--rate",
        "20000",
        "--partitions",
        "2",
        "--runs",
        "2",
        "--table-commits",
        "120",
        "--cdc-changes",
        "30000",
        "--cdc-keys",
        "3000",
        "--cdc-batch",
        "3000",
        "--cdc-seconds",
        "3",
        "--cdc-rate",
        "2000",
        "--format-rows",
        "5000",
        "--files-events",
        "12000",
        "--polars-python",
        bench_python.to_str().unwrap(),
    ]);
    check_run(&report["in_process"], 20_000, &["smelter up"]);
    // The files-source run and the polars script on the same files: both checked by the
    // bench against the generator's labels (it fails otherwise), both measured.
    let files = &report["files_source"];
    assert_eq!(files["events"], 12_000, "{files}");
    for job in ["smelter", "polars"] {
        let checked = &files[job]["checked"];
        assert_eq!(checked["bronze"], 12_000, "{job}: {files}");
        assert!(
            checked["silver"].as_u64().unwrap() > 11_000,
            "{job}: {files}"
        );
        assert_eq!(checked, &files["smelter"]["checked"], "{files}");
        assert!(
            files[job]["cpu_seconds"].as_f64().unwrap() > 0.0,
            "{job}: {files}"
        );
    }
    let ratio = files["smelter_to_polars"].as_f64().unwrap();
    let expected = files["smelter"]["events_per_cpu_second"].as_f64().unwrap()
        / files["polars"]["events_per_cpu_second"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{files}");
    // Both runs are listed, and the figures are those of the one with the least CPU.
    let runs: Vec<f64> = report["in_process"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cpu_seconds"].as_f64().unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    let least = runs.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(report["in_process"]["cpu_seconds"].as_f64().unwrap(), least);
    // The same run with maintenance on, alternated with it and checked the same way, with
    // what maintenance did and its cost against the run without.
    let maintained = &report["in_process_maintained"];
    check_run(maintained, 20_000, &["smelter up"]);
    assert_eq!(maintained["runs"].as_array().unwrap().len(), 2);
    let done = &maintained["maintenance"];
    assert_eq!(done["every"], "2s", "{done}");
    assert!(
        done["files"]["bronze.events"].as_u64().unwrap() > 0,
        "{done}"
    );
    assert!(done["compactions"].is_u64(), "{done}");
    let overhead = report["maintenance_cpu_overhead"].as_f64().unwrap();
    let expected = maintained["cpu_seconds"].as_f64().unwrap() / least - 1.0;
    assert!(
        (overhead - expected).abs() < 1e-9,
        "{overhead} vs {expected}"
    );
    // The REST API's figures, from answers the bench checked.
    let rest = &report["in_process"]["rest"];
    assert_eq!(rest["requests"], 40, "{rest}");
    for field in [
        "table_p50_ms",
        "query_p50_ms",
        "table_cpu_ms",
        "query_cpu_ms",
    ] {
        assert!(rest[field].as_f64().unwrap() > 0.0, "{field}: {rest}");
    }
    assert!(rest["table_p50_ms"].as_f64() <= rest["table_max_ms"].as_f64());
    assert!(rest["query_rows"].as_u64().unwrap() > 0);
    for field in [
        "table_fraction_at_1_per_second",
        "query_fraction_at_1_per_second",
    ] {
        let share = rest[field].as_f64().unwrap();
        assert!(share > 0.0 && share.is_finite(), "{field}: {rest}");
    }
    // Change data capture: every way of writing the batches, checked by the bench itself.
    let cdc = &report["cdc"];
    assert_eq!(cdc["changes"], 30_000, "{cdc}");
    for run in [
        "scd1",
        "scd2",
        "append",
        "bare_delta_rs_merge",
        "bare_delta_rs_scd2_merge",
    ] {
        assert_eq!(cdc[run]["commits"], 10, "{run}: {cdc}");
        assert!(
            cdc[run]["changes_per_cpu_second"].as_f64().unwrap() > 0.0,
            "{run}: {cdc}"
        );
        assert!(cdc[run]["rows"].as_u64().unwrap() > 0, "{run}: {cdc}");
    }
    assert_eq!(cdc["append"]["rows"], 30_000, "{cdc}");
    assert!(cdc["scd1"]["rows"].as_u64().unwrap() <= 3_000, "{cdc}");
    for ratio in [
        "scd1_to_bare_merge",
        "scd2_to_bare_merge",
        "scd2_to_bare_scd2_merge",
        "merge_commit_to_append_commit",
    ] {
        let value = cdc[ratio].as_f64().unwrap();
        assert!(value > 0.0 && value.is_finite(), "{ratio}: {cdc}");
    }
    // Change to gold through a merged table: every change seen in gold, in order of
    // percentiles, over several refreshes; the bench checked the tables itself.
    let paced = &report["cdc_latency"];
    assert_eq!(paced["changes"], 6_000, "{paced}");
    let latency = &paced["latency"];
    assert_eq!(latency["events"], 6_000, "{paced}");
    assert_eq!(latency["not_visible"], 0, "{paced}");
    let (p50, p99, max) = (
        latency["p50_ms"].as_f64().unwrap(),
        latency["p99_ms"].as_f64().unwrap(),
        latency["max_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{paced}");
    assert!(paced["gold_refreshes"].as_u64().unwrap() > 1, "{paced}");
    // ... folding silver's change data after the first build.
    assert!(paced["gold_folded"].as_u64().unwrap() >= 1, "{paced}");
    assert!(
        paced["gold_folded_rows_mean"].as_f64().unwrap() > 0.0,
        "{paced}"
    );
    for cost in ["gold_build_ms", "gold_recompute_ms"] {
        assert!(paced[cost].as_f64().unwrap() > 0.0, "{cost}: {paced}");
    }
    assert!(paced["silver_rows"].as_u64().unwrap() > 0, "{paced}");
    // File formats: each read whole both ways (the bench checks the row counts).
    let formats = &report["formats"];
    assert_eq!(formats["records"], 5_000, "{formats}");
    for format in ["ndjson", "csv", "parquet", "avro"] {
        for field in ["smelter_rows_per_cpu_second", "bare_rows_per_cpu_second"] {
            let value = formats[format][field].as_f64().unwrap();
            assert!(
                value > 0.0 && value.is_finite(),
                "{format} {field}: {formats}"
            );
        }
    }
    // Table operations: 120 commits, so a checkpoint (every 100) was written and deleted.
    let ops = &report["table_ops"];
    assert_eq!(ops["commits"], 120, "{ops}");
    for field in ["open_ms_with_checkpoints", "open_ms_without_checkpoints"] {
        assert!(ops[field].as_f64().unwrap() > 0.0, "{field}: {ops}");
    }
    for cost in ["compaction", "vacuum"] {
        assert_eq!(ops[cost]["files"], 120, "{ops}");
        assert!(ops[cost]["bytes"].as_u64().unwrap() > 0, "{ops}");
        assert!(
            ops[cost]["cpu_seconds_per_gb"].as_f64().unwrap() >= 0.0,
            "{ops}"
        );
    }
    for layer in ["bronze", "silver", "gold"] {
        let figures = &report["layers"][layer];
        assert!(
            figures["events_per_cpu_second"].as_f64().unwrap() > 0.0,
            "{layer}"
        );
        assert!(
            figures["limit_events_per_cpu_second"].as_f64().unwrap() > 0.0,
            "{layer}"
        );
    }
    let stages: Vec<&str> = report["limit"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "generate",
            "bronze_encode",
            "json_decode",
            "silver_encode",
            "json_decode_arrow",
            "json_decode_serde",
            "json_parse_serde",
            "json_parse_sonic",
            "bronze_encode_default",
            "silver_encode_default",
            "gold_group_by"
        ]
    );
    // The limit counts Smelter's decoder; arrow-json's is there to compare with.
    let cpu_of = |name: &str| {
        report["limit"]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["cpu_seconds"]
            .as_f64()
            .unwrap()
    };
    let counted: f64 = [
        "generate",
        "bronze_encode",
        "json_decode",
        "silver_encode",
        "gold_group_by",
    ]
    .iter()
    .map(|name| cpu_of(name))
    .sum();
    let limit = report["limit"]["events_per_cpu_second"].as_f64().unwrap();
    let events = report["limit"]["events"].as_f64().unwrap();
    assert!(limit > 0.0);
    assert!(
        (limit - events / counted).abs() <= 1e-6 * limit,
        "limit {limit} is not {events} events over {counted} CPU-s"
    );
    // The third-party limit: arrow-json and the parquet writer's defaults, no Smelter code
    // after the source.
    let bare: f64 = [
        "generate",
        "bronze_encode_default",
        "json_decode_arrow",
        "silver_encode_default",
        "gold_group_by",
    ]
    .iter()
    .map(|name| cpu_of(name))
    .sum();
    let third_party = report["limit"]["third_party_events_per_cpu_second"]
        .as_f64()
        .unwrap();
    assert!(
        (third_party - events / bare).abs() <= 1e-6 * third_party,
        "third-party limit {third_party} is not {events} events over {bare} CPU-s"
    );
    let run = &report["in_process"];
    let fraction = run["fraction_of_third_party_limit"].as_f64().unwrap();
    let expected = run["events_per_cpu_second"].as_f64().unwrap() / third_party;
    assert!(
        (fraction - expected).abs() <= 1e-9 * expected.max(1.0),
        "{fraction} / {expected}"
    );
    assert!(report["cluster"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_as_a_cluster_on_a_broker() {
    let (Some(etcd), Some(tansu)) = (Etcd::start().await, Tansu::start().await) else {
        return;
    };
    let report = tokio::task::spawn_blocking(move || {
        bench(&[
            "--cluster-only",
            "--brokers",
            &tansu.brokers,
            "--etcd",
            &etcd.endpoint,
            "--etcd-pid",
            &etcd.pid().to_string(),
            "--events",
            "8000",
            "--rate",
            "8000",
            "--runs",
            "1",
        ])
    })
    .await
    .unwrap();
    check_run(
        &report["cluster"],
        8_000,
        &["coordinator", "worker-0", "worker-1"],
    );
    assert!(report["in_process"].is_null());
    // On etcd every commit waits for its table's lock, and says so.
    for stage in ["bronze", "silver", "gold"] {
        let shares = &report["cluster"]["latency"]["breakdown"][stage]["shares"];
        assert!(shares["lock"].is_f64(), "{stage}: {shares}");
    }
    let etcd_cpu = report["cluster"]["etcd_cpu_seconds"].as_f64().unwrap();
    assert!(etcd_cpu > 0.0, "etcd's CPU during the run: {etcd_cpu}");
    for limit in [
        "kafka_events_per_cpu_second",
        "third_party_kafka_events_per_cpu_second",
    ] {
        assert!(report["limit"][limit].as_f64().unwrap() > 0.0, "{limit}");
    }
    assert!(
        report["cluster"]["fraction_of_third_party_limit"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

/// The benchmark's own check passes on a run's tables as the pipeline left them, and fails
/// — naming the layer — once a row is doubled behind the pipeline's back: a run that lost
/// or doubled rows reports no figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_check_fails_a_run_with_a_doubled_row() {
    let events = 3_000;
    let cluster = TestCluster::start(2, &bounded_demo(events, 2))
        .await
        .unwrap();
    cluster
        .wait_drained(Duration::from_secs(120))
        .await
        .unwrap();
    let generator = generator_of(&cluster.spec, &smelter_cli::workload::demo_events(1));
    let counts = check_tables(&cluster.tables, &generator, events)
        .await
        .unwrap();
    assert_eq!(counts.bronze, events);
    // One silver row committed again, as a buggy writer would.
    let mut silver = cluster.tables.open("silver.events").await.unwrap();
    let files = changes::snapshot(&silver, "silver.events").unwrap();
    let rows = changes::read(
        &silver,
        "silver.events",
        &files[0],
        None,
        &Default::default(),
    )
    .await
    .unwrap();
    let row = rows[0].slice(0, 1);
    commit_for_test(&mut silver, "silver.events", row, WriteMode::Append, &[]).await;
    let refused = check_tables(&cluster.tables, &generator, events)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!(
            "silver: {} rows, expected {}",
            counts.silver + 1,
            counts.silver
        )),
        "{refused}"
    );
}

/// `smelter bench --soak-secs` kept working: a short soak whose samples cover every table
/// of the demo, with maintenance compacting bronze behind the stream (its small files pass
/// 16 within seconds at four commits a second), and the run checked at the end. The figures
/// (files, open times, failed attempts) are reported, not judged.
#[test]
fn the_soak_samples_every_table_while_maintenance_runs() {
    let events_per_second = 2_000;
    let seconds = 14;
    let result = bench(&[
        "--soak-secs",
        &seconds.to_string(),
        "--soak-sample-secs",
        "2",
        "--rate",
        &events_per_second.to_string(),
    ]);
    let soak = &result["soak"];
    let events = events_per_second * seconds;
    assert_eq!(soak["events"], events, "{soak}");
    assert_eq!(soak["checked"]["bronze"], events, "{soak}");
    assert_eq!(soak["store"], "local");
    assert!(result["in_process"].is_null(), "the soak runs alone");
    let samples = soak["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "{} samples", samples.len());
    let last = &samples[samples.len() - 1]["tables"];
    for table in smelter_tests::DEMO_TABLES {
        let sample = &last[table];
        assert!(sample["version"].as_i64().unwrap() > 0, "{table}: {sample}");
        assert!(
            sample["open_ms"].as_f64().unwrap() > 0.0,
            "{table}: {sample}"
        );
        assert!(
            soak["max_files"][table].as_u64().unwrap() >= sample["files"].as_u64().unwrap(),
            "{table}: the most files seen is at least the last count"
        );
        assert!(
            soak["failed_commit_attempts"][table].is_u64(),
            "{table}: {soak}"
        );
    }
    assert!(
        last["bronze.events"]["compactions"].as_u64().unwrap() > 0,
        "maintenance compacted bronze: {}",
        last["bronze.events"]
    );
}
