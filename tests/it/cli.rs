//! The `smelter` binary as a user runs it: bad pipeline files are rejected before anything
//! runs, with the file, line and field; errors map to exit codes.

use std::process::Command;

use smelter_tests::{DEMO, smelter_binary};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(smelter_binary())
        .args(args)
        .output()
        .expect("run smelter");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_pipelines_are_rejected_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            DEMO.replace("keys: [event_id]", "keys: [event_uuid]"),
            "tables.silver.events.dedupe.keys",
            "event_uuid",
        ),
        (
            DEMO.replace("flatten: true", "flatten: yes please"),
            "tables.silver.events.flatten",
            "invalid type",
        ),
        (
            DEMO.replace(
                "count(DISTINCT session_id) AS sessions",
                "count(DISTINCT sesion_id) AS sessions",
            ),
            "tables.gold.daily_summary.sql",
            "sesion_id",
        ),
        (
            DEMO.replace("user_id IS NOT NULL", "user_id IS NOT"),
            "tables.silver.events.expectations.0.expr",
            "user_id IS NOT",
        ),
    ];
    for (i, (text, field, detail)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let (code, _, stderr) = run(&["validate", path]);
        assert_eq!(code, 2, "validate {field}: {stderr}");
        assert!(
            stderr.contains(path) && stderr.contains(field) && stderr.contains(detail),
            "validate: {stderr}"
        );
        let data = dir.path().join(format!("data{i}"));
        let (code, _, stderr) = run(&[
            "up",
            "--pipeline",
            path,
            "--data-dir",
            data.to_str().unwrap(),
            "--flight-addr",
            "127.0.0.1:0",
            "--coordinator-addr",
            "127.0.0.1:0",
        ]);
        assert_eq!(code, 2, "up {field}: {stderr}");
        assert!(stderr.contains(field), "up: {stderr}");
        assert!(
            !data.join("tables").exists(),
            "nothing may run for a bad spec"
        );
    }
    let demo = dir.path().join("demo.yaml");
    std::fs::write(&demo, DEMO).unwrap();
    let (code, stdout, stderr) = run(&["validate", demo.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("pipeline `clickstream` is valid"),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (code, _, stderr) = run(&["up", "--demo", "--workers", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--workers"), "{stderr}");
    let (code, _, stderr) = run(&["query", "SELECT 1", "--output", "xml"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn unreachable_endpoints_fail_with_exit_code_1() {
    let (code, _, stderr) = run(&["query", "SELECT 1", "--endpoint", "127.0.0.1:1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    let (code, _, stderr) = run(&["status", "--coordinator", "127.0.0.1:1", "--output", "json"]);
    assert_eq!(code, 1, "{stderr}");
}
