"""The audit stream with a real proxy process in front of a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import asyncpg
import psycopg
import pytest

from conftest import RULES, ROOT, TIER_PASSWORD, start_proxy
from proxy.audit.journal import read_records, verify
from proxy.pgcluster import Cluster, embedded_bin_dir


def journal(proxy) -> list[dict]:
    return [r for _, _, r, _ in read_records(proxy.audit_dir) if r is not None]


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture
def guarded(pg, tier_users):
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(RULES),
                        "--catalog-dsn", pg.dsn(database="crm"))
    yield proxy
    proxy.stop()


def test_every_statement_recorded_once_with_who_what_and_rows(guarded):
    marker = f"m{os.getpid()}"
    with psycopg.connect(guarded.dsn("sales_li", TIER_PASSWORD, application_name=marker)) as conn:
        conn.execute("SELECT id, id_number FROM customers WHERE id <= 7 ORDER BY id").fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT 1 FROM pg_stats")
        conn.rollback()
    async def extended():
        conn = await asyncpg.connect(guarded.dsn("crm_app", TIER_PASSWORD, application_name=marker))
        try:
            await conn.fetch("SELECT phone, bank_card FROM customers WHERE id = ANY($1::int[])", [1, 2, 3])
        finally:
            await conn.close()
    asyncio.run(extended())
    with psycopg.connect(guarded.dsn("dba_sun", TIER_PASSWORD, application_name=marker)) as conn:
        conn.execute("SELECT count(*) FROM orders").fetchall()
    assert wait_for(lambda: sum(r["type"] == "session_end" and r.get("application_name") == marker
                                for r in journal(guarded)) == 3)
    records = [r for r in journal(guarded) if r.get("application_name") == marker]
    statements = [r for r in records if r["type"] == "statement"]
    outcomes = {r["statement"]: r for r in records if r["type"] == "outcome"}
    by_sql = {}
    for r in statements:
        by_sql.setdefault(r["sql"], []).append(r)

    (sales,) = by_sql["SELECT id, id_number FROM customers WHERE id <= ? ORDER BY id"]
    assert (sales["user"], sales["tier"], sales["decision"], sales["kinds"]) == ("sales_li", "sales", "rewrite",
                                                                                 ["read"])
    assert {"relation": "public.customers", "column": "id_number", "class": "id_number", "action": "mask"} \
        in sales["columns"]
    assert outcomes[sales["id"]]["rows"] == 7 and outcomes[sales["id"]]["status"] == "ok"
    assert sales["client_addr"] == "127.0.0.1" and sales["database"] == "crm"

    (refused,) = by_sql["SELECT ? FROM pg_stats"]
    assert refused["decision"] == "refuse" and "pg_stats" in refused["reason"]
    assert outcomes[refused["id"]]["status"] == "refused" and outcomes[refused["id"]]["sqlstate"] == "42501"

    (cs,) = [r for r in statements if r["user"] == "crm_app" and "bank_card" in r["sql"]]
    assert cs["protocol"] == "extended" and cs["tier"] == "customer_service"
    assert {(c["column"], c["action"]) for c in cs["columns"]} >= {("phone", "clear"), ("bank_card", "mask")}
    assert outcomes[cs["id"]]["rows"] == 3

    (dba,) = by_sql["SELECT count(*) FROM orders"]
    assert dba["tier"] == "dba" and outcomes[dba["id"]]["rows"] == 1
    # exactly once: ids are unique and each statement has one outcome
    ids = [r["id"] for r in statements]
    assert len(ids) == len(set(ids)) and all(i in outcomes for i in ids)
    (rules,) = [r for r in journal(guarded) if r["type"] == "rules"]
    assert rules["event"] == "loaded" and rules["rules_version"] and len(rules["sha256"]) == 64
    connections = [r for r in records if r["type"] == "connection"]
    assert {(r["user"], r["result"]) for r in connections} == {("sales_li", "accepted"), ("crm_app", "accepted"),
                                                               ("dba_sun", "accepted")}


def test_connection_failures_are_recorded(pg, guarded):
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(guarded.dsn("sales_li", "wrong-password"))
    pg.psql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outsider') THEN "
            "CREATE ROLE outsider LOGIN PASSWORD 'demo'; END IF; END $$")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(guarded.dsn("outsider", "demo"))
    assert wait_for(lambda: len([r for r in journal(guarded) if r["type"] == "connection"]) >= 2)
    results = {(r["user"], r["result"]) for r in journal(guarded) if r["type"] == "connection"}
    assert ("sales_li", "auth_failed") in results and ("outsider", "refused") in results


def test_no_literal_reaches_the_journal(guarded):
    secret_id, secret_phone = "110105194912310021", "13912345678"
    with psycopg.connect(guarded.dsn("crm_app", TIER_PASSWORD)) as conn:
        conn.execute(f"SELECT id FROM customers WHERE id_number = '{secret_id}' OR phone = '{secret_phone}'")
        conn.execute("SELECT id FROM customers WHERE id_number = %s", (secret_id,))
        conn.execute(f"SELECT 1 /* {secret_id} */")
        with pytest.raises(psycopg.Error):
            conn.execute(f"SELECT id_number::int FROM customers WHERE phone = '{secret_phone}' AND 1/0 = 1")
    assert wait_for(lambda: any(r["type"] == "session_end" for r in journal(guarded)))
    everything = b"".join(p.read_bytes() for p in guarded.audit_dir.glob("audit-*.jsonl"))
    assert secret_id.encode() not in everything and secret_phone.encode() not in everything


def test_verify_search_and_tail_commands(guarded):
    with psycopg.connect(guarded.dsn("admin_chen", TIER_PASSWORD)) as conn:
        conn.execute("SELECT name, id_number FROM customers LIMIT 3").fetchall()
    assert wait_for(lambda: any(r["type"] == "outcome" for r in journal(guarded)))
    result = cli("audit", "verify", str(guarded.audit_dir))
    assert result.returncode == 0 and result.stdout.startswith("OK:")
    result = cli("audit", "search", str(guarded.audit_dir), "--user", "admin_chen",
                 "--column", "public.customers.id_number", "--json")
    (hit,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert hit["tier"] == "admin_office" and hit["outcome"]["rows"] == 3
    result = cli("audit", "search", str(guarded.audit_dir), "--tier", "admin_office")
    assert "admin_chen" in result.stdout and "id_number:mask" in result.stdout
    tail = subprocess.Popen([sys.executable, "-m", "proxy", "audit", "tail", str(guarded.audit_dir), "--json",
                             "--seconds", "8"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    for _ in range(3):  # (on a loaded machine tail may start after the first: it begins at the end)
        time.sleep(1.5)
        with psycopg.connect(guarded.dsn("sales_li", TIER_PASSWORD, application_name="tailed")) as conn:
            conn.execute("SELECT 42").fetchall()
    out, _ = tail.communicate(timeout=20)
    assert any(json.loads(line).get("application_name") == "tailed" for line in out.splitlines())
    # an edited record is found
    path = sorted(guarded.audit_dir.glob("audit-*.jsonl"))[0]
    data = path.read_bytes()
    end = data.find(b"\0") if b"\0" in data else len(data)  # (a live file: zeros follow its records)
    lines = data[:end].splitlines(keepends=True)
    record = json.loads(lines[-1])
    record["user"] = "nobody"
    lines[-1] = json.dumps(record).encode() + b"\n"
    path.write_bytes(b"".join(lines) + data[end:])
    result = cli("audit", "verify", str(guarded.audit_dir))
    assert result.returncode == 1 and "was edited" in result.stdout


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB filesystem of its own, which the test fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_refuses_statements_and_recovers(pg, small_disk):
    """The journal's disk is full: statements are refused with a clear error, nothing crashes, and
    when there is room again everything goes on, with no record lost."""
    audit_dir = small_disk / "audit"
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--audit-dir", str(audit_dir))
    filler = small_disk / "filler"
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("SELECT 'before'").fetchall()
            with open(filler, "wb", buffering=0) as f:  # take every block that is left
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError:
                    pass
            refused = None
            for i in range(500):
                try:
                    conn.execute(f"SELECT {i} AS filling_the_disk").fetchall()
                except psycopg.Error as exc:
                    refused = exc
                    break
            assert refused is not None, "statements went on with a full journal disk"
            assert refused.sqlstate == "58030" and "cannot write its audit journal" in str(refused)
        # the statement in flight when the disk filled ended its session (FATAL 58030); new ones are refused
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            with pytest.raises(psycopg.Error, match="cannot write its audit journal") as info:
                conn.execute("SELECT 'still refused'")
            assert info.value.sqlstate == "58030"
            filler.unlink()  # room again
            assert wait_for(lambda: _works(conn), timeout=20)
        assert proxy.proc.poll() is None
        assert "audit_journal_failed" in proxy.log()
        result = verify(audit_dir)
        assert result.ok and result.records > 0, result.problem
        refusals = [r for _, _, r, _ in read_records(audit_dir) if r and r.get("decision") == "refuse"]
        assert refusals and all("audit journal" in r["reason"] for r in refusals)  # kept, and written later
    finally:
        proxy.stop()


def _works(conn) -> bool:
    try:
        return conn.execute("SELECT 1").fetchone()[0] == 1
    except psycopg.Error:
        return False


# ----------------------------------------------------------------------------- crash, restart, sinks
@pytest.fixture
def sink_db():
    """A separate audit database server, which the tests stop and start."""
    cluster = Cluster(embedded_bin_dir())
    cluster.start()
    cluster.psql("CREATE DATABASE audit")
    yield cluster
    cluster.destroy()


def sink_ids(cluster) -> set[str]:
    try:
        out = cluster.psql("SELECT id FROM pgveil_audit", "audit")
    except Exception:
        return set()
    return set(out.split())


@pytest.mark.parametrize("preallocate", [False, True])
def test_kill9_strict_mode_loses_no_decision_and_sinks_catch_up(pg, tmp_path, sink_db, preallocate):
    pg.psql("CREATE TABLE IF NOT EXISTS audit_probe (worker int, n int)", "crm")
    pg.psql("GRANT ALL ON audit_probe TO app", "crm")
    pg.psql("TRUNCATE audit_probe", "crm")  # (the rows of the other parametrisation)
    audit_dir = tmp_path / "audit"
    sink = sink_db.dsn(database="audit")
    args = ("--upstream-sslmode", "disable", "--audit-dir", str(audit_dir), "--audit-mode", "strict",
            "--audit-sink", sink) + (("--audit-preallocate",) if preallocate else ())
    proxy = start_proxy(pg.port, *args)

    async def worker(w: int):
        conn = await asyncpg.connect(proxy.dsn())
        n = 0
        try:
            while True:  # each statement's shape names it: literals never reach the journal
                await conn.execute(f"INSERT INTO audit_probe (worker, n) SELECT {w}, {n} AS probe_{w}_{n}")
                n += 1
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            return n

    async def run():
        tasks = [asyncio.ensure_future(worker(w)) for w in range(6)]
        await asyncio.sleep(2.0)
        os.kill(proxy.proc.pid, signal.SIGKILL)  # in the middle of the workload
        return await asyncio.gather(*tasks)

    asyncio.run(run())
    proxy.proc.wait()
    reached = pg.psql("SELECT worker || '_' || n FROM audit_probe", "crm").split()
    assert len(reached) > 50
    decided = {r["sql"].split("probe_")[1] for r in _records(audit_dir)
               if r.get("type") == "statement" and "probe_" in r.get("sql", "")}
    missing = set(reached) - decided
    assert not missing, f"{len(missing)} statements reached the database without a decision record"
    # a restart continues the chain (cutting a half-written record, if any) and the sink catches up
    proxy = start_proxy(pg.port, *args)
    try:
        with psycopg.connect(proxy.dsn()) as conn:
            conn.execute("SELECT 1").fetchall()
        assert wait_for(lambda: verify(audit_dir).ok and
                        {r["id"] for r in _records(audit_dir)} <= sink_ids(sink_db), timeout=30)
        result = verify(audit_dir)
        assert result.ok and list(result.streams) == ["0"]
    finally:
        proxy.stop()


def _records(directory) -> list[dict]:
    return [r for _, _, r, _ in read_records(directory) if r is not None]


def test_postgres_sink_outage_then_complete(pg, tmp_path, sink_db):
    audit_dir = tmp_path / "audit"
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--audit-dir", str(audit_dir),
                        "--audit-sink", sink_db.dsn(database="audit"), "--audit-sink", "stdout")
    try:
        with psycopg.connect(proxy.dsn()) as conn:
            conn.execute("SELECT 1").fetchall()
        assert wait_for(lambda: len(sink_ids(sink_db)) > 0)
        sink_db.stop()
        for i in range(20):
            with psycopg.connect(proxy.dsn()) as conn:
                conn.execute(f"SELECT {i} AS during_outage").fetchall()
        time.sleep(1.0)
        sink_db.start()
        assert wait_for(lambda: {r["id"] for r in _records(audit_dir)} <= sink_ids(sink_db), timeout=40)
        assert "audit_sink_failed" in proxy.log()
        shipped = [json.loads(line) for line in proxy.log().splitlines() if '"hash":' in line]
        assert {r["id"] for r in _records(audit_dir)} <= {r["id"] for r in shipped}  # stdout got them too
    finally:
        proxy.stop()


async def _pipelined_queries(port: int, queries: list[str], pause: float) -> list[str]:
    """Each query in its own write, ``pause`` apart, before any answer is read; the values of
    the DataRows that come back, in order."""
    from conftest import TRUST_USER
    from proxy import codec
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(codec.encode_startup(codec.StartupMessage(codec.PROTOCOL_3_0, (("user", TRUST_USER),
                                                                                 ("database", "crm")))))
    splitter = codec.Splitter(b"".join(bytes([k]) for k in range(256)))
    messages: list = []

    async def until_ready(count: int) -> None:
        while sum(1 for m in messages if isinstance(m, codec.ReadyForQuery)) < count:
            out, marks = splitter.feed(await asyncio.wait_for(reader.read(65536), 20))
            messages.extend(codec.decode_message(codec.BACKEND, bytes(out[s:e])) for _, s, e in marks)

    await until_ready(1)
    for sql in queries:
        writer.write(codec.encode(codec.Query(sql)))
        await writer.drain()
        await asyncio.sleep(pause)
    await until_ready(1 + len(queries))
    writer.write(codec.encode(codec.Terminate()))
    writer.close()
    assert not [m for m in messages if isinstance(m, codec.ErrorResponse)], messages
    return [codec._text(m.values[0]) for m in messages if isinstance(m, codec.DataRow)]


def test_strict_mode_keeps_what_a_client_sends_while_a_record_waits_in_order(pg):
    """Strict mode holds a statement until its record is on disk; what the client sends
    meanwhile waits in the proxy and goes on in order, each statement with its own record."""
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--audit-mode", "strict")
    try:
        queries = [f"SELECT {n} AS n" for n in range(1, 41)]
        values = asyncio.run(_pipelined_queries(proxy.port, queries, pause=0.0005))
        assert values == [str(n) for n in range(1, 41)]
        statements = [r for r in journal(proxy) if r["type"] == "statement"]
        assert len(statements) == 40
        assert [r["id"] for r in statements] == sorted((r["id"] for r in statements),
                                                       key=lambda i: int(i.rsplit("-", 1)[1]))
        wait_for(lambda: {r["statement"] for r in journal(proxy) if r["type"] == "outcome"} >=
                 {r["id"] for r in statements})
        outcomes = {r["statement"] for r in journal(proxy) if r["type"] == "outcome"}
        assert outcomes >= {r["id"] for r in statements}
    finally:
        proxy.stop()
