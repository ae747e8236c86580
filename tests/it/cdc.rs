//! Change data capture end to end: a seeded stream of 100k Debezium change events over
//! 10k keys (snapshot reads, creates, updates, deletes; 5% late by up to a minute, 1%
//! delivered twice; some wrapped in `{schema, payload}`) goes through Kafka (tansu) into a
//! merged silver table with the change data feed, and a gold table over it. A worker is
//! SIGKILLed mid-stream. Then:
//!
//! * silver holds exactly the oracle's final row per key (late and repeated changes never
//!   won, deleted keys never came back), and its SCD type 2 twin exactly the oracle's
//!   history of every key (late changes landed in the middle of it);
//! * gold equals the same aggregate over the oracle's final state, and a gold table joining
//!   the current rows with the history (`joins:`) the same join over the oracle's;
//! * the change data feed, read by delta-rs's own reader and replayed commit by commit,
//!   rebuilds exactly the table — inserts, update pre/post-images and deletes agree;
//! * bad envelopes (no `op`, a NULL key, a log position of the wrong type, a row whose
//!   `updated_at` is not a timestamp) are each quarantined with their reason; a delete of
//!   a key never seen leaves a tombstone;
//! * every table passes `smelter verify`.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;
use smelter_tests::cdc::{ChangeStream, change_stream, produce};
use smelter_tests::kafka::{create_topic, unique_topic, wait_caught_up};
use smelter_tests::oracle::{optional_strings, sql, verified};
use smelter_tests::processes;
use smelter_tests::services::Tansu;

const CHANGES: usize = 100_000;
const KEYS: i64 = 10_000;
const PARTITIONS: i32 = 2;

fn pipeline(brokers: &str, topic: &str) -> String {
    format!(
        r#"pipeline: users
sources:
  users_cdc:
    kafka: {{ brokers: "{brokers}", topic: {topic} }}
tables:
  bronze.users_cdc: {{ from: users_cdc }}
  silver.users:
    from: bronze.users_cdc
    parse:
      format: debezium
      schema: {{ id: long, email: string, tier: string, updated_at: timestamp }}
    merge: {{ keys: [id], sequence_by: _lsn }}
    change_data_feed: true
  silver.users_history:
    from: bronze.users_cdc
    parse:
      format: debezium
      schema: {{ id: long, email: string, tier: string, updated_at: timestamp }}
    merge: {{ keys: [id], sequence_by: _lsn, scd: 2 }}
  gold.users_by_tier:
    from: silver.users
    sql: SELECT tier, count(*) AS users FROM silver.users GROUP BY tier
  gold.versions_by_tier:
    from: silver.users
    joins: [silver.users_history]
    sql: |
      SELECT u.tier, count(*) AS versions
      FROM silver.users u JOIN silver.users_history h ON u.id = h.id
      GROUP BY u.tier
"#
    )
}

/// Bad events, each with the reason its quarantine row must give.
fn bad_events() -> Vec<(Vec<u8>, &'static str, &'static str)> {
    vec![
        (
            br#"{"before":null,"after":{"id":1,"tier":"pro"},"source":{"lsn":5}}"#.to_vec(),
            "_envelope",
            "the change event has no `op`",
        ),
        (
            br#"{"op":"c","before":null,"after":{"id":null,"tier":"pro"},"source":{"lsn":7}}"#
                .to_vec(),
            "_merge",
            "the key column `id` is NULL",
        ),
        (
            br#"{"op":"u","before":null,"after":{"id":3,"tier":"pro"},"source":{"lsn":"0/16B3748"}}"#
                .to_vec(),
            "_envelope",
            "`source.lsn` is \"0/16B3748\", not an integer",
        ),
        (
            br#"{"op":"u","before":null,"after":{"id":4,"tier":"pro","updated_at":"yesterday"},"source":{"lsn":9}}"#
                .to_vec(),
            "_schema",
            "field `updated_at`: expected an RFC 3339 timestamp, got string \"yesterday\"",
        ),
    ]
}

/// A key the stream never creates, deleted once.
const NEVER_SEEN: i64 = 99_999_999;

