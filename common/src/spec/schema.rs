//! Declared record schemas: `name: type` mappings where a type is a primitive name, a
//! nested mapping (struct) or a one-element sequence (list).
//!
//! ```yaml
//! schema:
//!   event_id: string
//!   ts: timestamp
//!   user: { id: string, country: string }
//!   items: [ { sku: string, qty: long } ]
//! ```

use indexmap::IndexMap;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Primitive column types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    /// UTF-8 text.
    String,
    /// 32-bit signed integer (`int`, `integer`, `int32`); widens to `long`.
    Int,
    /// 64-bit signed integer (`long`, `bigint`, `int64`).
    Long,
    /// 32-bit float (`float`, `float32`, `real`); widens to `double`.
    Float,
    /// 64-bit float (`double`, `float64`).
    Double,
    /// `boolean` / `bool`.
    Boolean,
    /// RFC 3339 text or epoch milliseconds, stored as microseconds UTC.
    Timestamp,
    /// A wall-clock time without a time zone (`timestamp_ntz`): `2026-11-01T10:00:00[.f]`
    /// or with a space; an offset, if the text has one, is ignored (the time as written),
    /// and epoch milliseconds are read as UTC wall-clock. Stored as Delta's `timestamp_ntz`,
    /// which needs its `timestampNtz` table feature: a table gains it only when created
    /// with such a column.
    TimestampNtz,
    /// `YYYY-MM-DD`.
    Date,
    /// Bytes, written in JSON as base64 text (`binary`, `bytes`).
    Binary,
    /// An exact decimal number, `decimal(precision, scale)` (`numeric(p, s)`): up to
    /// `precision` digits, `scale` of them after the point; for money. Read from JSON
    /// numbers and numeric strings without going through a float.
    Decimal {
        /// Total digits, 1 to 38.
        precision: u8,
        /// Digits after the point, 0 to `precision`.
        scale: u8,
    },
}

impl Primitive {
    fn parse(name: &str) -> Option<Primitive> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "string" | "str" | "text" => Primitive::String,
            "int" | "integer" | "int32" => Primitive::Int,
            "long" | "bigint" | "int64" => Primitive::Long,
            "float" | "float32" | "real" => Primitive::Float,
            "double" | "float64" => Primitive::Double,
            "boolean" | "bool" => Primitive::Boolean,
            "timestamp" => Primitive::Timestamp,
            "timestamp_ntz" | "timestampntz" => Primitive::TimestampNtz,
            "date" => Primitive::Date,
            "binary" | "bytes" => Primitive::Binary,
            other => return Primitive::parse_decimal(other),
        })
    }

    /// `decimal(p,s)` / `numeric(p, s)` with 1 ≤ p ≤ 38 and 0 ≤ s ≤ p.
    fn parse_decimal(name: &str) -> Option<Primitive> {
        let inner = name
            .strip_prefix("decimal")
            .or_else(|| name.strip_prefix("numeric"))?
            .trim()
            .strip_prefix('(')?
            .strip_suffix(')')?;
        let (p, s) = inner.split_once(',')?;
        let precision: u8 = p.trim().parse().ok()?;
        let scale: u8 = s.trim().parse().ok()?;
        ((1..=38).contains(&precision) && scale <= precision)
            .then_some(Primitive::Decimal { precision, scale })
    }

    /// Canonical name.
    pub fn name(self) -> String {
        let name = match self {
            Primitive::String => "string",
            Primitive::Int => "int",
            Primitive::Long => "long",
            Primitive::Float => "float",
            Primitive::Double => "double",
            Primitive::Boolean => "boolean",
            Primitive::Timestamp => "timestamp",
            Primitive::TimestampNtz => "timestamp_ntz",
            Primitive::Date => "date",
            Primitive::Binary => "binary",
            Primitive::Decimal { precision, scale } => {
                return format!("decimal({precision},{scale})");
            }
        };
        name.to_string()
    }
}

/// The type of one declared field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    /// A scalar.
    Primitive(Primitive),
    /// A nested object.
    Struct(SchemaSpec),
    /// A JSON array of one element type.
    List(Box<FieldType>),
    /// A JSON object of any keys (strings) whose values all have one type:
    /// `map(long)`, `map(string)`, `map(map(double))`.
    Map(Box<FieldType>),
}

/// Ordered `name -> type` mapping.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SchemaSpec {
    /// Fields in declaration order.
    pub fields: IndexMap<String, FieldType>,
}

