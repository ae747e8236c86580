//! The declarative pipeline spec (README, "Pipelines"): sources, and bronze/silver/gold tables
//! with their rules.
//!
//! [`PipelineSpec::parse`] is the only way in: it deserializes the YAML (naming the field
//! path and line of any type error) and then validates the whole pipeline (table names,
//! layers, `from` references, dedupe keys against the parse schema, ...), so a bad spec
//! is rejected before anything runs. Checks that need a query planner (expectation
//! expressions, gold SQL) are done by the worker crate on top of this.

pub mod evolution;
mod files;
mod schema;
mod source;
pub mod validate;

use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

pub use files::{CsvSpec, FileFormat, FileSelector, FilesSpec, uncompressed};
pub use schema::{FieldType, ParseSchema, Primitive, SchemaSpec};
pub use source::{GeneratorKind, GeneratorSpec, KafkaSpec, RESERVED_KAFKA_PROPERTIES, SourceSpec};

use crate::{Error, Result};

/// A whole pipeline as declared in one YAML file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Pipeline name: lower-case letters, digits, `_` and `-`.
    pub pipeline: String,
    /// Named sources.
    pub sources: IndexMap<String, SourceSpec>,
    /// Tables by `layer.name`, in declaration order.
    pub tables: IndexMap<String, TableSpec>,
}

/// The medallion layer of a table, taken from the first part of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Raw records plus source metadata.
    Bronze,
    /// Parsed, validated, deduplicated records.
    Silver,
    /// Business aggregates.
    Gold,
}

impl Layer {
    /// Lower-case name, as used in table names and storage paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Bronze => "bronze",
            Layer::Silver => "silver",
            Layer::Gold => "gold",
        }
    }

    /// Parses the layer part of a table name.
    pub fn parse(name: &str) -> Option<Layer> {
        match name {
            "bronze" => Some(Layer::Bronze),
            "silver" => Some(Layer::Silver),
            "gold" => Some(Layer::Gold),
            _ => None,
        }
    }
}

/// One table and its rules. Which fields apply depends on the layer; validation rejects
/// fields that make no sense for the table's layer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Upstream: a source name (bronze) or a table name (silver, gold).
    pub from: String,
    /// Partition columns of the Delta table.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// How silver decodes bronze payloads.
    #[serde(default)]
    pub parse: Option<ParseSpec>,
    /// Nested structs become columns named `parent_child`.
    #[serde(default)]
    pub flatten: bool,
    /// Duplicate removal.
    #[serde(default)]
    pub dedupe: Option<DedupeSpec>,
    /// Data-quality rules, applied in order.
    #[serde(default)]
    pub expectations: Vec<ExpectationSpec>,
    /// Gold: the SQL that defines the table, over `layer.table` names.
    #[serde(default)]
    pub sql: Option<String>,
    /// Gold: the tables the SQL reads besides `from` (the dimensions it joins). A refresh
    /// follows every one of them, reads each at one version, and records a txn for each
    /// upstream that moved.
    #[serde(default)]
    pub joins: Vec<String>,
    /// Gold: the columns that identify a row.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Catalog: who owns the table.
    #[serde(default)]
    pub owner: Option<String>,
    /// Catalog: free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Catalog: what the table holds.
    #[serde(default)]
    pub description: Option<String>,
    /// Catalog: what each column holds, by column name.
    #[serde(default)]
    pub column_descriptions: std::collections::BTreeMap<String, String>,
    /// Automatic compaction and vacuum of the table (on by default).
    #[serde(default)]
    pub maintenance: MaintenanceSpec,
    /// Table-level data-quality checks (see [`ChecksSpec`]).
    #[serde(default)]
    pub checks: ChecksSpec,
    /// How long the table keeps its rows and its history (see [`RetentionSpec`]).
    #[serde(default)]
    pub retention: RetentionSpec,
    /// Silver: keep the current row per key instead of appending (see [`MergeSpec`]).
    #[serde(default)]
    pub merge: Option<MergeSpec>,
    /// Write Delta's change data feed (`delta.enableChangeDataFeed`): merges record the
    /// rows they insert, update (pre- and post-image) and delete.
    #[serde(default)]
    pub change_data_feed: bool,
    /// Silver: what a spec whose columns the existing table cannot take (a type that is not
    /// a widening, a needed column dropped) does — refused at apply, by default (see
    /// [`OnIncompatible`]).
    #[serde(default)]
    pub on_incompatible: OnIncompatible,
}

