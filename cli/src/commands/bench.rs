//! `smelter bench`: runs the benchmark and prints (and optionally writes) its result.

use std::io::IsTerminal;
use std::time::Duration;

use smelter_common::config::SmelterConfig;

use crate::bench::limit::{self, LimitSource};
use crate::bench::{
    BenchOptions, BenchReport, EndToEnd, cluster, in_process, least_cpu_alternating, least_cpu_of,
};
use crate::cli::BenchArgs;
use crate::output::Format;
use crate::workload::{bounded_demo, demo_events};
use crate::{CliError, Result};

fn say(message: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("bench: {message}");
    }
    tracing::info!("{message}");
}

/// Runs `smelter bench`.
pub async fn run(config: SmelterConfig, args: BenchArgs) -> Result<()> {
    let options = BenchOptions {
        events: args.events.max(1),
        rate: args.rate.max(1),
        partitions: args.partitions,
        workers: args.workers,
        work_dir: args.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        timeout: Duration::from_secs(args.timeout_secs),
        runs: args.runs,
        s3_endpoint: args.s3_endpoint.clone(),
        cluster_log: args.cluster_log.clone(),
    };
    let mut report = BenchReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        date: chrono_like_now(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        workload: serde_json::json!({
            "events": options.events,
            "rate": options.rate,
            "partitions": options.partitions,
            "workers": options.workers,
            "generator": demo_events(options.partitions),
        }),
        ..BenchReport::default()
    };
    if args.s3_endpoint.is_some() && args.brokers.is_none() && args.soak_secs == 0 {
        return Err(CliError::InvalidArgument(
            "--s3-endpoint is for the cluster run (--brokers) or the soak (--soak-secs)".into(),
        ));
    }
    if args.soak_secs > 0 {
        say(&format!(
            "maintenance under load: {} s at {}/s",
            args.soak_secs, options.rate
        ));
        let soak = crate::bench::soak::SoakOptions {
            seconds: args.soak_secs,
            sample_every: args.soak_sample_secs,
            no_conditional_put: args.s3_no_conditional_put,
        };
        report.soak = Some(crate::bench::soak::run(&config, &options, &soak).await?);
        return write_report(&report, &args);
    }
    if !args.cluster_only {
        say(&format!(
            "in process, end to end: {} events at {}/s, alternately without and with maintenance",
            options.events, options.rate
        ));
        let (run, maintained) = least_cpu_alternating(options.runs, async |variant| {
            in_process::end_to_end(&config, &options, variant == 1).await
        })
        .await?;
        report.maintenance_cpu_overhead =
            Some(maintained.cpu_seconds / run.cpu_seconds.max(f64::EPSILON) - 1.0);
        report.in_process = Some(run);
        report.in_process_maintained = Some(maintained);
        say("in process, layer by layer, unpaced");
        let (layers, bronze_bytes) = in_process::layer_by_layer(&config, &options).await?;
        report.layers = layers;
        if let Some(bronze) = report.layers.get("bronze") {
            report.bronze_mb_per_second = bronze_bytes as f64 / 1e6 / bronze.wall_seconds.max(1e-9);
        }
        say(&format!(
            "table operations: {} small commits, then compaction and vacuum",
            args.table_commits
        ));
        report.table_ops =
            Some(crate::bench::table_ops::measure(&options.work_dir, args.table_commits).await?);
        if args.cdc_changes > 0 {
            say(&format!(
                "change data capture: {} changes over {} keys, {} per merge",
                args.cdc_changes, args.cdc_keys, args.cdc_batch
            ));
            report.cdc = Some(
                crate::bench::cdc::measure(
                    &options.work_dir,
                    args.cdc_changes,
                    args.cdc_keys,
                    args.cdc_batch,
                )
                .await?,
            );
        }
        if args.format_rows > 0 {
            say(&format!(
                "file formats: {} rows each of NDJSON, CSV, Parquet and Avro",
                args.format_rows
            ));
            let rows = args.format_rows;
            report.formats = Some(
                tokio::task::spawn_blocking(move || crate::bench::formats::measure(rows))
                    .await
                    .map_err(|e| CliError::Bench(format!("formats: {e}")))??,
            );
        }
        if args.files_events > 0 {
            say(&format!(
                "files source: {} events in six NDJSON files{}",
                args.files_events,
                if args.polars_python.is_some() {
                    ", and a polars script on the same files"
                } else {
                    ""
                }
            ));
            report.files_source = Some(
                crate::bench::files_run::measure(
                    &config,
                    &options,
                    args.files_events,
                    args.polars_python.as_deref(),
                )
                .await?,
            );
        }
        if args.cdc_seconds > 0 {
            say(&format!(
                "change to gold: {} changes/s over {} keys for {} s, merged into silver",
                args.cdc_rate, args.cdc_keys, args.cdc_seconds
            ));
            report.cdc_latency = Some(
                crate::bench::cdc_latency::measure(
                    &config,
                    &options,
                    args.cdc_rate,
                    args.cdc_seconds,
                    args.cdc_keys,
                )
                .await?,
            );
        }
    }
    let mut kafka = None;
    if let (Some(brokers), Some(etcd)) = (&args.brokers, &args.etcd) {
        say(&format!(
            "cluster on {brokers}: {} events at {}/s",
            options.events, options.rate
        ));
        let services = cluster::Services {
            brokers: brokers.clone(),
            etcd: etcd.clone(),
            etcd_pid: args.etcd_pid,
        };
        let (run, spec) = least_cpu_of(options.runs, async || {
            cluster::run(&options, &services).await
        })
        .await?;
        report.cluster = Some(run);
        kafka = cluster::kafka_source(&spec).cloned();
    }
    say("the limit: the same events through the bare stages");
    let text = bounded_demo(options.events, options.partitions, None);
    let spec = crate::commands::load_pipeline(&text, "bench.yaml").await?;
    let source = match &kafka {
        Some(k) => LimitSource::Kafka(k),
        None => LimitSource::Generator,
    };
    report.limit = limit::measure(
        &spec,
        &demo_events(options.partitions),
        options.events,
        source,
    )
    .await?;
    fill_fractions(&mut report);
    write_report(&report, &args)
}

