#!/usr/bin/env bash
# The benchmark (BENCHMARKS.md): builds `smelter` in release mode, starts etcd and the
# tansu Kafka broker on free local ports, and runs `smelter bench` in process and as a
# cluster. The JSON result goes to bench/result.json (or $SMELTER_BENCH_OUT). Extra
# arguments go to `smelter bench`, e.g. `scripts/bench.sh --events 10000000`.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
source "$ROOT/scripts/services.sh"
cargo build -q --release -p smelter-cli --bin smelter
BIN="$CARGO_TARGET_DIR/release/smelter"

WORK="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ETCD_PORT="$(free_port)"; PEER_PORT="$(free_port)"; KAFKA_PORT="$(free_port)"
etcd --name smelter-bench --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "smelter-bench=http://127.0.0.1:$PEER_PORT" >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
RUST_LOG=error tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
trap 'kill $ETCD_PID $TANSU_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$ETCD_PORT") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break
  sleep 0.2
done

OUT="${SMELTER_BENCH_OUT:-$ROOT/bench/result.json}"
mkdir -p "$(dirname "$OUT")"
"$BIN" bench --brokers "127.0.0.1:$KAFKA_PORT" --etcd "http://127.0.0.1:$ETCD_PORT" --etcd-pid "$ETCD_PID" \
  --polars-python "$CACHE/bin/bench-python" \
  --work-dir "$WORK" --out "$OUT" "$@"
echo "result: $OUT"