/// What a silver table does when its spec declares columns its Delta table cannot take
/// (`long` → `string`; a struct become a scalar; a dedupe key dropped).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnIncompatible {
    /// `smelter apply`, `validate` and `up` refuse the spec, naming the column; nothing
    /// changes.
    #[default]
    Refuse,
    /// The table keeps its column and type; a record's value that does not fit it goes to
    /// `_rescued_data` under the field's path (the row still lands). Nothing is rewritten.
    Rescue,
    /// The table is started over under the new schema: one commit replaces its schema
    /// and removes its rows (older versions still read as they were), the quarantine is
    /// emptied the same way, and every bronze record is refined again under the new spec.
    NewVersion,
}

/// How a silver table applies a change stream: one row per key, the change with the
/// greatest `sequence_by` value winning, deletes removing the row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MergeSpec {
    /// The columns that identify a row.
    pub keys: Vec<String>,
    /// The column that orders the changes of one key (a change with a smaller value than
    /// the stored row's, or than the key's delete, is not applied).
    pub sequence_by: String,
    /// A SQL predicate over the change's columns marking deletes (Debezium envelopes:
    /// `_op = 'd'` unless said otherwise).
    #[serde(default)]
    pub delete_when: Option<String>,
    /// Slowly changing dimension type: 1 keeps the current row per key, 2 every version
    /// (`__start_at`, `__end_at`, `__current`).
    #[serde(default = "MergeSpec::default_scd")]
    pub scd: u8,
}

impl MergeSpec {
    fn default_scd() -> u8 {
        1
    }

    /// The delete predicate, for a table parsed with `format`.
    pub fn delete_predicate(&self, format: PayloadFormat) -> Option<String> {
        match (&self.delete_when, format) {
            (Some(predicate), _) => Some(predicate.clone()),
            (None, PayloadFormat::Debezium) => Some("_op = 'd'".to_string()),
            (None, PayloadFormat::Json | PayloadFormat::Csv | PayloadFormat::Avro) => None,
        }
    }
}

/// How long a table keeps its rows and its history. Nothing is deleted unless declared:
/// every field is off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSpec {
    /// Rows whose [`column`](Self::column) is older than this are deleted by the
    /// pipeline's maintenance task (a `DELETE` commit under the commit lock, as
    /// `smelter delete` makes).
    #[serde(with = "opt_duration")]
    pub data: Option<Duration>,
    /// The time column `data` is measured on; bronze tables default to `ingested_at`.
    pub column: Option<String>,
    /// Time travel reaches back this far and no further, and the log entries older than
    /// this are cleaned up by maintenance, but none a downstream table has not read yet
    /// (`delta.logRetentionDuration`).
    #[serde(with = "opt_duration")]
    pub history: Option<Duration>,
    /// Data files rewrites took out are deleted this long after (instead of
    /// `maintenance.retention`).
    #[serde(with = "opt_duration")]
    pub vacuum_after: Option<Duration>,
}

impl RetentionSpec {
    /// The column `data` is measured on, for a table of `layer`.
    pub fn data_column(&self, layer: Layer) -> Option<&str> {
        match (&self.column, layer) {
            (Some(column), _) => Some(column),
            (None, Layer::Bronze) => Some("ingested_at"),
            (None, _) => None,
        }
    }
}

/// Checks on what a table holds, beyond the per-record expectations: evaluated by the
/// writing task on the rows each pass commits (silver: the pass's new rows; gold: the
/// whole refreshed table), recorded with the commit, and raised as a visible status and a
/// metric while failing. They never hold up the pipeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksSpec {
    /// The table is stale once its last commit is older than this.
    #[serde(with = "opt_duration")]
    pub freshness_sla: Option<Duration>,
    /// Columns whose values together identify a row: no two rows may share them.
    pub unique: Vec<String>,
    /// Most nulls a column may hold, as a fraction of the rows (0 to 1).
    pub max_null_fraction: std::collections::BTreeMap<String, f64>,
    /// Bounds a numeric column's values must stay within (inclusive).
    pub range: std::collections::BTreeMap<String, RangeSpec>,
}

impl ChecksSpec {
    /// Whether any check on the rows is declared (`freshness_sla` is not one: the
    /// coordinator watches it).
    pub fn on_rows(&self) -> bool {
        !self.unique.is_empty() || !self.max_null_fraction.is_empty() || !self.range.is_empty()
    }
}

/// Inclusive bounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    /// Least value allowed.
    #[serde(default)]
    pub min: Option<f64>,
    /// Greatest value allowed.
    #[serde(default)]
    pub max: Option<f64>,
}

