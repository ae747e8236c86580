//! Source declarations. A source is anything that yields records with a
//! (topic, partition, offset) position: the built-in generator, files landing in a
//! directory or an object-store prefix, and Kafka.

use serde::{Deserialize, Serialize};

use super::files::FilesSpec;

/// One named source, written `{ generator: {...} }` or `{ files: {...} }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", try_from = "RawSource", into = "RawSource")]
pub enum SourceSpec {
    /// Seeded clickstream generator: deterministic by (seed, partition, offset).
    Generator(GeneratorSpec),
    /// Files landing in a directory or an object-store prefix (see [`FilesSpec`]).
    Files(FilesSpec),
    /// A Kafka topic (any Kafka-protocol broker); its partitions are discovered at run time.
    Kafka(KafkaSpec),
}

/// The YAML shape of a source: exactly one kind key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generator: Option<GeneratorSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<FilesSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kafka: Option<KafkaSpec>,
}

impl TryFrom<RawSource> for SourceSpec {
    type Error = String;

    fn try_from(raw: RawSource) -> Result<Self, String> {
        match (raw.generator, raw.files, raw.kafka) {
            (Some(g), None, None) => Ok(SourceSpec::Generator(g)),
            (None, Some(f), None) => Ok(SourceSpec::Files(f)),
            (None, None, Some(k)) => Ok(SourceSpec::Kafka(k)),
            (None, None, None) => {
                Err("a source needs one of `generator`, `files` or `kafka`".into())
            }
            _ => Err("a source is exactly one of `generator`, `files` or `kafka`".into()),
        }
    }
}

impl From<SourceSpec> for RawSource {
    fn from(spec: SourceSpec) -> Self {
        match spec {
            SourceSpec::Generator(g) => RawSource {
                generator: Some(g),
                files: None,
                kafka: None,
            },
            SourceSpec::Files(f) => RawSource {
                generator: None,
                files: Some(f),
                kafka: None,
            },
            SourceSpec::Kafka(k) => RawSource {
                generator: None,
                files: None,
                kafka: Some(k),
            },
        }
    }
}

impl SourceSpec {
    /// How many partitions the source has, when the spec alone says (generator, files);
    /// `None` for Kafka, whose partitions the coordinator discovers from the broker.
    pub fn partitions(&self) -> Option<u32> {
        match self {
            SourceSpec::Generator(g) => Some(g.partitions),
            SourceSpec::Files(f) => Some(f.partitions),
            SourceSpec::Kafka(_) => None,
        }
    }
}

/// Settings of the clickstream generator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorSpec {
    /// Seed of every random choice; same seed, same events.
    pub seed: u64,
    /// Number of partitions; partition `p` produces offsets 0, 1, 2, ...
    pub partitions: u32,
    /// Total events per second over all partitions; absent means as fast as possible.
    pub rate: Option<u64>,
    /// Total events over all partitions; absent means unbounded.
    pub count: Option<u64>,
    /// Share of events that repeat an earlier event of the same partition (same event_id).
    pub duplicate_rate: f64,
    /// Share of events made invalid on purpose (malformed JSON, missing user, bad price).
    pub invalid_rate: f64,
    /// Share of events whose timestamp lies up to two hours in the past.
    pub late_rate: f64,
    /// Number of distinct users.
    pub users: u32,
    /// Event time of offset 0 (RFC 3339).
    pub start: String,
    /// Event time advances this much per offset within a partition.
    pub step_ms: u64,
    /// Topic name recorded in bronze; defaults to the source name.
    pub topic: Option<String>,
    /// What the generator produces.
    pub kind: GeneratorKind,
}

/// What a generator produces.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GeneratorKind {
    /// A web shop's clickstream events (JSON).
    #[default]
    Clickstream,
    /// Debezium change events of the shop's `users` table (key `user_id`, ordered by
    /// `source.lsn`): a snapshot read of every user, then updates, deletes and creates;
    /// `late_rate` of them carry an older log position (delivered late, up to 6,000
    /// positions), `duplicate_rate` repeat an earlier event, `invalid_rate` are truncated.
    UsersCdc,
}

impl Default for GeneratorSpec {
    fn default() -> Self {
        Self {
            seed: 42,
            partitions: 4,
            rate: Some(2_000),
            count: None,
            duplicate_rate: 0.01,
            invalid_rate: 0.005,
            late_rate: 0.02,
            users: 5_000,
            start: "2026-11-01T00:00:00Z".into(),
            step_ms: 200,
            topic: None,
            kind: GeneratorKind::Clickstream,
        }
    }
}

/// Settings of a Kafka source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// The topic; every partition of it is ingested, including partitions added later.
    pub topic: String,
    /// Extra librdkafka client properties (`security.protocol`, `fetch.max.bytes`, ...).
    /// Offsets and group settings are Smelter's: start positions come from the bronze
    /// table's txn versions, never from consumer-group offsets.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// librdkafka properties a spec may not override: they carry the exactly-once protocol.
pub const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];
