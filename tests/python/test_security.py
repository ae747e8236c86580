"""TLS and tokens with real clients: the ADBC Flight SQL driver over TLS against a
`smelter up` whose listeners need certificates and tokens, refused with UNAUTHENTICATED
without a token and PERMISSION_DENIED (ADBC's UNAUTHORIZED) outside its grants; the CLI
with a reader token; and no secret in anything the process printed.

Certificates come from a throwaway CA made with `openssl` for the run."""

import json
import os
import ssl
import subprocess
import urllib.error
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import pytest
from adbc_driver_flightsql import DatabaseOptions
from adbc_driver_manager import AdbcStatusCode

from test_clients import (EVENTS, bounded_pipeline, free_port, http_get, http_query, samples,
                          smelter, wait_until)

WORKER_TOKEN = "wk-5e1d8c2a7b9f3e4d"
OPERATOR_TOKEN = "op-8a3f6c1e9d2b7a5c"
READER_TOKEN = "rd-4c7e2a9f1b6d8e3a"
SECRETS = [WORKER_TOKEN, OPERATOR_TOKEN, READER_TOKEN]


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(dir: Path) -> dict:
    openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=smelter python test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl(dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=localhost")
    (dir / "cert.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl(dir, "x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "cert.ext")
    return {name: dir / f"{name}.pem" for name in ["ca", "cert", "key"]}


def security_env(certs: dict, tokens: Path, token: str) -> dict:
    env = dict(os.environ)
    env.update({
        "SMELTER__SECURITY__TLS_CERT": str(certs["cert"]),
        "SMELTER__SECURITY__TLS_KEY": str(certs["key"]),
        "SMELTER__SECURITY__TLS_CA": str(certs["ca"]),
        "SMELTER__SECURITY__TOKENS_FILE": str(tokens),
        "SMELTER__SECURITY__TOKEN": token,
    })
    return env


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    work = tmp_path_factory.mktemp("secured")
    certs = make_certs(work)
    tokens = work / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{ name: workers, token: {WORKER_TOKEN}, role: admin }}\n"
        f"  - {{ name: ops, token: {OPERATOR_TOKEN}, role: operator }}\n"
        f"  - {{ name: ana, token: {READER_TOKEN}, role: reader, tables: ['gold.*'] }}\n")
    pipeline = work / "pipeline.yaml"
    bounded_pipeline(pipeline)
    flight_port, coordinator_port, http_port = free_port(), free_port(), free_port()
    log = work / "smelter.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            smelter("up", "--pipeline", str(pipeline), "--data-dir", str(work / "data"),
                    "--coordinator-addr", f"127.0.0.1:{coordinator_port}",
                    "--flight-addr", f"127.0.0.1:{flight_port}",
                    "--http-addr", f"127.0.0.1:{http_port}"),
            env=security_env(certs, tokens, WORKER_TOKEN), stdout=out, stderr=subprocess.STDOUT)
    ctx = {
        "uri": f"grpc+tls://127.0.0.1:{flight_port}",
        "coordinator": f"127.0.0.1:{coordinator_port}",
        "http": f"127.0.0.1:{http_port}",
        "certs": certs,
        "tokens": tokens,
        "pipeline": pipeline,
        "log": log,
    }
    def gold_rows():
        return query(ctx, "SELECT count(*) FROM gold.hourly_metrics", bearer=OPERATOR_TOKEN)[0][0]

    try:
        wait_until("the secured pipeline reaching gold", gold_rows, 120,
                   stop=lambda: None if server.poll() is None else f"exit {server.poll()}")
    except BaseException:
        server.kill()
        print(log.read_text()[-4000:])
        raise
    yield ctx
    server.terminate()
    assert server.wait(timeout=60) == 0, "smelter up must exit cleanly on SIGTERM"
    printed = log.read_text()
    for secret in SECRETS:
        assert secret not in printed, "a token appears in smelter's output"


def connect(ctx, bearer=None, username=None, password=None, trust=True):
    kwargs = {}
    if trust:
        kwargs[DatabaseOptions.TLS_ROOT_CERTS.value] = ctx["certs"]["ca"].read_text()
    if bearer is not None:
        kwargs[DatabaseOptions.AUTHORIZATION_HEADER.value] = f"Bearer {bearer}"
    if username is not None:
        kwargs["username"] = username
        kwargs["password"] = password
    return flight_sql.connect(ctx["uri"], db_kwargs=kwargs, autocommit=True)


def query(ctx, sql, **credentials):
    with connect(ctx, **credentials) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def refusal(ctx, sql, **credentials):
    with pytest.raises(Exception) as caught:
        query(ctx, sql, **credentials)
    return caught.value


def test_no_token_is_unauthenticated(secured):
    error = refusal(secured, "SELECT 1")
    assert error.status_code == AdbcStatusCode.UNAUTHENTICATED, error
    error = refusal(secured, "SELECT 1", bearer="not-a-token")
    assert error.status_code == AdbcStatusCode.UNAUTHENTICATED, error
    assert "not-a-token" not in str(error)


