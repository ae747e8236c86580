//! JSON payload -> typed silver row, one record at a time, so that a bad record becomes a
//! quarantine row with a precise reason instead of failing its whole batch.
//!
//! Declared fields are type-checked (`field user.id: expected string, got number 7`);
//! fields not declared are kept verbatim in `_rescued_data` (a JSON object keyed by path);
//! nested structs are flattened to `parent_child` columns when the spec asks for it. The
//! checked rows are then turned into Arrow by arrow-json against the silver schema.

use serde_json::{Map, Value};
use smelter_common::spec::{FieldType, Primitive, SchemaSpec};

/// Why a payload could not become a row: the quarantine rule and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `_parse` (not JSON / not an object) or `_schema` (a declared field has the wrong type).
    pub rule: &'static str,
    /// Human-readable reason naming the field.
    pub reason: String,
}

/// One declared field, compiled once: its JSON name, its dotted path (for reasons and
/// rescued keys), and either its output column or, for a flattened struct, its children.
#[derive(Debug, Clone)]
struct Slot {
    name: String,
    path: String,
    ty: FieldType,
    /// Output column of a leaf (or of a struct that is not flattened).
    column: usize,
    /// Children of a flattened struct (then `column` is unused).
    children: Vec<Slot>,
}

/// Decodes payloads against a declared schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    slots: Vec<Slot>,
    columns: Vec<String>,
}

fn describe(value: &Value) -> String {
    let text = value.to_string();
    let short: String = text.chars().take(40).collect();
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if short.len() < text.len() {
        format!("{kind} {short}…")
    } else {
        format!("{kind} {short}")
    }
}

fn compile(
    schema: &SchemaSpec,
    flatten: bool,
    path: &str,
    prefix: &str,
    columns: &mut Vec<String>,
) -> Vec<Slot> {
    let mut slots = Vec::with_capacity(schema.fields.len());
    for (name, ty) in &schema.fields {
        let field_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        let column = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}_{name}")
        };
        let slot = match ty {
            FieldType::Struct(inner) if flatten => Slot {
                name: name.clone(),
                children: compile(inner, flatten, &field_path, &column, columns),
                path: field_path,
                ty: ty.clone(),
                column: usize::MAX,
            },
            _ => {
                columns.push(column);
                Slot {
                    name: name.clone(),
                    path: field_path,
                    ty: ty.clone(),
                    column: columns.len() - 1,
                    children: Vec::new(),
                }
            }
        };
        slots.push(slot);
    }
    slots
}

impl JsonDecoder {
    /// A decoder for `schema`, flattening nested structs if `flatten`.
    pub fn new(schema: SchemaSpec, flatten: bool) -> Self {
        let mut columns = Vec::new();
        let slots = compile(&schema, flatten, "", "", &mut columns);
        Self { slots, columns }
    }

    /// The output columns, in the order [`Self::decode_row`] fills them.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Decodes one payload into the output row (column name -> JSON value) plus the
    /// rescued fields, if any.
    pub fn decode(
        &self,
        payload: &[u8],
    ) -> Result<(Map<String, Value>, Option<String>), Rejection> {
        let (values, rescued) = self.decode_row(payload)?;
        Ok((self.columns.iter().cloned().zip(values).collect(), rescued))
    }

    /// Decodes one payload into one value per output column (checked against its declared
    /// type; timestamps as epoch µs, dates as days) plus the rescued fields, if any.
    ///
    /// Objects are walked as they are parsed ([`Fields`]): declared fields go straight to
    /// their column, and no map is built for the record or its flattened structs.
    pub fn decode_row(&self, payload: &[u8]) -> Result<(Vec<Value>, Option<String>), Rejection> {
        let first = payload.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            // Not an object (or not JSON): the slow path words the rejection.
            return self.decode_value(payload);
        }
        let mut out = vec![Value::Null; self.columns.len()];
        let mut rescued = Map::new();
        let mut rejection = None;
        let mut parser = serde_json::Deserializer::from_slice(payload);
        let fields = Fields {
            slots: &self.slots,
            path: "",
            out: &mut out,
            rescued: &mut rescued,
            rejection: &mut rejection,
        };
        serde::de::DeserializeSeed::deserialize(fields, &mut parser)
            .and_then(|()| parser.end())
            .map_err(|e| Rejection {
                rule: "_parse",
                reason: format!("invalid JSON: {e}"),
            })?;
        if let Some(rejection) = rejection {
            return Err(rejection);
        }
        let rescued = (!rescued.is_empty()).then(|| Value::Object(rescued).to_string());
        Ok((out, rescued))
    }

    /// [`Self::decode_row`] through a parsed [`Value`] tree.
    fn decode_value(&self, payload: &[u8]) -> Result<(Vec<Value>, Option<String>), Rejection> {
        let value: Value = serde_json::from_slice(payload).map_err(|e| Rejection {
            rule: "_parse",
            reason: format!("invalid JSON: {e}"),
        })?;
        let Value::Object(object) = value else {
            return Err(Rejection {
                rule: "_parse",
                reason: format!("expected a JSON object, got {}", describe(&value)),
            });
        };
        let mut out = vec![Value::Null; self.columns.len()];
        let mut rescued = Map::new();
        walk(&self.slots, object, "", &mut out, &mut rescued)?;
        let rescued = (!rescued.is_empty()).then(|| Value::Object(rescued).to_string());
        Ok((out, rescued))
    }
}

