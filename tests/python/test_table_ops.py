"""Table operations read back by an independent Delta reader (Python `deltalake`): after
`smelter compact` and `smelter delete --cascade` on a finished pipeline's tables, every
table still opens and reads, its history names the operations, the deleted user's rows are
gone from silver and bronze exactly as reported, and the versions before the delete still
hold them (time travel)."""

import json
import subprocess
from pathlib import Path

import pyarrow.compute as pc
from deltalake import DeltaTable

from test_clients import ROOT, smelter

EVENTS = 3000


def run_json(*args: str) -> dict | list:
    out = subprocess.run(smelter(*args, "--output", "json"), check=True, timeout=120,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def test_compact_and_cascading_delete_leave_plain_delta_tables(tmp_path: Path):
    demo = (ROOT / "examples" / "clickstream.yaml").read_text()
    demo = demo.replace(
        "      rate: 2000            # events per second over all partitions\n",
        f"      rate: null\n      count: {EVENTS}\n",
    )
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(demo)
    data = tmp_path / "data"
    # Small batches: many small files in every layer.
    config = tmp_path / "smelter.toml"
    config.write_text("[worker]\nbatch_max_records = 200\n")
    subprocess.run(
        smelter("--config", str(config), "up", "--pipeline", str(pipeline), "--data-dir", str(data),
                "--flight-addr", "127.0.0.1:0", "--coordinator-addr", "127.0.0.1:0",
                "--exit-when-done"),
        check=True, timeout=300,
    )
    tables = data / "tables"
    silver_path = str(tables / "silver" / "events")
    bronze_path = str(tables / "bronze" / "events")
    files_before = len(DeltaTable(bronze_path).file_uris())
    assert files_before > 3, f"the run must leave small files ({files_before})"

    compacted = run_json("compact", "bronze.events", "silver.events", "--data-dir", str(data))
    by_table = {c["table"]: c["compaction"] for c in compacted}
    assert by_table["bronze.events"]["files_removed"] == files_before
    bronze = DeltaTable(bronze_path)
    assert len(bronze.file_uris()) < files_before
    assert bronze.history(1)[0]["operation"] == "OPTIMIZE"

    silver = DeltaTable(silver_path).to_pyarrow_table()
    users = pc.value_counts(silver["user_id"]).to_pylist()
    user = max(users, key=lambda u: (u["counts"], u["values"] or ""))["values"]
    rows = sum(1 for u in silver["user_id"].to_pylist() if u == user)
    before = DeltaTable(silver_path).version()
    bronze_rows = DeltaTable(bronze_path).to_pyarrow_table().num_rows

    report = run_json("delete", "silver.events", "--where", f"user_id = '{user}'", "--cascade",
                      "--data-dir", str(data))
    deleted = {t["table"]: t["deleted"] for t in report["tables"]}
    assert deleted["silver.events"]["rows_deleted"] == rows, report
    assert deleted["bronze.events"]["rows_deleted"] == rows, report
    assert sorted(report["rebuilding"]) == ["gold.daily_summary", "gold.hourly_metrics",
                                           "gold.user_segments"]

    silver_now = DeltaTable(silver_path)
    assert silver_now.history(1)[0]["operation"] == "DELETE"
    now = silver_now.to_pyarrow_table()
    assert user not in set(now["user_id"].to_pylist())
    assert now.num_rows == silver.num_rows - rows
    assert DeltaTable(bronze_path).to_pyarrow_table().num_rows == bronze_rows - rows
    # The bronze records that fed the deleted rows are the ones gone.
    old = DeltaTable(silver_path, version=before).to_pyarrow_table()
    assert sum(1 for u in old["user_id"].to_pylist() if u == user) == rows
    gone = {(r["_topic"], r["_partition"], r["_offset"])
            for r in old.to_pylist() if r["user_id"] == user}
    left = {(r["topic"], r["partition"], r["offset"])
            for r in DeltaTable(bronze_path).to_pyarrow_table(
                columns=["topic", "partition", "offset"]).to_pylist()}
    assert not gone & left
    # Every table still opens and reads whole.
    for layer in tables.iterdir():
        for table in layer.iterdir():
            DeltaTable(str(table)).to_pyarrow_table()
    # Undo the delete on silver (nothing runs: --offline): the user's rows are back, in
    # the files the delete had removed, and any reader sees the RESTORE.
    restored = run_json("restore", "silver.events", "--version", str(before), "--offline",
                        "--data-dir", str(data))
    assert restored["tables"][0]["restored_to"] == before, restored
    back = DeltaTable(silver_path)
    assert back.history(1)[0]["operation"] == "RESTORE"
    assert sum(1 for u in back.to_pyarrow_table()["user_id"].to_pylist() if u == user) == rows
    assert back.to_pyarrow_table().num_rows == silver.num_rows
    # `smelter verify` accounts for the deleted offsets: clean, exit 0.
    verified = run_json("verify", "--data-dir", str(data))
    assert all(not r["findings"] for r in verified), verified
