"""The admin console with ``--workers 2``: every command covers both workers.

Which worker holds a client session is read from the audit journal (each worker writes its own
stream), not from the console, and the tests open sessions until both workers hold some.  A
stopped worker (SIGSTOP) costs the console its per-peer timeout, and a WARNING names it."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD, free_port, start_with_rules, wait_port
from proxy.audit.journal import read_records
from proxy.console_peers import PEER_TIMEOUT
from test_console_live import console_psql, rows


@pytest.fixture(scope="module")
def workers(pg, tier_users, tmp_path_factory):
    port = free_port()
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    proxy = start_with_rules(pg, rules, RULES.read_text(), "--workers", "2", "--console", f"127.0.0.1:{port}",
                             "--rules-poll", "0")
    proxy.console_port = port
    proxy.rules_path = rules
    wait_port(port)
    yield proxy
    proxy.stop()


def records_by_stream(proxy) -> list[tuple[str, dict]]:
    """(stream, record) for every record of the journal; the stream is the worker's index."""
    return [(path.name.split("-")[1], r) for path, _, r, _ in read_records(proxy.audit_dir) if r is not None]


def sessions_by_name(proxy) -> dict[str, tuple[str, str]]:
    """application_name -> (session id, stream) of the accepted client sessions."""
    return {r["application_name"]: (r["session"], stream) for stream, r in records_by_stream(proxy)
            if r["type"] == "connection" and r["result"] == "accepted" and r["database"] == "crm"}


def open_on_both_workers(proxy, prefix: str) -> dict[str, tuple]:
    """Client sessions until both workers hold at least one: name -> (connection, id, stream)."""
    opened: dict[str, psycopg.Connection] = {}
    for i in range(40):
        name = f"{prefix}{i}"
        conn = psycopg.connect(proxy.dsn("crm_app", TIER_PASSWORD, application_name=name), autocommit=True)
        conn.execute("SELECT name FROM customers WHERE id = 1").fetchall()
        opened[name] = conn
        known = sessions_by_name(proxy)
        if len({known[n][1] for n in opened if n in known}) == 2 and len(opened) >= 3:
            return {n: (c, *known[n]) for n, c in opened.items()}
    raise AssertionError("SO_REUSEPORT gave every session to one worker")


def close_all(opened: dict) -> None:
    for conn, *_ in opened.values():
        conn.close()


def console_call(proxy, run, timeout: float = 60.0):
    """``run(connection)`` on an asyncpg console connection, with the WARNINGs it got."""
    async def go():
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.console_port, user="it_zhou",
                                     password=TIER_PASSWORD, database="pgveil", ssl=False, timeout=timeout)
        warnings = []
        conn.add_log_listener(lambda _, message: warnings.append(message.message))
        try:
            return await run(conn), warnings
        finally:
            await conn.close()
    return asyncio.run(go())


