//! Checking parsed values against the declared schema: nested objects walked slot by
//! slot, primitives converted (timestamps from RFC 3339 or epoch millis, dates), and a
//! mismatch reported with its path and what was found.

use serde_json::{Map, Value};
use smelter_common::spec::{FieldType, Primitive};

use super::{Rejection, Slot, describe};

/// Moves each declared field of `object` into its column, checked; what is left over is
/// rescued under its path.
pub(super) fn walk(
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
                other if slot.rescue => {
                    rescued.insert(slot.path.clone(), other);
                }
                other => return Err(mismatch(&slot.path, "object", &other)),
            }
        } else if slot.rescue {
            let mut extra = Map::new();
            match check(&slot.ty, value.clone(), &slot.path, &mut extra) {
                Ok(checked) => {
                    rescued.extend(extra);
                    out[slot.column] = checked;
                }
                Err(_) => {
                    rescued.insert(slot.path.clone(), value);
                }
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

pub(super) fn mismatch(path: &str, expected: &str, value: &Value) -> Rejection {
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
pub(super) fn check(
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
        FieldType::Map(inner) => {
            let Value::Object(entries) = value else {
                return Err(mismatch(path, "object", &value));
            };
            entries
                .into_iter()
                .map(|(key, item)| {
                    let checked = check(inner, item, &format!("{path}.{key}"), rescued)?;
                    Ok((key, checked))
                })
                .collect::<Result<Map<String, Value>, _>>()
                .map(Value::Object)
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

pub(super) fn check_primitive(p: Primitive, value: Value, path: &str) -> Result<Value, Rejection> {
    match (p, &value) {
        (Primitive::String, Value::String(_)) => Ok(value),
        (Primitive::Long, Value::Number(n)) if n.is_i64() => Ok(value),
        (Primitive::Int, Value::Number(n))
            if n.as_i64().is_some_and(|v| i32::try_from(v).is_ok()) =>
        {
            Ok(value)
        }
        (Primitive::Double | Primitive::Float, Value::Number(_)) => Ok(value),
        (Primitive::Boolean, Value::Bool(_)) => Ok(value),
        (Primitive::Timestamp, Value::String(s)) => parse_timestamp(s)
            .map(Value::from)
            .ok_or_else(|| mismatch(path, "an RFC 3339 timestamp", &value)),
        (Primitive::TimestampNtz, Value::String(s)) => parse_wall_clock(s)
            .map(Value::from)
            .ok_or_else(|| mismatch(path, "a date and time", &value)),
        (Primitive::Timestamp | Primitive::TimestampNtz, Value::Number(n)) if n.is_i64() => {
            Ok(Value::from(n.as_i64().unwrap_or(0).saturating_mul(1000)))
        }
        (Primitive::Binary, Value::String(s)) => match base64_bytes(s) {
            Some(_) => Ok(value),
            None => Err(mismatch(path, "base64 bytes", &value)),
        },
        (Primitive::Date, Value::String(s)) => parse_date(s)
            .map(Value::from)
            .ok_or_else(|| mismatch(path, "a YYYY-MM-DD date", &value)),
        // Kept as its exact text: the column builder reads it without a float.
        (Primitive::Decimal { precision, scale }, Value::Number(n)) => {
            let text = n.to_string();
            match parse_decimal(&text, precision, scale) {
                Some(_) => Ok(Value::String(text)),
                None => Err(mismatch(path, &p.name(), &value)),
            }
        }
        (Primitive::Decimal { precision, scale }, Value::String(text)) => {
            match parse_decimal(text, precision, scale) {
                Some(_) => Ok(value),
                None => Err(mismatch(path, &p.name(), &value)),
            }
        }
        _ => Err(mismatch(path, &p.name(), &value)),
    }
}

/// A decimal's text (`-12.30`, `7`, `.5`) as its unscaled value at `scale`, if it has at
/// most `precision - scale` digits before the point and no more than `scale` significant
/// digits after it. Exponents are not read: JSON writers print plain digits for money,
/// and this decoder's own floats print without one.
pub fn parse_decimal(text: &str, precision: u8, scale: u8) -> Option<i128> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole = whole.trim_start_matches('0');
    let kept = fraction.trim_end_matches('0');
    if whole.len() > usize::from(precision - scale) || kept.len() > usize::from(scale) {
        return None;
    }
    let mut value: i128 = 0;
    for b in whole.bytes() {
        value = value * 10 + i128::from(b - b'0');
    }
    for i in 0..usize::from(scale) {
        let digit = kept.as_bytes().get(i).map_or(0, |b| b - b'0');
        value = value * 10 + i128::from(digit);
    }
    Some(if negative { -value } else { value })
}

/// Base64 text (standard alphabet, padded) as its bytes.
pub fn base64_bytes(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// `YYYY-MM-DD` to days since the epoch.
pub(super) fn parse_date(text: &str) -> Option<i64> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| (d - chrono::NaiveDate::default()).num_days())
}

/// RFC 3339, or `YYYY-MM-DD HH:MM:SS[.f]` taken as UTC, to epoch microseconds.
/// A date and time as written, without a time zone, in microseconds since the epoch of the
/// same wall clock: `2026-11-01T10:00:00`, with a space, with a fraction; an offset or `Z`
/// is ignored (`10:00+02:00` is 10:00), as SQL engines read text into `timestamp_ntz`.
pub(super) fn parse_wall_clock(text: &str) -> Option<i64> {
    if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(ts.naive_local().and_utc().timestamp_micros());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
        .map(|t| t.and_utc().timestamp_micros())
}

pub(super) fn parse_timestamp(text: &str) -> Option<i64> {
    if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(ts.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}
