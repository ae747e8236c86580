//! A silver table whose schema is inferred at run time (`parse: { schema: infer }`).
//!
//! * **First schema**: before the table exists, its refine task infers a schema from the
//!   first records bronze holds (at most `parse.sample`, 1,000 by default), with the same
//!   rules as `smelter infer` ([`super::infer`]), and creates the table with it.
//! * **Recorded in the table**: the table's own columns before `_rescued_data` are the
//!   schema ([`crate::tasks::schemas::recorded_schema`]); a restarted or moved task reads it
//!   back from there, so there is nothing to keep in step beside the Delta log.
//! * **Grown, additively**: records are decoded under the schema with every field rescuing
//!   ([`super::decode::Rescue::All`]): a field the schema does not have, and a value whose
//!   type its column does not take, land in `_rescued_data` under their path, with the row.
//!   After each pass, the rescued fields that are new — not a declared field, not inside a
//!   list — are inferred from their values ([`grow`]) and added to the schema; the pass is
//!   then decoded again under the grown schema, and its commit evolves the table (the lake
//!   crate's `evolve`) with the rows that need it: exactly once, under the commit lock.
//!   A field whose type conflicts keeps its column's type; its other values stay rescued.
//!
//! Invariant: no record is lost to inference. A record lands in silver (values its schema
//! does not take kept in `_rescued_data`) unless it is not a JSON object, which the
//! quarantine takes as for a declared schema.

use indexmap::IndexMap;
use serde_json::{Map, Value};
use smelter_common::spec::{FieldType, SchemaSpec};

use super::infer;

/// How many records a first schema is inferred from unless the spec says.
pub const DEFAULT_SAMPLE: usize = 1_000;

/// The first schema of an inferred table, from the first records: `None` if none of them
/// is a JSON object with a field.
pub fn first<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Option<SchemaSpec> {
    infer::infer(payloads).schema
}

/// The fields the rescued data of a pass (`_rescued_data` values: JSON objects of values by
/// dotted path) adds to `current`, inferred from their values: `current` grown and the
/// paths added, or `None` when nothing is new. A rescued path that is a declared field, or
/// under a field that is not a struct, is a value of another type (a conflict) and adds
/// nothing; paths inside lists (`cart[0].coupon`) stay rescued.
pub fn grow<'a>(
    current: &SchemaSpec,
    rescued: impl IntoIterator<Item = &'a str>,
) -> Option<(SchemaSpec, Vec<String>)> {
    let mut records = Vec::new();
    for text in rescued {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        let mut record = Map::new();
        for (path, value) in fields {
            if path.contains('[') || value.is_null() {
                continue;
            }
            let steps: Vec<&str> = path.split('.').collect();
            if new_at(current, &steps) {
                insert(&mut record, &steps, value);
            }
        }
        if !record.is_empty() {
            records.push(Value::Object(record).to_string());
        }
    }
    let additions = infer::infer(records.iter().map(String::as_bytes)).schema?;
    let mut grown = current.clone();
    let mut added = Vec::new();
    merge(&mut grown.fields, additions.fields, "", &mut added);
    (!added.is_empty()).then_some((grown, added))
}

/// Whether `path` names a field `schema` does not have, under structs it has (or under
/// none).
fn new_at(schema: &SchemaSpec, path: &[&str]) -> bool {
    let mut fields = &schema.fields;
    for (i, step) in path.iter().enumerate() {
        match fields.get(*step) {
            None => return true,
            Some(FieldType::Struct(inner)) if i + 1 < path.len() => fields = &inner.fields,
            Some(_) => return false,
        }
    }
    false
}

/// Puts `value` at `path` in `record`, making the objects on the way.
fn insert(record: &mut Map<String, Value>, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = record;
    for step in parents {
        let next = at
            .entry(step.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            return;
        }
        let Value::Object(inner) = next else { return };
        at = inner;
    }
    at.insert(last.to_string(), value);
}

/// Adds to `into` the fields of `from` it lacks, recursing into structs both have.
fn merge(
    into: &mut IndexMap<String, FieldType>,
    from: IndexMap<String, FieldType>,
    prefix: &str,
    added: &mut Vec<String>,
) {
    for (name, ty) in from {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (into.get_mut(&name), ty) {
            (None, ty) => {
                into.insert(name, ty);
                added.push(path);
            }
            (Some(FieldType::Struct(have)), FieldType::Struct(more)) => {
                merge(&mut have.fields, more.fields, &path, added);
            }
            // A conflict: the column keeps its type.
            (Some(_), _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(yaml: &str) -> SchemaSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn new_fields_are_added_nested_and_in_place_conflicts_are_not() {
        let current =
            schema("id: string\nscore: long\nvisitor: { id: string }\ncart: [ { sku: string } ]\n");
        let rescued = [
            r#"{"coupon":"WINTER","visitor.geo":{"city":"Lyon"}}"#,
            r#"{"score":"high"}"#,
            r#"{"cart[0].gift":true,"visitor.id":7}"#,
            r#"{"coupon":"SPRING","visitor.age":41}"#,
            "not json",
        ];
        let (grown, added) = grow(&current, rescued).unwrap();
        assert_eq!(added, ["coupon", "visitor.geo", "visitor.age"]);
        assert_eq!(
            grown,
            schema(
                "id: string\nscore: long\nvisitor: { id: string, geo: { city: string }, age: long }\n\
                 cart: [ { sku: string } ]\ncoupon: string\n"
            )
        );
        // Conflicts and list elements alone add nothing.
        assert_eq!(
            grow(&current, [r#"{"score":"high","cart[1].gift":true}"#]),
            None
        );
        assert_eq!(grow(&grown, rescued), None);
    }

    #[test]
    fn a_first_schema_comes_from_the_records_in_their_order() {
        let records: [&[u8]; 3] = [
            br#"{"b":1,"a":{"x":"2026-11-01T10:00:00Z"}}"#,
            br#"[1]"#,
            br#"{"b":2.5,"c":null}"#,
        ];
        assert_eq!(
            first(records),
            Some(schema("b: double\na: { x: timestamp }\nc: string\n"))
        );
        assert_eq!(first([b"[1]".as_slice()]), None);
    }
}