def test_reader_reads_its_grants_only(secured):
    assert query(secured, "SELECT count(*) FROM gold.hourly_metrics", bearer=READER_TOKEN)[0][0] > 0
    error = refusal(secured, "SELECT count(*) FROM silver.events", bearer=READER_TOKEN)
    assert error.status_code == AdbcStatusCode.UNAUTHORIZED, error
    assert "ana may not read silver.events" in str(error)
    names = {
        row[0]
        for row in query(
            secured,
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('bronze', 'silver', 'gold')",
            bearer=READER_TOKEN,
        )
    }
    assert names and all(name.startswith("gold.") for name in names), names
    # The Flight SQL catalog calls (ADBC's get_objects) list the same tables, no others.
    with connect(secured, bearer=READER_TOKEN) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    listed = {
        f"{schema['db_schema_name']}.{table['table_name']}"
        for catalog in objects
        for schema in catalog["catalog_db_schemas"] or []
        for table in schema["db_schema_tables"] or []
    }
    assert listed == names, (listed, names)


def test_handshake_with_username_and_token(secured):
    assert query(secured, "SELECT count(*) FROM gold.daily_summary",
                 username="ana", password=READER_TOKEN)[0][0] > 0
    error = refusal(secured, "SELECT 1", username="ana", password="wrong")
    assert error.status_code == AdbcStatusCode.UNAUTHENTICATED, error


def test_an_untrusted_server_certificate_is_refused(secured):
    error = refusal(secured, "SELECT 1", bearer=READER_TOKEN, trust=False)
    assert "certificate" in str(error).lower(), error


def test_http_is_tls_only_and_metrics_need_a_token(secured):
    context = ssl.create_default_context(cafile=str(secured["certs"]["ca"]))
    base = "https://" + secured["http"]
    # Probes need no token.
    assert http_get(base + "/health", context=context)[0] == 200
    assert http_get(base + "/ready", context=context)[0] == 200
    status, body = http_get(base + "/metrics", context=context)
    assert status == 401 and "missing credentials" in body, body
    status, body = http_get(base + "/metrics", {"Authorization": "Bearer not-a-token"}, context)
    assert status == 401 and "not-a-token" not in body, body
    # Once bronze holds every event (the ingest tasks' table_rows), their counters add up to
    # at most the generator's count: they count the rows each task committed since it
    # started (a task restarted on a loaded machine starts again from 0), never one twice.
    def ingested():
        status, text = http_get(base + "/metrics", {"Authorization": f"Bearer {READER_TOKEN}"},
                                context)
        assert status == 200, text
        committed = sum(v for k, v in samples(text, "smelter_task_rows_committed_total").items()
                        if 'kind="ingest"' in k)
        bronze = max((v for k, v in samples(text, "smelter_task_table_rows").items()
                      if 'kind="ingest"' in k), default=0)
        assert committed <= EVENTS, f"ingest counted {committed} rows of {EVENTS}"
        return bronze == EVENTS and committed > 0

    wait_until(f"bronze to hold {EVENTS} rows by the ingest tasks' metrics", ingested, 60)
    # /query runs with the caller's token: its grants hold.
    reader = {"Authorization": f"Bearer {READER_TOKEN}"}
    status, body = http_query(base, {"sql": "SELECT count(*) AS n FROM gold.daily_summary"},
                              reader, context)
    assert status == 200 and json.loads(body)["rows"][0]["n"] > 0, body
    status, body = http_query(base, {"sql": "SELECT count(*) FROM silver.events"}, reader, context)
    assert status == 403 and "ana may not read silver.events" in body, body
    status, body = http_query(base, {"sql": "SELECT 1"}, None, context)
    assert status == 401, body
    # The catalog within the reader's grants.
    status, body = http_get(base + "/tables", reader, context)
    names = {t["name"] for t in json.loads(body)["tables"]}
    assert status == 200 and names and all(n.startswith("gold.") for n in names), body
    status, body = http_get(base + "/tables/silver.events", reader, context)
    assert status == 403, body
    assert http_get(base + "/tables", None, context)[0] == 401
    # Plain HTTP to the TLS listener, or a client that does not trust the CA: refused.
    with pytest.raises(Exception):
        http_get("http://" + secured["http"] + "/health")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        http_get(base + "/health", context=ssl.create_default_context())


def cli(secured, token, *args):
    env = security_env(secured["certs"], secured["tokens"], token)
    return subprocess.run(smelter(*args), env=env, capture_output=True, text=True, timeout=60)


def test_cli_roles(secured):
    status = cli(secured, READER_TOKEN, "status", "--coordinator", secured["coordinator"],
                 "--output", "json")
    assert status.returncode == 0, status.stderr
    assert READER_TOKEN not in status.stdout + status.stderr
    apply = cli(secured, READER_TOKEN, "apply", str(secured["pipeline"]),
                "--coordinator", secured["coordinator"])
    assert apply.returncode != 0
    assert "needs the operator role" in apply.stderr, apply.stderr
    apply = cli(secured, OPERATOR_TOKEN, "apply", str(secured["pipeline"]),
                "--coordinator", secured["coordinator"])
    assert apply.returncode == 0, apply.stderr

