//! The fuzz targets: what reads untrusted input must never panic, and must say what is
//! wrong with a bad input. Inputs come from `smelter_fuzz::inputs` (corpus seeds mutated,
//! and random ones); `FUZZ_CASES` sets how many per target.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;
use smelter_common::spec::{PipelineSpec, SchemaSpec};
use smelter_fuzz::{cases, corpus, inputs};
use smelter_worker::refine::decode::{JsonDecoder, JsonParser, Rejection};

/// JSON's own words, for splices.
const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b"null",
    b"true",
    b"false",
    b"-0",
    b"1e999",
    b"\\u0000",
    b"\\ud800",
    b"\"ts\":",
    b"\"user\":{",
    b"\"tags\":[",
    b"9223372036854775808",
];

const YAML_TOKENS: &[&[u8]] = &[
    b"\n",
    b": ",
    b"- ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"&a ",
    b"*a",
    b"!!str ",
    b"null",
    b"~",
    b"tables:",
    b"sources:",
    b"silver.",
    b"gold.",
    b"bronze.",
    b"parse:",
    b"sql: ",
    b"expectations:",
    b"dedupe:",
    b"keys: [",
    b"within: ",
    b"on_violation: ",
    b"'",
];

const SQL_TOKENS: &[&[u8]] = &[
    b" SELECT ",
    b" FROM ",
    b" WHERE ",
    b" GROUP BY ",
    b" ORDER BY ",
    b" LIMIT ",
    b"(",
    b")",
    b",",
    b"'",
    b"\"",
    b";",
    b" JOIN ",
    b" ON ",
    b" UNION ",
    b" silver.events ",
    b" gold.hourly_metrics ",
    b" bronze.events ",
    b" count(*) ",
    b" CAST(",
    b" AS ",
    b" INSERT INTO ",
    b" DROP TABLE ",
    b" COPY ",
    b"--",
    b"/*",
    b" NULL ",
    b" 1e308 ",
];

type Row = Result<(Vec<Value>, Option<String>), Rejection>;

/// Two decoded rows are the same: both rejected, or both accepted with the same cells and
/// rescued fields, numbers compared as numbers (see [`same_value`]).
fn same_rows(a: &Row, b: &Row) -> bool {
    match (a, b) {
        (Err(_), Err(_)) => true,
        (Ok((x, rx)), Ok((y, ry))) => {
            let rescued = |r: &Option<String>| {
                r.as_deref()
                    .map(|t| serde_json::from_str::<Value>(t).unwrap())
            };
            x.len() == y.len()
                && x.iter().zip(y).all(|(x, y)| same_value(x, y))
                && match (rescued(rx), rescued(ry)) {
                    (None, None) => true,
                    (Some(x), Some(y)) => same_value(&x, &y),
                    _ => false,
                }
        }
        _ => false,
    }
}

/// JSON values equal, a number being a number (`308` and `308.0` are one double) and two
/// doubles one unit in the last place apart being the same: serde_json's default float
/// parsing is best effort (its `float_roundtrip` feature is off), sonic-rs rounds
/// correctly (`1.79769313131313131348623157e308` is `1.7976931313131312e308`, as Rust's
/// and Python's own parsers say; serde_json reads `…314e308`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || x.to_bits().abs_diff(y.to_bits()) <= 1,
                _ => x == y,
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