def test_show_sessions_lists_the_sessions_of_every_worker(pg, workers):
    opened = open_on_both_workers(workers, "both-")
    try:
        done = console_psql(pg, workers, "SHOW SESSIONS")
        assert done.returncode == 0 and "WARNING" not in done.stderr, done.stderr
        header = done.stdout.splitlines()[0].split("|")
        ids = [r[0] for r in rows(done)]
        assert len(set(ids)) == len(ids)  # session ids are unique across the workers
        listed = {r[header.index("application_name")]: r for r in rows(done)}
        for name, (_, session_id, _) in opened.items():
            assert listed[name][0] == session_id, name  # on either worker
        pids = {stream: {listed[n][header.index("worker")] for n, (_, _, s) in opened.items() if s == stream}
                for stream in ("0", "1")}
        assert all(len(p) == 1 for p in pids.values()) and pids["0"] != pids["1"]  # one pid per worker
        # asyncpg (the extended protocol) gets the same sessions, and the counters sum both workers
        async def run(conn):
            return await conn.fetch("SHOW SESSIONS"), await conn.fetch("SHOW STATS"), await conn.fetch("SHOW TIERS")
        (sessions, stats, tiers), warnings = console_call(workers, run)
        assert {r["application_name"] for r in sessions} >= set(opened) and not warnings
        ours = sum(1 for r in sessions if r["tier"] == "customer_service")
        assert int({r["tier"]: r for r in stats}["customer_service"]["sessions"]) == ours >= len(opened)
        assert int({r["tier"]: r for r in tiers}["customer_service"]["sessions"]) == ours
        # statements: both workers' counts, as many as both journals' outcome records
        counted = int({r["tier"]: r for r in stats}["customer_service"]["statements"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            outcomes = sum(1 for _, r in records_by_stream(workers) if r["type"] == "outcome"
                           and r.get("tier") == "customer_service" and r.get("status") != "skipped")
            if outcomes >= counted:
                break
            time.sleep(0.2)
        assert counted == outcomes >= len(opened)
    finally:
        close_all(opened)


def test_show_audit_and_rules_have_a_row_per_worker(pg, workers):
    audit = rows(console_psql(pg, workers, "SHOW AUDIT"))
    assert sorted(r[0] for r in audit) == ["0", "1"]  # both journal streams
    assert len({r[-1] for r in audit}) == 2  # two worker pids
    assert len(rows(console_psql(pg, workers, "SHOW RULES"))) == 2


def test_kill_reaches_the_session_on_either_worker(workers):
    opened = open_on_both_workers(workers, "victim-")
    # one victim per worker: whichever worker the console lands on, one of them is on the other
    victims = {}
    for name, (conn, session_id, stream) in opened.items():
        victims.setdefault(stream, (name, conn, session_id))

    async def run(conn):
        for _, _, session_id in victims.values():
            await conn.execute(f"KILL {session_id}")
        with pytest.raises(asyncpg.PostgresError, match="no session"):
            await conn.execute("KILL 00000000deadbeef")
    _, warnings = console_call(workers, run)
    assert not warnings
    try:
        for stream, (name, conn, session_id) in victims.items():
            with pytest.raises(psycopg.OperationalError) as caught:
                conn.execute("SELECT 1")
            assert caught.value.sqlstate == "57P01" and "by user it_zhou" in str(caught.value), stream
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            records = records_by_stream(workers)
            ended = {r["session"]: (stream, r) for stream, r in records if r["type"] == "session_end"}
            if all(v[2] in ended for v in victims.values()):
                break
            time.sleep(0.2)
        for stream, (name, _, session_id) in victims.items():
            assert ended[session_id][0] == stream and "by user it_zhou" in ended[session_id][1]["reason"]
            asked = [r for _, r in records if r["type"] == "statement" and r.get("kinds") == ["console"]
                     and r["sql"] == f"KILL {session_id}"]
            assert len(asked) == 1 and asked[0]["user"] == "it_zhou"
    finally:
        close_all(opened)


def test_reload_reaches_every_worker(pg, workers):
    before = {r[0] for r in rows(console_psql(pg, workers, "SHOW RULES"))}
    text = workers.rules_path.read_text()
    workers.rules_path.write_text(text.replace("max_rows: 100", "max_rows: 80"))
    try:
        done = console_psql(pg, workers, "RELOAD")
        assert done.returncode == 0 and "RELOAD" in done.stdout and "WARNING" not in done.stderr, done.stderr
        after = rows(console_psql(pg, workers, "SHOW RULES"))
        assert len(after) == 2 and len({r[0] for r in after}) == 1 and after[0][0] not in before
    finally:
        workers.rules_path.write_text(text)
        console_psql(pg, workers, "RELOAD")
    reloaded = {stream for stream, r in records_by_stream(workers)
                if r["type"] == "rules" and r.get("event") == "reloaded" and "console, by it_zhou" in r["reason"]}
    assert reloaded == {"0", "1"}  # both workers' journals say who asked


def test_a_stopped_worker_costs_its_timeout_and_a_warning(pg, workers):
    audit = rows(console_psql(pg, workers, "SHOW AUDIT"))
    stopped = int(audit[0][-1])
    live = str(int(audit[1][-1]))
    opened = open_on_both_workers(workers, "stopped-")
    os.kill(stopped, signal.SIGSTOP)
    try:
        async def run(conn):
            started = time.monotonic()
            sessions = await conn.fetch("SHOW SESSIONS")
            return sessions, time.monotonic() - started
        for _ in range(20):  # a console connection that lands on the stopped worker waits: try again
            try:
                (sessions, took), warnings = console_call(workers, run, timeout=3)
                break
            except (asyncio.TimeoutError, OSError):
                continue
        else:
            raise AssertionError("every console connection landed on the stopped worker")
        assert took < PEER_TIMEOUT + 1.5
        assert len(warnings) == 1 and str(stopped) in warnings[0] and "did not answer" in warnings[0]
        workers_listed = {str(r["worker"]) for r in sessions if r["application_name"] in opened}
        assert workers_listed == {live}
    finally:
        os.kill(stopped, signal.SIGCONT)
        close_all(opened)