impl FieldType {
    fn from_yaml(value: &serde_yaml::Value, path: &str) -> Result<FieldType, String> {
        match value {
            serde_yaml::Value::String(name) if name.trim().starts_with("map(") && name.trim().ends_with(')') => {
                let name = name.trim();
                let inner = serde_yaml::Value::String(name[4..name.len() - 1].trim().to_string());
                Ok(FieldType::Map(Box::new(FieldType::from_yaml(&inner, &format!("{path}{{}}"))?)))
            }
            serde_yaml::Value::String(name) => Primitive::parse(name).map(FieldType::Primitive).ok_or_else(|| {
                let hint = if name.starts_with("decimal(") || name.starts_with("numeric(") {
                    "; precision 1 to 38, scale 0 to the precision, and inside a `{ }` mapping quote it: \"decimal(10,2)\""
                } else {
                    ""
                };
                format!("{path}: unknown type `{name}` (expected string, int, long, float, double, decimal(p,s), boolean, timestamp, timestamp_ntz, date, binary, map(T), a mapping or a one-element list){hint}")
            }),
            serde_yaml::Value::Mapping(_) => SchemaSpec::from_yaml(value, path).map(FieldType::Struct),
            serde_yaml::Value::Sequence(items) if items.len() == 1 => {
                Ok(FieldType::List(Box::new(FieldType::from_yaml(&items[0], &format!("{path}[]"))?)))
            }
            serde_yaml::Value::Sequence(_) => Err(format!("{path}: a list type has exactly one element type, e.g. `[string]`")),
            other => Err(format!("{path}: expected a type name, got `{}`", serde_yaml::to_string(other).unwrap_or_default().trim())),
        }
    }

    fn to_yaml(&self) -> serde_yaml::Value {
        match self {
            FieldType::Primitive(p) => serde_yaml::Value::String(p.name()),
            FieldType::Struct(s) => s.to_yaml(),
            FieldType::List(inner) => serde_yaml::Value::Sequence(vec![inner.to_yaml()]),
            FieldType::Map(inner) => match inner.to_yaml() {
                serde_yaml::Value::String(inner) => {
                    serde_yaml::Value::String(format!("map({inner})"))
                }
                // Values of a nested type are not written with this syntax; parse refuses them.
                other => other,
            },
        }
    }
}

impl SchemaSpec {
    fn from_yaml(value: &serde_yaml::Value, path: &str) -> Result<SchemaSpec, String> {
        let serde_yaml::Value::Mapping(map) = value else {
            return Err(format!(
                "{path}: expected a mapping of field names to types"
            ));
        };
        let mut fields = IndexMap::new();
        for (key, value) in map {
            let Some(name) = key.as_str() else {
                return Err(format!("{path}: field names must be strings"));
            };
            let child = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            fields.insert(name.to_string(), FieldType::from_yaml(value, &child)?);
        }
        if fields.is_empty() {
            return Err(format!("{path}: a schema needs at least one field"));
        }
        Ok(SchemaSpec { fields })
    }

    fn to_yaml(&self) -> serde_yaml::Value {
        let mut map = serde_yaml::Mapping::new();
        for (name, ty) in &self.fields {
            map.insert(serde_yaml::Value::String(name.clone()), ty.to_yaml());
        }
        serde_yaml::Value::Mapping(map)
    }

    /// Column names and types after flattening nested structs into `parent_child` columns
    /// (lists are kept as list columns).
    pub fn flattened(&self) -> Vec<(String, FieldType)> {
        let mut out = Vec::new();
        flatten_into(&self.fields, "", &mut out);
        out
    }
}

fn flatten_into(
    fields: &IndexMap<String, FieldType>,
    prefix: &str,
    out: &mut Vec<(String, FieldType)>,
) {
    for (name, ty) in fields {
        let column = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}_{name}")
        };
        match ty {
            FieldType::Struct(inner) => flatten_into(&inner.fields, &column, out),
            other => out.push((column, other.clone())),
        }
    }
}

/// The schema silver reads a table's records with: declared in the spec, or `infer` —
/// inferred from the first records at run time, recorded as the table's schema and grown
/// as new fields appear (see the worker's `refine::inferred`).
#[derive(Debug, Clone, PartialEq)]
pub enum ParseSchema {
    /// `schema: { name: type, ... }`.
    Declared(SchemaSpec),
    /// `schema: infer`.
    Infer,
}

impl ParseSchema {
    /// The declared schema, `None` when it is inferred.
    pub fn declared(&self) -> Option<&SchemaSpec> {
        match self {
            ParseSchema::Declared(schema) => Some(schema),
            ParseSchema::Infer => None,
        }
    }

    /// Whether the schema is inferred at run time.
    pub fn inferred(&self) -> bool {
        matches!(self, ParseSchema::Infer)
    }
}

impl<'de> Deserialize<'de> for ParseSchema {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_yaml::Value::deserialize(d)?;
        match &value {
            serde_yaml::Value::String(text) if text.trim() == "infer" => Ok(ParseSchema::Infer),
            serde_yaml::Value::String(text) => Err(D::Error::custom(format!(
                "expected a mapping of field names to types, or `infer`, got `{text}`"
            ))),
            _ => SchemaSpec::from_yaml(&value, "")
                .map(ParseSchema::Declared)
                .map_err(D::Error::custom),
        }
    }
}

impl Serialize for ParseSchema {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ParseSchema::Declared(schema) => schema.serialize(s),
            ParseSchema::Infer => s.serialize_str("infer"),
        }
    }
}

impl<'de> Deserialize<'de> for SchemaSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_yaml::Value::deserialize(d)?;
        SchemaSpec::from_yaml(&value, "").map_err(D::Error::custom)
    }
}

impl Serialize for SchemaSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_yaml().serialize(s)
    }
}
