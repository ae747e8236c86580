"""Change data capture from a real PostgreSQL: a `users` table changed with SQL (inserts,
updates, deletes, keys deleted and created again), its changes read through logical
decoding (`test_decoding`, PostgreSQL's own plugin), turned into Debezium envelopes as the
PostgreSQL connector writes them (`op`, `before`/`after`, `source.lsn`, `source.txId`) and
merged by Smelter. The database itself is the oracle: silver must equal `SELECT * FROM
users`, whatever order the changes arrive in."""

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from deltalake import DeltaTable

from test_change_feed import run_rounds
from test_clients import free_port, smelter, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")

PIPELINE = """pipeline: users
sources:
  users_cdc: {{ files: {{ path: {input} }} }}
tables:
  bronze.users_cdc: {{ from: users_cdc }}
  silver.users:
    from: bronze.users_cdc
    parse: {{ format: debezium, schema: {{ id: long, email: string, tier: string, visits: long }} }}
    merge: {{ keys: [id], sequence_by: _lsn }}
    change_data_feed: true
"""


def as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture()
def postgres():
    if not (PG_BIN / "postgres").exists():
        if os.environ.get("SMELTER_REQUIRE_SERVICES") == "1":
            pytest.fail("PostgreSQL 15 is required (Debian package postgresql)")
        pytest.skip("PostgreSQL 15 not installed")
    home = Path(tempfile.mkdtemp(prefix="smelter-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    data = home / "data"
    subprocess.run(as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust",
                                "-U", "postgres", "--no-sync"]),
                   check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(as_postgres([
        str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(home),
        "-c", "listen_addresses=127.0.0.1", "-c", "wal_level=logical",
        "-c", "max_replication_slots=4", "-c", "fsync=off"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    psql = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-qAt"]
    try:
        wait_until("postgres accepting connections",
                   lambda: subprocess.run([*psql, "-c", "SELECT 1"],
                                          capture_output=True).returncode == 0,
                   60, stop=server.poll)
    except BaseException:
        server.kill()
        raise

    def run(sql: str) -> str:
        out = subprocess.run([*psql, "-c", sql], check=True, capture_output=True, text=True)
        return out.stdout

    yield run
    server.terminate()
    server.wait(timeout=60)
    shutil.rmtree(home, ignore_errors=True)


FIELD = re.compile(r"(\w+)\[[^\]]+\]:('(?:[^']|'')*'|null|[^ ]+)")


def decoded_row(text: str) -> dict:
    """The columns of one `test_decoding` tuple (`id[integer]:1 email[text]:'a'`)."""
    row = {}
    for name, value in FIELD.findall(text):
        if value == "null":
            row[name] = None
        elif value.startswith("'"):
            row[name] = value[1:-1].replace("''", "'")
        else:
            row[name] = int(value)
    return row


def envelopes(changes: list[tuple[str, int, str]]) -> list[str]:
    """Debezium envelopes of `test_decoding` output rows (lsn, xid, data)."""
    out = []
    for lsn_text, xid, data in changes:
        match = re.match(r"table public\.users: (INSERT|UPDATE|DELETE): (.*)", data)
        if not match:
            continue  # BEGIN / COMMIT
        kind, tuple_text = match.groups()
        high, low = lsn_text.split("/")
        lsn = (int(high, 16) << 32) + int(low, 16)
        row = decoded_row(tuple_text)
        op = {"INSERT": "c", "UPDATE": "u", "DELETE": "d"}[kind]
        before, after = (row, None) if op == "d" else (None, row)
        out.append(json.dumps({
            "before": before, "after": after, "op": op, "ts_ms": 1_793_491_200_000 + len(out),
            "source": {"version": "2.5.4.Final", "connector": "postgresql", "name": "shop",
                       "db": "postgres", "schema": "public", "table": "users",
                       "txId": int(xid), "lsn": lsn},
        }))
    return out


def test_changes_from_postgres_logical_decoding_merge_to_the_table(postgres, tmp_path: Path):
    postgres("CREATE TABLE users (id integer PRIMARY KEY, email text, tier text, visits bigint)")
    postgres("SELECT 'slot' FROM pg_create_logical_replication_slot('smelter', 'test_decoding')")
    rng = random.Random(20261206)
    tiers = ["free", "plus", "pro", "enterprise"]
    live: set[int] = set()
    statements = []
    for step in range(3000):
        key = rng.randrange(400)
        if key not in live:
            statements.append(
                f"INSERT INTO users VALUES ({key}, 'user{key}.{step}@shop.example', "
                f"'{rng.choice(tiers)}', 0)")
            live.add(key)
        elif rng.random() < 0.12:
            statements.append(f"DELETE FROM users WHERE id = {key}")
            live.remove(key)
        else:
            statements.append(
                f"UPDATE users SET tier = '{rng.choice(tiers)}', visits = visits + 1, "
                f"email = 'o''neil{key}.{step}@shop.example' WHERE id = {key}")
    # Several statements per transaction, as an application commits them.
    for start in range(0, len(statements), 25):
        postgres("BEGIN; " + "; ".join(statements[start:start + 25]) + "; COMMIT;")
    raw = postgres("SELECT lsn, xid, data FROM pg_logical_slot_get_changes('smelter', NULL, NULL)")
    changes = [tuple(line.split("|", 2)) for line in raw.splitlines() if line]
    events = envelopes(changes)
    assert len(events) == len(statements), (len(events), len(statements))
    assert any('"op": "d"' in e for e in events) and any('"op": "u"' in e for e in events)

    # Delivered in three files, with 5% of the events late (into a later file) and 1% twice.
    rounds: list[list[str]] = [[], [], []]
    third = len(events) // 3 + 1
    for i, event in enumerate(events):
        at = i // third
        rounds[min(2, at + 1) if rng.random() < 0.05 else at].append(event)
        if rng.random() < 0.01:
            rounds[min(2, at + rng.randrange(2))].append(event)
    source = tmp_path / "in"
    source.mkdir()
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(input=source))
    data = tmp_path / "data"
    run_rounds(pipeline, data, source, rounds)

    expected = sorted(
        tuple(int(v) if n in (0, 3) else v for n, v in enumerate(line.split("|")))
        for line in postgres("SELECT id, email, tier, visits FROM users").splitlines() if line)
    silver = DeltaTable(str(data / "tables" / "silver" / "users")).to_pyarrow_table()
    found = sorted(zip(*(silver[c].to_pylist() for c in ("id", "email", "tier", "visits"))))
    assert found == expected
    quarantine = DeltaTable(str(data / "tables" / "silver" / "users_quarantine"))
    assert quarantine.to_pyarrow_table().num_rows == 0
