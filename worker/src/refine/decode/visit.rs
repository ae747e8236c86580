//! Declared fields checked while the payload is parsed: serde visitors that walk a JSON
//! object once, type-check each declared leaf into its [`Cell`] and keep the rest for
//! `_rescued_data`, without building a `Value` for what they can check in place.

use std::borrow::Cow;

use serde_json::{Map, Value};
use smelter_common::spec::{FieldType, Primitive};

use super::check::{
    base64_bytes, check, mismatch, parse_date, parse_decimal, parse_timestamp, parse_wall_clock,
};
use super::{Cell, Rejection, Slot};

/// The fields of one JSON object (the record, or a flattened struct) as the parser meets
/// them. The first rejection is kept and the rest of the record is still parsed, so a
/// record that is also malformed further on is rejected as malformed, as a whole parse
/// would.
pub(super) struct Fields<'a, 'de> {
    pub(super) slots: &'a [Slot],
    pub(super) path: &'a str,
    /// A value that is not an object is rescued under `path` instead of rejected (a
    /// flattened struct whose slot rescues mismatches).
    pub(super) rescue: bool,
    pub(super) out: &'a mut [Cell<'de>],
    pub(super) rescued: &'a mut Map<String, Value>,
    pub(super) rejection: &'a mut Option<Rejection>,
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
        if self.rescue {
            self.rescued.insert(self.path.to_string(), value);
        } else if self.rejection.is_none() {
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
        let mut seen = Seen::new(self.slots.len());
        // Producers mostly write fields in one order: the slot after the last one met is
        // tried first, then all of them.
        let mut next = 0;
        while let Some(key) = map.next_key_seed(Key)? {
            let declared = match self.slots.get(next) {
                Some(slot) if slot.name == *key => Some(next),
                _ => self.slots.iter().position(|s| s.name == *key),
            };
            next = declared.map_or(next, |i| i + 1);
            // A duplicate outranks a wrong type: the record is malformed, as a whole
            // parse would find it.
            if let Some(index) = declared
                && !seen.insert(index)
            {
                if self.rejection.as_ref().is_none_or(|r| r.rule != "_parse") {
                    *self.rejection = Some(duplicate(&self.slots[index].path));
                }
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            if self.rejection.is_some() {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let Some(index) = declared else {
                let value: Value = map.next_value()?;
                let path = if self.path.is_empty() {
                    key.into_owned()
                } else {
                    format!("{}.{key}", self.path)
                };
                self.rescued.insert(path, value);
                continue;
            };
            let slot = &self.slots[index];
            if !slot.children.is_empty() {
                map.next_value_seed(Fields {
                    slots: &slot.children,
                    path: &slot.path,
                    rescue: slot.rescue,
                    out: &mut *self.out,
                    rescued: &mut *self.rescued,
                    rejection: &mut *self.rejection,
                })?;
                continue;
            }
            if slot.rescue {
                // Read whole, so that a value its type does not take can be rescued as it was.
                let value: Value = map.next_value()?;
                match rescued_check(slot, &value, self.rescued) {
                    Some(cell) => self.out[slot.column] = cell,
                    None => {
                        self.rescued.insert(slot.path.clone(), value);
                    }
                }
                continue;
            }
            let checked = match &slot.ty {
                FieldType::Primitive(ty) => map.next_value_seed(Leaf {
                    ty: *ty,
                    path: &slot.path,
                    text_values: slot.text_values,
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

/// `value` checked against a rescuing slot's type: its cell, or `None` when the type does
/// not take it (the caller rescues the value whole). Fields a struct value has beyond its
/// type are rescued as the checked path rescues them, only if the value is taken.
fn rescued_check(
    slot: &Slot,
    value: &Value,
    rescued: &mut Map<String, Value>,
) -> Option<Cell<'static>> {
    match &slot.ty {
        FieldType::Primitive(ty) => {
            let leaf = Leaf {
                ty: *ty,
                path: &slot.path,
                text_values: slot.text_values,
            };
            match serde::de::DeserializeSeed::deserialize(leaf, value) {
                Ok(Ok(cell)) => Some(cell.into_owned()),
                _ => None,
            }
        }
        nested => {
            let mut extra = Map::new();
            let checked = check(nested, value.clone(), &slot.path, &mut extra).ok()?;
            rescued.extend(extra);
            Some(match checked {
                Value::Null => Cell::Null,
                v => Cell::Nested(v),
            })
        }
    }
}

/// An object's key, borrowed from the payload unless it has escapes. (`Cow<str>`'s own
/// `Deserialize` always allocates: a `String` per key per record was 8% of a files-source
/// run's CPU.)
pub(super) struct Key;

impl<'de> serde::de::DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        parser: D,
    ) -> Result<Cow<'de, str>, D::Error> {
        parser.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

pub(super) fn seq_value<'de, A: serde::de::SeqAccess<'de>>(seq: A) -> Result<Value, A::Error> {
    use serde::Deserialize;
    Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
}

pub(super) fn map_value<'de, A: serde::de::MapAccess<'de>>(map: A) -> Result<Value, A::Error> {
    use serde::Deserialize;
    Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))
}

/// One declared primitive field as the parser meets it: checked and converted on the
/// spot (see [`check_primitive`], which the tree path uses and whose words it keeps).
/// A wrong type is not a parse error: the value is consumed and the rejection returned.
pub(super) struct Leaf<'a> {
    pub(super) ty: Primitive,
    pub(super) path: &'a str,
    /// Text values read into the type (CSV rows).
    pub(super) text_values: bool,
}

type Checked<'de> = Result<Cell<'de>, Rejection>;

impl Leaf<'_> {
    fn mismatch<'de>(&self, value: Value) -> Checked<'de> {
        Err(mismatch(self.path, &self.ty.name(), &value))
    }

    /// A decimal from its text (a string, or a number's digits): kept as text, which the
    /// column builder reads exactly.
    fn decimal<'de>(
        &self,
        text: Cow<'de, str>,
        precision: u8,
        scale: u8,
        value: Value,
    ) -> Checked<'de> {
        match parse_decimal(&text, precision, scale) {
            Some(_) => Ok(Cell::Text(text)),
            None => self.mismatch(value),
        }
    }

    fn text<'de>(&self, text: Cow<'de, str>) -> Checked<'de> {
        if self.text_values {
            let trimmed = text.trim();
            let read = match self.ty {
                Primitive::Long => trimmed.parse::<i64>().ok().map(Cell::Long),
                Primitive::Int => trimmed
                    .parse::<i32>()
                    .ok()
                    .map(|v| Cell::Long(i64::from(v))),
                Primitive::Double | Primitive::Float => {
                    trimmed.parse::<f64>().ok().map(Cell::Double)
                }
                Primitive::Boolean => match trimmed.to_ascii_lowercase().as_str() {
                    "true" => Some(Cell::Bool(true)),
                    "false" => Some(Cell::Bool(false)),
                    _ => None,
                },
                _ => return self.typed_text(text),
            };
            return read.ok_or_else(|| {
                mismatch(
                    self.path,
                    &self.ty.name(),
                    &Value::String(text.into_owned()),
                )
            });
        }
        self.typed_text(text)
    }

    /// Text where the type takes text: strings, timestamps, dates, decimals, bytes.
    fn typed_text<'de>(&self, text: Cow<'de, str>) -> Checked<'de> {
        match self.ty {
            Primitive::Decimal { precision, scale } => {
                let value = Value::String(text.to_string());
                self.decimal(text, precision, scale, value)
            }
            Primitive::String => Ok(Cell::Text(text)),
            Primitive::TimestampNtz => parse_wall_clock(&text).map(Cell::Long).ok_or_else(|| {
                mismatch(
                    self.path,
                    "a date and time",
                    &Value::String(text.into_owned()),
                )
            }),
            Primitive::Timestamp => parse_timestamp(&text).map(Cell::Long).ok_or_else(|| {
                mismatch(
                    self.path,
                    "an RFC 3339 timestamp",
                    &Value::String(text.into_owned()),
                )
            }),
            Primitive::Binary => match base64_bytes(&text) {
                Some(_) => Ok(Cell::Text(text)),
                None => Err(mismatch(
                    self.path,
                    "base64 bytes",
                    &Value::String(text.into_owned()),
                )),
            },
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
            Primitive::Int if i32::try_from(v).is_ok() => Ok(Cell::Long(v)),
            Primitive::Double | Primitive::Float => Ok(Cell::Double(v as f64)),
            // Epoch milliseconds.
            Primitive::Timestamp | Primitive::TimestampNtz => {
                Ok(Cell::Long(v.saturating_mul(1000)))
            }
            Primitive::Decimal { precision, scale } => {
                self.decimal(Cow::Owned(v.to_string()), precision, scale, Value::from(v))
            }
            _ => self.mismatch(Value::from(v)),
        })
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Checked<'de>, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Ok(match self.ty {
                Primitive::Double | Primitive::Float => Ok(Cell::Double(v as f64)),
                Primitive::Decimal { precision, scale } => {
                    self.decimal(Cow::Owned(v.to_string()), precision, scale, Value::from(v))
                }
                _ => self.mismatch(Value::from(v)),
            }),
        }
    }

    fn visit_f64<E>(self, v: f64) -> Result<Checked<'de>, E> {
        Ok(match self.ty {
            Primitive::Double | Primitive::Float => Ok(Cell::Double(v)),
            // The shortest text that reads back as this double: the digits the JSON had
            // (`19.99`), not the float's binary expansion.
            Primitive::Decimal { precision, scale } if v.is_finite() => {
                self.decimal(Cow::Owned(v.to_string()), precision, scale, Value::from(v))
            }
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

/// A declared field met twice in one object: which value it holds is anyone's guess (JSON
/// leaves it to the reader), so the record is rejected rather than one of them picked.
pub(super) fn duplicate(path: &str) -> Rejection {
    Rejection {
        rule: "_parse",
        reason: format!("field `{path}` appears more than once"),
    }
}

/// The declared fields of one object met so far, by slot index.
enum Seen {
    Few(u64),
    Many(Vec<bool>),
}

impl Seen {
    fn new(slots: usize) -> Self {
        if slots <= 64 {
            Seen::Few(0)
        } else {
            Seen::Many(vec![false; slots])
        }
    }

    /// Marks `index` seen; false if it already was.
    fn insert(&mut self, index: usize) -> bool {
        match self {
            Seen::Few(bits) => {
                let bit = 1u64 << index;
                let fresh = *bits & bit == 0;
                *bits |= bit;
                fresh
            }
            Seen::Many(seen) => !std::mem::replace(&mut seen[index], true),
        }
    }
}

/// The path of the first declared field that appears twice in one object of `payload`
/// (for the tree path, which a parsed map would hide it from); `None` if none does or the
/// payload does not parse.
pub(super) fn first_duplicate(slots: &[Slot], payload: &[u8]) -> Option<String> {
    use serde::de::DeserializeSeed;
    let mut found = None;
    let mut parser = serde_json::Deserializer::from_slice(payload);
    Duplicates {
        slots,
        found: &mut found,
    }
    .deserialize(&mut parser)
    .ok()?;
    found
}

/// Walks one object's keys, recursing into declared structs, for [`first_duplicate`].
struct Duplicates<'a> {
    slots: &'a [Slot],
    found: &'a mut Option<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Duplicates<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, parser: D) -> Result<(), D::Error> {
        parser.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Duplicates<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = Seen::new(self.slots.len());
        while let Some(key) = map.next_key_seed(Key)? {
            match self.slots.iter().position(|s| s.name == *key) {
                Some(index) if self.found.is_none() => {
                    let slot = &self.slots[index];
                    if !seen.insert(index) {
                        *self.found = Some(slot.path.clone());
                    }
                    if slot.children.is_empty() {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    } else {
                        map.next_value_seed(Duplicates {
                            slots: &slot.children,
                            found: &mut *self.found,
                        })?;
                    }
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}
