//! JSON payload -> typed silver row, one record at a time, so that a bad record becomes a
//! quarantine row with a precise reason instead of failing its whole batch.
//!
//! Declared fields are type-checked (`field user.id: expected string, got number 7`);
//! fields not declared are kept verbatim in `_rescued_data` (a JSON object keyed by path);
//! nested structs are flattened to `parent_child` columns when the spec asks for it. Each
//! checked row is a [`Cell`] per column, appended to Arrow builders by `columns.rs`.
//!
//! The payload is parsed by sonic-rs (SIMD) driving serde visitors ([`JsonParser`]); the
//! same visitors run under serde_json, and the fuzz target `json_parsers_agree` holds the
//! two to the same rows and the same rejections.

mod check;
mod visit;

use std::borrow::Cow;

use serde_json::{Map, Value};
use smelter_common::spec::{FieldType, SchemaSpec};

use check::walk;
pub use check::{base64_bytes, parse_decimal};
use visit::Fields;

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
pub(super) struct Slot {
    pub(super) name: String,
    pub(super) path: String,
    pub(super) ty: FieldType,
    /// Output column of a leaf (or of a struct that is not flattened).
    pub(super) column: usize,
    /// Children of a flattened struct (then `column` is unused).
    pub(super) children: Vec<Slot>,
    /// Whether the record's values are text to read into their types (CSV rows).
    pub(super) text_values: bool,
    /// A value the type does not take goes to `_rescued_data` under `path` (the column
    /// is null) instead of rejecting the record (see [`JsonDecoder::rescuing`]).
    pub(super) rescue: bool,
}

/// Which declared fields a decoder rescues (see [`JsonDecoder::rescuing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rescue {
    /// Every field.
    All,
    /// The fields at these dotted paths (`user.id`, `amount`).
    Paths(std::collections::BTreeSet<String>),
}

/// The JSON parser a [`JsonDecoder`] drives its visitors with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JsonParser {
    /// serde_json: what the benchmark measures the default against on the same payloads
    /// (`json_decode_serde`), and what the fuzz target `json_parsers_agree` checks it
    /// against.
    SerdeJson,
    /// sonic-rs, a SIMD parser with the same serde interface (the default): the same
    /// visitors decode 16–23% faster with it (BENCHMARKS.md, 2026-12-07).
    #[default]
    Sonic,
}

/// Decodes payloads against a declared schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    slots: Vec<Slot>,
    columns: Vec<String>,
    parser: JsonParser,
}

pub(super) fn describe(value: &Value) -> String {
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

pub(super) fn compile(
    schema: &SchemaSpec,
    flatten: bool,
    text_values: bool,
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
                children: compile(inner, flatten, text_values, &field_path, &column, columns),
                path: field_path,
                ty: ty.clone(),
                column: usize::MAX,
                text_values,
                rescue: false,
            },
            _ => {
                columns.push(column);
                Slot {
                    name: name.clone(),
                    path: field_path,
                    ty: ty.clone(),
                    column: columns.len() - 1,
                    children: Vec::new(),
                    text_values,
                    rescue: false,
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
    /// The cell, owning its text.
    pub fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Null => Cell::Null,
            Cell::Text(text) => Cell::Text(Cow::Owned(text.into_owned())),
            Cell::Long(v) => Cell::Long(v),
            Cell::Double(v) => Cell::Double(v),
            Cell::Bool(v) => Cell::Bool(v),
            Cell::Nested(value) => Cell::Nested(value),
        }
    }

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
        Self::with_text_values(schema, flatten, false)
    }

    /// [`Self::new`]; with `text_values`, every value is text read into its declared type
    /// (`"3"` into a `long`, `"true"` into a `boolean`; CSV rows, `parse: { format: csv }`).
    pub fn with_text_values(schema: SchemaSpec, flatten: bool, text_values: bool) -> Self {
        let mut columns = Vec::new();
        let slots = compile(&schema, flatten, text_values, "", "", &mut columns);
        Self {
            slots,
            columns,
            parser: JsonParser::default(),
        }
    }

    /// The decoder, rescuing the values their declared type does not take — of every field
    /// (`Rescue::All`), or of the fields at the given dotted paths — into `_rescued_data`
    /// under their path, leaving the column null, instead of rejecting the record under
    /// `_schema`. What an inferred schema does with a value of another type than its
    /// column's, and `on_incompatible: rescue` with the values of a column whose declared
    /// type the table cannot take.
    pub fn rescuing(mut self, which: &Rescue) -> Self {
        fn mark(slots: &mut [Slot], which: &Rescue) {
            for slot in slots {
                slot.rescue = match which {
                    Rescue::All => true,
                    Rescue::Paths(paths) => paths.contains(&slot.path),
                };
                mark(&mut slot.children, which);
            }
        }
        mark(&mut self.slots, which);
        self
    }

    /// The decoder, parsing with `parser`.
    pub fn with_parser(mut self, parser: JsonParser) -> Self {
        self.parser = parser;
        self
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
        let fields = Fields {
            slots: &self.slots,
            path: "",
            rescue: false,
            out: cells,
            rescued: &mut rescued,
            rejection: &mut rejection,
        };
        let parsed = match self.parser {
            JsonParser::SerdeJson => {
                let mut parser = serde_json::Deserializer::from_slice(payload);
                serde::de::DeserializeSeed::deserialize(fields, &mut parser)
                    .and_then(|()| parser.end())
                    .map_err(|e| e.to_string())
            }
            JsonParser::Sonic => {
                let mut parser = sonic_rs::Deserializer::from_slice(payload);
                serde::de::DeserializeSeed::deserialize(fields, &mut parser)
                    .and_then(|()| parser.end())
                    // Its message goes on with the text around the fault on more lines;
                    // a quarantine reason is one line.
                    .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
            }
        };
        parsed.map_err(|e| Rejection {
            rule: "_parse",
            reason: format!("invalid JSON: {e}"),
        })?;
        if let Some(rejection) = rejection {
            return Err(rejection);
        }
        Ok((!rescued.is_empty()).then(|| Value::Object(rescued).to_string()))
    }

    /// What [`Self::decode_row`] does, through a [`Value`] tree parsed by the same parser:
    /// the reference the streaming visitors are tested against.
    pub fn decode_value(&self, payload: &[u8]) -> Result<(Vec<Value>, Option<String>), Rejection> {
        let parsed = match self.parser {
            JsonParser::SerdeJson => serde_json::from_slice(payload).map_err(|e| e.to_string()),
            JsonParser::Sonic => sonic_rs::from_slice(payload)
                .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string()),
        };
        let value: Value = parsed.map_err(|e| Rejection {
            rule: "_parse",
            reason: format!("invalid JSON: {e}"),
        })?;
        let Value::Object(object) = value else {
            return Err(Rejection {
                rule: "_parse",
                reason: format!("expected a JSON object, got {}", describe(&value)),
            });
        };
        if let Some(path) = visit::first_duplicate(&self.slots, payload) {
            return Err(visit::duplicate(&path));
        }
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

#[cfg(test)]
mod tests;
