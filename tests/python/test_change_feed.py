"""The change data feed of a merged silver table, read by an independent reader (the
Python `deltalake` package's `load_cdf`): Debezium change events land in a files source in
three rounds (each a `smelter up --exit-when-done` run), with updates, a delete, a late
update older than the stored row and a late change of a deleted key. Every round's commit
must record exactly the inserts, update pre/post-images and deletes the round made, and the
SCD type 2 twin must hold each key's versions. A `smelter delete` on the table records the
deleted row, and only it."""

import json
import subprocess
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from test_clients import smelter

PIPELINE = """pipeline: users
sources:
  users_cdc: {{ files: {{ path: {input} }} }}
tables:
  bronze.users_cdc: {{ from: users_cdc }}
  silver.users:
    from: bronze.users_cdc
    parse: {{ format: debezium, schema: {{ id: long, tier: string }} }}
    merge: {{ keys: [id], sequence_by: _lsn }}
    change_data_feed: true
  silver.users_history:
    from: bronze.users_cdc
    parse: {{ format: debezium, schema: {{ id: long, tier: string }} }}
    merge: {{ keys: [id], sequence_by: _lsn, scd: 2 }}
"""


def change(op: str, key: int, tier: str | None, lsn: int) -> str:
    row = {"id": key, "tier": tier}
    before, after = (row, None) if op == "d" else (None, row)
    return json.dumps({"op": op, "before": before, "after": after, "ts_ms": lsn,
                       "source": {"connector": "postgresql", "table": "users", "lsn": lsn}})


ROUNDS = [
    # Round 1: three users created.
    [change("c", 1, "free", 10), change("c", 2, "free", 11), change("c", 3, "pro", 12)],
    # Round 2: 1 upgraded twice (the later wins), 2 deleted, 3 unchanged, 4 created.
    [change("u", 1, "plus", 20), change("u", 1, "pro", 21), change("d", 2, "free", 22),
     change("c", 4, "plus", 23)],
    # Round 3: late changes older than what is stored (1 at 15, 2 at 19) change nothing; 3
    # is upgraded; 1's repeated delivery is harmless.
    [change("u", 1, "enterprise", 15), change("u", 2, "pro", 19), change("u", 3, "enterprise", 30),
     change("u", 1, "pro", 21)],
]

EXPECTED_FEED = {
    1: [("insert", 1, "free"), ("insert", 2, "free"), ("insert", 3, "pro")],
    2: [("delete", 2, "free"), ("insert", 4, "plus"),
        ("update_postimage", 1, "pro"), ("update_preimage", 1, "free")],
    3: [("update_postimage", 3, "enterprise"), ("update_preimage", 3, "pro")],
}


def run_rounds(pipeline: Path, data: Path, source: Path, rounds: list[list[str]],
               after_each=lambda: None) -> None:
    """Each round's events as one file placed atomically in `source`, then `smelter up
    --exit-when-done` over the pipeline; `after_each` runs after every round."""
    for i, events in enumerate(rounds):
        staged = source / f".round{i}.ndjson"
        staged.write_text("\n".join(events) + "\n")
        staged.rename(source / f"round{i}.ndjson")
        subprocess.run(
            smelter("up", "--pipeline", str(pipeline), "--data-dir", str(data),
                    "--flight-addr", "127.0.0.1:0", "--coordinator-addr", "127.0.0.1:0",
                    "--exit-when-done"),
            check=True, timeout=300,
        )
        after_each()


def test_the_change_feed_of_merges_reads_in_deltalake(tmp_path: Path):
    source = tmp_path / "in"
    source.mkdir()
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(input=source))
    data = tmp_path / "data"
    silver = str(data / "tables" / "silver" / "users")
    versions = []
    run_rounds(pipeline, data, source, ROUNDS,
               after_each=lambda: versions.append(DeltaTable(silver).version()))

    table = DeltaTable(silver)
    assert table.protocol().min_writer_version == 4
    assert table.metadata().configuration["delta.enableChangeDataFeed"] == "true"
    feed = pa.table(table.load_cdf(starting_version=0).read_all()).to_pylist()
    # The rounds' merges are the versions that recorded changes; nothing else did.
    by_version = {}
    for row in feed:
        by_version.setdefault(row["_commit_version"], []).append(
            (row["_change_type"], row["id"], row["tier"]))
    assert sorted(by_version) == sorted(set(versions)), (by_version, versions)
    for round_number, version in enumerate(versions, start=1):
        assert sorted(by_version[version]) == sorted(EXPECTED_FEED[round_number]), round_number
    current = sorted((r["id"], r["tier"]) for r in table.to_pyarrow_table().to_pylist())
    assert current == [(1, "pro"), (3, "enterprise"), (4, "plus")]
    # A user-driven delete on the table records the deleted row in the feed, nothing else.
    deleted = subprocess.run(
        smelter("delete", "silver.users", "--where", "id = 4", "--data-dir", str(data),
                "--output", "json"),
        check=True, timeout=120, capture_output=True, text=True)
    report = json.loads(deleted.stdout)
    assert report, deleted.stdout
    table = DeltaTable(silver)
    latest = table.version()
    feed = pa.table(table.load_cdf(starting_version=latest).read_all()).to_pylist()
    assert [(r["_change_type"], r["id"], r["tier"]) for r in feed] == [("delete", 4, "plus")]
    assert sorted(r["id"] for r in table.to_pyarrow_table().to_pylist()) == [1, 3]
    history = sorted(
        (r["id"], r["__start_at"], r["__end_at"], r["tier"])
        for r in DeltaTable(str(data / "tables" / "silver" / "users_history")).to_pyarrow_table().to_pylist()
    )
    assert history == [
        (1, 10, 15, "free"), (1, 15, 20, "enterprise"), (1, 20, 21, "plus"), (1, 21, None, "pro"),
        (2, 11, 19, "free"), (2, 19, 22, "pro"),
        (3, 12, 30, "pro"), (3, 30, None, "enterprise"),
        (4, 23, None, "plus"),
    ]
