"""Schema evolution read by an independent reader (the Python `deltalake` package): a
files-fed pipeline runs one round of events under a spec that declares `quantity: int` and
a `user` struct without `device`, then a second round under a spec that widens `quantity`
to `long` and adds `user.device` (nested, and flattened in a twin table). The version
before the change must read back exactly as it was written (its schema and rows), the
latest with the new columns — old rows null there and their device kept in
`_rescued_data`, rewritten in the wider type — and a third spec that turns a column into
text is refused by `smelter up` with exit 2 before anything is written."""

import json
import subprocess
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from test_change_feed import run_rounds
from test_clients import smelter

PIPELINE = """pipeline: evolving
sources:
  events: {{ files: {{ path: {input} }} }}
tables:
  bronze.events: {{ from: events }}
  silver.nested:
    from: bronze.events
    parse: {{ format: json, schema: {{ id: string, quantity: {quantity}, user: {user} }} }}
  silver.flat:
    from: bronze.events
    parse: {{ format: json, schema: {{ id: string, quantity: {quantity}, user: {user} }} }}
    flatten: true
"""

V1 = {"quantity": "int", "user": "{ id: string }"}
V2 = {"quantity": "long", "user": "{ id: string, device: string }"}


def event(n: int, device: str) -> str:
    return json.dumps({"id": f"e{n}", "quantity": n, "user": {"id": f"u{n % 3}", "device": device}})


ROUND_1 = [event(n, "ios") for n in range(1, 4)]
# 3_000_000_000 does not fit an int: only the widened column takes it.
ROUND_2 = [event(4, "android"), json.dumps({"id": "e5", "quantity": 3_000_000_000,
                                            "user": {"id": "u2", "device": "web"}})]


def rows(table: pa.Table, *columns: str) -> list[tuple]:
    return sorted(tuple(r[c] for c in columns) for r in table.to_pylist())


def test_old_versions_read_as_written_and_the_latest_with_the_evolved_schema(tmp_path: Path):
    source = tmp_path / "in"
    source.mkdir()
    pipeline = tmp_path / "pipeline.yaml"
    data = tmp_path / "data"
    flat = str(data / "tables" / "silver" / "flat")
    nested = str(data / "tables" / "silver" / "nested")

    pipeline.write_text(PIPELINE.format(input=source, **V1))
    run_rounds(pipeline, data, source, [ROUND_1])
    before = DeltaTable(flat).version()

    pipeline.write_text(PIPELINE.format(input=source, **V2))
    staged = source / ".round1.ndjson"
    staged.write_text("\n".join(ROUND_2) + "\n")
    staged.rename(source / "round1.ndjson")
    subprocess.run(
        smelter("up", "--pipeline", str(pipeline), "--data-dir", str(data),
                "--flight-addr", "127.0.0.1:0", "--coordinator-addr", "127.0.0.1:0",
                "--exit-when-done"),
        check=True, timeout=300,
    )

    # The version before the change: its schema and rows as written.
    old = DeltaTable(flat, version=before).to_pyarrow_table()
    assert old.schema.field("quantity").type == pa.int32(), old.schema
    assert "user_device" not in old.schema.names
    assert rows(old, "id", "quantity", "user_id") == [
        ("e1", 1, "u1"), ("e2", 2, "u2"), ("e3", 3, "u0")]

    # The latest: widened and added; old rows' device null and kept in _rescued_data.
    latest = DeltaTable(flat)
    assert latest.version() > before
    table = latest.to_pyarrow_table()
    assert table.schema.field("quantity").type == pa.int64()
    assert table.schema.field("user_device").type == pa.string()
    assert rows(table, "id", "quantity", "user_device") == [
        ("e1", 1, None), ("e2", 2, None), ("e3", 3, None),
        ("e4", 4, "android"), ("e5", 3_000_000_000, "web")]
    for row in table.to_pylist():
        rescued = json.loads(row["_rescued_data"]) if row["_rescued_data"] else {}
        if row["user_device"] is None:
            assert rescued == {"user.device": "ios"}, row
        else:
            assert rescued == {}, row
    # One commit changed the schema, with the rows that needed it.
    changed = [h for h in latest.history() if "smelter.schemaEvolved" in h]
    assert len(changed) == 1, latest.history()
    assert changed[0]["smelter.schemaEvolved"] == "added user_device; widened quantity int to long"

    # The nested twin gained the field inside its struct.
    twin = DeltaTable(nested).to_pyarrow_table()
    user = twin.schema.field("user").type
    assert [user.field(i).name for i in range(user.num_fields)] == ["id", "device"]
    devices = sorted((r["id"], r["user"]["device"]) for r in twin.to_pylist())
    assert devices == [("e1", None), ("e2", None), ("e3", None), ("e4", "android"), ("e5", "web")]

    # A change the tables cannot take: refused before anything runs, nothing written.
    pipeline.write_text(PIPELINE.format(input=source, quantity="string", user=V2["user"]))
    refused = subprocess.run(
        smelter("up", "--pipeline", str(pipeline), "--data-dir", str(data),
                "--flight-addr", "127.0.0.1:0", "--coordinator-addr", "127.0.0.1:0",
                "--exit-when-done"),
        timeout=120, capture_output=True, text=True,
    )
    assert refused.returncode == 2, refused.stderr
    assert "tables.silver.nested.parse.schema.quantity" in refused.stderr, refused.stderr
    assert DeltaTable(flat).version() == latest.version()
