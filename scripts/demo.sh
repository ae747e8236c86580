#!/usr/bin/env bash
# Builds Smelter and runs the clickstream demo: `smelter up --demo`.
# Extra arguments are passed on, e.g. `scripts/demo.sh --workers 3`.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
cargo build -q -p smelter-client --bin smelter
exec "$CARGO_TARGET_DIR/debug/smelter" up --demo "$@"
