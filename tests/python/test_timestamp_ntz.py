"""`timestamp_ntz` columns end to end, read by the Python `deltalake` package: a files-fed
pipeline declares a wall-clock time at the top level and inside a flattened struct, an
expectation compares it with a `TIMESTAMP` literal, and gold groups by its day. The silver
table must carry Delta's `timestampNtz` feature, its columns must be timestamps without a
time zone holding the times as written (an offset in the text is not applied), a value
that is no time must be quarantined naming the field, and gold's days must be the test's.
Then a spec that adds such a column to a table created without one is refused by `smelter
up` (exit 2) before anything is written."""

import datetime as dt
import json
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from test_change_feed import run_rounds
from test_clients import smelter

PIPELINE = """pipeline: wallclock
sources:
  visits: {{ files: {{ path: {input} }} }}
tables:
  bronze.visits: {{ from: visits }}
  silver.visits:
    from: bronze.visits
    parse: {{ format: json, schema: {{ id: string, local: timestamp_ntz, shop: {{ id: string, opened: timestamp_ntz }} }} }}
    flatten: true
    expectations:
      - {{ name: this_season, expr: "local >= TIMESTAMP '2026-10-01 00:00:00'", on_violation: quarantine }}
  gold.days:
    from: silver.visits
    sql: SELECT date_trunc('day', local) AS day, count(*) AS visits FROM silver.visits GROUP BY 1
    keys: [day]
{extra}"""

LOCAL = [dt.datetime(2026, 11, 1 + i % 3, (5 * i) % 24, 30, 0, 250_000 * (i % 4)) for i in range(24)]


def visit(i: int) -> str:
    text = LOCAL[i].isoformat()
    if i % 5 == 0:
        text += "+02:00"  # not applied: the time as written
    return json.dumps({"id": f"v{i}", "local": text,
                       "shop": {"id": f"s{i % 4}", "opened": f"2020-0{1 + i % 9}-01 08:00:00"}})


EVENTS = [visit(i) for i in range(24)] + [
    json.dumps({"id": "early", "local": "2026-09-30T23:59:59", "shop": None}),
    json.dumps({"id": "bad", "local": "soon", "shop": None}),
]


def up(pipeline: Path, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        smelter("up", "--pipeline", str(pipeline), "--data-dir", str(data),
                "--flight-addr", "127.0.0.1:0", "--coordinator-addr", "127.0.0.1:0",
                "--exit-when-done"),
        timeout=120, capture_output=True, text=True,
    )


def test_wall_clock_times_parse_flatten_check_and_group_by_day(tmp_path: Path):
    source = tmp_path / "in"
    source.mkdir()
    pipeline = tmp_path / "pipeline.yaml"
    data = tmp_path / "data"
    pipeline.write_text(PIPELINE.format(input=source, extra=""))
    run_rounds(pipeline, data, source, [EVENTS])

    silver = DeltaTable(str(data / "tables" / "silver" / "visits"))
    protocol = silver.protocol()
    assert "timestampNtz" in (protocol.reader_features or []), protocol
    table = silver.to_pyarrow_table()
    assert table.schema.field("local").type == pa.timestamp("us")
    assert table.schema.field("shop_opened").type == pa.timestamp("us")
    got = {r["id"]: (r["local"], r["shop_opened"]) for r in table.to_pylist()}
    assert got == {f"v{i}": (LOCAL[i], dt.datetime(2020, 1 + i % 9, 1, 8)) for i in range(24)}

    quarantine = DeltaTable(str(data / "tables" / "silver" / "visits_quarantine"))
    reasons = {json.loads(r["payload"])["id"]: (r["rule"], r["reason"])
               for r in quarantine.to_pyarrow_table().to_pylist()}
    assert reasons["early"][0] == "this_season", reasons
    assert reasons["bad"][0] == "_schema" and "`local`" in reasons["bad"][1], reasons
    assert len(reasons) == 2

    gold = DeltaTable(str(data / "tables" / "gold" / "days")).to_pyarrow_table().to_pylist()
    days = {r["day"].replace(tzinfo=None): r["visits"] for r in gold}
    assert days == dict(Counter(dt.datetime(t.year, t.month, t.day) for t in LOCAL))

    # A table created without the feature cannot gain such a column.
    plain = """  silver.plain:
    from: bronze.visits
    parse: { format: json, schema: { id: string } }
"""
    pipeline.write_text(PIPELINE.format(input=source, extra=plain))
    assert up(pipeline, data).returncode == 0
    assert DeltaTable(str(data / "tables" / "silver" / "plain")).to_pyarrow_table().num_rows == 26
    wider = plain.replace("{ id: string }", "{ id: string, local: timestamp_ntz }")
    pipeline.write_text(PIPELINE.format(input=source, extra=wider))
    refused = up(pipeline, data)
    assert refused.returncode == 2, refused.stderr
    assert "tables.silver.plain.parse.schema" in refused.stderr and "timestampNtz" in refused.stderr
