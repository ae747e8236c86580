//! The Delta statistics of a file made by concatenating others ([`crate::concat`]),
//! derived from theirs without reading a row.
//!
//! A file's `stats` hold `numRecords`, and per column `nullCount`, `minValues` and
//! `maxValues` (nested as the columns are). Over a concatenation: records and null counts
//! add up, the least minimum and the greatest maximum hold. Readers skip files by these
//! bounds, so a merged bound must never be tighter than the rows: the invariant here is
//! that a column keeps a bound only when every input vouches for it —
//!
//! * an input without a column's bound had no value in it (its null count equals its
//!   records: delta-rs writes no bound for an all-null column), else the column's bound
//!   is dropped (an input whose statistics skipped the column may hold anything);
//! * values are compared as the column's type orders them, not as JSON text: timestamps
//!   as instants (`"…00.5Z"` sorts before `"…00Z"` as text), numbers as numbers, strings
//!   by their bytes, dates as text (fixed width); a column of another type, or values that
//!   do not read as the type says, lose the bound;
//! * a null count missing from one input is dropped, and `numRecords` missing from one
//!   makes the whole result `None` (no statistics: readers then read the file).

use arrow::datatypes::{DataType, Field, Fields};
use serde_json::{Map, Value};

/// The statistics of the concatenation of files with `stats` (in any order), whose
/// columns are `fields` (the table's); `None` if an input has none.
pub fn merge(fields: &Fields, stats: &[&str]) -> Option<String> {
    let parsed: Vec<Map<String, Value>> = stats
        .iter()
        .map(|s| match serde_json::from_str(s) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let records: Vec<u64> = parsed
        .iter()
        .map(|s| s.get("numRecords").and_then(Value::as_u64))
        .collect::<Option<_>>()?;
    let section = |key: &str| -> Vec<Option<&Map<String, Value>>> {
        parsed
            .iter()
            .map(|s| s.get(key).and_then(Value::as_object))
            .collect()
    };
    let nulls = section("nullCount");
    let mut out = Map::new();
    out.insert("numRecords".into(), records.iter().sum::<u64>().into());
    let inputs: Vec<Input> = (0..parsed.len())
        .map(|i| Input {
            records: Some(records[i]),
            nulls: nulls[i],
        })
        .collect();
    let mins = section("minValues");
    let maxs = section("maxValues");
    out.insert(
        "minValues".into(),
        Value::Object(bounds(fields, &inputs, &mins, Bound::Min)),
    );
    out.insert(
        "maxValues".into(),
        Value::Object(bounds(fields, &inputs, &maxs, Bound::Max)),
    );
    if let Some(counts) = null_counts(fields, &nulls) {
        out.insert("nullCount".into(), Value::Object(counts));
    }
    let tight: Vec<Option<bool>> = parsed
        .iter()
        .map(|s| s.get("tightBounds").and_then(Value::as_bool))
        .collect();
    if tight.iter().all(Option::is_some) {
        let all = tight.iter().all(|t| *t == Some(true));
        out.insert("tightBounds".into(), all.into());
    }
    Some(Value::Object(out).to_string())
}

/// Which bound is merged.
#[derive(Clone, Copy, PartialEq)]
enum Bound {
    Min,
    Max,
}

/// One input at one level of nesting: its records, and its null counts at that level.
#[derive(Clone, Copy)]
struct Input<'a> {
    records: Option<u64>,
    nulls: Option<&'a Map<String, Value>>,
}

impl Input<'_> {
    /// Whether every row of the input is null in `column` (so it has no bound there).
    fn all_null(&self, column: &str) -> bool {
        let nulls = self
            .nulls
            .and_then(|n| n.get(column))
            .and_then(Value::as_u64);
        matches!((nulls, self.records), (Some(n), Some(r)) if n == r)
    }
}

