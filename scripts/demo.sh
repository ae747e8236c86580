#!/usr/bin/env bash
# Builds Smelter and runs the clickstream demo: `smelter up --demo`, in the current
# directory (tables go to ./smelter-data). Extra arguments are passed on, e.g.
# `scripts/demo.sh --workers 3 --data-dir /tmp/lake`.
source "$(dirname "$0")/env.sh"
cargo build -q --manifest-path "$ROOT/Cargo.toml" -p smelter-client --bin smelter
exec "$CARGO_TARGET_DIR/debug/smelter" up --demo "$@"