fn decoder() -> JsonDecoder {
    let schema: SchemaSpec = serde_yaml::from_str(
        "id: string\nts: timestamp\nn: long\nuser: { id: string, score: double }\n\
         tags: [string]\nday: date\nok: boolean\n",
    )
    .unwrap();
    JsonDecoder::new(schema, true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// The JSON decoder: a payload becomes a row, or a rejection with a rule and a reason
    /// (the quarantine row's). The streaming decoder (what refine runs) and the tree
    /// decoder accept exactly the same payloads, with the same rows. (Their rules may
    /// differ on a payload with several faults: the streaming one stops at the first it
    /// meets.)
    #[test]
    fn json_decoder(payload in inputs(corpus("json"), JSON_TOKENS)) {
        let decoder = decoder();
        let streamed = decoder.decode_row(&payload);
        if let Err(rejection) = &streamed {
            prop_assert!(rejection.rule == "_parse" || rejection.rule == "_schema", "{:?}", rejection);
            prop_assert!(!rejection.reason.is_empty());
        }
        let tree = decoder.decode_value(&payload);
        prop_assert!(
            same_rows(&streamed, &tree),
            "streaming and tree decoding disagree on {:?}: {:?} / {:?}",
            String::from_utf8_lossy(&payload),
            streamed,
            tree
        );
    }

    /// The two parsers the decoder can drive its visitors with (sonic-rs, the default, and
    /// serde_json): the same payloads accepted, with the same rows, and the same rule on
    /// a rejection — except on a payload that is not UTF-8, which sonic-rs refuses as a
    /// whole before serde_json would meet a field of the wrong type earlier in it (both
    /// reject it), and where serde_json's float parsing is wrong (see [`same_value`]).
    #[test]
    fn json_parsers_agree(payload in inputs(corpus("json"), JSON_TOKENS)) {
        let serde = decoder().with_parser(JsonParser::SerdeJson).decode_row(&payload);
        let sonic = decoder().with_parser(JsonParser::Sonic).decode_row(&payload);
        match (&serde, &sonic) {
            (Err(x), Err(y)) if std::str::from_utf8(&payload).is_ok() => {
                prop_assert_eq!(x.rule, y.rule, "{:?}: {:?} / {:?}", String::from_utf8_lossy(&payload), x, y)
            }
            (Err(_), Err(_)) => {}
            // serde_json's best-effort parsing calls some doubles just below the largest
            // one out of range; sonic-rs rounds them to it, as Rust's parser does.
            (Err(x), Ok(_)) if x.reason.contains("number out of range") => {}
            _ => prop_assert!(
                same_rows(&serde, &sonic),
                "{:?}: serde_json {:?}, sonic-rs {:?}",
                String::from_utf8_lossy(&payload),
                serde,
                sonic
            ),
        }
    }

    /// The pipeline spec parser: a spec, or an error naming the origin and the field.
    #[test]
    fn spec_parser(text in inputs(corpus("spec"), YAML_TOKENS)) {
        let text = String::from_utf8_lossy(&text);
        match PipelineSpec::parse(&text, "fuzz.yaml") {
            Ok(_) => {}
            Err(smelter_common::Error::Spec { origin, message, .. }) => {
                prop_assert_eq!(origin, "fuzz.yaml");
                prop_assert!(!message.is_empty());
            }
            Err(other) => prop_assert!(false, "not a spec error: {}", other),
        }
    }
}

/// The tables the SQL front door plans against: the demo's, empty.
struct Lake {
    _dir: tempfile::TempDir,
    engine: smelter_worker::serve::query::QueryEngine,
}

fn lake(runtime: &tokio::runtime::Runtime) -> Arc<Lake> {
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = smelter_lake::TableStore::new(dir.path()).unwrap();
        let demo = PipelineSpec::parse(
            include_str!("../../examples/clickstream.yaml"),
            "clickstream.yaml",
        )
        .unwrap();
        let env = Default::default();
        for (name, table) in &demo.tables {
            let schema = match smelter_common::spec::table_layer(name) {
                Some(smelter_common::spec::Layer::Bronze) => {
                    smelter_worker::tasks::schemas::bronze()
                }
                Some(smelter_common::spec::Layer::Silver) => {
                    smelter_worker::tasks::schemas::silver(table)
                }
                _ => continue,
            };
            store
                .open_or_create(name, &schema, &[], &env)
                .await
                .unwrap();
        }
        let engine = smelter_worker::serve::query::QueryEngine::new(store, Default::default());
        Arc::new(Lake { _dir: dir, engine })
    })
}

/// The SQL front door: any statement is planned read-only, or refused with an error. Only
/// planning runs: a statement that plans is the engine's to execute under its limits.
#[test]
fn sql_front_door() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lake = lake(&runtime);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases()));
    let mutating = ["INSERT", "DROP", "COPY", "CREATE", "DELETE", "UPDATE"];
    runner
        .run(&inputs(corpus("sql"), SQL_TOKENS), |sql| {
            let sql = String::from_utf8_lossy(&sql).into_owned();
            let planned = runtime.block_on(lake.engine.plan(&sql, None));
            if planned.is_ok() {
                let upper = sql.to_uppercase();
                let statement = upper.split_whitespace().next().unwrap_or("");
                prop_assert!(
                    !mutating.contains(&statement),
                    "a mutating statement was planned: {}",
                    sql
                );
            }
            Ok(())
        })
        .unwrap();
}
