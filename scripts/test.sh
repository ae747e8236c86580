#!/usr/bin/env bash
# The whole test suite, on a fresh machine or an old one: installs what is missing (protoc,
# etcd, the tansu Kafka broker, moto's S3 server, a Python venv), then runs format and lint checks, the Rust unit and integration
# tests (real etcd included), and the Python client tests (ADBC Flight SQL driver and the
# delta-rs Python reader) against a live cluster.
source "$(dirname "$0")/env.sh"
cd "$ROOT"

# Real services the suites start by themselves (docs/testing.md). Here they are installed, so a
# missing one fails the run instead of skipping.
source "$ROOT/scripts/services.sh"
export SMELTER_REQUIRE_SERVICES="${SMELTER_REQUIRE_SERVICES:-1}"
# A CI run never skips: a missing service fails its test whatever the variable says.
if [ "${CI:-}" = true ]; then export SMELTER_REQUIRE_SERVICES=1; fi

# Tests that skip (a service missing, SMELTER_REQUIRE_SERVICES=0) pass as far as cargo is
# concerned; each writes its name here, and the run ends by saying which skipped.
export SMELTER_SKIP_LOG="$CACHE/skipped.log"
: > "$SMELTER_SKIP_LOG"
summary() {
  local skipped
  skipped=$(sort -u "$SMELTER_SKIP_LOG" | grep -c . || true)
  echo "== skipped: $skipped test(s)"
  sort -u "$SMELTER_SKIP_LOG" | sed 's/^/  /'
}
trap summary EXIT

echo "== format and lints"
cargo fmt --all --check
cargo clippy -q --workspace --all-targets -- -D warnings

echo "== deploy manifests (kustomize render, strict schema validation)"
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is required to render deploy/k8s" >&2; exit 1; }
for dir in deploy/k8s deploy/k8s-secure; do
  kubectl kustomize "$dir" | "$VENV/bin/kubernetes-validate" --strict --quiet -
done

echo "== build"
cargo build -q --workspace --bins --tests

echo "== rust tests"
cargo test -q --workspace --no-fail-fast 2>&1 | tee "$CACHE/cargo-test.log"

echo "== python client tests"
SMELTER_BIN="$CARGO_TARGET_DIR/debug/smelter" "$VENV/bin/python" -m pytest -q tests/python
