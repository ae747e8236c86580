#!/usr/bin/env bash
# The whole test suite, on a fresh machine or an old one: installs what is missing, then
# runs format and lint checks, the Rust unit and integration tests, and the Python client
# tests (ADBC Flight SQL driver and the delta-rs Python reader) against a live cluster.
source "$(dirname "$0")/env.sh"
cd "$ROOT"

echo "== format and lints"
cargo fmt --all --check
cargo clippy -q --workspace --all-targets -- -D warnings

echo "== build"
cargo build -q --workspace --bins --tests

echo "== rust tests"
cargo test -q --workspace --no-fail-fast 2>&1 | tee "$CACHE/cargo-test.log"

echo "== python client tests"
VENV="$CACHE/venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
SMELTER_BIN="$CARGO_TARGET_DIR/debug/smelter" "$VENV/bin/python" -m pytest -q tests/python
