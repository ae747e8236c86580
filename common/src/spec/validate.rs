//! Semantic validation of a parsed spec: everything that serde's types cannot express.
//!
//! Errors name the file, the dotted field path, and the line of that field when it can be
//! found in the original text.

use std::collections::HashSet;

use super::{
    DEBEZIUM_COLUMNS, FieldType, Layer, PayloadFormat, PipelineSpec, Primitive, SourceSpec,
    TableSpec, table_layer,
};
use crate::{Error, Result};

/// Columns silver adds to every row, next to the declared ones.
pub const SILVER_METADATA_COLUMNS: [&str; 5] = [
    "_rescued_data",
    "_topic",
    "_partition",
    "_offset",
    "_ingested_at",
];

/// Columns a merged table of SCD type 2 adds after the others: when each version of a
/// key started and ended (by its `sequence_by` value), and whether it is current.
pub const HISTORY_COLUMNS: [&str; 3] = ["__start_at", "__end_at", "__current"];

/// Columns of every bronze table.
pub const BRONZE_COLUMNS: [&str; 11] = [
    "source",
    "topic",
    "partition",
    "offset",
    "key",
    "timestamp",
    "headers",
    "payload",
    "error",
    "ingested_at",
    "ingest_date",
];

struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Checker<'_> {
    fn fail(&self, path: &[&str], message: impl Into<String>) -> Error {
        Error::Spec {
            origin: self.origin.to_string(),
            line: locate(self.text, path),
            field: path.join("."),
            message: message.into(),
        }
    }
}