/// Writes the report where asked and prints it.
fn write_report(report: &BenchReport, args: &BenchArgs) -> Result<()> {
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| CliError::Bench(format!("result: {e}")))?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n")).map_err(|source| CliError::Io {
            context: format!("write {}", path.display()),
            source,
        })?;
    }
    match args.output {
        Format::Json => println!("{json}"),
        _ => print!("{}", summary(report)),
    }
    Ok(())
}

fn fill_fractions(report: &mut BenchReport) {
    let limit = &report.limit;
    let fraction = |value: f64, of: f64| if of > 0.0 { value / of } else { 0.0 };
    for run in [&mut report.in_process, &mut report.in_process_maintained]
        .into_iter()
        .flatten()
    {
        run.fraction_of_limit = fraction(run.events_per_cpu_second, limit.events_per_cpu_second);
        run.fraction_of_third_party_limit = fraction(
            run.events_per_cpu_second,
            limit.third_party_events_per_cpu_second,
        );
    }
    if let Some(run) = &mut report.cluster {
        let of = limit
            .kafka_events_per_cpu_second
            .unwrap_or(limit.events_per_cpu_second);
        run.fraction_of_limit = fraction(run.events_per_cpu_second, of);
        let bare = limit
            .third_party_kafka_events_per_cpu_second
            .unwrap_or(limit.third_party_events_per_cpu_second);
        run.fraction_of_third_party_limit = fraction(run.events_per_cpu_second, bare);
    }
    for (layer, figures) in &mut report.layers {
        let stages: &[&str] = match layer.as_str() {
            "bronze" => &["generate", "bronze_encode"],
            "silver" => &["json_decode", "silver_encode"],
            _ => &["gold_group_by"],
        };
        figures.limit_events_per_cpu_second = limit.of(stages);
        figures.fraction_of_limit = fraction(
            figures.events_per_cpu_second,
            figures.limit_events_per_cpu_second,
        );
    }
}

fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn run_lines(name: &str, run: &EndToEnd, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "{name}: {} events at {}/s in {:.1} s; {:.0} events/CPU-s ({:.0}% of the limit, \
         {:.0}% of the third-party limit); latency p50 {:.0} ms, p99 {:.0} ms",
        run.events,
        run.rate,
        run.wall_seconds,
        run.events_per_cpu_second,
        run.fraction_of_limit * 100.0,
        run.fraction_of_third_party_limit * 100.0,
        run.latency.p50_ms,
        run.latency.p99_ms,
    );
    if run.runs.len() > 1 {
        let cpus: Vec<String> = run
            .runs
            .iter()
            .map(|r| format!("{:.1}", r.cpu_seconds))
            .collect();
        let steal: Vec<String> = run
            .runs
            .iter()
            .map(|r| format!("{:.1}", r.steal_seconds))
            .collect();
        let _ = writeln!(
            out,
            "  runs: {} CPU-s (the least is reported); the machine's steal {} s",
            cpus.join(", "),
            steal.join(", ")
        );
    }
    let stages: Vec<String> = run
        .latency
        .stages
        .iter()
        .map(|(stage, p)| format!("{stage} {:.0} / {:.0} ms", p.p50_ms, p.p99_ms))
        .collect();
    if !stages.is_empty() {
        let _ = writeln!(
            out,
            "  latency p50 / p99 until committed in {}, gold {:.0} / {:.0} ms",
            stages.join(", "),
            run.latency.p50_ms,
            run.latency.p99_ms
        );
    }
    for (stage, breakdown) in &run.latency.breakdown {
        let mut shares: Vec<(&String, &f64)> = breakdown.shares.iter().collect();
        shares.sort_by(|a, b| b.1.total_cmp(a.1));
        let parts: Vec<String> = shares
            .iter()
            .map(|(part, share)| format!("{part} {:.0}%", *share * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "  {stage}: {:.0} ms on average, {}",
            breakdown.mean_ms,
            parts.join(", ")
        );
    }
    for (process, bytes) in &run.peak_rss_bytes {
        let cpu = run.process_cpu_seconds.get(process).copied().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "  {process}: {cpu:.1} CPU-s, peak RSS {:.0} MiB",
            *bytes as f64 / 1048576.0
        );
    }
    for (table, shape) in &run.commits {
        let _ = writeln!(
            out,
            "  {table}: {} commits, {:.1} files and {:.0} KiB per commit; {} files at the end, \
             {} at most, {} compactions",
            shape.commits,
            shape.files_per_commit,
            shape.bytes_per_commit / 1024.0,
            shape.files_at_end,
            shape.most_files,
            shape.compactions
        );
    }
    if let Some(reads) = &run.file_reads {
        let _ = writeln!(
            out,
            "  file reads (tables on {}): {} from memory, {} over the exchange ({:.1} MiB, {} refused, {} \
             failed), {} from storage ({:.1} MiB, {} ms decoding)",
            run.store.as_deref().unwrap_or("local"),
            reads.memory,
            reads.exchanged,
            reads.exchanged_bytes as f64 / 1048576.0,
            reads.rejected,
            reads.failed,
            reads.storage,
            reads.storage_bytes as f64 / 1048576.0,
            reads.decode_ms
        );
    }
    for query in &run.queries {
        let _ = writeln!(
            out,
            "  query {}: {} rows, p50 {:.1} ms, max {:.1} ms",
            query.name, query.rows, query.p50_ms, query.max_ms
        );
    }
}

