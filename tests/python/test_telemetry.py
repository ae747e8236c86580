"""OpenTelemetry: `smelter up` with `[telemetry] otlp_endpoint` exports its spans over
OTLP/HTTP (JSON) to a collector — here a real HTTP server that keeps what it receives. Every
commit is a span naming its table, rows and version; the committed bronze rows in the spans
add up to what the `deltalake` package reads from the table."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import subprocess

from deltalake import DeltaTable

from test_clients import ROOT, smelter

EVENTS = 3000


class Collector(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (the handler's name is http.server's)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Collector.received.append((self.path, self.headers.get("Content-Type"), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def attributes(item) -> dict:
    out = {}
    for attribute in item.get("attributes", []):
        value = attribute["value"]
        out[attribute["key"]] = next(iter(value.values())) if value else None
    return out


def test_spans_reach_an_otlp_collector(tmp_path: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        demo = (ROOT / "examples" / "clickstream.yaml").read_text().replace(
            "      rate: 2000            # events per second over all partitions\n",
            f"      rate: null\n      count: {EVENTS}\n",
        )
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(demo)
        config = tmp_path / "smelter.toml"
        config.write_text(
            f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{server.server_port}"\n'
        )
        data = tmp_path / "data"
        subprocess.run(
            smelter("--config", str(config), "up", "--pipeline", str(pipeline), "--data-dir",
                    str(data), "--flight-addr", "127.0.0.1:0", "--coordinator-addr",
                    "127.0.0.1:0", "--exit-when-done"),
            check=True, timeout=300,
        )
    finally:
        server.shutdown()
    assert Collector.received, "no spans were exported"
    spans = []
    for path, content_type, body in Collector.received:
        assert path == "/v1/traces" and content_type == "application/json", (path, content_type)
        for resource in json.loads(body)["resourceSpans"]:
            assert attributes(resource["resource"])["service.name"] == "smelter"
            for scope in resource["scopeSpans"]:
                spans.extend(scope["spans"])
    commits = [attributes(s) for s in spans if s["name"] == "commit"]
    committed = [c for c in commits if c.get("outcome") == "committed"]
    tables = {c["table"] for c in committed}
    assert {"bronze.events", "silver.events", "gold.hourly_metrics"} <= tables, tables
    assert all(int(c["version"]) >= 0 for c in committed)
    bronze_rows = sum(int(c["rows"]) for c in committed if c["table"] == "bronze.events")
    table = DeltaTable(str(data / "tables" / "bronze" / "events"))
    assert bronze_rows == table.to_pyarrow_table().num_rows == EVENTS
    refines = [attributes(s) for s in spans if s["name"] == "refine"]
    assert refines and sum(int(r["rows"]) for r in refines) >= EVENTS
    # Spans are real OTLP: ids and times on every one.
    assert all(len(s["traceId"]) == 32 and len(s["spanId"]) == 16 for s in spans)
    assert all(int(s["endTimeUnixNano"]) >= int(s["startTimeUnixNano"]) > 0 for s in spans)
