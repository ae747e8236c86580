"""A silver column's type changed in a way the table cannot take (`long` → `string`), with
the spec saying what to do, read by an independent reader (the Python `deltalake` package):

* `on_incompatible: rescue` keeps the table's type: a new value that type does not take is
  kept in `_rescued_data` with its row, nothing is rewritten or quarantined;
* `on_incompatible: new_version` starts the table over: one commit replaces the schema and
  removes the rows (the version before still reads as it was written), the quarantine is
  emptied, and all of bronze is refined again under the new spec. The run is first aborted
  at the `refine.started_over` failpoint (schema replaced, quarantine not yet emptied); the
  rerun must leave each record exactly once in silver or the quarantine.

Expected rows are written out from the test's own events."""

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from test_clients import smelter

PIPELINE = """pipeline: orders
sources:
  orders: {{ files: {{ path: {input} }} }}
tables:
  bronze.orders: {{ from: orders }}
  silver.orders:
    from: bronze.orders
    parse: {{ format: json, schema: {{ id: string, quantity: {quantity} }} }}
{handling}
  gold.counts:
    from: silver.orders
    sql: SELECT count(*) AS orders, count(quantity) AS with_quantity FROM silver.orders
"""


def order(i: str, quantity) -> str:
    return json.dumps({"id": i, "quantity": quantity})


ROUND_1 = [order("e1", 1), order("e2", 2), order("e3", "lots")]
ROUND_2 = [order("e4", "12 boxes"), order("e5", 5)]


def up(pipeline: Path, data: Path, env=None, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(
        smelter("up", "--pipeline", str(pipeline), "--data-dir", str(data),
                "--flight-addr", "127.0.0.1:0", "--coordinator-addr", "127.0.0.1:0",
                "--exit-when-done", "--log-json"),
        check=check, timeout=300, capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )


def run_round(pipeline: Path, data: Path, source: Path, name: str, events: list[str]) -> None:
    """The events as one file placed atomically in `source`, then a run to the end."""
    staged = source / f".{name}.ndjson"
    staged.write_text("\n".join(events) + "\n")
    staged.rename(source / f"{name}.ndjson")
    up(pipeline, data)


def by_id(table: pa.Table, *columns: str) -> list[tuple]:
    return sorted(tuple(r[c] for c in ("id", *columns)) for r in table.to_pylist())


def quarantined_ids(path: str) -> list[str]:
    """The rule and the record's id of each quarantined row."""
    rows = DeltaTable(path).to_pyarrow_table().to_pylist()
    return sorted(r["rule"] + " " + json.loads(r["payload"])["id"] for r in rows)


def rescued(row: dict) -> dict:
    return json.loads(row["_rescued_data"]) if row["_rescued_data"] else {}


def test_rescue_keeps_the_type_and_new_version_starts_over_once(tmp_path: Path):
    source = tmp_path / "in"
    source.mkdir()
    pipeline = tmp_path / "pipeline.yaml"
    data = tmp_path / "data"
    tables = data / "tables"
    silver = str(tables / "silver" / "orders")
    quarantine = str(tables / "silver" / "orders_quarantine")
    gold = str(tables / "gold" / "counts")

    pipeline.write_text(PIPELINE.format(input=source, quantity="long", handling=""))
    run_round(pipeline, data, source, "round1", ROUND_1)
    assert quarantined_ids(quarantine) == ["_schema e3"]

    # Rescue: the column keeps its type; a value it does not take stays with its row.
    pipeline.write_text(PIPELINE.format(
        input=source, quantity="string", handling="    on_incompatible: rescue"))
    run_round(pipeline, data, source, "round2", ROUND_2)
    rescuing = DeltaTable(silver)
    table = rescuing.to_pyarrow_table()
    assert table.schema.field("quantity").type == pa.int64()
    assert by_id(table, "quantity") == [("e1", 1), ("e2", 2), ("e4", None), ("e5", 5)]
    assert {r["id"]: rescued(r) for r in table.to_pylist()} == {
        "e1": {}, "e2": {}, "e4": {"quantity": "12 boxes"}, "e5": {}}
    assert quarantined_ids(quarantine) == ["_schema e3"]
    before = rescuing.version()

    # A new version, aborted after the schema was replaced and before the quarantine was
    # emptied.
    pipeline.write_text(PIPELINE.format(
        input=source, quantity="string", handling="    on_incompatible: new_version"))
    crashed = up(pipeline, data, env={"SMELTER__WORKER__FAILPOINT": "refine.started_over:1"},
                 check=False)
    assert crashed.returncode == -6, crashed.stderr[-2000:]
    reached = [json.loads(line) for line in crashed.stderr.splitlines()
               if '"refine.started_over"' in line]
    assert reached and reached[0]["detail"] == "table=silver.orders", crashed.stderr[-2000:]
    replaced = DeltaTable(silver)
    assert replaced.version() == before + 1
    assert replaced.to_pyarrow_table().num_rows == 0
    assert replaced.schema().to_arrow().field("quantity").type in (pa.string(), pa.large_string())
    assert quarantined_ids(quarantine) == ["_schema e3"], "not emptied yet"

    up(pipeline, data)
    latest = DeltaTable(silver)
    table = latest.to_pyarrow_table()
    assert by_id(table, "quantity") == [("e3", "lots"), ("e4", "12 boxes")]
    assert quarantined_ids(quarantine) == ["_schema e1", "_schema e2", "_schema e5"]
    quarantined = DeltaTable(quarantine).to_pyarrow_table().to_pylist()
    assert all("`quantity`" in r["reason"] for r in quarantined), quarantined
    # One commit replaced the schema; the version before it reads as it was written.
    replacing = [h for h in latest.history() if "smelter.schemaReplaced" in h]
    assert len(replacing) == 1, latest.history()
    assert "quantity" in replacing[0]["smelter.schemaReplaced"]
    old = DeltaTable(silver, version=before).to_pyarrow_table()
    assert old.schema.field("quantity").type == pa.int64()
    assert by_id(old, "quantity") == [("e1", 1), ("e2", 2), ("e4", None), ("e5", 5)]
    # Gold follows the new version.
    assert DeltaTable(gold).to_pyarrow_table().to_pylist() == [{"orders": 2, "with_quantity": 2}]

    # Nothing left to start over: a rerun commits nothing more.
    up(pipeline, data)
    assert DeltaTable(silver).version() == latest.version()
