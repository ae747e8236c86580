//! The seeded clickstream generator.
//!
//! Every event is a pure function of (seed, partition, offset): [`Clickstream::event`]. The
//! reader only decides *when* to emit; restarting at any offset reproduces exactly the same
//! bytes, which is what lets tests compute the ground truth independently of the pipeline.
//!
//! Shares of duplicate, invalid and late events follow the spec; duplicates repeat an
//! earlier valid event of the same partition byte for byte (same `event_id`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use smelter_common::spec::{GeneratorKind, GeneratorSpec};
use tokio::time::Instant;

use super::{CommittedPositions, SourceReader, SourceRecord};
use crate::{Result, WorkerError};

/// What the generator made of one offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A well-formed, valid event.
    Valid,
    /// A byte-for-byte copy of the valid event at this earlier offset.
    Duplicate {
        /// Offset of the original.
        of: i64,
    },
    /// Truncated JSON: silver cannot parse it.
    Malformed,
    /// No `user.id`: violates `has_user`.
    MissingUser,
    /// Negative price: violates `sane_price`.
    BadPrice,
}

/// One generated event.
#[derive(Debug, Clone)]
pub struct GeneratedEvent {
    /// Its kind.
    pub kind: EventKind,
    /// `event_id` of the event (of the original, for duplicates).
    pub event_id: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
    /// Event time in microseconds since the epoch.
    pub ts_us: i64,
}

const EVENT_TYPES: [(&str, u64); 4] = [
    ("view", 60),
    ("click", 25),
    ("add_to_cart", 10),
    ("purchase", 5),
];
const COUNTRIES: [&str; 8] = ["DE", "US", "FR", "GB", "PL", "JP", "BR", "IN"];
const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
const CATEGORIES: [&str; 6] = ["shoes", "books", "garden", "toys", "kitchen", "audio"];
const REFERRERS: [&str; 4] = [
    "https://search.example.com/",
    "https://news.example.org/",
    "",
    "https://social.example.net/feed",
];
const PRODUCTS: u64 = 2_000;

