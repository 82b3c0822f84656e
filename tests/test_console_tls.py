"""The console port's TLS (``--tls-cert``, as the proxy's port) and its idle timeout.

With a plain upstream (the embedded server) the password exchange is relayed over the client's
TLS; with TLS on both legs (Debian's PostgreSQL, offering SCRAM-SHA-256-PLUS) the console
verifies SCRAM itself through ``--auth-dsn``, or refuses with 28000 and a hint without it."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import time

import asyncpg
import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD, free_port, start_proxy, start_with_rules, wait_port
from proxy.pgcluster import ensure_debian_postgresql
from test_console_live import journal
from test_tls import pki, tls_db  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def psql():
    """Debian's psql: the embedded server's has no SSL."""
    bin_dir = ensure_debian_postgresql()
    if bin_dir is None:
        pytest.fail("Debian's postgresql package is needed for psql with TLS and could not be installed")
    return str(bin_dir / "psql")


def console(psql, proxy, command: str, sslmode: str, password: str = TIER_PASSWORD, **env: str):
    env = dict(os.environ, PGPASSWORD=password, PGSSLMODE=sslmode, PGCONNECT_TIMEOUT="10", **env)
    return subprocess.run([psql, "-X", "-A", "-t", "-h", "127.0.0.1", "-p",
                           str(proxy.console_port), "-U", "it_zhou", "-d", "pgveil", "-c", command],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def tls_console(pg, tier_users, pki, tmp_path_factory):  # noqa: F811
    port = free_port()
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    proxy = start_with_rules(pg, rules, RULES.read_text(), "--console", f"127.0.0.1:{port}", "--tls-cert",
                             pki["proxy"][0], "--tls-key", pki["proxy"][1], "--console-idle-timeout", "1.5",
                             "--startup-timeout", "3")
    proxy.console_port = port
    wait_port(port)
    yield proxy
    proxy.stop()


def test_psql_reaches_the_console_over_tls(psql, tls_console):
    done = console(psql, tls_console, "SHOW VERSION", "require", PGAPPNAME="over-tls")
    assert done.returncode == 0 and done.stdout.startswith("pgveil "), done.stderr
    done = console(psql, tls_console, "SHOW VERSION", "disable", PGAPPNAME="in-clear")
    assert done.returncode == 0, done.stderr
    accepted = {r["application_name"]: r for r in journal(tls_console)
                if r["type"] == "connection" and r["database"] == "pgveil" and r["result"] == "accepted"}
    assert accepted["over-tls"]["tls"] is True and accepted["in-clear"]["tls"] is False


def test_asyncpg_verifies_the_console_certificate(tls_console, pki):  # noqa: F811
    async def run():
        context = ssl.create_default_context(cafile=pki["ca"])
        conn = await asyncpg.connect(host="localhost", port=tls_console.console_port, user="it_zhou",
                                     password=TIER_PASSWORD, database="pgveil", ssl=context)
        try:
            return await conn.fetchval("SHOW VERSION")
        finally:
            await conn.close()
    assert asyncio.run(run()).startswith("pgveil ")


def test_an_idle_console_connection_is_ended(tls_console):
    dsn = f"postgresql://it_zhou:{TIER_PASSWORD}@127.0.0.1:{tls_console.console_port}/pgveil"
    conn = psycopg.connect(dsn, sslmode="require", application_name="idler", autocommit=True)
    try:
        assert conn.execute("SHOW VERSION").fetchone()[0].startswith("pgveil ")
        time.sleep(1.0)
        conn.execute("SHOW VERSION")  # activity restarts the clock
        time.sleep(2.5)
        with pytest.raises(psycopg.OperationalError, match="idle-session timeout"):
            conn.execute("SHOW VERSION")
    finally:
        conn.close()
    ended = [r for r in journal(tls_console) if r["type"] == "session_end" and r["application_name"] == "idler"]
    assert ended and ended[0]["reason"] == "idle timeout"


def test_the_log_in_has_one_deadline_however_the_client_drips(tls_console):
    """Encryption requests answered N, one every 0.5 s, do not keep a connection past --startup-timeout."""
    gssenc = (8).to_bytes(4, "big") + (80877104).to_bytes(4, "big")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", tls_console.console_port), timeout=10) as sock:
        answers = b""
        while time.monotonic() - started < 10:
            try:
                sock.sendall(gssenc)
                data = sock.recv(4096)
            except OSError:
                break
            if not data or data != b"N":
                answers += data
                break
            time.sleep(0.5)
    assert time.monotonic() - started < 5
    assert not answers or b"timeout expired before the client authenticated" in answers


# ----------------------------------------------------------------------------- both legs TLS
@pytest.fixture(scope="module")
def tls_db_users(tls_db):  # noqa: F811
    tls_db.psql(f"CREATE ROLE it_zhou LOGIN PASSWORD '{TIER_PASSWORD}'")
    return tls_db


def start_both_tls(tls_db, pki, tmp_path, *args):  # noqa: F811
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.read_text())
    catalog = tls_db.dsn(database="crm") + "?sslmode=require"
    proxy = start_proxy(tls_db.port, "--upstream-sslmode", "verify-ca", "--upstream-ca", pki["ca"], "--rules",
                        str(rules), "--catalog-dsn", catalog, "--console", f"127.0.0.1:{port}", "--tls-cert",
                        pki["proxy"][0], "--tls-key", pki["proxy"][1], *args)
    proxy.console_port = port
    wait_port(port)
    return proxy


def test_both_legs_tls_without_auth_dsn_is_refused_with_a_hint(psql, tls_db_users, pki, tmp_path):  # noqa: F811
    proxy = start_both_tls(tls_db_users, pki, tmp_path)
    try:
        done = console(psql, proxy, "SHOW VERSION", "require")
        assert done.returncode == 2 and "cannot relay SCRAM authentication when both legs use TLS" in done.stderr
        assert "--auth-dsn" in done.stderr
        done = console(psql, proxy, "SHOW VERSION", "disable")  # no TLS on the client's leg: relayed
        assert done.returncode == 0 and done.stdout.startswith("pgveil "), done.stderr
    finally:
        proxy.stop()


@pytest.mark.parametrize("channel_binding", ["prefer", "require"])
def test_both_legs_tls_with_auth_dsn_verifies_scram(psql, tls_db_users, pki, tmp_path, channel_binding):  # noqa: F811
    auth = tls_db_users.dsn() + f"?sslmode=verify-ca&sslrootcert={pki['ca']}"
    proxy = start_both_tls(tls_db_users, pki, tmp_path, "--auth-dsn", auth)
    try:
        done = console(psql, proxy, "SHOW VERSION", "require", PGCHANNELBINDING=channel_binding)
        assert done.returncode == 0 and done.stdout.startswith("pgveil "), done.stderr
        done = console(psql, proxy, "SHOW VERSION", "require", password="wrong")
        assert done.returncode == 2 and 'password authentication failed for user "it_zhou"' in done.stderr
    finally:
        proxy.stop()