/// The merged bounds of `fields` at one level of nesting.
fn bounds(
    fields: &Fields,
    inputs: &[Input],
    values: &[Option<&Map<String, Value>>],
    bound: Bound,
) -> Map<String, Value> {
    let mut out = Map::new();
    for field in fields {
        let name = field.name();
        if let DataType::Struct(children) = field.data_type() {
            // Null counts nest like the bounds; records do not (a struct's rows are the
            // file's), so an all-null child is known from the nested null count only.
            let nested: Option<Vec<Option<&Map<String, Value>>>> = values
                .iter()
                .map(|v| v.map(|v| v.get(name).and_then(Value::as_object)))
                .collect();
            let Some(nested) = nested else { continue };
            let inner: Vec<Input> = inputs
                .iter()
                .map(|i| Input {
                    records: i.records,
                    nulls: i.nulls.and_then(|n| n.get(name)).and_then(Value::as_object),
                })
                .collect();
            let merged = bounds(children, &inner, &nested, bound);
            if !merged.is_empty() {
                out.insert(name.clone(), Value::Object(merged));
            }
            continue;
        }
        if let Some(value) = leaf(field, inputs, values, bound) {
            out.insert(name.clone(), value);
        }
    }
    out
}

/// The merged bound of one column, if every input vouches for it.
fn leaf(
    field: &Field,
    inputs: &[Input],
    values: &[Option<&Map<String, Value>>],
    bound: Bound,
) -> Option<Value> {
    let name = field.name();
    let mut best: Option<&Value> = None;
    for (input, values) in inputs.iter().zip(values) {
        match values.and_then(|v| v.get(name)).filter(|v| !v.is_null()) {
            Some(value) => {
                best = Some(match best {
                    None => {
                        order(field.data_type(), value, value)?;
                        value
                    }
                    Some(current) => {
                        let ordering = order(field.data_type(), value, current)?;
                        let better = match bound {
                            Bound::Min => ordering.is_lt(),
                            Bound::Max => ordering.is_gt(),
                        };
                        if better { value } else { current }
                    }
                });
            }
            None if input.all_null(name) => {}
            None => return None,
        }
    }
    best.cloned()
}

/// How `a` compares with `b` as values of `data_type`; `None` if the type is not one
/// whose bounds are merged, or a value does not read as the type.
fn order(data_type: &DataType, a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    use DataType::*;
    match data_type {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => {
            match (a.as_i64(), b.as_i64()) {
                (Some(a), Some(b)) => Some(a.cmp(&b)),
                _ => Some(a.as_u64()?.cmp(&b.as_u64()?)),
            }
        }
        Float16 | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..)
        | Decimal256(..) => {
            // Decimal bounds are JSON numbers, read as doubles by every Delta reader.
            a.as_f64()?.partial_cmp(&b.as_f64()?)
        }
        Utf8 | LargeUtf8 | Utf8View | Date32 | Date64 => {
            Some(a.as_str()?.as_bytes().cmp(b.as_str()?.as_bytes()))
        }
        Timestamp(_, zone) => {
            let (a, b) = (a.as_str()?, b.as_str()?);
            if zone.is_some() {
                let a = chrono::DateTime::parse_from_rfc3339(a).ok()?;
                let b = chrono::DateTime::parse_from_rfc3339(b).ok()?;
                Some(a.cmp(&b))
            } else {
                let parse = |s: &str| {
                    chrono::NaiveDateTime::parse_from_str(
                        s.trim_end_matches('Z'),
                        "%Y-%m-%dT%H:%M:%S%.f",
                    )
                    .ok()
                };
                Some(parse(a)?.cmp(&parse(b)?))
            }
        }
        _ => None,
    }
}

