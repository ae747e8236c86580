//! Schema inference: the declared schema a sample of JSON records suggests, for a user to
//! pin in the spec (`smelter infer`).
//!
//! Each field's values are folded into what was seen of it: booleans, integers (`long`),
//! numbers with a fraction (`double`; integers seen too widen to it), strings — `timestamp`
//! if every one is RFC 3339, `date` if every one is `YYYY-MM-DD`, else `string` — objects
//! (a struct of the union of their fields, in order of first appearance) and arrays (a list
//! of their elements' type). A field seen only as `null` is declared `string`. A field
//! seen with types that do not fold (a number here, a string there) is a conflict: it is
//! declared as the scalar type most of its values had (`string` when that is an object or
//! a list, or inside a list), and reported with how often each type was seen. Under that
//! schema the records whose value has another type are quarantined with the field named,
//! never lost.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use smelter_common::spec::{FieldType, Primitive, SchemaSpec};

/// What a sample suggests.
#[derive(Debug, Clone, PartialEq)]
pub struct Inferred {
    /// The schema, `None` when no record was a JSON object with a field.
    pub schema: Option<SchemaSpec>,
    /// Records looked at.
    pub records: usize,
    /// Of those, records that were not JSON objects (skipped).
    pub not_objects: usize,
    /// Fields whose values had types that do not fold.
    pub conflicts: Vec<Conflict>,
    /// Fields seen only as `null` (declared `string`).
    pub only_null: Vec<String>,
}

/// A field whose values had types that do not fold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    /// Dotted path of the field (`[]` for a list's elements).
    pub field: String,
    /// Each type seen, with how many values had it (when the field is not inside a list).
    pub seen: Vec<(String, usize)>,
    /// The type declared for it.
    pub declared: String,
}

/// What was seen of one field.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Null,
    Bool,
    Long,
    Double,
    Text { timestamps: bool, dates: bool },
    Object(IndexMap<String, Seen>),
    List(Box<Seen>),
    Conflict(BTreeSet<&'static str>),
}

impl Seen {
    fn of(value: &Json) -> Seen {
        match value {
            Json::Null => Seen::Null,
            Json::Bool => Seen::Bool,
            Json::Integer => Seen::Long,
            Json::Fraction => Seen::Double,
            Json::Text(s) => Seen::Text {
                timestamps: chrono::DateTime::parse_from_rfc3339(s).is_ok(),
                dates: chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
            },
            Json::Array(items) => Seen::List(Box::new(
                items
                    .iter()
                    .map(Seen::of)
                    .fold(Seen::Null, |acc, item| acc.fold(item)),
            )),
            Json::Object(fields) => Seen::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Seen::of(v)))
                    .collect(),
            ),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Seen::Null => "null",
            Seen::Bool => "boolean",
            Seen::Long => "long",
            Seen::Double => "double",
            Seen::Text { .. } => "string",
            Seen::Object(_) => "object",
            Seen::List(_) => "array",
            Seen::Conflict(_) => "conflict",
        }
    }

    fn fold(self, other: Seen) -> Seen {
        match (self, other) {
            (Seen::Null, x) | (x, Seen::Null) => x,
            (Seen::Long, Seen::Double) | (Seen::Double, Seen::Long) => Seen::Double,
            (
                Seen::Text {
                    timestamps: t1,
                    dates: d1,
                },
                Seen::Text {
                    timestamps: t2,
                    dates: d2,
                },
            ) => Seen::Text {
                timestamps: t1 && t2,
                dates: d1 && d2,
            },
            (Seen::Object(mut a), Seen::Object(b)) => {
                for (name, seen) in b {
                    match a.get_mut(&name) {
                        Some(mine) => {
                            let before = std::mem::replace(mine, Seen::Null);
                            *mine = before.fold(seen);
                        }
                        None => {
                            a.insert(name, seen);
                        }
                    }
                }
                Seen::Object(a)
            }
            (Seen::List(a), Seen::List(b)) => Seen::List(Box::new(a.fold(*b))),
            (Seen::Conflict(mut kinds), other) | (other, Seen::Conflict(mut kinds)) => {
                kinds.insert(other.kind());
                Seen::Conflict(kinds)
            }
            (a, b) if a.kind() == b.kind() => a,
            (a, b) => Seen::Conflict([a.kind(), b.kind()].into_iter().collect()),
        }
    }
}

