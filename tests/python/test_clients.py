"""Real clients against a live `smelter up`: the ADBC Flight SQL driver queries every layer,
and the independent delta-rs reader (Python `deltalake`) opens every table and reads the
same rows.

The `smelter` binary path comes from SMELTER_BIN (scripts/test.sh sets it)."""

import datetime
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import pytest
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 8000
TABLES = [
    "bronze.events",
    "silver.events",
    "silver.events_quarantine",
    "gold.hourly_metrics",
    "gold.daily_summary",
    "gold.user_segments",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bounded_pipeline(path: Path) -> None:
    demo = (ROOT / "examples" / "clickstream.yaml").read_text()
    demo = demo.replace(
        "      rate: 2000            # events per second over all partitions\n",
        f"      rate: null\n      count: {EVENTS}\n",
    )
    # A table check bound to fail: quantities above 2 exist (the oracle counts them).
    assert "range: { quantity: { min: 1, max: 100 } }" in demo
    demo = demo.replace("range: { quantity: { min: 1, max: 100 } }", "range: { quantity: { min: 1, max: 2 } }")
    path.write_text(demo)


def wait_until(what: str, condition, timeout: float, stop=lambda: None):
    """Asks `condition` every 0.2 s until it returns something truthy (returned), and fails
    naming `what` and the last answer or error once `timeout` seconds pass, or at once when
    `stop()` returns something other than None (a server that exited)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = condition()
            if value:
                return value
            last = value
        except Exception as error:  # the condition's failure is the reason to report
            last = error
        stopped = stop()
        if stopped is not None:
            pytest.fail(f"{what}: gave up ({stopped}); last: {last!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s; last: {last!r}")
        time.sleep(0.2)


def smelter(*args: str) -> list[str]:
    return [os.environ.get("SMELTER_BIN", "smelter"), *args]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("smelter")
    pipeline = work / "pipeline.yaml"
    bounded_pipeline(pipeline)
    data = work / "data"
    common = ["--pipeline", str(pipeline), "--data-dir", str(data), "--coordinator-addr", "127.0.0.1:0"]
    # First run: process everything, then exit.
    subprocess.run(
        smelter("up", *common, "--flight-addr", "127.0.0.1:0", "--exit-when-done"),
        check=True,
        timeout=300,
    )
    # Second run: serve the finished tables (and prove a restart ingests nothing new).
    port, http_port = free_port(), free_port()
    server = subprocess.Popen(smelter("up", *common, "--flight-addr", f"127.0.0.1:{port}",
                                      "--http-addr", f"127.0.0.1:{http_port}"))
    uri = f"grpc://127.0.0.1:{port}"
    def serving():
        with flight_sql.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchall()

    try:
        wait_until("smelter up serving Flight SQL", serving, 60, stop=server.poll)
    except BaseException:
        server.kill()
        raise
    yield {"uri": uri, "tables": data / "tables", "http": f"http://127.0.0.1:{http_port}"}
    server.terminate()
    assert server.wait(timeout=60) == 0, "smelter up must exit cleanly on SIGTERM"


def adbc_rows(uri: str, sql: str) -> list[tuple]:
    with flight_sql.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def delta(cluster, table: str) -> DeltaTable:
    layer, name = table.split(".")
    return DeltaTable(str(cluster["tables"] / layer / name))


def test_adbc_connects_and_reads_sql_info(cluster):
    with flight_sql.connect(cluster["uri"], autocommit=True) as conn:
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "Smelter"


def test_adbc_counts_every_layer(cluster):
    assert adbc_rows(cluster["uri"], "SELECT count(*) FROM bronze.events") == [(EVENTS,)]
    silver = adbc_rows(cluster["uri"], "SELECT count(*), count(DISTINCT event_id) FROM silver.events")[0]
    assert silver[0] == silver[1] > EVENTS * 0.95
    quarantined = adbc_rows(cluster["uri"], "SELECT rule, count(*) FROM silver.events_quarantine GROUP BY rule ORDER BY rule")
    assert {rule for rule, _ in quarantined} == {"_parse", "has_user", "sane_price"}
    events = adbc_rows(cluster["uri"], "SELECT sum(events) FROM gold.hourly_metrics")[0][0]
    assert events == silver[0]


def delta_tables(root: Path) -> dict[tuple[str, str], list[str]]:
    """Every Delta table under the root, with its columns, as the deltalake package reads them."""
    found = {}
    for layer in sorted(root.iterdir()):
        for table in sorted(layer.iterdir()):
            if (table / "_delta_log").is_dir():
                found[(layer.name, table.name)] = sorted(f.name for f in DeltaTable(str(table)).schema().fields)
    return found


def test_adbc_get_objects_lists_every_table_with_its_columns(cluster):
    expected = delta_tables(cluster["tables"])
    assert len(expected) >= 6, expected
    with flight_sql.connect(cluster["uri"], autocommit=True) as conn:
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        assert [c["catalog_name"] for c in objects] == ["smelter"]
        schemas = objects[0]["catalog_db_schemas"]
        assert sorted(s["db_schema_name"] for s in schemas) == ["bronze", "gold", "silver"]
        listed = {
            (s["db_schema_name"], t["table_name"]): sorted(c["column_name"] for c in t["table_columns"])
            for s in schemas
            for t in s["db_schema_tables"] or []
        }
        assert listed == expected
        assert {t["table_type"] for s in schemas for t in s["db_schema_tables"]} == {"TABLE"}
        assert conn.adbc_get_table_types() == ["TABLE"]
        # Filters are the client's: one layer, a name pattern.
        gold = conn.adbc_get_objects(depth="tables", db_schema_filter="gold", table_name_filter="%metrics").read_all().to_pylist()
        assert [(s["db_schema_name"], [t["table_name"] for t in s["db_schema_tables"]])
                for s in gold[0]["catalog_db_schemas"]] == [("gold", ["hourly_metrics"])]
        # A table's schema as the catalog gives it is the schema its rows come in.
        schema = conn.adbc_get_table_schema("events", db_schema_filter="silver")
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM silver.events LIMIT 1")
            assert cur.fetch_arrow_table().schema.equals(schema)


def test_adbc_binds_parameters_to_prepared_statements(cluster):
    rows = delta(cluster, "silver.events").to_pyarrow_table().select(["event_type", "quantity"]).to_pylist()
    sql = "SELECT count(*) FROM silver.events WHERE event_type = $1 AND quantity >= $2"
    with flight_sql.connect(cluster["uri"], autocommit=True) as conn, conn.cursor() as cur:
        for kind, least in [("purchase", 2), ("view", 1), ("nothing", 1)]:
            cur.execute(sql, parameters=(kind, least))
            expected = sum(1 for r in rows if r["event_type"] == kind and r["quantity"] is not None
                           and r["quantity"] >= least)
            assert cur.fetchall() == [(expected,)], (kind, least)
        # The parameter schema names the placeholders with the types the plan expects.
        schema = cur.adbc_prepare(sql)
        assert schema is not None and schema.names == ["$1", "$2"], schema
        # Values the plan cannot take, or too few of them, are refused with a reason.
        with pytest.raises(Exception, match="(?i)param|placeholder|expected"):
            cur.execute(sql, parameters=("purchase",))
            cur.fetchall()


def test_adbc_reports_bad_sql(cluster):
    with pytest.raises(Exception, match="nope"):
        adbc_rows(cluster["uri"], "SELECT * FROM gold.nope")


@pytest.mark.parametrize("table", TABLES)
def test_deltalake_reads_the_same_rows(cluster, table):
    arrow_table = delta(cluster, table).to_pyarrow_table()
    assert arrow_table.num_rows > 0
    (count,) = adbc_rows(cluster["uri"], f"SELECT count(*) FROM {table}")[0]
    assert arrow_table.num_rows == count


def test_gold_matches_between_readers(cluster):
    via_delta = delta(cluster, "gold.daily_summary").to_pyarrow_table().sort_by("day").to_pylist()
    via_flight = adbc_rows(cluster["uri"], "SELECT day, events, users, sessions, purchases, revenue FROM gold.daily_summary ORDER BY day")
    assert len(via_delta) == len(via_flight) > 0
    for d, f in zip(via_delta, via_flight):
        assert (d["day"], d["events"], d["users"], d["sessions"], d["purchases"]) == f[:5]
        assert abs(d["revenue"] - f[5]) < 1e-6


def adbc_table(uri: str, sql: str):
    with flight_sql.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def same_rows(left, right) -> bool:
    columns = sorted(set(left.column_names) & set(right.column_names))
    assert columns == sorted(left.column_names), (left.column_names, right.column_names)

    def rows(table):
        return sorted(map(repr, zip(*[table.column(c).to_pylist() for c in columns])))

    return left.num_rows == right.num_rows and rows(left) == rows(right)


@pytest.mark.parametrize("table", ["bronze.events", "silver.events", "gold.hourly_metrics"])
def test_time_travel_reads_what_deltalake_reads_at_that_version(cluster, table):
    # The unpaced run commits each layer a few times, as its batches happen to close: at
    # least the table's creation and one batch (tests/it/time_travel.rs paces for more).
    latest = delta(cluster, table).version()
    assert latest >= 1
    layer, name = table.split(".")
    path = str(cluster["tables"] / layer / name)
    history = {h["version"]: h["timestamp"] for h in DeltaTable(path).history()}
    for version in sorted({0, 1, latest // 2, latest}):
        expected = DeltaTable(path, version=version).to_pyarrow_table()
        got = adbc_table(cluster["uri"], f"SELECT * FROM {table} VERSION AS OF {version}")
        assert same_rows(got, expected), f"{table} v{version}"
        # By time: the commit's own timestamp, in milliseconds since the epoch.
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(history[version] // 1000))
        at += f".{history[version] % 1000:03d}Z"
        later = max(v for v, t in history.items() if t == history[version])
        got = adbc_table(cluster["uri"], f"SELECT * FROM {table} TIMESTAMP AS OF '{at}'")
        assert same_rows(got, DeltaTable(path, version=later).to_pyarrow_table()), at


def test_time_travel_refuses_versions_it_does_not_have(cluster):
    with pytest.raises(Exception, match="its versions are 0 to"):
        adbc_rows(cluster["uri"], "SELECT * FROM silver.events VERSION AS OF 999999")


def http_get(url: str, headers: dict | None = None, context=None, body=None,
             raw=False) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            data = response.read()
            return response.status, data if raw else data.decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def http_query(base: str, payload: dict, headers: dict | None = None, context=None, raw=False):
    headers = {"Content-Type": "application/json", **(headers or {})}
    return http_get(base + "/query", headers, context, json.dumps(payload).encode(), raw)


def samples(text: str, name: str) -> dict[str, float]:
    """The samples of one metric: labels text -> value."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line[len(name):].rpartition(" ")
            out[labels] = float(value)
    return out


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found is None and os.environ.get("SMELTER_REQUIRE_SERVICES") == "1":
        pytest.fail("promtool is required (Debian package prometheus)")
    return found


def test_http_health_readiness_and_errors(cluster):
    status, body = http_get(cluster["http"] + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = http_get(cluster["http"] + "/ready")
    assert status == 200 and json.loads(body)["leader"], body
    status, body = http_get(cluster["http"] + "/nope")
    assert status == 404 and "no such endpoint" in json.loads(body)["error"]


def test_metrics_are_valid_prometheus_text_that_match_the_tables(cluster):
    status, text = http_get(cluster["http"] + "/metrics")
    assert status == 200, text
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed")
    check = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert samples(text, "smelter_coordinator_leader") == {"": 1.0}
    assert samples(text, "smelter_workers")[""] >= 1
    # Every task of the pipeline: four ingest partitions, refine, three gold tables, and
    # the pipeline's maintenance.
    states = samples(text, "smelter_task_state")
    assert len(states) == 9, states
    # Serving starts when Flight SQL answers; each task reports its state once its worker
    # has started it (`assigned` until then), so poll until every one runs or idles.
    def settled():
        states = samples(http_get(cluster["http"] + "/metrics")[1], "smelter_task_state")
        busy = [k for k in states if 'state="idle"' not in k and 'state="running"' not in k]
        return states if len(states) == 9 and not busy else None

    wait_until("every task running or idle", settled, 60)
    # Nothing left to do, once the versions the serving run writes itself (the tables'
    # catalog descriptions, compactions) have been read downstream.
    def caught_up():
        lag = samples(http_get(cluster["http"] + "/metrics")[1], "smelter_task_lag")
        return lag if lag and all(v == 0 for v in lag.values()) else None

    wait_until("every task caught up", caught_up, 60)
    # Where the workers' reads of upstream files found their rows, per worker and source,
    # once a heartbeat has reported them: under `smelter up` the workers share memory and
    # nothing goes over the exchange (this serving run only follows tables already done).
    def reads():
        found = samples(http_get(cluster["http"] + "/metrics")[1], "smelter_worker_file_reads_total")
        return found if found else None

    found = wait_until("reads reported by heartbeats", reads, 60)
    sources = {labels.split('source="')[1].split('"')[0] for labels in found}
    assert sources == {"memory", "exchange", "storage"}, found
    assert all(v == 0 for k, v in found.items() if 'source="exchange"' in k), found


def test_http_query_returns_rows_as_json_or_arrow(cluster):
    sql = "SELECT hour, events FROM gold.hourly_metrics ORDER BY hour"
    expected = adbc_table(cluster["uri"], sql)
    status, body = http_query(cluster["http"], {"sql": sql, "limit": 100000})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["columns"] == ["hour", "events"] and not answer["truncated"]
    assert [r["events"] for r in answer["rows"]] == expected.column("events").to_pylist()
    status, body = http_query(cluster["http"], {"sql": sql, "limit": 2})
    answer = json.loads(body)
    assert len(answer["rows"]) == 2 and answer["truncated"] == (expected.num_rows > 2)
    status, data = http_query(cluster["http"], {"sql": sql, "limit": 100000},
                              {"Accept": "application/vnd.apache.arrow.stream"}, raw=True)
    assert status == 200
    import pyarrow.ipc
    table = pyarrow.ipc.open_stream(data).read_all()
    assert table.column("events").to_pylist() == expected.column("events").to_pylist()
    # Bad requests: JSON errors with the status that fits.
    status, body = http_query(cluster["http"], {"sql": "SELECT * FROM gold.nope"})
    assert status == 400 and "nope" in json.loads(body)["error"], body
    status, body = http_query(cluster["http"], {"sql": "DROP TABLE gold.hourly_metrics"})
    assert status == 400, body
    status, body = http_get(cluster["http"] + "/query", {"Content-Type": "application/json"},
                            body=b"not json")
    assert status == 400 and "the body must be" in json.loads(body)["error"], body


def http_json(url: str, headers: dict | None = None, context=None):
    status, body = http_get(url, headers, context)
    return status, json.loads(body)


def test_catalog_tables_and_lineage_come_from_the_pipeline(cluster):
    status, answer = http_json(cluster["http"] + "/tables")
    assert status == 200, answer
    tables = {t["name"]: t for t in answer["tables"]}
    assert set(tables) == set(TABLES)
    hourly = tables["gold.hourly_metrics"]
    assert (hourly["owner"], hourly["tags"], hourly["operation"]) == ("analytics", ["kpi"], "aggregate")
    assert hourly["from"] == ["silver.events"] and hourly["tasks"], hourly
    assert tables["bronze.events"]["description"].startswith("Raw clickstream records")
    assert tables["silver.events_quarantine"]["operation"] == "quarantine"
    status, answer = http_json(cluster["http"] + "/tables?layer=gold")
    assert sorted(t["name"] for t in answer["tables"]) == sorted(t for t in TABLES if t.startswith("gold."))
    status, answer = http_json(cluster["http"] + "/tables?layer=platinum")
    assert status == 400 and "layer must be" in answer["error"]
    status, answer = http_json(cluster["http"] + "/tables/silver.events")
    assert status == 200 and answer["operation"] == "refine" and answer["from"] == ["bronze.events"]
    status, answer = http_json(cluster["http"] + "/tables/gold.nope")
    assert status == 404 and "gold.nope" in answer["error"]
    status, answer = http_json(cluster["http"] + "/catalog")
    assert [p["name"] for p in answer["pipelines"]] == ["clickstream"]
    assert answer["pipelines"][0]["sources"] == {"events": "generator"}
    assert "gold.hourly_metrics" in answer["owners"]["analytics"]
    status, answer = http_json(cluster["http"] + "/catalog/lineage/silver.events")
    assert status == 200, answer
    edges = lambda key: {(e["from"], e["to"], e["operation"]) for e in answer[key]}
    assert edges("upstream") == {("events", "bronze.events", "ingest"),
                                 ("bronze.events", "silver.events", "refine")}
    assert {("silver.events", t, "aggregate") for t in TABLES if t.startswith("gold.")} == edges("downstream")
    # Column lineage of a gold table, from its SQL's plan.
    status, answer = http_json(cluster["http"] + "/catalog/lineage/gold.hourly_metrics")
    assert status == 200, answer
    columns = answer["columns"]
    assert columns["hour"] == ["silver.events.ts"], columns
    assert columns["event_type"] == ["silver.events.event_type"]
    assert columns["events"] == [] and columns["users"] == ["silver.events.user_id"]
    assert set(columns["revenue"]) == {"silver.events.event_type", "silver.events.product_price",
                                       "silver.events.quantity"}, columns
    assert delta(cluster, "gold.hourly_metrics").metadata().configuration["smelter.sql"].startswith("SELECT")


def test_the_catalog_description_is_in_each_tables_delta_metadata(cluster):
    # Written by the maintenance task into each table's metadata while the pipeline
    # runs; the `deltalake` package reads it like any property.
    def described():
        meta = delta(cluster, "silver.events").metadata()
        return meta if meta.configuration.get("smelter.owner") == "growth-analytics" else None

    silver = wait_until("silver's description in its Delta metadata", described, 60)
    assert silver.description == "Parsed, validated, deduplicated events."
    assert silver.configuration["smelter.tags"] == "clickstream,pii"
    assert silver.configuration["smelter.column.event_id.comment"].startswith("The producer's id")
    gold = wait_until("gold's key in its Delta metadata",
                      lambda: delta(cluster, "gold.hourly_metrics").metadata().configuration.get("smelter.primaryKey"), 60)
    assert gold == "hour,event_type"
    quarantine = delta(cluster, "silver.events_quarantine").metadata()
    assert quarantine.description == "Records of bronze.events that failed a rule."
    # The REST API shows the table as its log has it: schema, files, bytes, properties.
    status, answer = http_json(cluster["http"] + "/tables/silver.events")
    assert status == 200, answer
    detail = answer["detail"]
    table = DeltaTable(str(cluster["tables"] / "silver" / "events"), version=detail["version"])
    assert detail["rows"] == table.to_pyarrow_table().num_rows
    assert detail["files"] == len(table.file_uris())
    assert [f["name"] for f in detail["schema"]["fields"]] == [f.name for f in table.schema().fields]
    assert detail["properties"]["smelter.owner"] == "growth-analytics"
    assert answer["column_descriptions"]["user_id"].startswith("The signed-in user")


def test_http_history_preview_and_quality(cluster):
    base = cluster["http"]
    # History: one row per version, as the Delta log has them.
    status, answer = http_json(base + "/tables/silver.events/history?limit=10000")
    assert status == 200, answer
    versions = [row["version"] for row in answer["rows"]]
    silver = delta(cluster, "silver.events")
    assert versions == list(range(silver.version(), -1, -1))
    assert "quality" in answer["columns"] and "consumed" in answer["columns"]
    # Preview: the first rows, with the table's columns.
    status, answer = http_json(base + "/tables/silver.events/preview?limit=5")
    assert status == 200 and len(answer["rows"]) == 5, answer
    assert answer["columns"] == silver.schema().to_arrow().names
    status, answer = http_json(base + "/tables/silver.events/preview?limit=0")
    assert status == 400 and "limit" in answer["error"]
    status, answer = http_json(base + "/tables/gold.nope/history")
    assert status == 404
    # Quality: what each refine pass recorded in its commit; every bronze row is accounted
    # for exactly once, and the sums match what the tables hold (read by deltalake).
    status, answer = http_json(base + "/tables/silver.events/quality")
    assert status == 200, answer
    for commit in answer["commits"]:
        q = commit["quality"]
        assert q["rows_in"] == (q["rows_out"] + sum(q["quarantined"].values()) + q["dropped"]
                                + q["deduplicated"]), commit
    totals = answer["totals"]
    assert totals["rows_in"] == delta(cluster, "bronze.events").to_pyarrow_table().num_rows
    assert totals["rows_out"] == silver.to_pyarrow_table().num_rows
    quarantine = delta(cluster, "silver.events_quarantine").to_pyarrow_table()
    assert sum(totals["quarantined"].values()) == quarantine.num_rows
    by_rule = {}
    for rule in quarantine["rule"].to_pylist():
        by_rule[rule] = by_rule.get(rule, 0) + 1
    assert totals["quarantined"] == by_rule
    assert totals["deduplicated"] > 0 and isinstance(totals["warned"], dict)
    # Since the last refine commit's own time: only the commits from then on.
    last = answer["commits"][-1]
    at = datetime.datetime.fromtimestamp(last["at_ms"] / 1000, datetime.timezone.utc)
    since = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    status, later = http_json(base + f"/tables/silver.events/quality?since={since}")
    assert status == 200, later
    assert [c["version"] for c in later["commits"]] == [
        c["version"] for c in answer["commits"] if c["at_ms"] >= last["at_ms"]]
    status, bad = http_json(base + "/tables/silver.events/quality?since=yesterday")
    assert status == 400 and "RFC 3339" in bad["error"]
    # Per column: nulls, least and greatest value, against the rows deltalake reads.
    rows = silver.to_pyarrow_table()
    columns = totals["columns"]
    assert {"user_id", "event_type", "event_id"} <= set(columns), columns
    assert not any(name.startswith("_") for name in columns)
    for name, figures in columns.items():
        assert figures["rows"] == rows.num_rows, (name, figures)
        assert figures["nulls"] == rows[name].null_count, (name, figures)
    user_ids = [u for u in rows["user_id"].to_pylist() if u is not None]
    passes = [c["quality"]["columns"]["user_id"] for c in answer["commits"] if c["quality"]["rows_out"]]
    assert min(p["min"] for p in passes if "min" in p) == min(user_ids)
    assert max(p["max"] for p in passes if "max" in p) == max(user_ids)
    # Table checks, as each pass recorded them: the failing range check counted exactly the
    # rows outside it, the others passed; the latest outcomes are in the summary.
    outside = sum(1 for q in rows["quantity"].to_pylist() if q is not None and not 1 <= q <= 2)
    assert outside > 0
    counted = 0
    # Passes without rows (over a bronze version that added none) evaluate no checks.
    checked = [c for c in answer["commits"] if "checks" in c["quality"]]
    assert checked and all(c["quality"]["rows_out"] == 0 for c in answer["commits"] if c not in checked)
    for commit in checked:
        outcomes = {o["check"]: o for o in commit["quality"]["checks"]}
        assert set(outcomes) == {"unique(event_id)", "max_null_fraction(session_id)",
                                 "max_null_fraction(user_id)", "range(quantity)"}, outcomes
        counted += outcomes["range(quantity)"]["violations"]
        assert all(o["ok"] for name, o in outcomes.items() if name != "range(quantity)"), outcomes
    assert counted == outside
    latest = answer["checks"]
    assert latest["version"] == checked[-1]["version"]
    assert latest["outcomes"] == checked[-1]["quality"]["checks"]
    failures = [o for c in checked for o in c["quality"]["checks"] if not o["ok"]]
    assert failures and all(o["check"] == "range(quantity)" for o in failures)
    assert all("outside [1, 2]" in o["detail"] for o in failures)
    # Gold's checks see the whole table at each refresh.
    status, gold = http_json(base + "/tables/gold.hourly_metrics/quality")
    assert status == 200, gold
    hourly = delta(cluster, "gold.hourly_metrics")
    assert gold["checks"]["version"] == hourly.version()
    assert all(o["ok"] for o in gold["checks"]["outcomes"]), gold["checks"]
    keys = hourly.to_pyarrow_table().select(["hour", "event_type"]).to_pylist()
    assert f"0 repeated keys among {len(keys)} rows" in [o["detail"] for o in gold["checks"]["outcomes"]]
    # The CLI reads the same figures from the log, with no server.
    cli = json.loads(subprocess.run(
        smelter("quality", "silver.events", "--data-dir", str(cluster["tables"].parent), "--output", "json"),
        check=True, capture_output=True, timeout=60).stdout)
    assert cli["totals"] == totals
    assert [c["version"] for c in cli["commits"]] == [c["version"] for c in answer["commits"]]
    text = subprocess.run(smelter("quality", "silver.events", "--data-dir", str(cluster["tables"].parent)),
                          check=True, capture_output=True, text=True, timeout=60).stdout
    assert f"rows in {totals['rows_in']}, out {totals['rows_out']}" in text, text
    assert "FAIL range(quantity)" in " ".join(text.split()), text
    bad = subprocess.run(smelter("quality", "silver.nope", "--data-dir", str(cluster["tables"].parent)),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "does not exist" in bad.stderr, bad
    bad = subprocess.run(smelter("quality", "silver.events", "--since", "yesterday", "--data-dir",
                                 str(cluster["tables"].parent)), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "RFC 3339" in bad.stderr, bad


def test_lineage_of_one_version_reaches_the_source_offsets(cluster):
    base = cluster["http"]
    gold = delta(cluster, "gold.hourly_metrics").version()
    status, tree = http_json(base + f"/catalog/lineage/gold.hourly_metrics?version={gold}")
    assert status == 200, tree
    assert (tree["table"], tree["version"], tree["sources"]) == ("gold.hourly_metrics", gold, [])
    [silver] = tree["upstream"]
    assert silver["table"] == "silver.events"
    # The finished pipeline's last gold version read silver's last refine, which read all of
    # bronze, whose positions are every partition's last offset (as the deltalake reader
    # finds them in the bronze rows).
    history = delta(cluster, "silver.events").history()
    refines = [h["version"] for h in history if h.get("operation") == "WRITE"]
    assert silver["version"] == max(refines)
    [bronze] = silver["upstream"]
    assert bronze["table"] == "bronze.events"
    rows = delta(cluster, "bronze.events").to_pyarrow_table(columns=["partition", "offset"]).to_pylist()
    last = {}
    for row in rows:
        last[row["partition"]] = max(last.get(row["partition"], -1), row["offset"])
    assert {s["partition"]: s["offset"] for s in bronze["sources"]} == last
    status, answer = http_json(base + "/catalog/lineage/gold.hourly_metrics?version=many")
    assert status == 400 and "version" in answer["error"]
    status, answer = http_json(base + f"/catalog/lineage/gold.hourly_metrics?version={gold + 1000}")
    assert status == 400 and "versions kept are" in answer["error"], answer


def chromium() -> str | None:
    found = shutil.which("chromium")
    if found is None and os.environ.get("SMELTER_REQUIRE_SERVICES") == "1":
        pytest.fail("chromium is required (scripts/services.sh installs it)")
    return found


def test_status_page_renders_every_table_in_a_headless_browser(cluster):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not installed")
    profile = Path(cluster["tables"]).parent / "chromium-profile"
    # The page's script fetches /catalog and /tables and renders them; virtual time lets
    # the fetches finish before the DOM is dumped.
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
         "--dump-dom", cluster["http"] + "/status"],
        capture_output=True, text=True, timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-loaded="true"' in html, html[-3000:]
    assert 'data-pipeline="clickstream"' in html
    # The lineage graph draws every edge of the catalog; the workers are listed.
    status, catalog = http_json(cluster["http"] + "/catalog")
    assert len(catalog["edges"]) >= 5
    for edge in catalog["edges"]:
        assert f'data-edge="{edge["from"]}-&gt;{edge["to"]}" data-operation="{edge["operation"]}"' in html, edge
    assert 'data-node="events"' in html and 'data-node="gold.user_segments"' in html
    assert catalog["workers"] and all(f'data-worker="{w["worker_id"]}"' in html for w in catalog["workers"])
    status, answer = http_json(cluster["http"] + "/tables")
    reported = 0
    for table in answer["tables"]:
        version = "" if table["version"] is None else table["version"]
        name = table["name"]
        row = f'data-table="{name}" data-version="{version}"'
        assert row in html, (row, html[-3000:])
        checks = f'data-table="{name}" data-version="{version}" data-rows="{"" if table["rows"] is None else table["rows"]}" data-checks="{len(table["failed_checks"])}"'
        assert checks in html, (checks, html[-3000:])
        # A version the writers reported is the table's own (read by deltalake).
        if version != "":
            reported += 1
            assert version == delta(cluster, table["name"]).version(), table
    assert reported >= 3, answer
    # What a person sees, as a picture (docs/images/status-page.png is made this way:
    # SMELTER_SCREENSHOT=docs/images/status-page.png).
    picture = Path(os.environ.get("SMELTER_SCREENSHOT") or profile.parent / "status-page.png").absolute()
    shot = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
         "--hide-scrollbars", "--window-size=1400,1000", f"--screenshot={picture}",
         cluster["http"] + "/status"],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    image = picture.read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 10_000, len(image)


def test_failing_checks_are_raised_while_the_pipeline_runs(tmp_path):
    """A live run whose silver table breaks a check on every pass: the failure shows in
    `smelter status`, `/tables/{name}` and `/metrics` (with promtool's approval), and the
    gold table's SLA state is measured."""
    pipeline = tmp_path / "pipeline.yaml"
    demo = (ROOT / "examples" / "clickstream.yaml").read_text()
    demo = demo.replace("range: { quantity: { min: 1, max: 100 } }", "range: { quantity: { max: 0 } }")
    demo = demo.replace("    checks: { unique: [hour, event_type], range: { events: { min: 1 } } }\n",
                        "    checks: { unique: [hour, event_type], freshness_sla: 1h }\n")
    pipeline.write_text(demo)
    coordinator, http_port = free_port(), free_port()
    server = subprocess.Popen(smelter(
        "up", "--pipeline", str(pipeline), "--data-dir", str(tmp_path / "data"),
        "--coordinator-addr", f"127.0.0.1:{coordinator}", "--flight-addr", "127.0.0.1:0",
        "--http-addr", f"127.0.0.1:{http_port}"))
    base = f"http://127.0.0.1:{http_port}"
    try:
        def failing():
            status, table = http_json(base + "/tables/silver.events")
            return status == 200 and table["failed_checks"] and table
        table = wait_until("silver's failing check reported", failing, 120, stop=server.poll)
        assert [f.split(": ")[0] for f in table["failed_checks"]] == ["range(quantity)"], table
        assert "outside [-inf, 0]" in table["failed_checks"][0]
        assert table["freshness_sla_ms"] == 300_000
        gold = wait_until("gold committed", lambda: (lambda s, t: t["stale"] is not None and t)(
            *http_json(base + "/tables/gold.hourly_metrics")), 60, stop=server.poll)
        assert gold["stale"] is False and gold["failed_checks"] == [], gold
        status = subprocess.run(smelter("status", "--coordinator", f"127.0.0.1:{coordinator}"),
                                check=True, capture_output=True, text=True, timeout=60).stdout
        assert "check failing: range(quantity)" in status, status
        code, metrics = http_get(base + "/metrics")
        assert code == 200
        metrics = metrics.decode() if isinstance(metrics, bytes) else metrics
        assert 'smelter_table_checks_failing{table="silver.events",check="range(quantity)"} 1' in metrics
        assert 'smelter_table_stale{table="gold.hourly_metrics"} 0' in metrics
        # Histograms: commits per worker and table (they come with the workers' next
        # heartbeats), gold refreshes per task; each one's +Inf bucket holds all its
        # observations.
        def observed():
            text = http_get(base + "/metrics")[1]
            text = text.decode() if isinstance(text, bytes) else text
            for family, table in [("smelter_commit_duration_seconds", "silver.events"),
                                  ("smelter_gold_refresh_duration_seconds", "gold.hourly_metrics")]:
                counts = samples(text, family + "_count")
                if not any(f'table="{table}"' in k and v > 0 for k, v in counts.items()):
                    return None
            return text

        metrics = wait_until("commit and refresh histograms in /metrics", observed, 60, stop=server.poll)
        for family in ["smelter_commit_duration_seconds", "smelter_gold_refresh_duration_seconds"]:
            buckets = samples(metrics, family + "_bucket")
            for labels, count in samples(metrics, family + "_count").items():
                assert buckets[labels[:-1] + ',le="+Inf"}'] == count, (family, labels)
        tool = promtool()
        if tool:
            check = subprocess.run([tool, "check", "metrics"], input=metrics, capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
