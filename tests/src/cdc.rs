//! A seeded change stream of a `users` table, as Debezium's PostgreSQL connector would
//! publish it, and its oracle — written from Debezium's documented envelope, sharing no
//! code with the pipeline's parser or merge.
//!
//! The stream: a snapshot read (`r`) of half the keys, then creates, updates and deletes
//! of random keys (a deleted key may be created again), each with a strictly increasing
//! log position (`source.lsn`) and `updated_at`. Deliveries are in log order except that
//! 5% arrive late (by up to 6,000 changes, a minute of `updated_at`) and 1% are delivered
//! twice. Deletes carry the key alone in `before` half of the time (PostgreSQL's default
//! replica identity), the whole row otherwise; one event in ten comes wrapped in
//! `{schema, payload}`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};

use crate::TestResult;

/// The tiers a user moves between.
pub const TIERS: [&str; 4] = ["free", "plus", "pro", "enterprise"];

/// `updated_at` of log position 0, in epoch milliseconds (2026-11-01T00:00:00Z).
const EPOCH_MS: i64 = 1_793_491_200_000;

/// One change of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The row's key.
    pub id: i64,
    /// The log position; strictly increasing over the stream.
    pub lsn: i64,
    /// `r`, `c`, `u` or `d`.
    pub op: char,
    /// The row after the change (before it, for a delete).
    pub tier: String,
    /// The row's e-mail.
    pub email: String,
}

impl Change {
    /// `updated_at` of the row, epoch milliseconds.
    pub fn updated_at_ms(&self) -> i64 {
        EPOCH_MS + self.lsn * 10
    }
}

/// splitmix64: small, seeded, and independent of any generator under test.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(10_000) < percent * 100
    }
}

/// A change stream and the order its changes are delivered in.
pub struct ChangeStream {
    /// Every change, in log order (`changes[i].lsn == i + 1`).
    pub changes: Vec<Change>,
    /// Indices into `changes`, in delivery order (late and repeated deliveries included).
    pub deliveries: Vec<usize>,
    /// One in ten events wrapped in `{schema, payload}` (by delivery index).
    wrapped: Vec<bool>,
    /// Deletes whose `before` holds the key alone (by change index).
    key_only: Vec<bool>,
}

/// `count` changes over `keys` keys, deterministic by `seed`.
pub fn change_stream(seed: u64, count: usize, keys: i64) -> ChangeStream {
    let mut random = Random(seed);
    let mut live: BTreeMap<i64, bool> = BTreeMap::new();
    let mut changes = Vec::with_capacity(count);
    let snapshot = (keys / 2).min(count as i64 / 4);
    for i in 0..count {
        let lsn = i as i64 + 1;
        let (id, op) = if (i as i64) < snapshot {
            (i as i64, 'r')
        } else {
            let id = random.below(keys as u64) as i64;
            let op = match live.get(&id) {
                Some(true) if random.chance(15) => 'd',
                Some(true) => 'u',
                _ => 'c',
            };
            (id, op)
        };
        live.insert(id, op != 'd');
        let tier = TIERS[random.below(TIERS.len() as u64) as usize].to_string();
        changes.push(Change {
            id,
            lsn,
            op,
            tier,
            email: format!("user{id}.{lsn}@example.com"),
        });
    }
    // Delivery positions: most at their own index, 5% late, 1% once more later.
    let mut positions: Vec<(u64, usize)> = Vec::with_capacity(count + count / 50);
    for i in 0..count {
        let late = if random.chance(5) {
            1 + random.below(6_000)
        } else {
            0
        };
        positions.push((i as u64 * 2 + late * 2, i));
        if random.chance(1) {
            positions.push((i as u64 * 2 + 1 + random.below(3_000) * 2, i));
        }
    }
    positions.sort();
    let deliveries: Vec<usize> = positions.into_iter().map(|(_, i)| i).collect();
    let wrapped = (0..deliveries.len()).map(|_| random.chance(10)).collect();
    let key_only = (0..count).map(|_| random.chance(50)).collect();
    ChangeStream {
        changes,
        deliveries,
        wrapped,
        key_only,
    }
}

impl ChangeStream {
    /// The Debezium JSON value of delivery `d`.
    pub fn envelope(&self, d: usize) -> Vec<u8> {
        let change = &self.changes[self.deliveries[d]];
        let row = json!({
            "id": change.id,
            "email": change.email,
            "tier": change.tier,
            "updated_at": change.updated_at_ms(),
        });
        let (before, after) = match change.op {
            'd' if self.key_only[self.deliveries[d]] => (json!({"id": change.id}), Value::Null),
            'd' => (row, Value::Null),
            _ => (Value::Null, row),
        };
        let payload = json!({
            "before": before,
            "after": after,
            "source": {
                "version": "2.5.4.Final", "connector": "postgresql", "name": "shop",
                "ts_ms": change.updated_at_ms(), "snapshot": if change.op == 'r' { "true" } else { "false" },
                "db": "shop", "schema": "public", "table": "users",
                "txId": 500 + change.lsn, "lsn": change.lsn, "xmin": null
            },
            "op": change.op.to_string(),
            "ts_ms": change.updated_at_ms() + 3,
            "transaction": null
        });
        let event = if self.wrapped[d] {
            json!({"schema": {"type": "struct", "name": "shop.public.users.Envelope"}, "payload": payload})
        } else {
            payload
        };
        serde_json::to_vec(&event).expect("JSON")
    }