/// The deterministic event function of one generator source.
#[derive(Debug, Clone)]
pub struct Clickstream {
    spec: GeneratorSpec,
    start_us: i64,
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finalizer: cheap, well distributed, stable across platforms.
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Clickstream {
    /// The event function for `spec` (which must have passed spec validation).
    pub fn new(spec: &GeneratorSpec) -> Result<Self> {
        let start = chrono::DateTime::parse_from_rfc3339(&spec.start).map_err(|e| {
            WorkerError::SourceInvalid {
                source_name: "generator".into(),
                message: format!("start `{}`: {e}", spec.start),
            }
        })?;
        Ok(Self {
            spec: spec.clone(),
            start_us: start.timestamp_micros(),
        })
    }

    fn rand(&self, partition: i32, offset: i64, salt: u64) -> u64 {
        mix(self.spec.seed ^ mix((partition as u64) << 40 ^ offset as u64) ^ mix(salt))
    }

    fn unit(&self, partition: i32, offset: i64, salt: u64) -> f64 {
        (self.rand(partition, offset, salt) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The kind of the event at (partition, offset).
    pub fn kind(&self, partition: i32, offset: i64) -> EventKind {
        let r = self.unit(partition, offset, 1);
        if r < self.spec.duplicate_rate && offset > 0 {
            let back = 1 + (self.rand(partition, offset, 2) % 50) as i64;
            let of = offset.saturating_sub(back).max(0);
            // Only a plain valid event is repeated, so the copy equals what `of` emitted.
            if self.plain_kind(partition, of) == EventKind::Valid {
                return EventKind::Duplicate { of };
            }
            return EventKind::Valid;
        }
        self.base_kind(partition, offset)
    }

    /// The kind ignoring duplication, except that an offset chosen to be a duplicate is not
    /// plain valid (its payload is someone else's).
    fn plain_kind(&self, partition: i32, offset: i64) -> EventKind {
        if self.unit(partition, offset, 1) < self.spec.duplicate_rate && offset > 0 {
            return EventKind::Duplicate { of: -1 };
        }
        self.base_kind(partition, offset)
    }

    fn base_kind(&self, partition: i32, offset: i64) -> EventKind {
        let r = self.unit(partition, offset, 1);
        let dup = self.spec.duplicate_rate;
        if r >= dup && r < dup + self.spec.invalid_rate {
            return match self.rand(partition, offset, 3) % 3 {
                0 => EventKind::Malformed,
                1 => EventKind::MissingUser,
                _ => EventKind::BadPrice,
            };
        }
        EventKind::Valid
    }

    /// The event at (partition, offset).
    pub fn event(&self, partition: i32, offset: i64) -> GeneratedEvent {
        let kind = self.kind(partition, offset);
        let source_offset = match kind {
            EventKind::Duplicate { of } => of,
            _ => offset,
        };
        let (event_id, payload, ts_us) = self.render(partition, source_offset, kind);
        GeneratedEvent {
            kind,
            event_id,
            payload,
            ts_us,
        }
    }

    fn render(&self, partition: i32, offset: i64, kind: EventKind) -> (String, Vec<u8>, i64) {
        let r = |salt: u64| self.rand(partition, offset, salt);
        if self.spec.kind == GeneratorKind::UsersCdc {
            // Invalid changes are truncated JSON: a change has no "missing user" or price.
            let kind = match kind {
                EventKind::MissingUser | EventKind::BadPrice => EventKind::Malformed,
                other => other,
            };
            return super::users_cdc::render(&self.spec, self.start_us, partition, offset, kind, r);
        }
        let mut ts_us = self.start_us + offset * self.spec.step_ms as i64 * 1_000;
        if self.unit(partition, offset, 4) < self.spec.late_rate {
            ts_us -= (r(5) % 7_200_000_000) as i64; // up to two hours late
        }
        let ts = chrono::DateTime::from_timestamp_micros(ts_us).unwrap_or_default();
        let user = r(6) % self.spec.users as u64;
        let mut pick = r(7) % 100;
        let mut event_type = EVENT_TYPES[0].0;
        for (name, weight) in EVENT_TYPES {
            if pick < weight {
                event_type = name;
                break;
            }
            pick -= weight;
        }
        let product = r(8) % PRODUCTS;
        let quantity = if matches!(event_type, "add_to_cart" | "purchase") {
            1 + r(9) % 3
        } else {
            1
        };
        let click = Click {
            seed: self.spec.seed,
            partition,
            offset,
            event_type,
            ts,
            user,
            session: ts_us / 1_800_000_000, // a session per user per half hour
            with_user: kind != EventKind::MissingUser,
            country: COUNTRIES[(user % COUNTRIES.len() as u64) as usize],
            device: DEVICES[(r(10) % DEVICES.len() as u64) as usize],
            referrer: REFERRERS[(r(11) % REFERRERS.len() as u64) as usize],
            product,
            category: CATEGORIES[(product % CATEGORIES.len() as u64) as usize],
            // Whole cents: 5.00 plus up to 499.99.
            cents: (500 + (mix(product ^ 0xC0FFEE) % 50_000) as i64)
                * if kind == EventKind::BadPrice { -1 } else { 1 },
            quantity,
        };
        let event_id = click.event_id();
        let json = click.json(&event_id);
        let mut payload = json.into_bytes();
        if kind == EventKind::Malformed {
            payload.truncate(payload.len() / 2);
        }
        (event_id, payload, ts_us)
    }

    /// Offsets partition `partition` produces in total, or `None` if unbounded.
    pub fn partition_count(&self, partition: i32) -> Option<i64> {
        let count = self.spec.count?;
        let partitions = self.spec.partitions as u64;
        let base = count / partitions;
        let extra = u64::from((partition as u64) < count % partitions);
        Some((base + extra) as i64)
    }

    /// The topic name recorded in bronze.
    pub fn topic(&self, source_name: &str) -> String {
        self.spec
            .topic
            .clone()
            .unwrap_or_else(|| source_name.to_string())
    }
}

/// The drawn fields of one clickstream event, before it is written as JSON.
struct Click {
    seed: u64,
    partition: i32,
    offset: i64,
    event_type: &'static str,
    ts: chrono::DateTime<chrono::Utc>,
    user: u64,
    session: i64,
    with_user: bool,
    country: &'static str,
    device: &'static str,
    referrer: &'static str,
    product: u64,
    category: &'static str,
    /// The unit price in cents; negative for an event with a bad price.
    cents: i64,
    quantity: u64,
}

impl Click {
    /// `e<seed>-<partition>-<offset>`.
    fn event_id(&self) -> String {
        let mut id = String::with_capacity(24);
        id.push('e');
        push_digits(&mut id, self.seed, 0);
        id.push('-');
        push_int(&mut id, i64::from(self.partition), 0);
        id.push('-');
        push_int(&mut id, self.offset, 0);
        id
    }

    /// The event as one JSON object, written piece by piece: `write!` with its formatting
    /// machinery was a tenth of an in-process pipeline's CPU (a test checks the bytes
    /// against `format!`'s).
    fn json(&self, event_id: &str) -> String {
        let mut json = String::with_capacity(400);
        json.push_str(r#"{"event_id":""#);
        json.push_str(event_id);
        json.push_str(r#"","event_type":""#);
        json.push_str(self.event_type);
        json.push_str(r#"","ts":""#);
        push_rfc3339_millis(&mut json, &self.ts);
        json.push_str(r#"","session_id":"s-"#);
        push_digits(&mut json, self.user, 0);
        json.push('-');
        push_int(&mut json, self.session, 0);
        json.push_str(r#"","user":{"#);
        if self.with_user {
            json.push_str(r#""id":"u-"#);
            push_digits(&mut json, self.user, 5);
            json.push_str(r#"","#);
        }
        json.push_str(r#""country":""#);
        json.push_str(self.country);
        json.push_str(r#"","device":""#);
        json.push_str(self.device);
        json.push_str(r#""},"page":{"url":"/products/p-"#);
        push_digits(&mut json, self.product, 4);
        json.push_str(r#"","referrer":""#);
        json.push_str(self.referrer);
        json.push_str(r#""},"product":{"id":"p-"#);
        push_digits(&mut json, self.product, 4);
        json.push_str(r#"","category":""#);
        json.push_str(self.category);
        json.push_str(r#"","price":"#);
        if self.cents < 0 {
            json.push('-');
        }
        push_digits(&mut json, self.cents.unsigned_abs() / 100, 0);
        json.push('.');
        push_digits(&mut json, self.cents.unsigned_abs() % 100, 2);
        json.push_str(r#"},"quantity":"#);
        push_digits(&mut json, self.quantity, 0);
        json.push('}');
        json
    }
}

/// Appends `n` in decimal, its digits zero-padded to `width`, a minus sign before them.
fn push_int(out: &mut String, n: i64, width: usize) {
    if n < 0 {
        out.push('-');
    }
    push_digits(out, n.unsigned_abs(), width);
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn push_digits(out: &mut String, n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    const ZEROS: &str = "00000000000000000000";
    let pad = width.saturating_sub(digits.len() - at);
    for _ in 0..pad / ZEROS.len() {
        out.push_str(ZEROS);
    }
    out.push_str(&ZEROS[..pad % ZEROS.len()]);
    // ASCII digits: the conversion cannot fail.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// Appends `ts` as RFC 3339 in UTC with milliseconds (`2026-11-01T00:00:00.000Z`), as
/// chrono's `to_rfc3339_opts(Millis, true)` writes it; years outside 0–9999 through
/// chrono itself.
fn push_rfc3339_millis(out: &mut String, ts: &chrono::DateTime<chrono::Utc>) {
    use chrono::{Datelike, Timelike};
    let year = ts.year();
    if !(0..=9999).contains(&year) {
        out.push_str(&ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        return;
    }
    push_int(out, i64::from(year), 4);
    out.push('-');
    push_int(out, i64::from(ts.month()), 2);
    out.push('-');
    push_int(out, i64::from(ts.day()), 2);
    out.push('T');
    push_int(out, i64::from(ts.hour()), 2);
    out.push(':');
    push_int(out, i64::from(ts.minute()), 2);
    out.push(':');
    push_int(out, i64::from(ts.second()), 2);
    out.push('.');
    // A leap second's nanoseconds run past 999,999,999; chrono writes them as 1xxx ms.
    push_int(out, i64::from(ts.nanosecond() / 1_000_000), 3);
    out.push('Z');
}

struct PartitionCursor {
    partition: i32,
    next: i64,
    /// Offset the cursor started at in this reader, for pacing.
    started_at: i64,
    end: Option<i64>,
}

/// The pacing step: a paced reader hands out events in slices of about this much time, and
/// sleeps this long when none are due (small against the one-second batches).
const TICK: Duration = Duration::from_millis(20);

/// Emits generated events for the owned partitions, paced to the configured rate.
pub struct GeneratorReader {
    events: Clickstream,
    topic: Arc<str>,
    cursors: Vec<PartitionCursor>,
    per_partition_rate: Option<f64>,
    opened: Instant,
    turn: usize,
}

impl GeneratorReader {
    /// Opens the reader, each partition starting after its committed offset.
    pub async fn open(
        name: &str,
        spec: &GeneratorSpec,
        partitions: &[i32],
        positions: &dyn CommittedPositions,
    ) -> Result<Self> {
        let events = Clickstream::new(spec)?;
        let topic: Arc<str> = events.topic(name).into();
        let mut cursors = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let next = positions
                .committed(&topic, partition)
                .await?
                .map_or(0, |last| last + 1);
            cursors.push(PartitionCursor {
                partition,
                next,
                started_at: next,
                end: events.partition_count(partition),
            });
        }
        let per_partition_rate = spec.rate.map(|rate| rate as f64 / spec.partitions as f64);
        Ok(Self {
            events,
            topic,
            cursors,
            per_partition_rate,
            opened: Instant::now(),
            turn: 0,
        })
    }

    /// Whether a poll at `now` should generate rather than wait: a tick's worth of events
    /// (or `max_records`) is due, or every partition has all of its remaining events due.
    /// Handing out whatever is due at each call would hand out one or two events at a
    /// time to a caller that polls in a loop, paying a clock read, a batch extension and
    /// a cancellation check per event.
    fn worth_generating(&self, now: Instant, max_records: usize) -> bool {
        let Some(rate) = self.per_partition_rate else {
            return true;
        };
        let tick = ((rate * self.cursors.len() as f64 * TICK.as_secs_f64()) as usize)
            .clamp(1, max_records.max(1));
        let mut due = 0usize;
        let mut all_due = true;
        for c in &self.cursors {
            let available = self.available(c, now);
            due += (available - c.next).max(0) as usize;
            all_due &= c.end.is_some_and(|end| available >= end);
        }
        due >= tick || (all_due && due > 0)
    }

    /// Up to `max_records` of the events due at `now`, taking partitions in turn.
    fn generate(&mut self, now: Instant, max_records: usize) -> Vec<SourceRecord> {
        let due: i64 = self
            .cursors
            .iter()
            .map(|c| (self.available(c, now) - c.next).max(0))
            .sum();
        let mut out = Vec::with_capacity((due as usize).min(max_records));
        let n = self.cursors.len();
        for i in 0..n {
            let idx = (self.turn + i) % n;
            let available = self.available(&self.cursors[idx], now);
            let cursor = &mut self.cursors[idx];
            while cursor.next < available && out.len() < max_records {
                let event = self.events.event(cursor.partition, cursor.next);
                out.push(SourceRecord {
                    topic: Arc::clone(&self.topic),
                    partition: cursor.partition,
                    offset: cursor.next,
                    key: Some(event.event_id),
                    timestamp_us: Some(event.ts_us),
                    headers: None,
                    payload: Some(event.payload),
                    error: None,
                    ends_topic: false,
                });
                cursor.next += 1;
            }
        }
        self.turn = self.turn.wrapping_add(1);
        out
    }

    /// How far partition `c` may have progressed by now.
    fn available(&self, c: &PartitionCursor, now: Instant) -> i64 {
        let paced = match self.per_partition_rate {
            Some(rate) => {
                c.started_at + (now.duration_since(self.opened).as_secs_f64() * rate) as i64
            }
            None => i64::MAX,
        };
        c.end.map_or(paced, |end| paced.min(end))
    }
}

#[async_trait]
impl SourceReader for GeneratorReader {
    async fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<Vec<SourceRecord>> {
        let deadline = Instant::now() + max_wait;
        loop {
            let now = Instant::now();
            if self.finished() {
                return Ok(Vec::new());
            }
            if self.worth_generating(now, max_records) || now >= deadline {
                return Ok(self.generate(now, max_records));
            }
            // Sleep until one more tick's worth of events is due, or the deadline.
            tokio::time::sleep_until((now + TICK).min(deadline)).await;
        }
    }

    fn lag(&self) -> Vec<(i32, i64)> {
        let now = Instant::now();
        self.cursors
            .iter()
            .map(|c| (c.partition, (self.available(c, now) - c.next).max(0)))
            .collect()
    }

    fn finished(&self) -> bool {
        self.cursors
            .iter()
            .all(|c| c.end.is_some_and(|end| c.next >= end))
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::source::sample::FromTheStart;

    /// A click as `format!` writes it: the renderer's text before it wrote it piece by
    /// piece, kept as the reference.
    fn formatted(c: &Click) -> String {
        let price = c.cents as f64 / 100.0;
        let mut json = String::new();
        let _ = write!(
            json,
            r#"{{"event_id":"e{}-{}-{}","event_type":"{}","ts":"{}","session_id":"s-{}-{}","user":{{"#,
            c.seed,
            c.partition,
            c.offset,
            c.event_type,
            c.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            c.user,
            c.session,
        );
        if c.with_user {
            let _ = write!(json, r#""id":"u-{:05}","#, c.user);
        }
        let _ = write!(
            json,
            r#""country":"{}","device":"{}"}},"page":{{"url":"/products/p-{:04}","referrer":"{}"}},"product":{{"id":"p-{:04}","category":"{}","price":{price:.2}}},"quantity":{}}}"#,
            c.country, c.device, c.product, c.referrer, c.product, c.category, c.quantity,
        );
        json
    }

    #[test]
    fn payloads_are_the_bytes_format_would_write() {
        let mut click = Click {
            seed: u64::MAX,
            partition: 0,
            offset: 0,
            event_type: "view",
            ts: chrono::DateTime::default(),
            user: 0,
            session: 0,
            with_user: true,
            country: "DE",
            device: "ios",
            referrer: "",
            product: 0,
            category: "books",
            cents: 0,
            quantity: 1,
        };
        // Walks timestamps over leap years, centuries and before 1970,
        // numbers of every width, and both signs of a price.
        for step in 0..20_000_i64 {
            click.partition = (step % 7) as i32 - 1;
            click.offset = step * 7_919 - 1_000;
            click.ts = chrono::DateTime::from_timestamp_micros(
                (step - 3_000) * 86_400_000_000 * 47 / 3 + step * 1_237,
            )
            .unwrap_or_default();
            click.user = (step as u64).pow(3) % 1_000_003;
            click.session = step * 104_729 - 500_000;
            click.with_user = step % 5 != 0;
            click.product = (step as u64 * 31) % 12_000;
            click.cents = (step * 37 % 60_000) * if step % 3 == 0 { -1 } else { 1 };
            click.quantity = step as u64 % 11;
            assert_eq!(
                click.json(&click.event_id()),
                formatted(&click),
                "step {step}"
            );
        }
        let c = Clickstream::new(&spec()).unwrap();
        let (id, payload, _) = c.render(1, 2, EventKind::Valid);
        assert!(
            String::from_utf8(payload)
                .unwrap()
                .starts_with(&format!(r#"{{"event_id":"{id}""#))
        );
        let mut out = String::new();
        for (n, width) in [
            (0, 0),
            (7, 4),
            (12_345, 2),
            (-42, 0),
            (i64::MIN, 0),
            (i64::MAX, 25),
            (3, 45),
        ] {
            out.clear();
            push_int(&mut out, n, width);
            assert_eq!(out, format!("{n:0width$}"), "{n} in {width}");
        }
    }

    fn spec() -> GeneratorSpec {
        GeneratorSpec {
            duplicate_rate: 0.05,
            invalid_rate: 0.05,
            count: Some(10),
            ..GeneratorSpec::default()
        }
    }

    #[test]
    fn events_are_deterministic_and_shaped() {
        let a = Clickstream::new(&spec()).unwrap();
        let b = Clickstream::new(&spec()).unwrap();
        let mut kinds = std::collections::HashMap::new();
        for offset in 0..20_000 {
            let (x, y) = (a.event(1, offset), b.event(1, offset));
            assert_eq!(x.payload, y.payload);
            *kinds.entry(std::mem::discriminant(&x.kind)).or_insert(0) += 1;
            match x.kind {
                EventKind::Malformed => {
                    assert!(serde_json::from_slice::<serde_json::Value>(&x.payload).is_err())
                }
                EventKind::Duplicate { of } => assert_eq!(x.payload, a.event(1, of).payload),
                _ => {
                    let v: serde_json::Value = serde_json::from_slice(&x.payload).unwrap();
                    assert_eq!(v["event_id"], x.event_id.as_str());
                    assert_eq!(v["user"]["id"].is_null(), x.kind == EventKind::MissingUser);
                }
            }
        }
        assert_eq!(kinds.len(), 5, "every kind occurs");
        let avg = (0..1000)
            .map(|o| a.event(0, o).payload.len())
            .sum::<usize>()
            / 1000;
        assert!((300..450).contains(&avg), "average payload {avg} bytes");
    }

    /// A paced reader polled in a tight loop hands out slices of its schedule, not the one
    /// or two events that fall due while the previous ones render.
    #[tokio::test]
    async fn paced_polls_hand_out_slices() {
        let spec = GeneratorSpec {
            partitions: 1,
            rate: Some(100_000),
            count: Some(20_000),
            ..GeneratorSpec::default()
        };
        let mut reader = GeneratorReader::open("events", &spec, &[0], &FromTheStart)
            .await
            .unwrap();
        let tick = (100_000.0 * TICK.as_secs_f64()) as usize;
        let mut slices = Vec::new();
        let mut next = 0;
        while !reader.finished() {
            let records = reader
                .poll(1_000_000, Duration::from_secs(5))
                .await
                .unwrap();
            for r in &records {
                assert_eq!(r.offset, next, "offsets in order, none skipped");
                next += 1;
            }
            slices.push(records.len());
        }
        assert_eq!(next, 20_000);
        let (last, full) = slices.split_last().unwrap();
        assert!(full.iter().all(|&n| n >= tick), "slices {slices:?}");
        assert!(*last > 0);
    }

    #[test]
    fn counts_split_over_partitions() {
        let c = Clickstream::new(&GeneratorSpec {
            partitions: 4,
            count: Some(10),
            ..GeneratorSpec::default()
        })
        .unwrap();
        let counts: Vec<i64> = (0..4).map(|p| c.partition_count(p).unwrap()).collect();
        assert_eq!(counts, vec![3, 3, 2, 2]);
    }
}