/// Best-effort: the 1-based line of the key at `path`, found by scanning for each
/// segment as a mapping key after the previous one.
fn locate(text: &str, path: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for segment in path {
        let hit = lines.iter().enumerate().skip(from).find(|(_, line)| {
            let t = line.trim_start().trim_start_matches("- ");
            [
                format!("{segment}:"),
                format!("\"{segment}\":"),
                format!("'{segment}':"),
                format!("{{ {segment}:"),
                format!("{{{segment}:"),
            ]
            .iter()
            .any(|p| {
                t.starts_with(p.as_str())
                    || (t.contains(&format!(" {segment}:")) && t.contains('{'))
            })
        });
        match hit {
            Some((i, _)) => {
                from = i;
                found = Some(i + 1);
            }
            None => break,
        }
    }
    found
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

pub(super) fn validate(spec: &PipelineSpec, text: &str, origin: &str) -> Result<()> {
    let c = Checker { text, origin };
    if spec.pipeline.is_empty()
        || !spec
            .pipeline
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-')
    {
        return Err(c.fail(
            &["pipeline"],
            format!(
                "`{}` is not a valid pipeline name (use a-z, 0-9, `_`, `-`)",
                spec.pipeline
            ),
        ));
    }
    if spec.sources.is_empty() {
        return Err(c.fail(&["sources"], "a pipeline needs at least one source"));
    }
    for (name, source) in &spec.sources {
        if !is_identifier(name) {
            return Err(c.fail(&["sources", name], "source names use a-z, 0-9 and `_`"));
        }
        validate_source(&c, name, source)?;
    }
    if spec.tables.is_empty() {
        return Err(c.fail(&["tables"], "a pipeline needs at least one table"));
    }
    let names: HashSet<&str> = spec.tables.keys().map(String::as_str).collect();
    let mut fed_sources = HashSet::new();
    for (name, table) in &spec.tables {
        let Some((layer_name, short)) = name.split_once('.') else {
            return Err(c.fail(
                &["tables", name],
                "table names are `layer.name`, e.g. `silver.events`",
            ));
        };
        let Some(layer) = Layer::parse(layer_name) else {
            return Err(c.fail(
                &["tables", name],
                format!("unknown layer `{layer_name}`: use bronze, silver or gold"),
            ));
        };
        if !is_identifier(short) {
            return Err(c.fail(
                &["tables", name],
                "table names use a-z, 0-9 and `_` after the layer",
            ));
        }
        if layer == Layer::Silver && names.contains(TableSpec::quarantine_name(name).as_str()) {
            return Err(c.fail(
                &["tables", name],
                format!(
                    "`{}` is reserved for this table's quarantine",
                    TableSpec::quarantine_name(name)
                ),
            ));
        }
        match layer {
            Layer::Bronze => {
                validate_bronze(&c, spec, name, table)?;
                if !fed_sources.insert(table.from.as_str()) {
                    return Err(c.fail(
                        &["tables", name, "from"],
                        format!("source `{}` already feeds another bronze table", table.from),
                    ));
                }
            }
            Layer::Silver => validate_silver(&c, spec, name, table)?,
            Layer::Gold => validate_gold(&c, spec, name, table)?,
        }
        validate_maintenance(&c, name, &table.maintenance)?;
        validate_checks(&c, name, layer, table)?;
        validate_column_descriptions(&c, name, layer, table)?;
        validate_retention(&c, name, layer, table)?;
    }
    for name in spec.sources.keys() {
        if !fed_sources.contains(name.as_str()) {
            return Err(c.fail(&["sources", name], "no bronze table reads this source"));
        }
    }
    Ok(())
}

/// Every column a table of `layer` has: bronze's fixed ones, silver's declared and metadata
/// columns; `None` for gold (known once its SQL is planned).
fn known_columns(layer: Layer, table: &TableSpec) -> Option<HashSet<String>> {
    match layer {
        Layer::Bronze => Some(BRONZE_COLUMNS.iter().map(|c| c.to_string()).collect()),
        // An inferred schema's columns are known once records arrive.
        Layer::Silver if inferred(table) => None,
        Layer::Silver => Some(
            silver_columns(table)
                .into_iter()
                .map(|(n, _)| n)
                .chain(SILVER_METADATA_COLUMNS.iter().map(|c| c.to_string()))
                .collect(),
        ),
        Layer::Gold => None,
    }
}

/// Retention windows are above zero, and data retention names a time column the table has
/// (silver and gold must name one; gold's is checked once its SQL is planned).
fn validate_retention(c: &Checker, name: &str, layer: Layer, table: &TableSpec) -> Result<()> {
    let retention = &table.retention;
    let path = |field| ["tables", name, "retention", field];
    for (field, window) in [
        ("data", retention.data),
        ("history", retention.history),
        ("vacuum_after", retention.vacuum_after),
    ] {
        if window.is_some_and(|w| w.is_zero()) {
            return Err(c.fail(&path(field), "a retention window must be above zero"));
        }
    }
    if retention.data.is_none() {
        if retention.column.is_some() {
            return Err(c.fail(
                &path("column"),
                "`column` is what `data` is measured on: give `data` too",
            ));
        }
        return Ok(());
    }
    let Some(column) = retention.data_column(layer) else {
        return Err(c.fail(
            &path("column"),
            "data retention needs the time column it is measured on (`column: ts`)",
        ));
    };
    if known_columns(layer, table).is_some_and(|k| !k.contains(column)) {
        return Err(c.fail(&path("column"), format!("unknown column `{column}`")));
    }
    Ok(())
}

/// Column descriptions name columns the table has: bronze's fixed ones, silver's declared
/// and metadata columns (gold's are known once its SQL is planned).
fn validate_column_descriptions(
    c: &Checker,
    name: &str,
    layer: Layer,
    table: &TableSpec,
) -> Result<()> {
    let known = known_columns(layer, table);
    for (column, text) in &table.column_descriptions {
        let path = ["tables", name, "column_descriptions", column.as_str()];
        if known.as_ref().is_some_and(|k| !k.contains(column)) {
            return Err(c.fail(&path, format!("unknown column `{column}`")));
        }
        if text.trim().is_empty() {
            return Err(c.fail(&path, "a description says something"));
        }
    }
    Ok(())
}

/// Checks name columns the table has (silver: its declared columns; gold's are known once
/// its SQL is planned, so a missing one fails the check at run time, naming it), with
/// bounds that can be met.
fn validate_checks(c: &Checker, name: &str, layer: Layer, table: &TableSpec) -> Result<()> {
    let checks = &table.checks;
    let path = |field| ["tables", name, "checks", field];
    if checks.freshness_sla.is_some_and(|sla| sla.is_zero()) {
        return Err(c.fail(
            &path("freshness_sla"),
            "the freshness SLA must be above zero",
        ));
    }
    if layer == Layer::Bronze && checks.on_rows() {
        return Err(c.fail(
            &["tables", name, "checks"],
            "bronze tables hold raw records: only `freshness_sla` applies; check columns on \
             silver or gold",
        ));
    }
    let known: Option<HashSet<String>> = (layer == Layer::Silver && !inferred(table))
        .then(|| silver_columns(table).into_iter().map(|(n, _)| n).collect());
    let columns = checks
        .unique
        .iter()
        .map(|c| ("unique", c))
        .chain(
            checks
                .max_null_fraction
                .keys()
                .map(|c| ("max_null_fraction", c)),
        )
        .chain(checks.range.keys().map(|c| ("range", c)));
    for (field, column) in columns {
        if known.as_ref().is_some_and(|k| !k.contains(column)) {
            return Err(c.fail(&path(field), format!("unknown column `{column}`")));
        }
    }
    for (column, fraction) in &checks.max_null_fraction {
        if !(0.0..=1.0).contains(fraction) {
            return Err(c.fail(
                &path("max_null_fraction"),
                format!("`{column}`: a fraction is between 0 and 1, not {fraction}"),
            ));
        }
    }
    for (column, range) in &checks.range {
        match (range.min, range.max) {
            (None, None) => {
                return Err(c.fail(
                    &path("range"),
                    format!("`{column}`: give `min`, `max` or both"),
                ));
            }
            (Some(min), Some(max)) if min > max => {
                return Err(c.fail(
                    &path("range"),
                    format!("`{column}`: min {min} is above max {max}"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn validate_maintenance(c: &Checker, name: &str, m: &super::MaintenanceSpec) -> Result<()> {
    let path = |field| ["tables", name, "maintenance", field];
    if m.target_file_mb == 0 {
        return Err(c.fail(
            &path("target_file_mb"),
            "the target file size must be at least 1 MB",
        ));
    }
    if m.min_small_files < 2 {
        return Err(c.fail(
            &path("min_small_files"),
            "compaction needs at least 2 small files to merge",
        ));
    }
    if m.zorder_by.len() > 4 {
        return Err(c.fail(
            &path("zorder_by"),
            format!(
                "Z-order interleaves 1 to 4 columns, not {}",
                m.zorder_by.len()
            ),
        ));
    }
    if m.every.is_zero() {
        return Err(c.fail(
            &path("every"),
            "the maintenance interval must be above zero",
        ));
    }
    Ok(())
}

fn validate_source(c: &Checker, name: &str, source: &SourceSpec) -> Result<()> {
    match source {
        SourceSpec::Generator(g) => {
            let path = ["sources", name, "generator"];
            if g.partitions == 0 || g.partitions > 1024 {
                return Err(c.fail(
                    &[&path[..], &["partitions"]].concat(),
                    "must be between 1 and 1024",
                ));
            }
            for (field, value) in [
                ("duplicate_rate", g.duplicate_rate),
                ("invalid_rate", g.invalid_rate),
                ("late_rate", g.late_rate),
            ] {
                if !(0.0..=1.0).contains(&value) {
                    return Err(c.fail(
                        &[&path[..], &[field]].concat(),
                        format!("{value} is not a share between 0 and 1"),
                    ));
                }
            }
            if g.duplicate_rate + g.invalid_rate > 1.0 {
                return Err(c.fail(
                    &[&path[..], &["invalid_rate"]].concat(),
                    "duplicate_rate + invalid_rate exceeds 1",
                ));
            }
            if g.users == 0 {
                return Err(c.fail(&[&path[..], &["users"]].concat(), "needs at least one user"));
            }
            if g.step_ms == 0 {
                return Err(c.fail(&[&path[..], &["step_ms"]].concat(), "must be above 0"));
            }
            if g.rate == Some(0) {
                return Err(c.fail(
                    &[&path[..], &["rate"]].concat(),
                    "must be above 0 (omit it for as fast as possible)",
                ));
            }
            if chrono::DateTime::parse_from_rfc3339(&g.start).is_err() {
                return Err(c.fail(
                    &[&path[..], &["start"]].concat(),
                    format!("`{}` is not an RFC 3339 timestamp", g.start),
                ));
            }
        }
        SourceSpec::Files(f) => {
            let path = ["sources", name, "files"];
            let at = |field: &'static str| [&path[..], &[field]].concat();
            if f.path.trim().is_empty() {
                return Err(c.fail(&at("path"), "must name a directory or an s3:// prefix"));
            }
            if let Some((scheme, _)) = f.path.split_once("://")
                && scheme != "s3"
                && scheme != "file"
            {
                return Err(c.fail(
                    &at("path"),
                    format!("`{scheme}://` is not a supported store (a local directory, file:// or s3://)"),
                ));
            }
            if let Err(message) = f.selector() {
                return Err(c.fail(&at("pattern"), message));
            }
            if !(1..=1024).contains(&f.partitions) {
                return Err(c.fail(&at("partitions"), "must be between 1 and 1024"));
            }
            if f.full_listing_every == 0 {
                return Err(c.fail(&at("full_listing_every"), "must be at least 1"));
            }
        }
        SourceSpec::Kafka(k) => {
            let path = ["sources", name, "kafka"];
            if k.brokers.split(',').all(|b| b.trim().is_empty()) {
                return Err(c.fail(
                    &[&path[..], &["brokers"]].concat(),
                    "must list at least one host:port",
                ));
            }
            if let Some(bad) = k
                .brokers
                .split(',')
                .map(str::trim)
                .find(|b| !b.contains(':'))
            {
                return Err(c.fail(
                    &[&path[..], &["brokers"]].concat(),
                    format!("`{bad}` is not host:port"),
                ));
            }
            let legal = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-');
            if k.topic.is_empty() || k.topic.len() > 249 || !k.topic.chars().all(legal) {
                return Err(c.fail(
                    &[&path[..], &["topic"]].concat(),
                    format!(
                        "`{}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)",
                        k.topic
                    ),
                ));
            }
            if let Some(reserved) = k
                .properties
                .keys()
                .find(|p| crate::spec::RESERVED_KAFKA_PROPERTIES.contains(&p.as_str()))
            {
                return Err(c.fail(
                    &[&path[..], &["properties", reserved.as_str()]].concat(),
                    "is set by Smelter (positions come from the bronze txn versions) and cannot be overridden",
                ));
            }
        }
    }
    Ok(())
}

fn forbid(
    c: &Checker,
    name: &str,
    layer: Layer,
    table: &TableSpec,
    allowed: &[&str],
) -> Result<()> {
    let present = [
        ("parse", table.parse.is_some()),
        ("flatten", table.flatten),
        ("dedupe", table.dedupe.is_some()),
        ("expectations", !table.expectations.is_empty()),
        ("sql", table.sql.is_some()),
        ("keys", !table.keys.is_empty()),
        ("merge", table.merge.is_some()),
        ("joins", !table.joins.is_empty()),
        ("change_data_feed", table.change_data_feed),
        (
            "on_incompatible",
            table.on_incompatible != super::OnIncompatible::Refuse,
        ),
    ];
    for (field, is_set) in present {
        if is_set && !allowed.contains(&field) {
            return Err(c.fail(
                &["tables", name, field],
                format!("`{field}` does not apply to {} tables", layer.as_str()),
            ));
        }
    }
    Ok(())
}

fn validate_bronze(c: &Checker, spec: &PipelineSpec, name: &str, table: &TableSpec) -> Result<()> {
    forbid(c, name, Layer::Bronze, table, &[])?;
    if !spec.sources.contains_key(&table.from) {
        return Err(c.fail(
            &["tables", name, "from"],
            format!("unknown source `{}`", table.from),
        ));
    }
    for column in &table.partition_by {
        if !["ingest_date", "topic", "source", "partition"].contains(&column.as_str()) {
            return Err(c.fail(&["tables", name, "partition_by"], format!("bronze tables partition by ingest_date, topic, source or partition, not `{column}`")));
        }
    }
    Ok(())
}

/// Whether a silver table's schema is inferred at run time (`parse.schema: infer`).
fn inferred(table: &TableSpec) -> bool {
    table.parse.as_ref().is_some_and(|p| p.schema.inferred())
}

/// What a table whose schema is inferred may not declare, since it names columns that are
/// not known before records arrive (or, for `flatten`, cannot be told apart in the table
/// the inferred schema is recorded in): checked before the columns are.
fn validate_inferred(c: &Checker, name: &str, table: &TableSpec) -> Result<()> {
    let Some(parse) = &table.parse else {
        return Ok(());
    };
    if !parse.schema.inferred() {
        if parse.sample.is_some() {
            return Err(c.fail(
                &["tables", name, "parse", "sample"],
                "`sample` is how many records `schema: infer` infers from; this schema is declared",
            ));
        }
        return Ok(());
    }
    if !matches!(parse.format, PayloadFormat::Json | PayloadFormat::Avro) {
        return Err(c.fail(
            &["tables", name, "parse", "schema"],
            format!(
                "`schema: infer` reads json and avro records; declare the schema of {} records",
                match parse.format {
                    PayloadFormat::Csv => "csv",
                    _ => "debezium",
                }
            ),
        ));
    }
    if parse.sample == Some(0) {
        return Err(c.fail(
            &["tables", name, "parse", "sample"],
            "infer from at least one record",
        ));
    }
    let pin = "pin the schema first (`smelter infer --source NAME` prints it) to use it";
    let refused = [
        ("flatten", table.flatten),
        ("dedupe", table.dedupe.is_some()),
        ("expectations", !table.expectations.is_empty()),
        ("merge", table.merge.is_some()),
        ("partition_by", !table.partition_by.is_empty()),
        ("checks", table.checks.on_rows()),
        (
            "on_incompatible",
            table.on_incompatible != super::OnIncompatible::Refuse,
        ),
    ];
    for (field, is_set) in refused {
        if is_set {
            return Err(c.fail(
                &["tables", name, field],
                format!("`{field}` names columns, and an inferred schema has none before records arrive; {pin}"),
            ));
        }
    }
    Ok(())
}

/// Whether `ty` holds bytes anywhere inside it.
fn nested_binary(ty: &FieldType) -> bool {
    match ty {
        FieldType::Primitive(p) => *p == Primitive::Binary,
        FieldType::Struct(inner) => inner.fields.values().any(nested_binary),
        FieldType::List(inner) | FieldType::Map(inner) => nested_binary(inner),
    }
}

/// Output columns of a silver table (declared, flattened if asked, plus metadata).
pub fn silver_columns(table: &TableSpec) -> Vec<(String, Option<FieldType>)> {
    let mut out: Vec<(String, Option<FieldType>)> = Vec::new();
    out.extend(
        table
            .declared_columns()
            .into_iter()
            .map(|(n, t)| (n, Some(t))),
    );
    let debezium = table
        .parse
        .as_ref()
        .is_some_and(|p| p.format == PayloadFormat::Debezium);
    for (i, column) in SILVER_METADATA_COLUMNS.iter().enumerate() {
        out.push((column.to_string(), None));
        if i == 0 && debezium {
            // The envelope's columns follow `_rescued_data`.
            out.extend(DEBEZIUM_COLUMNS.iter().map(|n| (n.to_string(), None)));
        }
        if i == 0
            && let Some(parse) = &table.parse
        {
            // Then the parts of the record asked for.
            out.extend(
                parse
                    .metadata
                    .iter()
                    .map(|f| (f.column().to_string(), None)),
            );
        }
    }
    if table.merge.as_ref().is_some_and(|m| m.scd == 2) {
        out.extend(HISTORY_COLUMNS.iter().map(|n| (n.to_string(), None)));
    }
    out
}

fn validate_silver(c: &Checker, spec: &PipelineSpec, name: &str, table: &TableSpec) -> Result<()> {
    forbid(
        c,
        name,
        Layer::Silver,
        table,
        &[
            "parse",
            "flatten",
            "dedupe",
            "expectations",
            "merge",
            "change_data_feed",
            "on_incompatible",
        ],
    )?;
    match spec.tables.get(&table.from) {
        None => {
            return Err(c.fail(
                &["tables", name, "from"],
                format!("unknown table `{}`", table.from),
            ));
        }
        Some(_) if table_layer(&table.from) != Some(Layer::Bronze) => {
            return Err(c.fail(
                &["tables", name, "from"],
                format!(
                    "silver tables read a bronze table; `{}` is not one",
                    table.from
                ),
            ));
        }
        Some(_) => {}
    }
    if table.parse.is_none() {
        return Err(c.fail(
            &["tables", name, "parse"],
            "silver tables need `parse: { format: json, schema: {...} }`",
        ));
    }
    validate_inferred(c, name, table)?;
    if table.merge.is_some() && table.on_incompatible != super::OnIncompatible::Refuse {
        return Err(c.fail(
            &["tables", name, "on_incompatible"],
            "a merged table's columns cannot change yet, so there is nothing incompatible to handle",
        ));
    }
    if let Some(parse) = &table.parse {
        match (&parse.registry, parse.format) {
            (None, PayloadFormat::Avro) => {
                return Err(c.fail(
                    &["tables", name, "parse", "registry"],
                    "`format: avro` reads Confluent-framed records: name their schema \
                     registry (`registry: http://host:8081`)",
                ));
            }
            (Some(_), format) if !matches!(format, PayloadFormat::Avro | PayloadFormat::Json) => {
                return Err(c.fail(
                    &["tables", name, "parse", "registry"],
                    "a schema registry is read for `format: avro` and `format: json` \
                     (Confluent-framed records)",
                ));
            }
            (Some(url), _) if !url.starts_with("http://") => {
                return Err(c.fail(
                    &["tables", name, "parse", "registry"],
                    format!("`{url}` is not an http:// URL"),
                ));
            }
            _ => {}
        }
    }
    if let Some(parse) = &table.parse {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = parse.metadata.iter().find(|f| !seen.insert(**f)) {
            return Err(c.fail(
                &["tables", name, "parse", "metadata"],
                format!("`{}` is listed twice", twice.bronze_column()),
            ));
        }
    }
    let columns = silver_columns(table);
    // Bytes are decoded from base64 by the column builders; a nested value (a list, a map,
    // a struct kept whole) is built by the JSON reader, which would take the text as bytes.
    for (column, ty) in &columns {
        if let Some(ty) = ty
            && !matches!(ty, FieldType::Primitive(_))
            && nested_binary(ty)
        {
            return Err(c.fail(
                &["tables", name, "parse", "schema"],
                format!(
                    "`{column}` holds `binary` inside a list, a map or a struct that is not \
                     flattened; bytes are supported as a column or a flattened field"
                ),
            ));
        }
    }
    let column_names: HashSet<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    if column_names.len() != columns.len() {
        return Err(c.fail(
            &["tables", name, "parse", "schema"],
            "two fields map to the same column name after flattening",
        ));
    }
    for column in &table.partition_by {
        if !column_names.contains(column.as_str()) {
            return Err(c.fail(
                &["tables", name, "partition_by"],
                format!("unknown column `{column}`"),
            ));
        }
    }
    if let Some(dedupe) = &table.dedupe {
        if dedupe.keys.is_empty() {
            return Err(c.fail(
                &["tables", name, "dedupe", "keys"],
                "list at least one key column",
            ));
        }
        for key in &dedupe.keys {
            if !column_names.contains(key.as_str()) {
                return Err(c.fail(
                    &["tables", name, "dedupe", "keys"],
                    format!("unknown column `{key}`; columns are {}", list(&columns)),
                ));
            }
        }
        if dedupe.within.is_some() {
            let timestamps: Vec<&str> = columns
                .iter()
                .filter(|(_, t)| matches!(t, Some(FieldType::Primitive(Primitive::Timestamp))))
                .map(|(n, _)| n.as_str())
                .collect();
            match &dedupe.by {
                Some(by) if !timestamps.contains(&by.as_str()) => {
                    return Err(c.fail(
                        &["tables", name, "dedupe", "by"],
                        format!("`{by}` is not a timestamp column"),
                    ));
                }
                None if timestamps.len() != 1 => {
                    return Err(c.fail(&["tables", name, "dedupe", "within"], "name the event-time column with `by:` (there is not exactly one timestamp column)"));
                }
                _ => {}
            }
        }
    }
    if let Some(merge) = &table.merge {
        validate_merge(c, name, table, merge, &columns)?;
    }
    let mut rules = HashSet::new();
    for (i, rule) in table.expectations.iter().enumerate() {
        let index = i.to_string();
        if !is_identifier(&rule.name) {
            return Err(c.fail(
                &["tables", name, "expectations", &index, "name"],
                format!("`{}`: rule names use a-z, 0-9 and `_`", rule.name),
            ));
        }
        if !rules.insert(rule.name.as_str()) {
            return Err(c.fail(
                &["tables", name, "expectations", &index, "name"],
                format!("duplicate rule name `{}`", rule.name),
            ));
        }
        if rule.expr.trim().is_empty() {
            return Err(c.fail(
                &["tables", name, "expectations", &index, "expr"],
                "empty expression",
            ));
        }
    }
    Ok(())
}

fn validate_merge(
    c: &Checker,
    name: &str,
    table: &TableSpec,
    merge: &super::MergeSpec,
    columns: &[(String, Option<FieldType>)],
) -> Result<()> {
    let known = |column: &str| columns.iter().any(|(n, _)| n == column);
    if merge.keys.is_empty() {
        return Err(c.fail(
            &["tables", name, "merge", "keys"],
            "list at least one key column",
        ));
    }
    for key in merge.keys.iter().chain([&merge.sequence_by]) {
        if !known(key) {
            let field = if *key == merge.sequence_by {
                "sequence_by"
            } else {
                "keys"
            };
            return Err(c.fail(
                &["tables", name, "merge", field],
                format!("unknown column `{key}`; columns are {}", list(columns)),
            ));
        }
    }
    if let Some((column, _)) = columns.iter().find(|(n, t)| {
        merge.keys.contains(n)
            && matches!(
                t,
                Some(FieldType::Struct(_) | FieldType::List(_) | FieldType::Map(_))
            )
    }) {
        return Err(c.fail(
            &["tables", name, "merge", "keys"],
            format!("`{column}` is nested; keys are scalar columns"),
        ));
    }
    if !matches!(merge.scd, 1 | 2) {
        return Err(c.fail(
            &["tables", name, "merge", "scd"],
            format!(
                "SCD type {} is not supported: `scd: 1` keeps the current row per key, \
                 `scd: 2` every version",
                merge.scd
            ),
        ));
    }
    if !table.partition_by.is_empty() {
        return Err(c.fail(
            &["tables", name, "partition_by"],
            "merged tables are not partitioned (a merge rewrites the files that hold its keys)",
        ));
    }
    if merge
        .delete_when
        .as_deref()
        .is_some_and(|p| p.trim().is_empty())
    {
        return Err(c.fail(&["tables", name, "merge", "delete_when"], "empty predicate"));
    }
    Ok(())
}

fn validate_gold(c: &Checker, spec: &PipelineSpec, name: &str, table: &TableSpec) -> Result<()> {
    forbid(c, name, Layer::Gold, table, &["sql", "keys", "joins"])?;
    match spec.tables.get(&table.from) {
        None => {
            return Err(c.fail(
                &["tables", name, "from"],
                format!("unknown table `{}`", table.from),
            ));
        }
        Some(_) if table_layer(&table.from) != Some(Layer::Silver) => {
            return Err(c.fail(
                &["tables", name, "from"],
                format!(
                    "gold tables read a silver table; `{}` is not one",
                    table.from
                ),
            ));
        }
        Some(_) => {}
    }
    match &table.sql {
        None => return Err(c.fail(&["tables", name, "sql"], "gold tables need `sql:`")),
        Some(sql) if sql.trim().is_empty() => {
            return Err(c.fail(&["tables", name, "sql"], "empty SQL"));
        }
        Some(sql) if !sql.contains(table.from.as_str()) => {
            return Err(c.fail(
                &["tables", name, "sql"],
                format!("the SQL does not read `{}` (its `from`)", table.from),
            ));
        }
        Some(_) => {}
    }
    let sql = table.sql.as_deref().unwrap_or_default();
    for (i, joined) in table.joins.iter().enumerate() {
        let index = i.to_string();
        let path = ["tables", name, "joins", index.as_str()];
        match spec.tables.get(joined) {
            None => return Err(c.fail(&path, format!("unknown table `{joined}`"))),
            Some(_) if joined == &table.from || joined == name => {
                return Err(c.fail(&path, format!("`{joined}` is the table's `from` or itself")));
            }
            Some(_) if table_layer(joined) == Some(Layer::Bronze) => {
                return Err(c.fail(
                    &path,
                    format!("gold tables read silver or gold tables; `{joined}` is bronze"),
                ));
            }
            Some(_) if !reads(sql, joined) => {
                return Err(c.fail(&path, format!("the SQL does not read `{joined}`")));
            }
            Some(_) => {}
        }
    }
    // Every declared table the SQL reads is followed: a refresh reads each at the version
    // its txn records.
    for other in spec.tables.keys() {
        if other != &table.from
            && other != name
            && !table.joins.contains(other)
            && reads(sql, other)
        {
            return Err(c.fail(
                &["tables", name, "sql"],
                format!("the SQL reads `{other}`, which is neither its `from` nor in its `joins`"),
            ));
        }
    }
    Ok(())
}

/// Whether `sql` names `table` (`layer.name`, not as the prefix of a longer name).
fn reads(sql: &str, table: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.match_indices(table).any(|(at, _)| {
        let before = lower[..at].chars().next_back();
        let after = lower[at + table.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

fn list(columns: &[(String, Option<FieldType>)]) -> String {
    columns
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