/// Null counts summed over the inputs at one level; `None` when nothing is left.
fn null_counts(
    fields: &Fields,
    nulls: &[Option<&Map<String, Value>>],
) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    for field in fields {
        let name = field.name();
        let values: Option<Vec<&Value>> =
            nulls.iter().map(|n| n.and_then(|n| n.get(name))).collect();
        let Some(values) = values else { continue };
        match field.data_type() {
            DataType::Struct(children) => {
                let nested: Vec<Option<&Map<String, Value>>> =
                    values.iter().map(|v| v.as_object()).collect();
                if nested.iter().all(Option::is_some)
                    && let Some(merged) = null_counts(children, &nested)
                {
                    out.insert(name.clone(), Value::Object(merged));
                }
            }
            _ => {
                let counts: Option<Vec<u64>> = values.iter().map(|v| v.as_u64()).collect();
                if let Some(counts) = counts {
                    out.insert(name.clone(), counts.iter().sum::<u64>().into());
                }
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Schema, TimeUnit};
    use serde_json::json;

    fn fields() -> Fields {
        Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("price", DataType::Decimal128(10, 2), true),
            Field::new(
                "user",
                DataType::Struct(Fields::from(vec![Field::new(
                    "country",
                    DataType::Utf8,
                    true,
                )])),
                true,
            ),
            Field::new("raw", DataType::Binary, true),
        ])
        .fields()
        .clone()
    }

    fn merged(stats: &[Value]) -> Value {
        let text: Vec<String> = stats.iter().map(Value::to_string).collect();
        let refs: Vec<&str> = text.iter().map(String::as_str).collect();
        serde_json::from_str(&merge(&fields(), &refs).expect("merged")).unwrap()
    }

    #[test]
    fn bounds_widen_counts_add_and_timestamps_compare_as_instants() {
        let a = json!({
            "numRecords": 3,
            "minValues": {"id": 5, "name": "b", "ts": "2026-11-01T00:00:00Z", "price": 1.5,
                          "user": {"country": "DE"}, "raw": "zz"},
            "maxValues": {"id": 9, "name": "k", "ts": "2026-11-01T00:00:00.5Z", "price": 9.25,
                          "user": {"country": "FR"}, "raw": "zz"},
            "nullCount": {"id": 0, "name": 1, "ts": 0, "price": 0, "user": {"country": 0}, "raw": 0},
            "tightBounds": true
        });
        let b = json!({
            "numRecords": 4,
            "minValues": {"id": -2, "name": "a", "ts": "2026-11-01T00:00:00.25Z", "price": 10,
                          "user": {"country": "AT"}, "raw": "aa"},
            "maxValues": {"id": 7, "name": "z", "ts": "2026-11-01T00:00:00Z", "price": 100.75,
                          "user": {"country": "US"}, "raw": "aa"},
            "nullCount": {"id": 1, "name": 0, "ts": 2, "price": 0, "user": {"country": 3}, "raw": 0},
            "tightBounds": true
        });
        let m = merged(&[a, b]);
        assert_eq!(m["numRecords"], 7);
        assert_eq!(m["minValues"]["id"], -2);
        assert_eq!(m["maxValues"]["id"], 9);
        assert_eq!(m["minValues"]["name"], "a");
        assert_eq!(m["maxValues"]["name"], "z");
        // As text "…00.25Z" < "…00Z"; as instants the whole second is the earliest.
        assert_eq!(m["minValues"]["ts"], "2026-11-01T00:00:00Z");
        assert_eq!(m["maxValues"]["ts"], "2026-11-01T00:00:00.5Z");
        assert_eq!(m["minValues"]["price"], 1.5);
        assert_eq!(m["maxValues"]["price"], 100.75);
        assert_eq!(m["minValues"]["user"]["country"], "AT");
        assert_eq!(m["maxValues"]["user"]["country"], "US");
        // Binary is not a type whose bounds are merged.
        assert!(m["minValues"].get("raw").is_none());
        assert_eq!(m["nullCount"]["name"], 1);
        assert_eq!(m["nullCount"]["ts"], 2);
        assert_eq!(m["nullCount"]["user"]["country"], 3);
        assert_eq!(m["tightBounds"], true);
    }

    #[test]
    fn a_bound_missing_from_an_input_drops_unless_that_input_was_all_null() {
        let all_null = json!({
            "numRecords": 2,
            "minValues": {"id": 1},
            "maxValues": {"id": 2},
            "nullCount": {"id": 0, "name": 2}
        });
        let unindexed = json!({
            "numRecords": 2,
            "minValues": {"name": "m"},
            "maxValues": {"name": "n"},
            "nullCount": {"id": 0, "name": 0}
        });
        let with_name = json!({
            "numRecords": 1,
            "minValues": {"id": 0, "name": "c"},
            "maxValues": {"id": 3, "name": "d"},
            "nullCount": {"id": 0, "name": 0}
        });
        // The all-null input vouches for "name": the other file's bounds hold.
        let m = merged(&[all_null.clone(), with_name.clone()]);
        assert_eq!(m["minValues"]["name"], "c");
        assert_eq!(m["minValues"]["id"], 0);
        // An input that has values in "id" but no bound for it voids the bound.
        let m = merged(&[unindexed, with_name]);
        assert!(m["minValues"].get("id").is_none());
        assert!(m["maxValues"].get("id").is_none());
        assert_eq!(m["maxValues"]["name"], "n");
        // No numRecords in one input: no statistics at all.
        let none = json!({"minValues": {}});
        let text = [all_null.to_string(), none.to_string()];
        assert!(merge(&fields(), &[&text[0], &text[1]]).is_none());
    }
}