/// How the pipeline's maintenance task keeps a table fast and its storage bounded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSpec {
    /// `false` turns maintenance off for the table.
    pub enabled: bool,
    /// Files smaller than this are small; compaction packs them into files up to it.
    pub target_file_mb: u64,
    /// Compact once the table has this many small files (at least 2).
    pub min_small_files: usize,
    /// Delete the files rewrites took out once they have been out this long; time travel
    /// reaches back at least this far.
    #[serde(with = "duration")]
    pub retention: Duration,
    /// How often the table is looked at.
    #[serde(with = "duration")]
    pub every: Duration,
    /// Compaction writes rows in Z-order over these columns (1 to 4), so that files can be
    /// skipped by their statistics when a query filters on any of them.
    pub zorder_by: Vec<String>,
}

impl Default for MaintenanceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            target_file_mb: 128,
            min_small_files: 16,
            retention: Duration::from_secs(7 * 86_400),
            every: Duration::from_secs(60),
            zorder_by: Vec::new(),
        }
    }
}

/// Decoding of raw payloads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParseSpec {
    /// Payload format: `json` (one JSON object per record), `csv` (rows of CSV files),
    /// `debezium` or `avro` (Confluent-framed, with a schema registry).
    pub format: PayloadFormat,
    /// The declared schema (fields present in a record but not declared go to
    /// `_rescued_data`), or `infer`: the schema the first records suggest, recorded as the
    /// table's and grown as new fields appear; a value whose type conflicts with its
    /// column's goes to `_rescued_data` with the record.
    pub schema: ParseSchema,
    /// With `schema: infer`: how many records the first schema is inferred from (at most;
    /// 1,000 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<usize>,
    /// The schema registry that Confluent-framed payloads name their writer schema in
    /// (Confluent's REST API: `GET {registry}/schemas/ids/{id}`), as an `http://` URL:
    /// needed by `format: avro`; with `format: json`, the records are JSON text framed by
    /// a JSON Schema serializer (a zero byte and the schema id before the JSON).
    #[serde(default)]
    pub registry: Option<String>,
    /// What of the source record besides its payload silver keeps, as columns that
    /// expressions, dedupe and merge keys may use: `key` (`_key`), `headers` (`_headers`, a
    /// map of header name to value: `_headers['trace-id']`) and `timestamp` (`_timestamp`,
    /// the record's time in the source).
    #[serde(default)]
    pub metadata: Vec<RecordField>,
}

/// A part of a source record that silver can keep (see [`ParseSpec::metadata`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum RecordField {
    /// The record's key, as text (`_key`).
    Key,
    /// The record's headers (`_headers`: header name to value as text; a header without a
    /// value maps to NULL).
    Headers,
    /// The record's time in the source (`_timestamp`; Kafka's create or log-append time).
    Timestamp,
}

impl RecordField {
    /// The silver column holding it.
    pub fn column(self) -> &'static str {
        match self {
            RecordField::Key => "_key",
            RecordField::Headers => "_headers",
            RecordField::Timestamp => "_timestamp",
        }
    }

    /// The bronze column it comes from.
    pub fn bronze_column(self) -> &'static str {
        match self {
            RecordField::Key => "key",
            RecordField::Headers => "headers",
            RecordField::Timestamp => "timestamp",
        }
    }
}

/// Payload formats silver can decode.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// One JSON object per record.
    Json,
    /// A Debezium change event (JSON, with or without the `schema`/`payload` wrapper): the
    /// row image is `after` (`before` for deletes); `op`, `ts_ms`, `source.lsn` and the
    /// `source` block become the columns `_op`, `_ts_ms`, `_lsn` and `_source` (JSON text).
    Debezium,
    /// A row of a CSV file, as the files source keeps it: a JSON object of the row's text
    /// by column name (an empty field is null). Each value is read from its text into its
    /// declared type (`3` into a `long`, `true` into a `boolean`, `12.50` into a decimal).
    Csv,
    /// An Avro record in Confluent's wire format (a zero byte, the writer schema's id in the
    /// registry as 4 big-endian bytes, the Avro binary body), decoded with the writer schema
    /// the [`ParseSpec::registry`] holds for that id; its fields are then read into the
    /// declared schema by name, as JSON fields are.
    Avro,
}

/// Columns a Debezium-parsed silver table adds after `_rescued_data`: the operation, the
/// event time, the source's log position (`source.lsn`, PostgreSQL's; the usual
/// `sequence_by`, since a delete's `before` image may hold the key columns only) and the
/// whole `source` block as JSON text.
pub const DEBEZIUM_COLUMNS: [&str; 4] = ["_op", "_ts_ms", "_lsn", "_source"];

/// Duplicate removal on key columns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DedupeSpec {
    /// Columns (after flattening) that identify a record.
    pub keys: Vec<String>,
    /// Only look for an earlier copy this far back in event time (`30s`, `15m`, `1h`, `7d`).
    /// Needs a timestamp column: `by`, or the only timestamp column of the schema.
    #[serde(default, with = "opt_duration")]
    pub within: Option<Duration>,
    /// The event-time column `within` refers to.
    #[serde(default)]
    pub by: Option<String>,
}