fn summary(report: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "smelter bench {} ({} build, {} cores)",
        report.date, report.build, report.cores
    );
    if let Some(soak) = &report.soak {
        let _ = writeln!(
            out,
            "maintenance under load: {} events at {}/s on {}, {:.0} s, {:.1} CPU-s",
            soak.events, soak.rate, soak.store, soak.wall_seconds, soak.cpu_seconds
        );
        for (table, files) in &soak.max_files {
            let _ = writeln!(
                out,
                "  {table}: at most {files} files and {} checkpoint tombstones; snapshot open {:.0} ms in the first minute, {:.0} ms in the last; {} failed commit attempts",
                soak.max_checkpoint_tombstones
                    .get(table)
                    .copied()
                    .unwrap_or_default(),
                soak.open_ms_first_minute
                    .get(table)
                    .copied()
                    .unwrap_or_default(),
                soak.open_ms_last_minute
                    .get(table)
                    .copied()
                    .unwrap_or_default(),
                soak.failed_commit_attempts
                    .get(table)
                    .copied()
                    .unwrap_or_default()
            );
        }
        return out;
    }
    let _ = writeln!(
        out,
        "limit: {:.0} events/CPU-s (generator source){}",
        report.limit.events_per_cpu_second,
        report
            .limit
            .kafka_events_per_cpu_second
            .map_or(String::new(), |k| format!(", {k:.0} (Kafka source)"))
    );
    let _ = writeln!(
        out,
        "third-party limit: {:.0} events/CPU-s (generator source){}",
        report.limit.third_party_events_per_cpu_second,
        report
            .limit
            .third_party_kafka_events_per_cpu_second
            .map_or(String::new(), |k| format!(", {k:.0} (Kafka source)"))
    );
    for stage in &report.limit.stages {
        let name = stage.name.as_str();
        let counted =
            ["generate", "kafka_consume"].contains(&name) || limit::REFINING.contains(&name);
        let third_party = limit::THIRD_PARTY.contains(&name) && !counted;
        let _ = writeln!(
            out,
            "  {}: {:.2} CPU-s, {:.0} events/CPU-s{}",
            stage.name,
            stage.cpu_seconds,
            stage.events_per_cpu_second,
            if counted {
                ""
            } else if third_party {
                " (third-party limit only)"
            } else {
                " (for comparison, not counted)"
            }
        );
    }
    if let Some(run) = &report.in_process {
        run_lines("in process", run, &mut out);
    }
    if let (Some(run), Some(overhead)) = (
        &report.in_process_maintained,
        report.maintenance_cpu_overhead,
    ) {
        run_lines("in process, maintenance on", run, &mut out);
        if let Some(done) = &run.maintenance {
            let _ = writeln!(
                out,
                "  maintenance every {}: {} compactions of {} files, {} files vacuumed; {:+.1}% CPU against the run without",
                done.every,
                done.compactions,
                done.files_compacted,
                done.files_vacuumed,
                overhead * 100.0
            );
        }
    }
    for (layer, figures) in &report.layers {
        let _ = writeln!(
            out,
            "  layer {layer}: {:.2} CPU-s, {:.0} events/CPU-s ({:.0}% of its stages)",
            figures.cpu_seconds,
            figures.events_per_cpu_second,
            figures.fraction_of_limit * 100.0
        );
    }
    if report.bronze_mb_per_second > 0.0 {
        let _ = writeln!(out, "  bronze: {:.1} MB/s", report.bronze_mb_per_second);
    }
    if let Some(ops) = &report.table_ops {
        let _ = writeln!(
            out,
            "table operations after {} commits: snapshot open {:.1} ms with checkpoints, {:.1} ms without; compaction {:.1} CPU-s/GB, vacuum {:.2} CPU-s/GB",
            ops.commits,
            ops.open_ms_with_checkpoints,
            ops.open_ms_without_checkpoints,
            ops.compaction.cpu_seconds_per_gb,
            ops.vacuum.cpu_seconds_per_gb
        );
    }
    if let Some(files) = &report.files_source {
        let _ = writeln!(
            out,
            "files source, {} events in {} NDJSON files: Smelter {:.2} CPU-s ({:.0} events/CPU-s)",
            files.events,
            files.files,
            files.smelter.cpu_seconds,
            files.smelter.events_per_cpu_second
        );
        if let (Some(polars), Some(ratio)) = (&files.polars, files.smelter_to_polars) {
            let _ = writeln!(
                out,
                "  a polars script on the same files: {:.2} CPU-s ({:.0} events/CPU-s); Smelter {ratio:.2}x",
                polars.cpu_seconds, polars.events_per_cpu_second
            );
        }
    }
    if let Some(cdc) = &report.cdc {
        let _ = writeln!(
            out,
            "change data capture, {} changes over {} keys: SCD 1 {:.0} changes/CPU-s ({:.2}x a bare delta-rs MERGE at {:.0}), SCD 2 {:.0} ({:.2}x; {:.2}x a bare delta-rs SCD 2 MERGE at {:.0}); a merge commit {:.1} CPU-ms, an append {:.1}",
            cdc.changes,
            cdc.keys,
            cdc.scd1.changes_per_cpu_second,
            cdc.scd1_to_bare_merge,
            cdc.bare_delta_rs_merge.changes_per_cpu_second,
            cdc.scd2.changes_per_cpu_second,
            cdc.scd2_to_bare_merge,
            cdc.scd2_to_bare_scd2_merge,
            cdc.bare_delta_rs_scd2_merge.changes_per_cpu_second,
            cdc.scd1.cpu_ms_per_commit,
            cdc.append.cpu_ms_per_commit
        );
    }
    if let Some(cdc) = &report.cdc_latency {
        let _ = writeln!(
            out,
            "change to gold, {} changes/s over {} keys: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} gold refreshes ({} folded from the change feed, {:.0} rows and p50 {:.1} ms each; {} built; building it over the final table {:.1} ms, recomputing {:.1} ms), {:.1} CPU-s",
            cdc.rate,
            cdc.keys,
            cdc.latency.p50_ms,
            cdc.latency.p99_ms,
            cdc.latency.max_ms,
            cdc.gold_refreshes,
            cdc.gold_folded,
            cdc.gold_folded_rows_mean,
            cdc.gold_folded_refresh_ms.p50,
            cdc.gold_built,
            cdc.gold_build_ms,
            cdc.gold_recompute_ms,
            cdc.cpu_seconds
        );
    }
    if let Some(formats) = &report.formats {
        for (name, run) in [
            ("NDJSON", &formats.ndjson),
            ("CSV", &formats.csv),
            ("Parquet", &formats.parquet),
            ("Avro", &formats.avro),
        ] {
            let _ = writeln!(
                out,
                "{name} files, {} rows: {:.0} rows/CPU-s read as refine reads them, {:.0} by the bare reader ({:.2}x)",
                formats.records,
                run.smelter_rows_per_cpu_second,
                run.bare_rows_per_cpu_second,
                run.smelter_to_bare
            );
        }
    }
    if let Some(run) = &report.cluster {
        run_lines("cluster", run, &mut out);
    }
    out
}