    /// The oracle: each key's row after the change with the greatest log position, if
    /// that change is not a delete.
    pub fn final_state(&self) -> BTreeMap<i64, Change> {
        let mut last: BTreeMap<i64, &Change> = BTreeMap::new();
        for change in &self.changes {
            let newer = last.get(&change.id).is_none_or(|c| c.lsn < change.lsn);
            if newer {
                last.insert(change.id, change);
            }
        }
        last.into_iter()
            .filter(|(_, c)| c.op != 'd')
            .map(|(id, c)| (id, c.clone()))
            .collect()
    }

    /// Deliveries that arrive after a newer delete of their key was delivered, in a later
    /// chunk of `chunk` deliveries than it, for keys whose last change is a delete: the
    /// changes only a remembered delete keeps from bringing the key back.
    pub fn stale_after_final_delete(&self, chunk: usize) -> usize {
        let mut last: BTreeMap<i64, i64> = BTreeMap::new();
        for change in &self.changes {
            last.insert(change.id, change.lsn);
        }
        let mut final_delete: BTreeMap<i64, (i64, usize)> = BTreeMap::new();
        for (d, &i) in self.deliveries.iter().enumerate() {
            let change = &self.changes[i];
            if change.op == 'd' && last.get(&change.id) == Some(&change.lsn) {
                final_delete.entry(change.id).or_insert((change.lsn, d));
            }
        }
        self.deliveries
            .iter()
            .enumerate()
            .filter(|(d, i)| {
                let change = &self.changes[**i];
                final_delete
                    .get(&change.id)
                    .is_some_and(|(lsn, at)| change.lsn < *lsn && d / chunk > at / chunk)
            })
            .count()
    }

    /// The oracle of SCD type 2: every version of every key — (key, start lsn) → (end lsn,
    /// tier) — each change but a delete starting one, ending at the key's next change.
    pub fn history(&self) -> BTreeMap<(i64, i64), (Option<i64>, String)> {
        let mut by_key: BTreeMap<i64, Vec<&Change>> = BTreeMap::new();
        for change in &self.changes {
            by_key.entry(change.id).or_default().push(change);
        }
        let mut out = BTreeMap::new();
        for (id, changes) in by_key {
            for (i, change) in changes.iter().enumerate() {
                if change.op != 'd' {
                    let end = changes.get(i + 1).map(|next| next.lsn);
                    out.insert((id, change.lsn), (end, change.tier.clone()));
                }
            }
        }
        out
    }

    /// Keys whose last change is a delete.
    pub fn deleted_keys(&self) -> usize {
        let mut last: BTreeMap<i64, char> = BTreeMap::new();
        for change in &self.changes {
            last.insert(change.id, change.op);
        }
        last.values().filter(|op| **op == 'd').count()
    }
}

/// Produces `records` (partition, key, value) to `topic` with `acks=all`, waiting for
/// every acknowledgement; returns the last offset acknowledged per partition.
pub async fn produce(
    brokers: &str,
    topic: &str,
    records: &[(i32, String, Vec<u8>)],
) -> TestResult<BTreeMap<i32, i64>> {
    produce_with(&crate::kafka::producer(brokers)?, topic, records).await
}

/// [`produce`] through `producer`.
pub async fn produce_with(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: &[(i32, String, Vec<u8>)],
) -> TestResult<BTreeMap<i32, i64>> {
    let mut last = BTreeMap::new();
    for chunk in records.chunks(5_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (partition, key, value) in chunk {
            let record = FutureRecord::to(topic)
                .partition(*partition)
                .key(key)
                .payload(value);
            pending.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| format!("enqueue: {e}"))?,
            );
        }
        for delivery in pending {
            let delivered = tokio::time::timeout(Duration::from_secs(60), delivery)
                .await
                .map_err(|_| "delivery not acknowledged within 60 s".to_string())?
                .map_err(|_| "delivery future dropped".to_string())?
                .map_err(|(e, _)| format!("delivery failed: {e}"))?;
            let entry = last.entry(delivered.partition).or_insert(delivered.offset);
            *entry = (*entry).max(delivered.offset);
        }
    }
    Ok(last)
}
