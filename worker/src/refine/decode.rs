//! JSON payload -> typed silver row, one record at a time, so that a bad record becomes a
//! quarantine row with a precise reason instead of failing its whole batch.
//!
//! Declared fields are type-checked (`field user.id: expected string, got number 7`);
//! fields not declared are kept verbatim in `_rescued_data` (a JSON object keyed by path);
//! nested structs are flattened to `parent_child` columns when the spec asks for it. Each
//! checked row is a [`Cell`] per column, appended to Arrow builders by `columns.rs`.

use std::borrow::Cow;

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

/// One declared column's value in a decoded row, already checked against its type.
/// Text borrows from the payload unless it had escapes; timestamps are epoch microseconds
/// and dates days since the epoch, both as [`Cell::Long`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    /// Missing or `null`.
    Null,
    /// A string.
    Text(Cow<'a, str>),
    /// A long, a timestamp (µs) or a date (days).
    Long(i64),
    /// A double.
    Double(f64),
    /// A boolean.
    Bool(bool),
    /// A struct that is not flattened, or a list: built by arrow-json, which knows shapes.
    Nested(Value),
}

impl Cell<'_> {
    /// The cell as a JSON value.
    pub fn into_value(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Text(text) => Value::String(text.into_owned()),
            Cell::Long(v) => Value::from(v),
            Cell::Double(v) => Value::from(v),
            Cell::Bool(v) => Value::Bool(v),
            Cell::Nested(value) => value,
        }
    }

    /// A checked JSON value (as [`JsonDecoder::decode_value`] makes them) as a cell.
    pub fn from_value(value: Value) -> Cell<'static> {
        match value {
            Value::Null => Cell::Null,
            Value::Bool(v) => Cell::Bool(v),
            Value::String(text) => Cell::Text(Cow::Owned(text)),
            Value::Number(n) => match n.as_i64() {
                Some(v) => Cell::Long(v),
                None => Cell::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            nested => Cell::Nested(nested),
        }
    }
}

impl JsonDecoder {
    /// A decoder for `schema`, flattening nested structs if `flatten`.
    pub fn new(schema: SchemaSpec, flatten: bool) -> Self {
        let mut columns = Vec::new();
        let slots = compile(&schema, flatten, "", "", &mut columns);
        Self { slots, columns }
    }

    /// The output columns, in the order [`Self::decode_cells`] fills them.
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

    /// [`Self::decode_cells`] as one JSON value per output column.
    pub fn decode_row(&self, payload: &[u8]) -> Result<(Vec<Value>, Option<String>), Rejection> {
        let mut cells = Vec::new();
        let rescued = self.decode_cells(payload, &mut cells)?;
        Ok((cells.into_iter().map(Cell::into_value).collect(), rescued))
    }

    /// Decodes one payload into `cells`, one per output column (checked against its
    /// declared type), and returns the rescued fields, if any. `cells` is cleared first, so
    /// one vector serves every row of a batch.
    ///
    /// Objects are walked as they are parsed ([`Fields`]): each declared leaf is checked
    /// and stored as it is met, borrowing its text from the payload, and no map is built
    /// for the record or its flattened structs.
    pub fn decode_cells<'de>(
        &self,
        payload: &'de [u8],
        cells: &mut Vec<Cell<'de>>,
    ) -> Result<Option<String>, Rejection> {
        let first = payload.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(not_an_object(payload));
        }
        cells.clear();
        cells.resize(self.columns.len(), Cell::Null);
        let mut rescued = Map::new();
        let mut rejection = None;
        let mut parser = serde_json::Deserializer::from_slice(payload);
        let fields = Fields {
            slots: &self.slots,
            path: "",
            out: cells,
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
        Ok((!rescued.is_empty()).then(|| Value::Object(rescued).to_string()))
    }

    /// What [`Self::decode_row`] does, through a parsed [`Value`] tree: the reference the
    /// streaming path is tested against.
    pub fn decode_value(&self, payload: &[u8]) -> Result<(Vec<Value>, Option<String>), Rejection> {
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

/// Why a payload that does not start with `{` is rejected, in the tree path's words.
fn not_an_object(payload: &[u8]) -> Rejection {
    match serde_json::from_slice::<Value>(payload) {
        Err(e) => Rejection {
            rule: "_parse",
            reason: format!("invalid JSON: {e}"),
        },
        Ok(value) => Rejection {
            rule: "_parse",
            reason: format!("expected a JSON object, got {}", describe(&value)),
        },
    }
}

/// The fields of one JSON object (the record, or a flattened struct) as the parser meets
/// them. The first rejection is kept and the rest of the record is still parsed, so a
/// record that is also malformed further on is rejected as malformed, as a whole parse
/// would.
struct Fields<'a, 'de> {
    slots: &'a [Slot],
    path: &'a str,
    out: &'a mut [Cell<'de>],
    rescued: &'a mut Map<String, Value>,
    rejection: &'a mut Option<Rejection>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Fields<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, parser: D) -> Result<(), D::Error> {
        parser.deserialize_any(self)
    }
}

