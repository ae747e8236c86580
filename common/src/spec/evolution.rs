//! Whether a new spec may replace the one a pipeline runs, for the tables that already
//! exist: `smelter apply` refuses a change the tables cannot follow before any task sees
//! it.
//!
//! A silver table's declared columns may change as its Delta table can (the writer
//! evolves the table in the commit of the first rows that need it, see the lake crate's
//! `evolve` module): new columns and new nested fields, and the widenings `int` → `long`,
//! `float` → `double`, `date` → `timestamp`, and a decimal to one with as many digits
//! before and after the point or more. A column the new spec no longer declares
//! stays in the table, null from then on — unless the table needs it: a dedupe key, a
//! merge key or sequence, a partition column, a table check's column. Any other change of
//! type (`long` → `string`, `long` → `int`, a struct become a scalar) is refused with the
//! column's name, and so are changes of how a merged table is merged (its keys, sequence,
//! SCD type) or of its columns: a merged table is rewritten by key, and its schema does
//! not evolve (yet).
//!
//! A table that says what to do with such a change (`on_incompatible`) takes it:
//! `rescue` keeps the table's column type (values that do not fit go to `_rescued_data`),
//! and `new_version` starts the table over under the new schema (so a needed column may
//! go too). The checks above are then skipped for its columns, not for its merge.

use crate::Error;
use crate::spec::{FieldType, OnIncompatible, PipelineSpec, Primitive, TableSpec};

/// Checks that `new` may replace `old` (same pipeline); `origin` names the new spec in
/// errors.
pub fn check_change(old: &PipelineSpec, new: &PipelineSpec, origin: &str) -> Result<(), Error> {
    for (name, table) in &new.tables {
        let Some(before) = old.tables.get(name) else {
            continue;
        };
        check_table(name, before, table).map_err(|(field, message)| Error::Spec {
            origin: origin.to_string(),
            line: None,
            field: format!("tables.{name}.{field}"),
            message,
        })?;
    }
    Ok(())
}

type Refusal = (String, String);

