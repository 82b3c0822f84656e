"""The admin console (--console): psql and asyncpg against a real proxy with rules/crm.yaml, in front
of a real server; a tier without ``console`` is refused; KILL ends a live session; RELOAD reads a
changed rule file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import asyncpg
import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD, free_port, start_with_rules
from proxy.audit.journal import read_records


@pytest.fixture(scope="module")
def console(pg, tier_users, tmp_path_factory):
    port = free_port()
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    proxy = start_with_rules(pg, rules, RULES.read_text(), "--console", f"127.0.0.1:{port}", "--rules-poll", "0")
    proxy.console_port = port
    proxy.rules_path = rules
    yield proxy
    proxy.stop()


def console_psql(pg, proxy, command: str, user: str = "it_zhou", database: str = "pgveil"):
    env = dict(os.environ, PGPASSWORD=TIER_PASSWORD, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    return subprocess.run([str(pg.bin_dir / "psql"), "-X", "-A", "-F", "|", "-h", "127.0.0.1", "-p",
                           str(proxy.console_port), "-U", user, "-d", database, "-c", command],
                          capture_output=True, text=True, env=env, timeout=60)


def rows(done) -> list[list[str]]:
    lines = done.stdout.splitlines()
    return [line.split("|") for line in lines[1:-1]]  # header, rows, "(n rows)"


def journal(proxy) -> list[dict]:
    return [r for _, _, r, _ in read_records(proxy.audit_dir) if r is not None]


def test_show_commands_through_psql(pg, console):
    with psycopg.connect(console.dsn("sales_li", TIER_PASSWORD, application_name="watched")) as conn:
        conn.execute("SELECT name FROM customers WHERE id = 1").fetchall()
        done = console_psql(pg, console, "SHOW SESSIONS")
        assert done.returncode == 0, done.stderr
        header = done.stdout.splitlines()[0].split("|")
        assert header[:3] == ["id", "user", "tier"] and "bytes_out" in header
        (watched,) = [r for r in rows(done) if r[header.index("application_name")] == "watched"]
        assert watched[1:3] == ["sales_li", "sales"] and watched[header.index("state")] == "idle in transaction"
        assert len(watched[header.index("statement")]) == 16 and int(watched[header.index("bytes_in")]) > 0
    done = console_psql(pg, console, "show version;")
    assert done.returncode == 0 and rows(done)[0][0].startswith("pgveil ")
    for command, first in (("SHOW RULES", "version"), ("SHOW GRANTS", "user"), ("SHOW TIERS", "tier"),
                           ("SHOW STATS", "tier"), ("SHOW AUDIT", "stream")):
        done = console_psql(pg, console, command)
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout.splitlines()[0].split("|")[0] == first, command
    tiers = {r[0]: r for r in rows(console_psql(pg, console, "SHOW TIERS"))}
    assert "console" in tiers["it"][1] and "console" not in tiers["sales"][1] and "console" not in tiers["dba"][1]
    done = console_psql(pg, console, "SELECT * FROM customers")
    assert done.returncode == 1 and "understands SHOW SESSIONS" in done.stderr  # never forwarded


def test_a_tier_without_console_is_refused(pg, console):
    done = console_psql(pg, console, "SHOW VERSION", user="sales_li")
    assert done.returncode == 2 and 'may not use the console' in done.stderr
    env = dict(os.environ, PGPASSWORD="wrong", PGSSLMODE="disable")
    done = subprocess.run([str(pg.bin_dir / "psql"), "-X", "-h", "127.0.0.1", "-p", str(console.console_port),
                           "-U", "it_zhou", "-d", "pgveil", "-c", "SHOW VERSION"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 2 and "password authentication failed" in done.stderr  # the database decides
    done = console_psql(pg, console, "SHOW VERSION", database="crm")
    assert done.returncode == 2 and 'the pgveil console\'s database is "pgveil"' in done.stderr
    records = journal(console)
    assert any(r["type"] == "connection" and r["result"] == "refused" and r["user"] == "sales_li"
               and r["database"] == "pgveil" for r in records)


def test_asyncpg_reads_the_console_with_the_extended_protocol(console):
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=console.console_port, user="it_zhou",
                                     password=TIER_PASSWORD, database="pgveil", ssl=False)
        try:
            sessions = await conn.fetch("SHOW SESSIONS")  # Parse, Describe, Bind, Execute, Sync
            version = await conn.fetchval("SHOW VERSION")
            stats = await conn.fetch("SHOW STATS")
            with pytest.raises(asyncpg.PostgresError, match="understands"):
                await conn.fetch("SELECT 1")
            return sessions, version, stats
        finally:
            await conn.close()
    sessions, version, stats = asyncio.run(run())
    assert version.startswith("pgveil ") and isinstance(sessions, list)
    assert {"tier", "sessions", "statements"} <= set(stats[0].keys())


def test_kill_ends_a_live_session_and_says_who_asked(pg, console):
    victim = psycopg.connect(console.dsn("crm_app", TIER_PASSWORD, application_name="victim"), autocommit=True)
    victim.execute("SELECT name FROM customers WHERE id = 2").fetchall()

    async def run():
        admin = await asyncpg.connect(host="127.0.0.1", port=console.console_port, user="it_zhou",
                                      password=TIER_PASSWORD, database="pgveil", ssl=False)
        try:
            (target,) = [r["id"] for r in await admin.fetch("SHOW SESSIONS") if r["application_name"] == "victim"]
            await admin.execute(f"KILL {target}")
            with pytest.raises(asyncpg.PostgresError, match="no session"):
                await admin.execute("KILL 00000000deadbeef")
            return target
        finally:
            await admin.close()
    target = asyncio.run(run())
    with pytest.raises(psycopg.OperationalError) as caught:
        victim.execute("SELECT 1")
    victim.close()
    assert caught.value.sqlstate == "57P01" and "by user it_zhou" in str(caught.value)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = journal(console)
        ended = [r for r in records if r["type"] == "session_end" and r["session"] == target]
        if ended:
            break
        time.sleep(0.2)
    assert ended and "by user it_zhou" in ended[0]["reason"]
    asked = [r for r in records if r["type"] == "statement" and r.get("kinds") == ["console"]
             and r["sql"] == f"KILL {target}"]
    assert asked and asked[0]["user"] == "it_zhou" and asked[0]["database"] == "pgveil"


def test_reload_reads_a_changed_rule_file(pg, console):
    before = rows(console_psql(pg, console, "SHOW RULES"))[0][0]
    text = console.rules_path.read_text()
    console.rules_path.write_text(text.replace("max_rows: 100", "max_rows: 90"))
    try:
        done = console_psql(pg, console, "RELOAD")
        assert done.returncode == 0 and "RELOAD" in done.stdout, done.stderr
        after = rows(console_psql(pg, console, "SHOW RULES"))[0][0]
        assert after != before
        console.rules_path.write_text("version: 1\nnot: valid\n")
        done = console_psql(pg, console, "RELOAD")
        assert done.returncode == 1 and "stays in force" in done.stderr
        assert rows(console_psql(pg, console, "SHOW RULES"))[0][0] == after
    finally:
        console.rules_path.write_text(text)
        console_psql(pg, console, "RELOAD")
    reloaded = [r for r in journal(console) if r["type"] == "rules" and r.get("event") == "reloaded"]
    assert reloaded and "console, by it_zhou" in reloaded[0]["reason"]
