#!/usr/bin/env bash
# Builds Smelter and runs the clickstream demo: `smelter up --demo`, in the current
# directory (tables go to ./smelter-data). Extra arguments are passed on, e.g.
# `scripts/demo.sh --workers 3 --data-dir /tmp/lake`.
source "$(dirname "$0")/env.sh"
cargo build -q --manifest-path "$ROOT/Cargo.toml" -p smelter-cli --bin smelter
BIN="$CARGO_TARGET_DIR/debug/smelter"
# Put `smelter` on the PATH for the other shell (cargo's bin dir is on it for Rust users).
if [ -d "$HOME/.cargo/bin" ]; then
  ln -sf "$BIN" "$HOME/.cargo/bin/smelter"
  echo "smelter is installed as $HOME/.cargo/bin/smelter (-> $BIN)"
fi
exec "$BIN" up --demo "$@"
