//! The decoder against JSON as producers write it: nested, missing, wrong and extra fields.

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
        // Keys with escapes are read owned, the others borrowed: the same fields either way.
        r#"{"\u0069d":"a","us\u0065r":{"\u0069d":"u"},"n":1}"#,
        r#"{"\u0069d":"a","id":"b"}"#,
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
    let unflattened = JsonDecoder::new(
        serde_yaml::from_str(
            "id: string\nn: long\nuser: { id: string, score: double }\ntags: [string]\n",
        )
        .unwrap(),
        false,
    );
    let rescuing = [
        decoder.clone(),
        decoder.clone().rescuing(&Rescue::All),
        decoder.clone().rescuing(&Rescue::Paths(
            ["user.id".to_string(), "ts".to_string()].into(),
        )),
        unflattened.clone(),
        unflattened.rescuing(&Rescue::All),
    ];
    for (payload, decoder) in payloads
        .iter()
        .flat_map(|p| rescuing.iter().map(move |d| (p, d)))
    {
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
            // Parse errors are worded by each parser (sonic-rs streams, serde_json builds
            // the tree); the rule and the visitors' own reasons are the same.
            (Err(x), Err(y))
                if x.reason.starts_with("invalid JSON: ")
                    && y.reason.starts_with("invalid JSON: ") =>
            {
                assert_eq!((x.rule, y.rule), ("_parse", "_parse"), "{payload}");
                assert!(!x.reason.contains('\n'), "one line: {x:?}");
            }
            (streamed, tree) => assert_eq!(streamed.err(), tree.err(), "{payload}"),
        }
    }
}

