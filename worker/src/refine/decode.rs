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

/// Decodes payloads against a declared schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    schema: SchemaSpec,
    flatten: bool,
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

impl JsonDecoder {
    /// A decoder for `schema`, flattening nested structs if `flatten`.
    pub fn new(schema: SchemaSpec, flatten: bool) -> Self {
        Self { schema, flatten }
    }

    /// Decodes one payload into the output row (column name -> JSON value ready for
    /// arrow-json) plus the rescued fields, if any.
    pub fn decode(
        &self,
        payload: &[u8],
    ) -> Result<(Map<String, Value>, Option<String>), Rejection> {
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
        let mut out = Map::new();
        let mut rescued = Map::new();
        self.walk(&self.schema, object, "", "", &mut out, &mut rescued)?;
        let rescued = (!rescued.is_empty()).then(|| Value::Object(rescued).to_string());
        Ok((out, rescued))
    }

    fn walk(
        &self,
        schema: &SchemaSpec,
        mut object: Map<String, Value>,
        path: &str,
        column_prefix: &str,
        out: &mut Map<String, Value>,
        rescued: &mut Map<String, Value>,
    ) -> Result<(), Rejection> {
        for (name, ty) in &schema.fields {
            let field_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            let column = if column_prefix.is_empty() {
                name.clone()
            } else {
                format!("{column_prefix}_{name}")
            };
            let value = object.remove(name).unwrap_or(Value::Null);
            match (ty, value) {
                (FieldType::Struct(inner), Value::Object(child)) if self.flatten => {
                    self.walk(inner, child, &field_path, &column, out, rescued)?;
                }
                (FieldType::Struct(inner), Value::Null) if self.flatten => {
                    // A missing struct means all its flattened columns are null.
                    self.walk(inner, Map::new(), &field_path, &column, out, rescued)?;
                }
                (ty, value) => {
                    let checked = check(ty, value, &field_path, rescued)?;
                    out.insert(column, checked);
                }
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
