# Shared setup for the scripts: prerequisites and a persistent cargo target dir.
# Sourced, not run.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SMELTER_CACHE:-$HOME/.cache/smelter}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
      $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "${missing[@]}" >/dev/null
    }
  fi
}

# protoc builds the gRPC code; cmake/g++ are what rdkafka's bundled build will need.
command -v protoc >/dev/null 2>&1 || apt_install protobuf-compiler
# librdkafka is built with the system's OpenSSL (Kafka over TLS, SASL/SCRAM).
apt_install libssl-dev pkg-config
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (rustup.rs)" >&2; exit 1; }
