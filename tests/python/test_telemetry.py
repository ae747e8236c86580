"""OpenTelemetry: `smelter up` with `[telemetry] otlp_endpoint` exports its spans over
OTLP/HTTP (JSON) to a collector — here a real HTTP server that keeps what it receives. Every
commit is a span naming its table, rows and version; the committed bronze rows in the spans
add up to what the `deltalake` package reads from the table; a refine pass's span holds its
commits; a Flight SQL client's `traceparent` makes the query's spans part of its trace, and an
HTTP client's makes the coordinator's span and the worker's (over gRPC) part of its trace."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import subprocess
import urllib.request

from deltalake import DeltaTable

import adbc_driver_flightsql.dbapi as flight_sql

from test_clients import ROOT, free_port, smelter, wait_until

EVENTS = 3000
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
HTTP_TRACE = "0af7651916cd43dd8448eb211c80319c"
HTTP_SPAN = "b7ad6b7169203331"


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
        common = ["--config", str(config), "up", "--pipeline", str(pipeline), "--data-dir",
                  str(data), "--coordinator-addr", "127.0.0.1:0"]
        subprocess.run(smelter(*common, "--flight-addr", "127.0.0.1:0", "--exit-when-done"),
                       check=True, timeout=300)
        # Serve the tables and query them as a traced client would.
        port, http_port = free_port(), free_port()
        serving = subprocess.Popen(smelter(*common, "--flight-addr", f"127.0.0.1:{port}",
                                           "--http-addr", f"127.0.0.1:{http_port}"))
        try:
            options = {"adbc.flight.sql.rpc.call_header.traceparent": CLIENT_PARENT}

            def query():
                with flight_sql.connect(f"grpc://127.0.0.1:{port}", db_kwargs=options,
                                        autocommit=True) as conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM silver.events")
                    return cur.fetchall()

            assert wait_until("a traced query answered", query, 60, stop=serving.poll)[0][0] > 0

            def http_query():
                request = urllib.request.Request(
                    f"http://127.0.0.1:{http_port}/query",
                    data=json.dumps({"sql": "SELECT count(*) AS n FROM bronze.events"}).encode(),
                    headers={"Content-Type": "application/json",
                             "traceparent": f"00-{HTTP_TRACE}-{HTTP_SPAN}-01"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read())["rows"]

            assert wait_until("a traced HTTP query answered", http_query, 60,
                              stop=serving.poll) == [{"n": EVENTS}]
        finally:
            serving.terminate()
            assert serving.wait(timeout=60) == 0
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
    # A refine pass is a span tree: its commits (silver, quarantine) are its children.
    by_id = {s["spanId"]: s for s in spans}
    children = [s for s in spans if s["name"] == "commit" and s.get("parentSpanId") in by_id
                and by_id[s["parentSpanId"]]["name"] == "refine"]
    assert children, "no commit span under a refine span"
    for child in children:
        parent = by_id[child["parentSpanId"]]
        assert child["traceId"] == parent["traceId"]
        assert attributes(child)["table"].startswith(attributes(parent)["table"])
    # Gold refreshes too, with their commit inside.
    refreshes = {s["spanId"] for s in spans if s["name"] == "gold_refresh"}
    assert refreshes and any(s.get("parentSpanId") in refreshes for s in spans if s["name"] == "commit")
    # The client's trace continues on the server: the query's spans carry its trace id,
    # the first one with the client's span as parent, and planning nested under it.
    queries = [s for s in spans if s["name"] == "flight_sql" and s["traceId"] != HTTP_TRACE]
    assert queries and all(s["traceId"] == CLIENT_TRACE for s in queries), queries
    assert all(s["parentSpanId"] == CLIENT_SPAN for s in queries)
    ids = {s["spanId"] for s in queries}
    assert any(s["name"] == "plan_query" and s.get("parentSpanId") in ids for s in spans)
    # An HTTP caller's trace goes on through the coordinator to the worker: the
    # coordinator's span joins it, and the worker's Flight SQL span (another gRPC call
    # away) is its child.
    handed = [s for s in spans if s["name"] == "http_sql"]
    assert handed and all(s["traceId"] == HTTP_TRACE and s["parentSpanId"] == HTTP_SPAN
                          for s in handed), handed
    assert attributes(handed[-1])["sql"] == "SELECT count(*) AS n FROM bronze.events"
    on_worker = [s for s in spans if s["name"] == "flight_sql" and s["traceId"] == HTTP_TRACE]
    assert on_worker and {s["parentSpanId"] for s in on_worker} <= {s["spanId"] for s in handed}
