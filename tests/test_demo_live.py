"""``make demo`` shows the three jobs of issue 19 end to end: the admin console (its own port,
tier ``it``), sealed values an investigator can search with the demo's key, and the usage report;
and it answers issue 13's formatted statement with a comment at once (it froze the worker).

One demo process (embedded PostgreSQL, sample CRM, proxy with the example rules), driven with psql
and the ``pgveil`` command line as a user of the demo would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, free_port, wait_port
from proxy.pgcluster import embedded_bin_dir

PSQL = str(embedded_bin_dir() / "psql")


def psql(port: int, user: str, database: str, sql: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PGPASSWORD="demo", PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    return subprocess.run([PSQL, "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", database,
                           "-c", sql], capture_output=True, text=True, env=env, timeout=60)


def pgveil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.fixture(scope="module")
def demo():
    """The demo, as ``make demo`` runs it (in a directory its unprivileged PostgreSQL can enter)."""
    path = Path(tempfile.mkdtemp(prefix="pgveil-demo-live-"))
    path.chmod(0o755)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(path / "data"), "--customers", "50"],
                            cwd=path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_port(port, timeout=120, proc=proc)
        wait_port(port + 1, timeout=30, proc=proc)
        yield path, port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(path, ignore_errors=True)


def test_the_demo_serves_the_admin_console_one_port_up(demo):
    _, port = demo
    shown = psql(port + 1, "it_zhou", "pgveil", "SHOW VERSION")
    assert shown.returncode == 0 and "pgveil" in shown.stdout.lower(), shown.stderr
    refused = psql(port + 1, "sales_li", "pgveil", "SHOW SESSIONS")
    assert refused.returncode != 0 and "may not use the console" in refused.stderr, refused


def test_the_demo_seals_values_for_its_investigators_and_reports_usage(demo):
    path, port = demo
    looked = psql(port, "sales_li", "crm", "SELECT name, phone FROM customers WHERE id = 7 AND grade = 'ordinary'")
    assert looked.returncode == 0, looked.stderr
    audit_dir = path / "pgveil-audit"
    journal = b"".join(p.read_bytes() for p in audit_dir.rglob("*") if p.is_file())
    assert b"grade = 'ordinary'" not in journal and b"ordinary" not in journal, "literals are sealed, never in clear"
    found = pgveil("audit", "investigate", str(audit_dir), "--key", str(path / "data" / "investigators.key"),
                   "--value", "ordinary")
    assert found.returncode == 0 and "sales_li" in found.stdout, found.stdout + found.stderr
    usage = pgveil("report", "usage", str(audit_dir), "--format", "json")
    assert usage.returncode == 0, usage.stderr
    assert "sales_li" in {row.get("user") for row in json.loads(usage.stdout).get("usage", [])}, usage.stdout


ISSUE_13 = """SELECT id,
       name,
       phone,
       grade,
       created_at
  FROM customers
 WHERE grade = 'ordinary'
 ORDER BY id
 LIMIT 3; -- first customers"""


def test_the_demo_answers_formatted_sql_with_a_comment_in_milliseconds(demo):
    """Sent as the issue sent it (``psql -c "$(cat q.sql)"``); psql's own timing is printed (the
    figure for the issue's note), and the answer checked: three ordinary customers."""
    _, port = demo
    env = dict(os.environ, PGPASSWORD="demo", PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    result = subprocess.run([PSQL, "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "sales_li", "-d", "crm",
                             "-c", "\\timing on", "-c", ISSUE_13], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "|" in line]
    timing = [line for line in result.stdout.splitlines() if line.startswith("Time:")]
    print(f"issue 13's statement through the demo: {timing}")
    assert len(rows) == 3 and all(row.split("|")[3] == "ordinary" for row in rows), result.stdout
    assert len(timing) == 1 and timing[0].endswith(" ms")
    other = psql(port, "dba_sun", "crm", "SELECT 1")
    assert other.returncode == 0 and other.stdout.strip() == "1", "the worker goes on serving"