/// The schema `payloads` suggest (see the module docs).
pub fn infer<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Inferred {
    let mut seen = Seen::Object(IndexMap::new());
    let (mut records, mut not_objects) = (0, 0);
    let mut objects = Vec::new();
    for payload in payloads {
        records += 1;
        match serde_json::from_slice::<Json>(payload) {
            Ok(value @ Json::Object(_)) => {
                seen = seen.fold(Seen::of(&value));
                objects.push(value);
            }
            _ => not_objects += 1,
        }
    }
    let mut inferred = Inferred {
        schema: None,
        records,
        not_objects,
        conflicts: Vec::new(),
        only_null: Vec::new(),
    };
    if let Seen::Object(fields) = seen {
        inferred.schema = schema(&fields, "", &mut inferred);
    }
    // A conflict is declared as its most common scalar type.
    for conflict in &mut inferred.conflicts {
        if conflict.field.contains("[]") {
            continue;
        }
        let path: Vec<&str> = conflict.field.split('.').collect();
        let mut counts: IndexMap<&'static str, usize> = IndexMap::new();
        for object in &objects {
            if let Some(value) = at(object, &path).filter(|v| **v != Json::Null) {
                *counts.entry(Seen::of(value).kind()).or_default() += 1;
            }
        }
        counts.sort_by(|a, ka, b, kb| kb.cmp(ka).then(a.cmp(b)));
        conflict.seen = counts.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        let declared = match counts.first() {
            Some((&"long", _)) => Primitive::Long,
            Some((&"double", _)) => Primitive::Double,
            Some((&"boolean", _)) => Primitive::Boolean,
            _ => Primitive::String,
        };
        conflict.declared = declared.name();
        if let Some(schema) = inferred.schema.as_mut() {
            declare(schema, &path, FieldType::Primitive(declared));
        }
    }
    inferred
}

/// The value at `path` in `value`, if every step is an object holding the next field.
fn at<'j>(value: &'j Json, path: &[&str]) -> Option<&'j Json> {
    path.iter().try_fold(value, |value, step| match value {
        Json::Object(fields) => fields.iter().find(|(k, _)| k == step).map(|(_, v)| v),
        _ => None,
    })
}

/// Sets the type of the field at `path` in `schema`.
fn declare(schema: &mut SchemaSpec, path: &[&str], ty: FieldType) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut fields = &mut schema.fields;
    for step in parents {
        match fields.get_mut(*step) {
            Some(FieldType::Struct(inner)) => fields = &mut inner.fields,
            _ => return,
        }
    }
    if let Some(field) = fields.get_mut(*last) {
        *field = ty;
    }
}

fn schema(fields: &IndexMap<String, Seen>, prefix: &str, out: &mut Inferred) -> Option<SchemaSpec> {
    let mut declared = IndexMap::new();
    for (name, seen) in fields {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        declared.insert(name.clone(), field_type(seen, &path, out));
    }
    (!declared.is_empty()).then_some(SchemaSpec { fields: declared })
}

fn field_type(seen: &Seen, path: &str, out: &mut Inferred) -> FieldType {
    let primitive = |p| FieldType::Primitive(p);
    match seen {
        Seen::Null => {
            out.only_null.push(path.to_string());
            primitive(Primitive::String)
        }
        Seen::Bool => primitive(Primitive::Boolean),
        Seen::Long => primitive(Primitive::Long),
        Seen::Double => primitive(Primitive::Double),
        Seen::Text {
            timestamps: true, ..
        } => primitive(Primitive::Timestamp),
        Seen::Text { dates: true, .. } => primitive(Primitive::Date),
        Seen::Text { .. } => primitive(Primitive::String),
        // An object never seen with a field says nothing of its shape: kept as text.
        Seen::Object(fields) => match schema(fields, path, out) {
            Some(inner) => FieldType::Struct(inner),
            None => primitive(Primitive::String),
        },
        Seen::List(element) => {
            FieldType::List(Box::new(field_type(element, &format!("{path}[]"), out)))
        }
        Seen::Conflict(kinds) => {
            out.conflicts.push(Conflict {
                field: path.to_string(),
                seen: kinds.iter().map(|k| (k.to_string(), 0)).collect(),
                declared: Primitive::String.name(),
            });
            primitive(Primitive::String)
        }
    }
}