/// One data-quality rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExpectationSpec {
    /// Rule name, recorded with quarantined rows and in counters.
    pub name: String,
    /// SQL boolean expression over the table's columns. As in SQL CHECK constraints, a row
    /// violates the rule only when the expression is `false` (NULL passes).
    pub expr: String,
    /// What happens to a violating row.
    #[serde(default)]
    pub on_violation: OnViolation,
}

/// What an expectation does with violating rows.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Keep the row, count the violation.
    #[default]
    Warn,
    /// Remove the row, count it.
    Drop,
    /// Move the row to `<table>_quarantine` with rule and reason.
    Quarantine,
    /// Stop the task with an error; nothing of the batch is committed.
    Fail,
}

impl TableSpec {
    /// How long the files rewrites took out of the table stay before maintenance vacuums
    /// them (`retention.vacuum_after`, else `maintenance.retention`), or `None` when the
    /// table's maintenance is off (nothing vacuums it).
    pub fn vacuum_after(&self) -> Option<Duration> {
        self.maintenance.enabled.then(|| {
            self.retention
                .vacuum_after
                .unwrap_or(self.maintenance.retention)
        })
    }

    /// The declared columns of a silver table as its Delta table holds them: the parse
    /// schema's leaves when it is flattened (`user_device`), its top-level fields otherwise.
    pub fn declared_columns(&self) -> Vec<(String, FieldType)> {
        let Some(parse) = &self.parse else {
            return Vec::new();
        };
        let Some(schema) = parse.schema.declared() else {
            return Vec::new();
        };
        if self.flatten {
            schema.flattened()
        } else {
            schema
                .fields
                .iter()
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect()
        }
    }

    /// Name of the quarantine table of a silver table.
    pub fn quarantine_name(table: &str) -> String {
        format!("{table}_quarantine")
    }

    /// The tables (or source) a table reads: its `from`, then its `joins`.
    pub fn upstreams(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.from).chain(&self.joins)
    }

    /// Name of the table where a merged silver table keeps the tombstones of its deleted
    /// keys (see `smelter_lake::merge`).
    pub fn tombstones_name(table: &str) -> String {
        format!("{table}_tombstones")
    }

    /// The catalog description of a merged table's tombstones.
    pub fn tombstones_description(table: &str) -> String {
        format!(
            "Keys deleted from {table}, with the sequence value of their delete: an older change is not applied."
        )
    }

    /// The tables a silver table's refine task writes besides it: its quarantine, and the
    /// tombstones of a merged table.
    pub fn side_tables(&self, table: &str) -> Vec<String> {
        let mut out = vec![Self::quarantine_name(table)];
        if self.merge.is_some() {
            out.push(Self::tombstones_name(table));
        }
        out
    }

    /// The catalog description of the quarantine of a silver table refined from `from`.
    pub fn quarantine_description(from: &str) -> String {
        format!("Records of {from} that failed a rule.")
    }
}

impl PipelineSpec {
    /// Parses and validates a pipeline spec. `origin` (usually the file name) prefixes
    /// every error message.
    pub fn parse(text: &str, origin: &str) -> Result<PipelineSpec> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let spec: PipelineSpec = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let field = err.path().to_string();
            let inner = err.into_inner();
            let line = inner.location().map(|l| l.line());
            // serde_yaml appends "at line X column Y"; we report the line separately.
            let message = inner.to_string();
            let message = match message.find(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            Error::Spec {
                origin: origin.to_string(),
                line,
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message,
            }
        })?;
        validate::validate(&spec, text, origin)?;
        Ok(spec)
    }

    /// Reads and parses a spec file.
    pub fn from_file(path: &std::path::Path) -> Result<PipelineSpec> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        PipelineSpec::parse(&text, &path.display().to_string())
    }

    /// Tables of one layer, in declaration order.
    pub fn tables_in(&self, layer: Layer) -> impl Iterator<Item = (&String, &TableSpec)> {
        self.tables
            .iter()
            .filter(move |(name, _)| table_layer(name) == Some(layer))
    }
}

/// The layer of a `layer.name` table name.
pub fn table_layer(name: &str) -> Option<Layer> {
    name.split_once('.')
        .and_then(|(layer, _)| Layer::parse(layer))
}

/// Parses `500ms`, `30s`, `15m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", value.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}`: use a number and a unit (ms, s, m, h, d), e.g. `1h`"
            ))
        })
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            super::parse_duration(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid duration `{t}`: use a number and a unit (ms, s, m, h, d), e.g. `1h`"
                ))
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests;