fn records(
    stream: &ChangeStream,
    deliveries: std::ops::Range<usize>,
) -> Vec<(i32, String, Vec<u8>)> {
    deliveries
        .map(|d| {
            let change = &stream.changes[stream.deliveries[d]];
            let partition = (change.id % PARTITIONS as i64) as i32;
            (partition, change.id.to_string(), stream.envelope(d))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_changes_merge_exactly_through_a_killed_worker() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let topic = unique_topic("users-cdc");
    create_topic(&tansu.brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let stream = change_stream(20_261_206, CHANGES, KEYS);
    let chunks = 25;
    let size = stream.deliveries.len().div_ceil(chunks);
    // The stream exercises what it must: changes that only the remembered delete of
    // their key keeps out of the table.
    let stale = stream.stale_after_final_delete(size);
    assert!(stale > 0, "no change arrives after its key's final delete");
    let settings = processes::quick_settings("2000", "400", &[]);
    let mut cluster = processes::start_on(1, None, &settings);
    cluster.add_worker().unwrap();
    cluster.add_worker().unwrap();
    let text = pipeline(&tansu.brokers, &topic);
    cluster.apply(&text, "users.yaml").await.unwrap();
    let spec = smelter_common::spec::PipelineSpec::parse(&text, "users.yaml").unwrap();
    let config = smelter_common::config::SmelterConfig::load(None, cluster.env().to_vec()).unwrap();
    let tables = smelter_lake::TableStore::from_config(&config.storage).unwrap();

    // In 25 chunks, each merged before the next is sent (so that late changes and
    // repeats reach a table that already holds newer rows), but for the eleventh: a worker is
    // SIGKILLed while it is being ingested and merged.
    let mut last = BTreeMap::new();
    for chunk in 0..chunks {
        let range = chunk * size..((chunk + 1) * size).min(stream.deliveries.len());
        let mut batch = records(&stream, range);
        if chunk == chunks - 1 {
            // The bad events and a delete of a key never seen.
            for (payload, _, _) in bad_events() {
                batch.push((0, "bad".into(), payload));
            }
            let delete = format!(
                r#"{{"op":"d","before":{{"id":{NEVER_SEEN}}},"after":null,"source":{{"lsn":{}}}}}"#,
                CHANGES * 10
            );
            batch.push((1, NEVER_SEEN.to_string(), delete.into_bytes()));
        }
        for (partition, offset) in produce(&tansu.brokers, &topic, &batch).await.unwrap() {
            last.insert(partition, offset);
        }
        if chunk == 10 {
            let killed = cluster.kill_worker(0).unwrap();
            assert_eq!(killed.signal(), Some(9), "the worker died of the SIGKILL");
            continue;
        }
        wait_caught_up(&tables, &spec, &topic, &last, Duration::from_secs(180))
            .await
            .unwrap();
    }
    let merges = processes::table_version(&tables, "silver.users").await;
    assert!(
        merges >= chunks as i64,
        "silver merged in one pass per chunk at least: {merges}"
    );

    // Silver: exactly the oracle's final row per key.
    let expected = stream.final_state();
    let batches = sql(
        &tables,
        "SELECT id, tier, email, CAST(updated_at AS BIGINT) AS updated_at, _lsn FROM silver.users ORDER BY id",
    )
    .await
    .unwrap();
    let mut found = BTreeMap::new();
    for batch in &batches {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let tiers = optional_strings(batch.column(1));
        let emails = optional_strings(batch.column(2));
        let lsns = batch.column(4).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let previous = found.insert(
                ids.value(i),
                (tiers[i].clone(), emails[i].clone(), lsns.value(i)),
            );
            assert!(previous.is_none(), "key {} twice in silver", ids.value(i));
        }
    }
    let wanted: BTreeMap<i64, (Option<String>, Option<String>, i64)> = expected
        .iter()
        .map(|(id, c)| (*id, (Some(c.tier.clone()), Some(c.email.clone()), c.lsn)))
        .collect();
    let wrong: Vec<_> = wanted
        .iter()
        .filter(|(id, row)| found.get(id) != Some(row))
        .take(5)
        .map(|(id, row)| (id, row, found.get(id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "silver differs from the oracle: {wrong:?}"
    );
    assert_eq!(
        found.len(),
        wanted.len(),
        "silver holds keys the oracle deleted"
    );
    assert!(stream.deleted_keys() > 100, "the stream deleted keys");
    eprintln!(
        "cdc: {} deliveries of {} changes ({stale} after their key's final delete); silver holds {} keys, {} deleted; silver at version {}",
        stream.deliveries.len(),
        stream.changes.len(),
        found.len(),
        stream.deleted_keys(),
        processes::table_version(&tables, "silver.users").await
    );

    // The history table: exactly the oracle's versions of every key.
    let batches = sql(
        &tables,
        "SELECT id, __start_at, __end_at, __current, tier FROM silver.users_history",
    )
    .await
    .unwrap();
    let mut versions = BTreeMap::new();
    for batch in &batches {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let starts = batch.column(1).as_primitive::<Int64Type>();
        let ends = batch.column(2).as_primitive::<Int64Type>();
        let current = batch.column(3).as_boolean();
        let tiers = optional_strings(batch.column(4));
        for (i, tier) in tiers.into_iter().enumerate() {
            let end = ends.is_valid(i).then(|| ends.value(i));
            assert_eq!(
                current.value(i),
                end.is_none(),
                "__current of key {}",
                ids.value(i)
            );
            let previous = versions.insert(
                (ids.value(i), starts.value(i)),
                (end, tier.unwrap_or_default()),
            );
            assert!(
                previous.is_none(),
                "a version of key {} twice",
                ids.value(i)
            );
        }
    }
    let history = stream.history();
    let wrong: Vec<_> = history
        .iter()
        .filter(|(at, version)| versions.get(at) != Some(version))
        .take(5)
        .map(|(at, version)| (at, version, versions.get(at)))
        .collect();
    assert!(
        wrong.is_empty(),
        "the history differs from the oracle's: {wrong:?}"
    );
    assert_eq!(
        versions.len(),
        history.len(),
        "the history holds versions the oracle has not"
    );

    // Gold: the aggregate over the oracle's final state.
    let mut by_tier: BTreeMap<String, i64> = BTreeMap::new();
    for change in expected.values() {
        *by_tier.entry(change.tier.clone()).or_default() += 1;
    }
    let batches = sql(&tables, "SELECT tier, users FROM gold.users_by_tier")
        .await
        .unwrap();
    let mut gold = BTreeMap::new();
    for batch in &batches {
        let tiers = optional_strings(batch.column(0));
        let users = batch.column(1).as_primitive::<Int64Type>();
        for (tier, users) in tiers.into_iter().zip(users.values()) {
            gold.insert(tier.unwrap_or_default(), *users);
        }
    }
    assert_eq!(
        gold, by_tier,
        "gold differs from the aggregate of the oracle"
    );
    // ... kept by following silver's change data: after the first build (and one per
    // restart of the task), refreshes folded the merges' inserts and retracted their
    // pre-images and deletes instead of reading the whole table again.
    let refreshes = gold_refreshes(&tables, "gold.users_by_tier");
    let count = |how: &str| refreshes.iter().filter(|(h, _)| h == how).count();
    let folded_rows: u64 = refreshes
        .iter()
        .filter(|(h, _)| h == "folded")
        .map(|(_, rows)| rows)
        .sum();
    assert!(
        count("folded") >= 3 && count("folded") > count("built") && folded_rows > 0,
        "gold over the merged table should fold its change data: {refreshes:?}"
    );
    assert_eq!(count("recomputed"), 0, "{refreshes:?}");

    // The join of both: each current user's versions, by its current tier.
    let mut versions_by_tier: BTreeMap<String, i64> = BTreeMap::new();
    for (id, _) in history.keys() {
        if let Some(current) = expected.get(id) {
            *versions_by_tier.entry(current.tier.clone()).or_default() += 1;
        }
    }
    let batches = sql(&tables, "SELECT tier, versions FROM gold.versions_by_tier")
        .await
        .unwrap();
    let mut joined = BTreeMap::new();
    for batch in &batches {
        let tiers = optional_strings(batch.column(0));
        let counts = batch.column(1).as_primitive::<Int64Type>();
        for (tier, count) in tiers.into_iter().zip(counts.values()) {
            joined.insert(tier.unwrap_or_default(), *count);
        }
    }
    assert_eq!(
        joined, versions_by_tier,
        "the joining gold table differs from the oracle"
    );

    // The change data feed, read by delta-rs and replayed, rebuilds the table.
    let replayed = replay_change_feed(&tables).await;
    let table_now: BTreeMap<i64, String> = found
        .iter()
        .map(|(id, (tier, _, _))| (*id, tier.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        replayed, table_now,
        "the change feed does not rebuild the table"
    );

    // Bad events: quarantined with their reasons; the unseen key's delete is a tombstone.
    let batches = sql(
        &tables,
        "SELECT rule, reason FROM silver.users_quarantine ORDER BY reason",
    )
    .await
    .unwrap();
    let mut quarantined = Vec::new();
    for batch in &batches {
        let rules = optional_strings(batch.column(0));
        let reasons = optional_strings(batch.column(1));
        for i in 0..batch.num_rows() {
            quarantined.push((rules[i].clone().unwrap(), reasons[i].clone().unwrap()));
        }
    }
    let mut wanted: Vec<(String, String)> = bad_events()
        .iter()
        .map(|(_, rule, reason)| (rule.to_string(), reason.to_string()))
        .collect();
    wanted.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(quarantined, wanted);
    let batches = sql(
        &tables,
        &format!("SELECT count(*) FROM silver.users_tombstones WHERE id = {NEVER_SEEN}"),
    )
    .await
    .unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        1,
        "the delete of a key never seen is remembered"
    );

    for table in [
        "bronze.users_cdc",
        "silver.users",
        "silver.users_quarantine",
        "silver.users_tombstones",
        "silver.users_history",
        "silver.users_history_tombstones",
        "gold.users_by_tier",
        "gold.versions_by_tier",
    ] {
        verified(&tables, table).await.unwrap();
    }
}

/// The table's change data feed from version 0, read with delta-rs's reader and applied
/// commit by commit: deletes and pre-images take a key out, inserts and post-images put it
/// in (id → tier).
async fn replay_change_feed(tables: &smelter_lake::TableStore) -> BTreeMap<i64, String> {
    let table = tables.open("silver.users").await.unwrap();
    let ctx = SessionContext::new();
    let provider = deltalake::delta_datafusion::DeltaCdfTableProvider::try_new(
        table.scan_cdf().with_starting_version(0),
    )
    .unwrap();
    let plan = datafusion::catalog::TableProvider::scan(&provider, &ctx.state(), None, &[], None)
        .await
        .unwrap();
    let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
        .await
        .unwrap();
    // (version, order within the version: out before in, id, tier, change)
    let mut changes = Vec::new();
    for batch in &batches {
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let tiers = optional_strings(batch.column_by_name("tier").unwrap());
        let kinds = optional_strings(batch.column_by_name("_change_type").unwrap());
        let versions = arrow::compute::cast(
            batch.column_by_name("_commit_version").unwrap(),
            &arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        let versions = versions.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let kind = kinds[i].clone().unwrap();
            let out = matches!(kind.as_str(), "delete" | "update_preimage");
            changes.push((
                versions.value(i),
                !out,
                ids.value(i),
                tiers[i].clone().unwrap_or_default(),
                kind,
            ));
            assert!(!ids.is_null(i));
        }
    }
    changes.sort();
    let mut state = BTreeMap::new();
    for (version, is_in, id, tier, kind) in changes {
        if is_in {
            let previous = state.insert(id, tier);
            assert!(
                previous.is_none(),
                "version {version}: {kind} of key {id}, which the feed already holds"
            );
        } else {
            assert!(
                state.remove(&id).is_some(),
                "version {version}: {kind} of key {id}, which the feed does not hold"
            );
        }
    }
    state
}

/// How each refresh of a gold table was computed, as its commits record it
/// (`smelter.goldRefresh`): the kind and the upstream rows read.
fn gold_refreshes(tables: &smelter_lake::TableStore, table: &str) -> Vec<(String, u64)> {
    let log = tables.path(table).join("_delta_log");
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for entry in entries {
        for line in std::fs::read_to_string(&entry).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            let refresh = &action["commitInfo"][smelter_worker::gold::REFRESH_KEY];
            if let Some(how) = refresh["how"].as_str() {
                out.push((
                    how.to_string(),
                    refresh["upstreamRows"].as_u64().unwrap_or(0),
                ));
            }
        }
    }
    out
}