/// A JSON value as inference needs it: objects keep their fields in the record's order
/// (a map would sort them), numbers only say whether they have a fraction.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool,
    Integer,
    Fraction,
    Text(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Bool)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Integer)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Integer)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Fraction)
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Text(v.to_string()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields: Vec<(String, Json)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            // A key given twice: the last value counts, in the first one's place.
            match fields.iter_mut().find(|(k, _)| *k == key) {
                Some(field) => field.1 = value,
                None => fields.push((key, value)),
            }
        }
        Ok(Json::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(schema: &SchemaSpec) -> String {
        serde_yaml::to_string(schema).unwrap()
    }

    #[test]
    fn folds_types_nested_fields_and_late_fields() {
        let payloads = [
            r#"{"id":"a","ts":"2026-11-01T10:00:00Z","n":1,"user":{"id":"u1"},"tags":["x"],"day":"2026-11-01"}"#,
            r#"{"id":"b","ts":"2026-11-01T10:00:01.5Z","n":2.5,"user":{"id":"u2","vip":true},"tags":[],"day":"2026-11-02"}"#,
            // A field appearing later, a null, an object inside a list.
            r#"{"id":"c","n":null,"user":null,"items":[{"sku":"s","qty":2}],"note":null}"#,
            "not json",
            "[1,2]",
        ];
        let inferred = infer(payloads.iter().map(|p| p.as_bytes()));
        assert_eq!((inferred.records, inferred.not_objects), (5, 2));
        let schema = inferred.schema.unwrap();
        let expected: SchemaSpec = serde_yaml::from_str(
            "id: string\nts: timestamp\nn: double\nuser: { id: string, vip: boolean }\n\
             tags: [string]\nday: date\nitems: [ { sku: string, qty: long } ]\nnote: string\n",
        )
        .unwrap();
        assert_eq!(yaml(&schema), yaml(&expected));
        assert_eq!(inferred.only_null, vec!["note"]);
        assert!(inferred.conflicts.is_empty());
    }

    #[test]
    fn conflicting_types_are_declared_as_the_most_common_and_reported() {
        let payloads = [
            r#"{"age":31,"when":"2026-11-01T00:00:00Z","flag":true}"#,
            r#"{"age":"thirty","when":"yesterday","flag":{"x":1}}"#,
        ];
        let inferred = infer(payloads.iter().map(|p| p.as_bytes()));
        let schema = inferred.schema.unwrap();
        // Ties go to the type named first; an object is never declared for a conflict.
        assert_eq!(
            yaml(&schema),
            yaml(&serde_yaml::from_str("age: long\nwhen: string\nflag: boolean\n").unwrap())
        );
        let seen = |pairs: &[(&str, usize)]| {
            pairs
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            inferred.conflicts,
            vec![
                Conflict {
                    field: "age".into(),
                    seen: seen(&[("long", 1), ("string", 1)]),
                    declared: "long".into()
                },
                Conflict {
                    field: "flag".into(),
                    seen: seen(&[("boolean", 1), ("object", 1)]),
                    declared: "boolean".into()
                },
            ]
        );
        // The majority decides.
        let payloads = [
            r#"{"n":"x"}"#,
            r#"{"n":1}"#,
            r#"{"n":"y"}"#,
            r#"{"n":null}"#,
        ];
        let inferred = infer(payloads.iter().map(|p| p.as_bytes()));
        assert_eq!(
            inferred.conflicts[0].seen,
            seen(&[("string", 2), ("long", 1)])
        );
        assert_eq!(inferred.conflicts[0].declared, "string");
    }

    #[test]
    fn nothing_to_infer_from() {
        let inferred = infer(["1", "{}"].iter().map(|p| p.as_bytes()));
        assert_eq!(inferred.schema, None);
        assert_eq!(inferred.not_objects, 1);
    }
}