fn check_table(name: &str, old: &TableSpec, new: &TableSpec) -> Result<(), Refusal> {
    let (before, after) = (old.declared_columns(), new.declared_columns());
    if old.merge != new.merge {
        if let (Some(o), Some(n)) = (&old.merge, &new.merge)
            && (o.keys != n.keys || o.sequence_by != n.sequence_by || o.scd != n.scd)
        {
            return Err((
                "merge".into(),
                format!(
                    "{name} is merged by keys {:?} on {} (SCD {}); changing its keys, sequence \
                     or SCD type needs a new table",
                    o.keys, o.sequence_by, o.scd
                ),
            ));
        }
        if old.merge.is_some() != new.merge.is_some() {
            return Err((
                "merge".into(),
                format!("{name} exists; turning a merge on or off needs a new table"),
            ));
        }
    }
    if old.merge.is_some() && before != after {
        return Err((
            "parse.schema".into(),
            format!("{name} is a merged table, and a merged table's columns cannot change yet"),
        ));
    }
    let ntz = |columns: &[(String, FieldType)]| {
        columns
            .iter()
            .find(|(_, ty)| holds(ty, Primitive::TimestampNtz))
            .map(|(n, _)| n.clone())
    };
    if let (None, Some(column)) = (ntz(&before), ntz(&after)) {
        return Err((
            format!("parse.schema.{column}"),
            format!(
                "{column} holds a timestamp_ntz, which needs Delta's timestampNtz table feature, \
                 and {name} was not created with it; declare it in a new table"
            ),
        ));
    }
    let handled = new.on_incompatible;
    for (column, ty) in &before {
        match after.iter().find(|(n, _)| n == column) {
            Some(_) if handled != OnIncompatible::Refuse => {}
            Some((_, new_ty)) => compatible(ty, new_ty, column)
                .map_err(|message| (format!("parse.schema.{column}"), message))?,
            None => {
                if handled == OnIncompatible::NewVersion {
                    continue;
                }
                if let Some(role) = needed(old, new, column) {
                    return Err((
                        format!("parse.schema.{column}"),
                        format!(
                            "{column} is {role} of {name}: it cannot be dropped from the schema"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether `ty` is or holds `primitive`.
fn holds(ty: &FieldType, primitive: Primitive) -> bool {
    match ty {
        FieldType::Primitive(p) => *p == primitive,
        FieldType::Struct(inner) => inner.fields.values().any(|t| holds(t, primitive)),
        FieldType::List(inner) | FieldType::Map(inner) => holds(inner, primitive),
    }
}

/// What the table needs `column` for, if anything.
fn needed(old: &TableSpec, new: &TableSpec, column: &str) -> Option<&'static str> {
    for spec in [old, new] {
        if spec
            .dedupe
            .as_ref()
            .is_some_and(|d| d.keys.iter().any(|k| k == column))
        {
            return Some("a dedupe key");
        }
        if let Some(merge) = &spec.merge
            && (merge.keys.iter().any(|k| k == column) || merge.sequence_by == column)
        {
            return Some("a merge key");
        }
        if spec.partition_by.iter().any(|c| c == column) {
            return Some("a partition column");
        }
    }
    let checks = &new.checks;
    if checks.unique.iter().any(|c| c == column)
        || checks.max_null_fraction.contains_key(column)
        || checks.range.contains_key(column)
    {
        return Some("checked by a table check");
    }
    None
}

/// Whether a column declared `old` may be declared `new`.
fn compatible(old: &FieldType, new: &FieldType, path: &str) -> Result<(), String> {
    match (old, new) {
        (FieldType::Primitive(a), FieldType::Primitive(b)) if a == b || widens(*a, *b) => Ok(()),
        (FieldType::Struct(a), FieldType::Struct(b)) => {
            for (field, ty) in &a.fields {
                if let Some(new_ty) = b.fields.get(field) {
                    compatible(ty, new_ty, &format!("{path}.{field}"))?;
                }
            }
            Ok(())
        }
        (FieldType::List(a), FieldType::List(b)) => compatible(a, b, &format!("{path}[]")),
        (FieldType::Map(a), FieldType::Map(b)) => compatible(a, b, &format!("{path}{{}}")),
        _ => Err(format!(
            "{path} changes from {} to {}, which is not a widening (a table's columns can \
             widen int to long, float to double and date to timestamp, and gain columns and \
             nested fields; write the change to a new table, or say what to do with it: \
             `on_incompatible: rescue` or `new_version`)",
            describe(old),
            describe(new)
        )),
    }
}

fn widens(from: Primitive, to: Primitive) -> bool {
    match (from, to) {
        (
            Primitive::Decimal {
                precision: p1,
                scale: s1,
            },
            Primitive::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s2 >= s1 && p2 - s2 >= p1 - s1,
        _ => matches!(
            (from, to),
            (Primitive::Int, Primitive::Long)
                | (Primitive::Float, Primitive::Double)
                | (Primitive::Date, Primitive::Timestamp)
        ),
    }
}

fn describe(ty: &FieldType) -> String {
    match ty {
        FieldType::Primitive(p) => p.name(),
        FieldType::Struct(_) => "a struct".into(),
        FieldType::List(inner) => format!("a list of {}", describe(inner)),
        FieldType::Map(inner) => format!("a map of {}", describe(inner)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
pipeline: p
sources: { s: { generator: { partitions: 1 } } }
tables:
  bronze.e: { from: s }
  silver.e:
    from: bronze.e
    parse: { format: json, schema: { id: string, n: int, day: date, user: { id: string }, tags: [string] } }
    flatten: FLATTEN
    dedupe: { keys: [KEY] }
"#;

    fn spec(flatten: bool, schema: &str) -> PipelineSpec {
        keyed(flatten, schema, "id")
    }

    fn keyed(flatten: bool, schema: &str, key: &str) -> PipelineSpec {
        let text = BASE
            .replace("FLATTEN", &flatten.to_string())
            .replace("KEY", key)
            .replace(
                "{ id: string, n: int, day: date, user: { id: string }, tags: [string] }",
                schema,
            );
        PipelineSpec::parse(&text, "p.yaml").unwrap()
    }

    fn refusal(old: &PipelineSpec, new: &PipelineSpec) -> String {
        check_change(old, new, "new.yaml").unwrap_err().to_string()
    }

    #[test]
    fn additions_and_widenings_are_accepted() {
        let old = spec(
            false,
            "{ id: string, n: int, day: date, user: { id: string }, tags: [string] }",
        );
        for schema in [
            "{ id: string, n: long, day: timestamp, user: { id: string, device: string }, tags: [string] }",
            "{ id: string, n: int, day: date, user: { id: string }, tags: [string], extra: double }",
            // A column no longer declared stays in the table, null from then on.
            "{ id: string, n: int, user: { id: string } }",
        ] {
            check_change(&old, &spec(false, schema), "new.yaml").unwrap();
        }
        let flat = spec(
            true,
            "{ id: string, n: int, day: date, user: { id: string }, tags: [string] }",
        );
        let wider = spec(
            true,
            "{ id: string, n: long, day: date, user: { id: string, device: string }, tags: [string] }",
        );
        check_change(&flat, &wider, "new.yaml").unwrap();
    }

    #[test]
    fn narrowing_and_other_type_changes_are_refused_naming_the_column() {
        let old = spec(
            false,
            "{ id: string, n: long, day: date, user: { id: string }, tags: [string] }",
        );
        let text = refusal(
            &old,
            &spec(
                false,
                "{ id: string, n: string, day: date, user: { id: string }, tags: [string] }",
            ),
        );
        assert!(
            text.contains("tables.silver.e.parse.schema.n") && text.contains("from long to string"),
            "{text}"
        );
        let text = refusal(
            &old,
            &spec(
                false,
                "{ id: string, n: int, day: date, user: { id: string }, tags: [string] }",
            ),
        );
        assert!(text.contains("from long to int"), "{text}");
        let text = refusal(
            &old,
            &spec(
                false,
                "{ id: string, n: long, day: date, user: { id: long }, tags: [string] }",
            ),
        );
        assert!(
            text.contains("user.id changes from string to long"),
            "{text}"
        );
        let text = refusal(
            &old,
            &spec(
                false,
                "{ id: string, n: long, day: date, user: string, tags: [string] }",
            ),
        );
        assert!(
            text.contains("user changes from a struct to string"),
            "{text}"
        );
        let text = refusal(
            &old,
            &spec(
                false,
                "{ id: string, n: long, day: date, user: { id: string }, tags: [long] }",
            ),
        );
        assert!(
            text.contains("tags[] changes from string to long"),
            "{text}"
        );
    }

    #[test]
    fn dropping_a_key_column_is_refused() {
        let old = spec(false, "{ id: string, n: long }");
        let text = refusal(&old, &keyed(false, "{ key: string, n: long }", "key"));
        assert!(text.contains("id is a dedupe key of silver.e"), "{text}");
    }

    #[test]
    fn a_table_that_says_what_to_do_takes_incompatible_changes() {
        let old = spec(false, "{ id: string, n: long }");
        let with = |text: &str, how: &str| {
            let mut spec = keyed(false, text, "key");
            spec.tables["silver.e"].on_incompatible = match how {
                "rescue" => OnIncompatible::Rescue,
                _ => OnIncompatible::NewVersion,
            };
            spec
        };
        let mut retyped = with("{ key: string, id: string, n: string }", "rescue");
        check_change(&old, &retyped, "new.yaml").unwrap();
        // Rescue keeps the table's columns: a dedupe key may still not go.
        let dropped = with("{ key: string, n: string }", "rescue");
        assert!(refusal(&old, &dropped).contains("id is a dedupe key of silver.e"));
        // A new version starts over: it may.
        check_change(
            &old,
            &with("{ key: string, n: string }", "new_version"),
            "new.yaml",
        )
        .unwrap();
        retyped.tables["silver.e"].on_incompatible = OnIncompatible::Refuse;
        assert!(refusal(&old, &retyped).contains("on_incompatible: rescue"));
    }

    #[test]
    fn a_timestamp_ntz_column_comes_only_with_a_new_table() {
        let old = spec(false, "{ id: string, n: long }");
        let text = refusal(
            &old,
            &spec(false, "{ id: string, n: long, local: timestamp_ntz }"),
        );
        assert!(
            text.contains("tables.silver.e.parse.schema.local") && text.contains("timestampNtz"),
            "{text}"
        );
        let born = spec(false, "{ id: string, local: timestamp_ntz }");
        check_change(
            &born,
            &spec(
                false,
                "{ id: string, local: timestamp_ntz, at: { l: timestamp_ntz } }",
            ),
            "new.yaml",
        )
        .unwrap();
    }
}
