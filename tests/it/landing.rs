//! Files landing on S3 at scale, Auto Loader style: thousands of small files and a few
//! large ones in NDJSON.gz, CSV, Parquet and Avro on moto, read by three worker processes
//! (three partitions of work per source) with one of them SIGKILLed mid-run. Every record
//! of every file is in bronze once and in silver once; every file is recorded as read to
//! its end. The cost of finding new files is measured as the prefix grows: a listing after
//! the cursor returns only the new names, whatever the prefix holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use smelter_lake::{AppId, TableStore};
use smelter_tests::oracle::{exact, positions, sql};
use smelter_tests::processes::{quick_settings, s3_settings, start};
use smelter_tests::services::{Etcd, Moto};
use smelter_worker::source::files::FilesReader;
use smelter_worker::source::landing::Landing;
use smelter_worker::source::{CommittedPositions, SourceReader};
use tokio::time::Instant;

/// Small files per format (NDJSON, each other format), and the large ones (rows each)
/// every format also gets. `SMELTER_LANDING_FILES=20000` lands 20,000 small files in all
/// (17,000 NDJSON): the scale run BENCHMARKS.md reports; the default keeps the suite quick.
fn small_files() -> (usize, usize) {
    match std::env::var("SMELTER_LANDING_FILES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(total) if total >= 4_000 => (total - 3_000, 1_000),
        _ => (1_500, 300),
    }
}
const LARGE: usize = 5;
const LARGE_ROWS: usize = 4_000;
const FORMATS: [&str; 4] = ["ndjson", "csv", "parquet", "avro"];

/// What landed in one format's prefix: file name -> its rows.
type Files = BTreeMap<String, Vec<(String, i64)>>;

/// The rows of one file: `(id, n)`.
fn rows(format: &str, name: &str, count: usize) -> Vec<(String, i64)> {
    (0..count)
        .map(|i| (format!("{format}/{name}#{i}"), i as i64))
        .collect()
}

fn encode(format: &str, rows: &[(String, i64)]) -> Vec<u8> {
    let batch = || {
        RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.0.as_str()),
                )) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef,
            ),
        ])
        .unwrap()
    };
    match format {
        "ndjson" => {
            use std::io::Write as _;
            let text: String = rows
                .iter()
                .map(|(id, n)| format!("{{\"id\":\"{id}\",\"n\":{n}}}\n"))
                .collect();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap()
        }
        "csv" => {
            let mut text = String::from("id,n\n");
            for (id, n) in rows {
                text.push_str(&format!("{id},{n}\n"));
            }
            text.into_bytes()
        }
        "parquet" => {
            let batch = batch();
            let mut out = Vec::new();
            let mut writer =
                deltalake::parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None)
                    .unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
            out
        }
        "avro" => {
            let batch = batch();
            let mut writer =
                arrow_avro::writer::AvroWriter::new(Vec::new(), batch.schema().as_ref().clone())
                    .unwrap();
            writer.write(&batch).unwrap();
            writer.finish().unwrap();
            writer.into_inner()
        }
        other => panic!("no format {other}"),
    }
}

fn suffix(format: &str) -> &'static str {
    match format {
        "ndjson" => ".ndjson.gz",
        "csv" => ".csv",
        "parquet" => ".parquet",
        _ => ".avro",
    }
}