impl Fields<'_, '_> {
    /// A flattened struct that is not an object: rejected, naming what it was.
    fn mismatch(self, value: Value) {
        if self.rejection.is_none() {
            *self.rejection = Some(mismatch(self.path, "object", &value));
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Fields<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
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
            if !slot.children.is_empty() {
                map.next_value_seed(Fields {
                    slots: &slot.children,
                    path: &slot.path,
                    out: &mut *self.out,
                    rescued: &mut *self.rescued,
                    rejection: &mut *self.rejection,
                })?;
                continue;
            }
            let checked = match &slot.ty {
                FieldType::Primitive(ty) => map.next_value_seed(Leaf {
                    ty: *ty,
                    path: &slot.path,
                })?,
                nested => {
                    let value: Value = map.next_value()?;
                    check(nested, value, &slot.path, self.rescued).map(|v| match v {
                        Value::Null => Cell::Null,
                        v => Cell::Nested(v),
                    })
                }
            };
            match checked {
                Ok(cell) => self.out[slot.column] = cell,
                Err(rejection) => *self.rejection = Some(rejection),
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
        self.mismatch(seq_value(seq)?);
        Ok(())
    }
}

fn seq_value<'de, A: serde::de::SeqAccess<'de>>(seq: A) -> Result<Value, A::Error> {
    use serde::Deserialize;
    Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
}

fn map_value<'de, A: serde::de::MapAccess<'de>>(map: A) -> Result<Value, A::Error> {
    use serde::Deserialize;
    Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))
}

/// One declared primitive field as the parser meets it: checked and converted on the
/// spot (see [`check_primitive`], which the tree path uses and whose words it keeps).
/// A wrong type is not a parse error: the value is consumed and the rejection returned.
struct Leaf<'a> {
    ty: Primitive,
    path: &'a str,
}

type Checked<'de> = Result<Cell<'de>, Rejection>;

