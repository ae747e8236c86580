//! The `users_cdc` generator: Debezium change events of a web shop's `users` table, a pure
//! function of (seed, partition, offset) like the clickstream ([`super::generator`]), so a
//! demo or benchmark has a change stream without a database.
//!
//! Partition `p` first reads its share of the table (`op: r`, users `p`, `p + P`, …), then
//! changes random users: 85% updates, 8% deletes, 7% creates. Each event's log position
//! (`source.lsn`) is its place in the interleaved stream; a `late_rate` share carry an
//! older position (up to 6,000 back: delivered late), which a merge must not let win.
//! Users are keyed `u-00042`, as the clickstream's `user.id`, so gold can join them.

use std::fmt::Write as _;

use smelter_common::spec::GeneratorSpec;

use super::generator::EventKind;

const TIERS: [&str; 4] = ["free", "plus", "pro", "enterprise"];
const COUNTRIES: [&str; 8] = ["DE", "US", "FR", "GB", "PL", "JP", "BR", "IN"];

/// How far back a late change's log position lies, at most.
const LATE_POSITIONS: u64 = 6_000;

/// The change event at (`partition`, `offset`): its key, JSON payload and event time (µs).
/// `rand(salt)` is the generator's random value for this offset.
pub fn render(
    spec: &GeneratorSpec,
    start_us: i64,
    partition: i32,
    offset: i64,
    kind: EventKind,
    rand: impl Fn(u64) -> u64,
) -> (String, Vec<u8>, i64) {
    let partitions = i64::from(spec.partitions.max(1));
    let users = i64::from(spec.users.max(1));
    let mut lsn = offset * partitions + i64::from(partition) + 1;
    let snapshot = offset * partitions + i64::from(partition) < users;
    let (user, op) = if snapshot {
        (offset * partitions + i64::from(partition), "r")
    } else {
        let user = (rand(20) % users as u64) as i64;
        let op = match rand(21) % 100 {
            0..=84 => "u",
            85..=92 => "d",
            _ => "c",
        };
        if (rand(22) % 1_000_000) as f64 / 1_000_000.0 < spec.late_rate {
            lsn = (lsn - 1 - (rand(23) % LATE_POSITIONS) as i64).max(1);
        }
        (user, op)
    };
    let ts_us = start_us + lsn * spec.step_ms as i64 * 1_000;
    let ts = chrono::DateTime::from_timestamp_micros(ts_us).unwrap_or_default();
    let updated_at = ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let tier = TIERS[(rand(24) % TIERS.len() as u64) as usize];
    let country = COUNTRIES[(user as u64 % COUNTRIES.len() as u64) as usize];
    let row = format!(
        r#"{{"user_id":"u-{user:05}","email":"user{user}@shop.example","tier":"{tier}","country":"{country}","updated_at":"{updated_at}"}}"#
    );
    let (before, after) = if op == "d" {
        (row.as_str(), "null")
    } else {
        ("null", row.as_str())
    };
    let mut json = String::with_capacity(512);
    let _ = write!(
        json,
        r#"{{"before":{before},"after":{after},"source":{{"version":"2.5.4.Final","connector":"postgresql","name":"shop","ts_ms":{ms},"snapshot":"{snapshot}","db":"shop","schema":"public","table":"users","lsn":{lsn}}},"op":"{op}","ts_ms":{ms}}}"#,
        ms = ts_us / 1_000,
    );
    let mut payload = json.into_bytes();
    if kind == EventKind::Malformed {
        payload.truncate(payload.len() / 2);
    }
    (format!("u-{user:05}"), payload, ts_us)
}
