//! Debezium change events (`parse: { format: debezium }`): the envelope around a row image.
//!
//! Debezium's JSON converter writes each change as `{op, ts_ms, before, after, source, …}`,
//! wrapped in `{schema, payload}` when schemas are enabled. The row image a silver table
//! stores is `after` for creates (`c`), snapshot reads (`r`) and updates (`u`), and
//! `before` for deletes (`d`, where it holds at least the key columns). The operation, the
//! event time, the source's log position (`source.lsn`) and the whole `source` block (LSN,
//! transaction, table) become the columns `_op`, `_ts_ms`, `_lsn` and `_source`.
//!
//! A change this module cannot read — not JSON, no `op`, an operation it does not know, no
//! image where the operation needs one, a truncate (`t`: merge applies changes per key and
//! a truncate names none) — is a [`Rejection`] the refine pass quarantines with its reason,
//! under the rule `_envelope`.

use serde_json::Value;

use super::decode::Rejection;

/// The rule name of envelope rejections.
pub const RULE: &str = "_envelope";

/// One change event, unwrapped.
#[derive(Debug, PartialEq)]
pub struct Change {
    /// `c`, `r`, `u` or `d`.
    pub op: String,
    /// The event's `ts_ms`, if it has one.
    pub ts_ms: Option<i64>,
    /// `source.lsn`, if the source block has one.
    pub lsn: Option<i64>,
    /// The `source` block as JSON text, if any.
    pub source: Option<String>,
    /// The row image, re-encoded as a JSON object for the declared schema's decoder.
    pub image: Vec<u8>,
}

fn reject(reason: impl Into<String>) -> Rejection {
    Rejection {
        rule: RULE,
        reason: reason.into(),
    }
}

/// Unwraps one Debezium change event.
pub fn unwrap(payload: &[u8]) -> Result<Change, Rejection> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| reject(format!("not a Debezium change event: invalid JSON: {e}")))?;
    let Value::Object(mut event) = value else {
        return Err(reject("not a Debezium change event: not a JSON object"));
    };
    // With schemas enabled the event is `{schema, payload}`.
    if !event.contains_key("op")
        && let Some(Value::Object(inner)) = event.remove("payload")
    {
        event = inner;
    }
    let op = match event.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(other) => {
            return Err(reject(format!(
                "the change event's `op` is {other}, not a string"
            )));
        }
        None => return Err(reject("the change event has no `op`")),
    };
    let image = match op.as_str() {
        "c" | "r" | "u" => "after",
        "d" => "before",
        "t" => {
            return Err(reject(
                "a truncate (`op` = 't') names no key; merge does not apply it",
            ));
        }
        other => {
            return Err(reject(format!(
                "unknown `op` '{other}' (expected c, r, u, d or t)"
            )));
        }
    };
    let row = match event.remove(image) {
        Some(Value::Object(row)) => row,
        Some(Value::Null) | None => {
            return Err(reject(format!(
                "op '{op}' without a row image: `{image}` is missing"
            )));
        }
        Some(other) => {
            return Err(reject(format!(
                "`{image}` is {}, not an object",
                kind(&other)
            )));
        }
    };
    let ts_ms = match event.get("ts_ms") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
        Some(other) => {
            return Err(reject(format!("`ts_ms` is {other}, not an integer")));
        }
    };
    let lsn = match event.get("source").and_then(|s| s.get("lsn")) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
        Some(other) => {
            return Err(reject(format!("`source.lsn` is {other}, not an integer")));
        }
    };
    let source = match event.get("source") {
        None | Some(Value::Null) => None,
        Some(source) => Some(source.to_string()),
    };
    let image =
        serde_json::to_vec(&Value::Object(row)).map_err(|e| reject(format!("row image: {e}")))?;
    Ok(Change {
        op,
        ts_ms,
        lsn,
        source,
        image,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update example of Debezium's PostgreSQL connector documentation (payload only).
    const UPDATE: &str = r#"{
        "before": null,
        "after": {"id": 1, "first_name": "Anne Marie", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
        "source": {"version": "2.5.4.Final", "connector": "postgresql", "name": "PostgreSQL_server",
                   "ts_ms": 1559033904863, "snapshot": false, "db": "postgres", "schema": "public",
                   "table": "customers", "txId": 556, "lsn": 24023128, "xmin": null},
        "op": "u", "ts_ms": 1465584025523}"#;

    #[test]
    fn updates_take_the_after_image_and_keep_op_time_and_source() {
        let change = unwrap(UPDATE.as_bytes()).unwrap();
        assert_eq!(change.op, "u");
        assert_eq!(change.ts_ms, Some(1465584025523));
        let image: Value = serde_json::from_slice(&change.image).unwrap();
        assert_eq!(image["first_name"], "Anne Marie");
        let source: Value = serde_json::from_str(change.source.as_deref().unwrap()).unwrap();
        assert_eq!(source["lsn"], 24023128);
        assert_eq!(change.lsn, Some(24023128));
    }

    #[test]
    fn the_schema_wrapper_is_unwrapped_and_deletes_take_before() {
        let event = r#"{"schema": {"type": "struct"}, "payload": {
            "before": {"id": 1}, "after": null, "op": "d", "ts_ms": 5}}"#;
        let change = unwrap(event.as_bytes()).unwrap();
        assert_eq!(change.op, "d");
        assert_eq!(change.image, br#"{"id":1}"#);
    }

    #[test]
    fn bad_envelopes_say_what_is_wrong() {
        let cases = [
            (r#"{"after": {"id": 1}}"#, "has no `op`"),
            (r#"{"op": "x", "after": {"id": 1}}"#, "unknown `op` 'x'"),
            (r#"{"op": "u", "after": null}"#, "`after` is missing"),
            (r#"{"op": "d"}"#, "`before` is missing"),
            (r#"{"op": "c", "after": [1]}"#, "`after` is an array"),
            (r#"{"op": "t"}"#, "truncate"),
            (r#"{"op": "c", "after": {}, "ts_ms": "soon"}"#, "`ts_ms`"),
            (
                r#"{"op": "c", "after": {}, "source": {"lsn": "0/16B3748"}}"#,
                "`source.lsn`",
            ),
            ("[1]", "not a JSON object"),
            ("{", "invalid JSON"),
        ];
        for (event, expected) in cases {
            let rejection = unwrap(event.as_bytes()).unwrap_err();
            assert_eq!(rejection.rule, RULE);
            assert!(
                rejection.reason.contains(expected),
                "{event}: {}",
                rejection.reason
            );
        }
    }
}