/// Puts `files` (name under `prefix`, body) into the bucket, 64 at a time.
async fn put_all(store: &Arc<dyn ObjectStore>, prefix: &str, files: Vec<(String, Vec<u8>)>) {
    futures::stream::iter(files)
        .map(|(name, body)| {
            let store = store.clone();
            let path = format!("{prefix}/{name}");
            async move { store.put(&path.into(), body.into()).await.unwrap() }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

/// A source nothing was read from yet.
struct Nothing;

#[async_trait]
impl CommittedPositions for Nothing {
    async fn committed(
        &self,
        _topic: &str,
        _partition: i32,
    ) -> smelter_worker::Result<Option<i64>> {
        Ok(None)
    }

    async fn topic_states(
        &self,
        topics: &[String],
    ) -> smelter_worker::Result<Vec<smelter_worker::source::TopicState>> {
        Ok(vec![Default::default(); topics.len()])
    }
}

/// What finding a new file costs with `files` in the prefix.
struct ListingCost {
    files: usize,
    /// Names the reader's listing after its cursor returned (the new file alone).
    names_after_cursor: u64,
    /// Wall time of one listing after the cursor, and of one full listing (median of 5).
    after_cursor: Duration,
    full: Duration,
}

/// Reads everything `reader` finds; then lands one more file (named after all others),
/// checks that the reader's next listing returns it alone, and times both kinds of
/// listing on the store.
async fn listing_cost(
    reader: &mut FilesReader,
    store: &Arc<dyn ObjectStore>,
    options: &std::collections::HashMap<String, String>,
    extra: &str,
) -> ListingCost {
    while !reader
        .poll(100_000, Duration::from_millis(10))
        .await
        .unwrap()
        .is_empty()
    {}
    put_all(
        store,
        "ndjson",
        vec![(
            extra.to_string(),
            encode("ndjson", &rows("ndjson", extra, 1)),
        )],
    )
    .await;
    let before = reader.stats();
    // Longer than the pause a reader takes after listings that found nothing.
    let found = reader.poll(100_000, Duration::from_secs(8)).await.unwrap();
    let after = reader.stats();
    assert_eq!(found.len(), 1, "the new file's record");
    assert_eq!(after.listings - before.listings, 1, "one listing found it");
    assert_eq!(
        after.full_listings, before.full_listings,
        "an incremental listing"
    );
    let landing = Landing::open("ndjson", "s3://landing/ndjson", options)
        .unwrap()
        .unwrap();
    let median = async |after: Option<&str>| {
        let mut times = Vec::new();
        let mut files = 0;
        for _ in 0..5 {
            let started = Instant::now();
            files = landing.list(after).await.unwrap().len();
            times.push(started.elapsed());
        }
        times.sort();
        (files, times[2])
    };
    let (files, full) = median(None).await;
    let (none_after, after_cursor) = median(Some(extra)).await;
    assert_eq!(none_after, 0, "nothing lands after the newest name");
    ListingCost {
        files,
        names_after_cursor: after.names_listed - before.names_listed,
        after_cursor,
        full,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_files_in_four_formats_on_s3_through_a_killed_worker() {
    let (Some(etcd), Some(moto)) = (Etcd::start().await, Moto::start().await) else {
        return;
    };
    moto.create_bucket("lake");
    moto.create_bucket("landing");
    let settings: Vec<(&str, &str)> = quick_settings(
        "3000",
        "500",
        &[("SMELTER__WORKER__BATCH_MAX_RECORDS", "20000")],
    )
    .into_iter()
    .chain(s3_settings(&moto.endpoint))
    .collect();
    let config = smelter_common::config::SmelterConfig::load(
        None,
        settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let options = config.storage.s3_options();
    let store =
        smelter_lake::storage::s3_store(&url::Url::parse("s3://landing/").unwrap(), &options)
            .unwrap();

    // What lands, per format: file name -> rows.
    let mut landed: BTreeMap<&str, Files> = BTreeMap::new();
    let started = Instant::now();
    let (ndjson_small, other_small) = small_files();
    for format in FORMATS {
        let small = if format == "ndjson" {
            ndjson_small
        } else {
            other_small
        };
        let mut files = BTreeMap::new();
        for i in 0..small {
            let day = 1 + i % 28;
            let name = format!("2026/11/{day:02}/small-{i:05}{}", suffix(format));
            let count = 1 + i % 3;
            files.insert(name.clone(), rows(format, &name, count));
        }
        for i in 0..LARGE {
            let name = format!("2026/11/{:02}/large-{i}{}", 1 + i, suffix(format));
            files.insert(name.clone(), rows(format, &name, LARGE_ROWS));
        }
        landed.insert(format, files);
    }
    // The ndjson prefix lands in two steps, to measure listing at 1,000 files and at all.
    let first_ndjson: Vec<String> = landed["ndjson"].keys().take(1_000).cloned().collect();
    put_all(
        &store,
        "ndjson",
        first_ndjson
            .iter()
            .map(|n| (n.clone(), encode("ndjson", &landed["ndjson"][n])))
            .collect(),
    )
    .await;
    let files_spec = |format: &str| smelter_common::spec::FilesSpec {
        pattern: Some("2026/**".into()),
        partitions: 3,
        ..smelter_common::spec::FilesSpec::at(format!("s3://landing/{format}"))
    };
    let mut probe = FilesReader::new(
        "ndjson",
        &files_spec("ndjson"),
        &[0, 1, 2],
        Arc::new(Nothing),
        &options,
        1 << 20,
    )
    .unwrap();
    let at_1k = listing_cost(&mut probe, &store, &options, "2026/12/01/probe-a.ndjson.gz").await;
    for format in FORMATS {
        let files: Vec<(String, Vec<u8>)> = landed[format]
            .iter()
            .filter(|(n, _)| format != "ndjson" || !first_ndjson.contains(n))
            .map(|(n, r)| (n.clone(), encode(format, r)))
            .collect();
        put_all(&store, format, files).await;
    }
    let at_all = listing_cost(&mut probe, &store, &options, "2026/12/02/probe-b.ndjson.gz").await;
    for cost in [&at_1k, &at_all] {
        eprintln!(
            "with {} files: a listing after the cursor returned {} name(s) and takes {:?}; a full listing {:?}",
            cost.files, cost.names_after_cursor, cost.after_cursor, cost.full
        );
    }
    eprintln!(
        "landed {} files in {:?}",
        landed.values().map(BTreeMap::len).sum::<usize>(),
        started.elapsed()
    );
    assert_eq!(
        (at_1k.names_after_cursor, at_all.names_after_cursor),
        (1, 1),
        "a listing after the cursor returns only the new name"
    );
    assert!(at_all.files > at_1k.files);
    for (format, name) in [
        ("ndjson", "2026/12/01/probe-a.ndjson.gz"),
        ("ndjson", "2026/12/02/probe-b.ndjson.gz"),
    ] {
        landed
            .get_mut(format)
            .unwrap()
            .insert(name.to_string(), rows(format, name, 1));
    }

    // The pipeline: a bronze and a silver table per format, three workers.
    let mut pipeline = String::from("pipeline: landing\nsources:\n");
    for format in FORMATS {
        let csv = if format == "csv" {
            ", format: csv"
        } else if format == "ndjson" {
            ""
        } else {
            &format!(", format: {format}")
        };
        pipeline.push_str(&format!(
            "  {format}: {{ files: {{ path: \"s3://landing/{format}\", pattern: \"2026/**\", partitions: 3{csv} }} }}\n"
        ));
    }
    pipeline.push_str("tables:\n");
    for format in FORMATS {
        let parse = if format == "csv" { "csv" } else { "json" };
        pipeline.push_str(&format!(
            "  bronze.{format}: {{ from: {format} }}\n  silver.{format}:\n    from: bronze.{format}\n    parse: {{ format: {parse}, schema: {{ id: string, n: long }} }}\n"
        ));
    }
    let mut cluster = start(1, &etcd.endpoint, &settings);
    for _ in 0..3 {
        cluster.add_worker().unwrap();
    }
    cluster.apply(&pipeline, "landing.yaml").await.unwrap();
    let spec = smelter_common::spec::PipelineSpec::parse(&pipeline, "landing.yaml").unwrap();
    let tables = TableStore::from_config(&config.storage).unwrap();

    // Kill a worker once a fifth of the ndjson files is in bronze.
    let total: usize = landed.values().flat_map(|f| f.values()).map(Vec::len).sum();
    smelter_harness::wait_until_every(
        Duration::from_secs(1),
        Duration::from_secs(600),
        "a fifth of the records in bronze",
        async || {
            let mut n = 0;
            for format in FORMATS {
                if let Ok(table) = tables.open(&format!("bronze.{format}")).await {
                    n += smelter_lake::log::row_count(&table);
                }
            }
            n as usize >= total / 5
        },
    )
    .await
    .unwrap();
    let status = cluster.kill_worker(0).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "SIGKILLed"
    );

    let mut drain = smelter_worker::tasks::drained::DrainWatch::new(tables.clone(), spec.clone());
    let took = Instant::now();
    // A check lists every prefix; on moto (one Python thread) checking often would slow
    // the workers it waits for.
    smelter_harness::wait_until_every(
        Duration::from_secs(10),
        Duration::from_secs(1_800),
        "the pipeline draining",
        async || {
            // `Ok(false)` is an answer, not the end: only `true` is.
            drain
                .drained()
                .await
                .map_err(|e| e.to_string())?
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await
    .unwrap();
    eprintln!(
        "drained {total} records of {} files {:?} after the kill",
        landed.values().map(BTreeMap::len).sum::<usize>(),
        took.elapsed()
    );

    for format in FORMATS {
        let files = &landed[format];
        let expected: BTreeSet<(String, i32, i64)> = files
            .iter()
            .flat_map(|(name, rows)| (0..rows.len() as i64).map(move |i| (name.clone(), 0, i)))
            .collect();
        let bronze = positions(
            &sql(
                &tables,
                &format!("SELECT topic, \"partition\", \"offset\" FROM bronze.{format}"),
            )
            .await
            .unwrap(),
        );
        if let Err(e) = exact(&format!("bronze.{format}"), bronze, &expected) {
            let table = tables.open(&format!("bronze.{format}")).await.unwrap();
            let txns = smelter_lake::txns::all_txns(&table, &format!("bronze.{format}"))
                .await
                .unwrap();
            let name = files
                .keys()
                .find(|n| !txns.contains_key(&AppId::source_end("landing", n).to_string()));
            eprintln!(
                "version {:?}, {} txns, first file without an end: {name:?}",
                table.version(),
                txns.len()
            );
            if let Some(name) = name {
                eprintln!(
                    "its position {:?}",
                    txns.get(&AppId::source("landing", name, 0).to_string())
                );
                eprintln!(
                    "kernel: end {:?}",
                    smelter_lake::log::txn_version(&table, &AppId::source_end("landing", name))
                        .await
                );
            }
            panic!("{e}");
        }
        let silver: Vec<String> = smelter_tests::oracle::rows(
            &sql(
                &tables,
                &format!("SELECT id, n FROM silver.{format} ORDER BY id"),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        let mut want: Vec<String> = files
            .values()
            .flatten()
            .map(|(id, n)| format!("{id} | {n}"))
            .collect();
        want.sort();
        assert_eq!(silver.len(), want.len(), "silver.{format} rows");
        assert!(silver == want, "silver.{format} differs from what landed");
        let table = tables.open(&format!("bronze.{format}")).await.unwrap();
        let txns = smelter_lake::txns::all_txns(&table, &format!("bronze.{format}"))
            .await
            .unwrap();
        for (name, rows) in files {
            let end = txns
                .get(&AppId::source_end("landing", name).to_string())
                .copied();
            assert_eq!(end, Some(rows.len() as i64 - 1), "{format} {name}");
        }
    }
}