impl Leaf<'_> {
    fn mismatch<'de>(&self, value: Value) -> Checked<'de> {
        Err(mismatch(self.path, self.ty.name(), &value))
    }

    fn text<'de>(&self, text: Cow<'de, str>) -> Checked<'de> {
        match self.ty {
            Primitive::String => Ok(Cell::Text(text)),
            Primitive::Timestamp => parse_timestamp(&text).map(Cell::Long).ok_or_else(|| {
                mismatch(
                    self.path,
                    "an RFC 3339 timestamp",
                    &Value::String(text.into_owned()),
                )
            }),
            Primitive::Date => parse_date(&text).map(Cell::Long).ok_or_else(|| {
                mismatch(
                    self.path,
                    "a YYYY-MM-DD date",
                    &Value::String(text.into_owned()),
                )
            }),
            _ => self.mismatch(Value::String(text.into_owned())),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Leaf<'_> {
    type Value = Checked<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, parser: D) -> Result<Checked<'de>, D::Error> {
        parser.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Leaf<'_> {
    type Value = Checked<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Checked<'de>, E> {
        Ok(Ok(Cell::Null))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Checked<'de>, E> {
        Ok(match self.ty {
            Primitive::Boolean => Ok(Cell::Bool(v)),
            _ => self.mismatch(Value::from(v)),
        })
    }

    fn visit_i64<E>(self, v: i64) -> Result<Checked<'de>, E> {
        Ok(match self.ty {
            Primitive::Long => Ok(Cell::Long(v)),
            Primitive::Double => Ok(Cell::Double(v as f64)),
            // Epoch milliseconds.
            Primitive::Timestamp => Ok(Cell::Long(v.saturating_mul(1000))),
            _ => self.mismatch(Value::from(v)),
        })
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Checked<'de>, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Ok(match self.ty {
                Primitive::Double => Ok(Cell::Double(v as f64)),
                _ => self.mismatch(Value::from(v)),
            }),
        }
    }

    fn visit_f64<E>(self, v: f64) -> Result<Checked<'de>, E> {
        Ok(match self.ty {
            Primitive::Double => Ok(Cell::Double(v)),
            _ => self.mismatch(Value::from(v)),
        })
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Checked<'de>, E> {
        Ok(self.text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Checked<'de>, E> {
        Ok(self.text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Checked<'de>, E> {
        Ok(self.text(Cow::Owned(v)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Checked<'de>, A::Error> {
        Ok(self.mismatch(seq_value(seq)?))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Checked<'de>, A::Error> {
        Ok(self.mismatch(map_value(map)?))
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
        (Primitive::Date, Value::String(s)) => parse_date(s)
            .map(Value::from)
            .ok_or_else(|| mismatch(path, "a YYYY-MM-DD date", &value)),
        _ => Err(mismatch(path, p.name(), &value)),
    }
}

/// `YYYY-MM-DD` to days since the epoch.
fn parse_date(text: &str) -> Option<i64> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| (d - chrono::NaiveDate::default()).num_days())
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
        let yaml = "id: string\nts: timestamp\nn: long\nuser: { id: string, score: double }\ntags: [string]\nday: date\nok: boolean\n";
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
            r#"{"id":"a","n":18446744073709551615}"#,
            r#"{"id":"a","n":-3,"ts":1700000000000,"user":{"score":-1}}"#,
            r#"{"id":"a","ts":1.5}"#,
            r#"{"id":"a","ts":"2026-11-01 10:00:00.5","user":{"score":1e3}}"#,
            r#"{"id":"a","ts":true}"#,
            r#"{"id":{"x":1}}"#,
            r#"{"id":[1,2],"n":null,"tags":null}"#,
            r#"{"id":"\u00e9t\u00e9","tags":["x",7]}"#,
            r#"{"id":null,"user":{"id":null,"score":null}}"#,
            r#"{"day":"2026-11-01","ok":false}"#,
            r#"{"day":"2026-13-01"}"#,
            r#"{"day":5}"#,
            r#"{"ok":"yes"}"#,
            r#"{"id":"a"} x"#,
            r#"{"id":"a","id":"b"}"#,
            r#"{}"#,
            r#"{"#,
            r#"[1]"#,
            r#""#,
        ];
        // The tree path keeps a double column's `2` as an integer; its column builder
        // stores both as the same double.
        let same = |a: &Cell, b: &Cell| match (a, b) {
            (Cell::Double(x), Cell::Long(y)) | (Cell::Long(y), Cell::Double(x)) => *x == *y as f64,
            _ => a == b,
        };
        let mut cells = Vec::new();
        for payload in payloads {
            let streamed = decoder.decode_cells(payload.as_bytes(), &mut cells);
            let tree = decoder.decode_value(payload.as_bytes());
            match (streamed, tree) {
                (Ok(rescued), Ok((values, tree_rescued))) => {
                    assert_eq!(rescued, tree_rescued, "{payload}");
                    let values: Vec<Cell> = values.into_iter().map(Cell::from_value).collect();
                    assert_eq!(cells.len(), values.len(), "{payload}");
                    for (a, b) in cells.iter().zip(&values) {
                        assert!(same(a, b), "{payload}: {a:?} != {b:?}");
                    }
                }
                (streamed, tree) => assert_eq!(streamed.err(), tree.err(), "{payload}"),
            }
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