/// The fields of one JSON object (the record, or a flattened struct) as the parser meets
/// them. The first rejection is kept and the rest of the record is still parsed, so a
/// record that is also malformed further on is rejected as malformed, as a whole parse
/// would.
struct Fields<'a> {
    slots: &'a [Slot],
    path: &'a str,
    out: &'a mut [Value],
    rescued: &'a mut Map<String, Value>,
    rejection: &'a mut Option<Rejection>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Fields<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, parser: D) -> Result<(), D::Error> {
        parser.deserialize_any(self)
    }
}

impl Fields<'_> {
    /// A flattened struct that is not an object: rejected, naming what it was.
    fn mismatch(self, value: Value) {
        if self.rejection.is_none() {
            let path = self.path.to_string();
            *self.rejection = Some(mismatch(&path, "object", &value));
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Fields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if self.rejection.is_some() {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let Some(slot) = self.slots.iter().find(|s| s.name == *key) else {
                let value: Value = map.next_value()?;
                let path = if self.path.is_empty() {
                    key.into_owned()
                } else {
                    format!("{}.{key}", self.path)
                };
                self.rescued.insert(path, value);
                continue;
            };
            if slot.children.is_empty() {
                let value: Value = map.next_value()?;
                match check(&slot.ty, value, &slot.path, self.rescued) {
                    Ok(value) => self.out[slot.column] = value,
                    Err(rejection) => *self.rejection = Some(rejection),
                }
            } else {
                map.next_value_seed(Fields {
                    slots: &slot.children,
                    path: &slot.path,
                    out: &mut *self.out,
                    rescued: &mut *self.rescued,
                    rejection: &mut *self.rejection,
                })?;
            }
        }
        Ok(())
    }

    // A missing or null struct means all its flattened columns are null.
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.mismatch(Value::from(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.mismatch(Value::from(v));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.mismatch(Value::from(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.mismatch(Value::from(v));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.mismatch(Value::from(v));
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        use serde::Deserialize;
        let value = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        self.mismatch(value);
        Ok(())
    }
}

/// Moves each declared field of `object` into its column, checked; what is left over is
/// rescued under its path.
fn walk(
    slots: &[Slot],
    mut object: Map<String, Value>,
    path: &str,
    out: &mut [Value],
    rescued: &mut Map<String, Value>,
) -> Result<(), Rejection> {
    for slot in slots {
        let value = object.remove(&slot.name).unwrap_or(Value::Null);
        if !slot.children.is_empty() {
            match value {
                Value::Object(child) => walk(&slot.children, child, &slot.path, out, rescued)?,
                // A missing struct means all its flattened columns are null.
                Value::Null => {}
                other => return Err(mismatch(&slot.path, "object", &other)),
            }
        } else {
            out[slot.column] = check(&slot.ty, value, &slot.path, rescued)?;
        }
    }
    for (name, value) in object {
        let field_path = if path.is_empty() {
            name
        } else {
            format!("{path}.{name}")
        };
        rescued.insert(field_path, value);
    }
    Ok(())
}

fn mismatch(path: &str, expected: &str, value: &Value) -> Rejection {
    Rejection {
        rule: "_schema",
        reason: format!(
            "field `{path}`: expected {expected}, got {}",
            describe(value)
        ),
    }
}

/// Checks one value against its declared type, converting timestamps to epoch
/// microseconds and dates to days, which is what arrow-json reads fastest and unambiguously.
fn check(
    ty: &FieldType,
    value: Value,
    path: &str,
    rescued: &mut Map<String, Value>,
) -> Result<Value, Rejection> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    match ty {
        FieldType::Primitive(p) => check_primitive(*p, value, path),
        FieldType::Struct(inner) => {
            let Value::Object(mut object) = value else {
                return Err(mismatch(path, "object", &value));
            };
            let mut out = Map::new();
            for (name, child_ty) in &inner.fields {
                let child = object.remove(name).unwrap_or(Value::Null);
                out.insert(
                    name.clone(),
                    check(child_ty, child, &format!("{path}.{name}"), rescued)?,
                );
            }
            for (name, extra) in object {
                rescued.insert(format!("{path}.{name}"), extra);
            }
            Ok(Value::Object(out))
        }
        FieldType::List(inner) => {
            let Value::Array(items) = value else {
                return Err(mismatch(path, "array", &value));
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| check(inner, item, &format!("{path}[{i}]"), rescued))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
    }
}

fn check_primitive(p: Primitive, value: Value, path: &str) -> Result<Value, Rejection> {
    match (p, &value) {
        (Primitive::String, Value::String(_)) => Ok(value),
        (Primitive::Long, Value::Number(n)) if n.is_i64() => Ok(value),
        (Primitive::Double, Value::Number(_)) => Ok(value),
        (Primitive::Boolean, Value::Bool(_)) => Ok(value),
        (Primitive::Timestamp, Value::String(s)) => parse_timestamp(s)
            .map(Value::from)
            .ok_or_else(|| mismatch(path, "an RFC 3339 timestamp", &value)),
        (Primitive::Timestamp, Value::Number(n)) if n.is_i64() => {
            Ok(Value::from(n.as_i64().unwrap_or(0).saturating_mul(1000)))
        }
        (Primitive::Date, Value::String(s)) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map(|d| Value::from((d - chrono::NaiveDate::default()).num_days()))
            .map_err(|_| mismatch(path, "a YYYY-MM-DD date", &value)),
        _ => Err(mismatch(path, p.name(), &value)),
    }
}

/// RFC 3339, or `YYYY-MM-DD HH:MM:SS[.f]` taken as UTC, to epoch microseconds.
fn parse_timestamp(text: &str) -> Option<i64> {
    if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(ts.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> JsonDecoder {
        let yaml = "id: string\nts: timestamp\nn: long\nuser: { id: string, score: double }\ntags: [string]\n";
        JsonDecoder::new(serde_yaml::from_str(yaml).unwrap(), true)
    }

    #[test]
    fn decodes_flattens_and_rescues() {
        let (row, rescued) = decoder()
            .decode(br#"{"id":"a","ts":"2026-11-01T00:00:01Z","n":3,"user":{"id":"u","score":1.5,"vip":true},"tags":["x"],"extra":1}"#)
            .unwrap();
        assert_eq!(row["id"], "a");
        assert_eq!(row["ts"], 1_793_491_201_000_000i64);
        assert_eq!(row["user_id"], "u");
        assert_eq!(row["user_score"], 1.5);
        assert_eq!(row["tags"], serde_json::json!(["x"]));
        let rescued: Value = serde_json::from_str(&rescued.unwrap()).unwrap();
        assert_eq!(rescued, serde_json::json!({"user.vip": true, "extra": 1}));
    }

    #[test]
    fn streaming_and_tree_decoding_agree() {
        let decoder = decoder();
        let payloads = [
            r#"{"id":"a","ts":"2026-11-01T00:00:01Z","n":3,"user":{"id":"u","score":1.5,"vip":true},"tags":["x"],"extra":{"k":[1,{"z":null}]}}"#,
            r#"  {"id":"a"}"#,
            r#"{"id":"a","user":null}"#,
            r#"{"id":"a","user":5}"#,
            r#"{"id":"a","user":[1,{"b":2}]}"#,
            r#"{"id":"a","user":"x"}"#,
            r#"{"id":"a","user":true}"#,
            r#"{"id":"a","user":-2.5}"#,
            r#"{"id":"esc"aped","user":{"score":2}}"#,
            r#"{"id":7,"n":}"#,
            r#"{"id":7,"n":1}"#,
            r#"{"id":"a","n":1.5}"#,
            r#"{"id":"a"} x"#,
            r#"{"id":"a","id":"b"}"#,
            r#"{}"#,
            r#"{"#,
            r#"[1]"#,
            r#""#,
        ];
        for payload in payloads {
            assert_eq!(
                decoder.decode_row(payload.as_bytes()),
                decoder.decode_value(payload.as_bytes()),
                "{payload}"
            );
        }
    }

    #[test]
    fn missing_struct_gives_null_columns() {
        let (row, rescued) = decoder().decode(br#"{"id":"a"}"#).unwrap();
        assert!(row["user_id"].is_null() && row["ts"].is_null());
        assert!(rescued.is_none());
    }

    #[test]
    fn rejections_name_rule_and_field() {
        let err = decoder()
            .decode(br#"{"id":"a","user":{"id":7}}"#)
            .unwrap_err();
        assert_eq!(err.rule, "_schema");
        assert!(
            err.reason
                .contains("`user.id`: expected string, got number 7"),
            "{}",
            err.reason
        );
        let err = decoder()
            .decode(br#"{"id":"a","ts":"yesterday"}"#)
            .unwrap_err();
        assert!(err.reason.contains("`ts`"), "{}", err.reason);
        let err = decoder().decode(br#"{"id":"a","#).unwrap_err();
        assert_eq!(err.rule, "_parse");
        let err = decoder().decode(b"[1,2]").unwrap_err();
        assert!(
            err.reason.contains("expected a JSON object"),
            "{}",
            err.reason
        );
    }
}