#[test]
fn rescuing_keeps_values_of_another_type_with_the_row() {
    let rescuing = decoder().rescuing(&Rescue::All);
    let (row, rescued) = rescuing
        .decode(br#"{"id":7,"ts":"yesterday","n":2,"user":{"id":"u","score":"high"},"tags":["x",7],"extra":1}"#)
        .unwrap();
    assert!(row["id"].is_null() && row["ts"].is_null() && row["user_score"].is_null());
    assert!(row["tags"].is_null());
    assert_eq!(
        (&row["n"], &row["user_id"]),
        (&Value::from(2), &Value::from("u"))
    );
    let rescued: Value = serde_json::from_str(&rescued.unwrap()).unwrap();
    assert_eq!(
        rescued,
        serde_json::json!({"id": 7, "ts": "yesterday", "user.score": "high", "tags": ["x", 7], "extra": 1})
    );
    // A flattened struct that is not an object is kept whole.
    let (_, rescued) = rescuing.decode(br#"{"user":[1]}"#).unwrap();
    assert_eq!(rescued.as_deref(), Some(r#"{"user":[1]}"#));
    // Only the named fields rescue; the others still reject their record.
    let some = decoder().rescuing(&Rescue::Paths(["n".to_string()].into()));
    let (row, rescued) = some.decode(br#"{"id":"a","n":"many"}"#).unwrap();
    assert!(row["n"].is_null() && rescued.as_deref() == Some(r#"{"n":"many"}"#));
    assert_eq!(some.decode(br#"{"id":7}"#).unwrap_err().rule, "_schema");
    // A record that is not an object is still rejected.
    assert_eq!(rescuing.decode(b"[1]").unwrap_err().rule, "_parse");
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

/// A declared field twice in one object is rejected by both paths (a parsed map would
/// keep the last; the streaming decoder would judge the first): JSON leaves it to the
/// reader which one counts. Undeclared duplicates are rescued, the last one kept.
#[test]
fn a_declared_field_twice_is_rejected_by_both_paths() {
    let decoder = decoder();
    for payload in [
        &br#"{"id":"c","ts":"c","ts":"2026-11-01 10:00:00.5"}"#[..],
        br#"{"id":"c","ts":"2026-11-01T00:00:00Z","ts":"2026-11-01T00:00:00Z"}"#,
        br#"{"id":"c","user":{"id":"a","id":"b"}}"#,
        br#"{"id":"c","user":{"id":"a"},"user":{"score":1}}"#,
    ] {
        let streamed = decoder.decode_row(payload).unwrap_err();
        let tree = decoder.decode_value(payload).unwrap_err();
        assert_eq!(streamed, tree, "{}", String::from_utf8_lossy(payload));
        assert_eq!(streamed.rule, "_parse");
        assert!(
            streamed.reason.contains("appears more than once"),
            "{}",
            streamed.reason
        );
    }
    let (_, rescued) = decoder.decode_row(br#"{"id":"c","x":1,"x":2}"#).unwrap();
    assert_eq!(rescued.as_deref(), Some(r#"{"x":2}"#));
    assert_eq!(
        decoder
            .decode_value(br#"{"id":"c","x":1,"x":2}"#)
            .unwrap()
            .1
            .as_deref(),
        Some(r#"{"x":2}"#)
    );
}

/// Money as exact decimals, ints and floats: read from numbers and numeric strings without
/// a float in between, out-of-range values rejected with the type, both paths agreeing.
#[test]
fn decimals_ints_and_floats_are_checked_exactly() {
    let yaml = "price: decimal(10,2)\nqty: int\nw: float\n";
    let decoder = JsonDecoder::new(serde_yaml::from_str(yaml).unwrap(), true);
    let accepted = [
        (r#"{"price":19.99}"#, Some(1999)),
        (r#"{"price":"19.99"}"#, Some(1999)),
        (r#"{"price":-0.5}"#, Some(-50)),
        (r#"{"price":7}"#, Some(700)),
        (r#"{"price":1e3}"#, Some(100_000)),
        (r#"{"price":12345678.90}"#, Some(1_234_567_890)),
        (r#"{"price":null,"qty":2147483647,"w":1.5}"#, None),
    ];
    let mut cells = Vec::new();
    for (payload, cents) in accepted {
        decoder
            .decode_cells(payload.as_bytes(), &mut cells)
            .unwrap_or_else(|e| panic!("{payload}: {e:?}"));
        let found = match &cells[0] {
            Cell::Text(text) => parse_decimal(text, 10, 2),
            Cell::Null => None,
            other => panic!("{payload}: {other:?}"),
        };
        assert_eq!(found, cents, "{payload}");
        let (tree, _) = decoder.decode_value(payload.as_bytes()).unwrap();
        let tree = tree[0].as_str().and_then(|t| parse_decimal(t, 10, 2));
        assert_eq!(tree, cents, "{payload}: the tree path");
    }
    for (payload, expected) in [
        (
            r#"{"price":19.999}"#,
            "expected decimal(10,2), got number 19.999",
        ),
        (r#"{"price":123456789}"#, "expected decimal(10,2)"),
        (r#"{"price":"12,5"}"#, "expected decimal(10,2)"),
        (r#"{"price":"1e3"}"#, "expected decimal(10,2)"),
        (r#"{"qty":3000000000}"#, "`qty`: expected int"),
        (r#"{"qty":1.5}"#, "`qty`: expected int"),
        (r#"{"w":"x"}"#, "`w`: expected float"),
    ] {
        let streamed = decoder
            .decode_cells(payload.as_bytes(), &mut cells)
            .unwrap_err();
        assert!(
            streamed.reason.contains(expected),
            "{payload}: {}",
            streamed.reason
        );
        let tree = decoder.decode_value(payload.as_bytes()).unwrap_err();
        assert_eq!(tree, streamed, "{payload}");
    }
    assert_eq!(parse_decimal("-0012.300", 10, 3), Some(-12_300));
    assert_eq!(parse_decimal(".5", 3, 1), Some(5));
    assert_eq!(parse_decimal("99999999.99", 10, 2), Some(9_999_999_999));
    assert_eq!(parse_decimal("", 10, 2), None);
    assert_eq!(parse_decimal("-", 10, 2), None);
    assert_eq!(parse_decimal(".", 10, 2), None);
}

#[test]
fn timestamp_ntz_reads_the_wall_clock_as_written() {
    let decoder = JsonDecoder::new(
        serde_yaml::from_str("local: timestamp_ntz\n").unwrap(),
        false,
    );
    // 2026-11-01T10:00:00 as if it were UTC: 1,793,527,200 s.
    let at_ten = 1_793_527_200_000_000i64;
    for (text, micros) in [
        (r#""2026-11-01T10:00:00""#, at_ten),
        (r#""2026-11-01 10:00:00.25""#, at_ten + 250_000),
        // An offset is not applied: the time as written.
        (r#""2026-11-01T10:00:00+02:00""#, at_ten),
        (r#""2026-11-01T10:00:00Z""#, at_ten),
        ("1793527200000", at_ten),
    ] {
        let payload = format!(r#"{{"local":{text}}}"#);
        let mut cells = Vec::new();
        decoder
            .decode_cells(payload.as_bytes(), &mut cells)
            .unwrap();
        assert_eq!(cells[0], Cell::Long(micros), "{text}");
        let (values, _) = decoder.decode_value(payload.as_bytes()).unwrap();
        assert_eq!(values[0], Value::from(micros), "{text} (tree path)");
    }
    let error = decoder.decode(br#"{"local":"yesterday"}"#).unwrap_err();
    assert!(
        error.reason.contains("`local`: expected a date and time"),
        "{}",
        error.reason
    );
}

#[test]
fn sonic_rs_drives_the_same_visitors_to_the_same_cells() {
    let serde = decoder().with_parser(JsonParser::SerdeJson);
    let sonic = decoder().with_parser(JsonParser::Sonic);
    for payload in [
        r#"{"id":"a","ts":"2026-11-01T00:00:01Z","n":3,"user":{"id":"u","score":1.5,"vip":true},"tags":["x"],"extra":{"k":[1,{"z":null}]}}"#,
        r#"{"id":"\u00e9t\u00e9","n":-3,"ts":1700000000000,"user":{"score":19.99}}"#,
        r#"{"\u0069d":"a","us\u0065r":{"\u0069d":"u"},"n":18446744073709551615}"#,
        r#"{"id":"a","user":5}"#,
        r#"{"id":"a","id":"b"}"#,
        r#"{"id":"a"} x"#,
        r#"{"id":7,"n":}"#,
        r#"{"#,
    ] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        match (
            serde.decode_cells(payload.as_bytes(), &mut a),
            sonic.decode_cells(payload.as_bytes(), &mut b),
        ) {
            (Ok(x), Ok(y)) => assert_eq!((x, &a), (y, &b), "{payload}"),
            (Err(x), Err(y)) => assert_eq!(x.rule, y.rule, "{payload}: {x:?} / {y:?}"),
            (x, y) => panic!("{payload}: serde_json {x:?}, sonic-rs {y:?}"),
        }
    }
}

/// The default parser rounds doubles correctly: each one decodes to the double Rust's own
/// parser gives, including where serde_json's default, best-effort parsing is a unit in
/// the last place off (the first three, and `8.988465674311579e307`).
#[test]
fn doubles_decode_correctly_rounded() {
    let decoder = decoder();
    for text in [
        "1.79769313131313131348623157e308",
        "2.2250738585072011e-308",
        "2.2250738585072012e-308",
        "9007199254740993",
        "0.1",
        "1e23",
        "8.988465674311579e307",
        "4.9406564584124654e-324",
        "123456789012345678901234567890.123456789",
        "-0.0",
    ] {
        let payload = format!(r#"{{"user":{{"score":{text}}}}}"#);
        let (row, _) = decoder.decode(payload.as_bytes()).unwrap();
        let expected: f64 = text.parse().unwrap();
        if text == "-0.0" {
            // sonic-rs drops a negative zero's sign: equal as numbers, not as bits.
            assert_eq!(row["user_score"].as_f64(), Some(expected), "{text}");
            continue;
        }
        assert_eq!(
            row["user_score"].as_f64().map(f64::to_bits),
            Some(expected.to_bits()),
            "{text}: {}",
            row["user_score"]
        );
    }
}
