"""The access sequences of test_access_live.py with pgjdbc (Debian's libpostgresql-jdbc-java and
Java 17, installed with apt when missing, as the upstream-TLS tests install PostgreSQL).

A small Java program, compiled here with javac, runs a script of steps on one connection
(prepareThreshold=1: every PreparedStatement is a named server-side statement from its first
execution) and prints one line per step."""

import os
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import TIER_PASSWORD, start_with_rules
from test_access_live import BASE, PURPOSE_RULES, SQL, grant, grant_users, staging  # noqa: F401 (fixtures)

JARS = (Path("/usr/share/java/postgresql.jar"),)
SCRIPT_RUNNER = r"""
import java.sql.*;
import java.nio.file.*;
import java.util.*;

public class Steps {
    public static void main(String[] args) throws Exception {
        Connection conn = DriverManager.getConnection(args[0], args[1], args[2]);
        Map<String, PreparedStatement> prepared = new HashMap<>();
        ResultSet cursor = null;
        for (String line : Files.readAllLines(Paths.get(args[3]))) {
            String[] step = line.split(" ", 2);
            String arg = step.length > 1 ? step[1] : "";
            try {
                switch (step[0]) {
                    case "prepare": prepared.put("p", conn.prepareStatement(arg)); System.out.println("OK"); break;
                    case "query": {
                        ResultSet rs = prepared.get("p").executeQuery(); rs.next();
                        System.out.println("ROW " + rs.getString(1)); rs.close(); break;
                    }
                    case "exec": conn.createStatement().execute(arg); System.out.println("OK"); break;
                    case "rows": {  // every row of every result of a statement
                        Statement st = conn.createStatement();
                        boolean isResult = st.execute(arg);
                        StringBuilder out = new StringBuilder("ROWS");
                        while (true) {
                            if (isResult) {
                                ResultSet rs = st.getResultSet();
                                while (rs.next()) out.append(" ").append(rs.getString(1));
                            } else if (st.getUpdateCount() == -1) break;
                            isResult = st.getMoreResults();
                        }
                        System.out.println(out); break;
                    }
                    case "autocommit": conn.setAutoCommit(arg.equals("on")); System.out.println("OK"); break;
                    case "rollback": conn.rollback(); System.out.println("OK"); break;
                    case "cursor": {  // a portal fetched one row at a time
                        PreparedStatement st = conn.prepareStatement(arg); st.setFetchSize(1);
                        cursor = st.executeQuery(); cursor.next();
                        System.out.println("ROW " + cursor.getString(1)); break;
                    }
                    case "next": cursor.next(); cursor.next(); System.out.println("ROW " + cursor.getString(1)); break;
                    case "sleep_until": {
                        long wait = Long.parseLong(arg) - System.currentTimeMillis();
                        if (wait > 0) Thread.sleep(wait);
                        System.out.println("OK"); break;
                    }
                    case "touch": Files.writeString(Paths.get(arg), "ready"); System.out.println("OK"); break;
                    case "wait_file": {  // the test says when to go on (a reload done)
                        while (!Files.exists(Paths.get(arg))) Thread.sleep(50);
                        System.out.println("OK"); break;
                    }
                    default: throw new IllegalArgumentException(step[0]);
                }
            } catch (SQLException e) {
                System.out.println("ERR " + e.getSQLState() + " " + e.getMessage().replace('\n', ' '));
            }
        }
        conn.close();
    }
}
"""


def ensure_pgjdbc() -> Path | None:
    """javac and Debian's pgjdbc jar, installed with apt when missing and we may (root)."""
    def found():
        jar = next((j for j in JARS if j.exists()), None)
        return jar if jar and shutil.which("javac") and shutil.which("java") else None
    if found() or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "openjdk-17-jdk-headless", "libpostgresql-jdbc-java"],
                   env=env, check=False, capture_output=True)
    return found()


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    jar = ensure_pgjdbc()
    if jar is None:
        pytest.fail("Java 17 and Debian's libpostgresql-jdbc-java are needed for the pgjdbc tests and could not be "
                    "installed")
    build = tmp_path_factory.mktemp("jdbc")
    (build / "Steps.java").write_text(SCRIPT_RUNNER)
    subprocess.run(["javac", "-d", str(build), str(build / "Steps.java")], check=True, capture_output=True)

    def run(proxy, user: str, script: list[str], mode: str = "extended", background: bool = False):
        path = build / f"script-{time.monotonic_ns()}.txt"
        path.write_text("\n".join(script) + "\n")
        url = (f"jdbc:postgresql://127.0.0.1:{proxy.port}/crm?sslmode=disable&prepareThreshold=1"
               f"&preferQueryMode={mode}")
        command = ["java", "-cp", f"{jar}:{build}", "Steps", url, user, TIER_PASSWORD, str(path)]
        if background:
            return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()
    return run


def masked(line: str) -> bool:
    return line.startswith("ROW ") and "*" in line


def clear(line: str) -> bool:
    return line.startswith("ROW ") and "*" not in line


def test_pgjdbc_grant_ends_for_prepared_statements_and_portals(pg, grant_users, steps, tmp_path):
    until = datetime.now(timezone.utc) + timedelta(seconds=8)  # the JVM starts slowly
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", BASE + "grants:\n" + grant("sales_end", until),
                             "--rules-poll", "0")
    try:
        out = steps(proxy, "sales_end", [
            f"prepare {SQL}", "query", "query",
            "autocommit off", f"cursor {SQL[:-8]}",
            f"sleep_until {int(until.timestamp() * 1000) + 300}",
            "next", "rollback", "autocommit on",
            "query", "query"])
        assert clear(out[1]) and clear(out[2]) and clear(out[4]), out
        assert out[6].startswith("ERR 42501") and "access changed since it was opened" in out[6], out
        assert masked(out[9]) and masked(out[10]), out
    finally:
        proxy.stop()


def test_pgjdbc_purpose_cleared_like_a_setting(pg, grant_users, steps, tmp_path):
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", PURPOSE_RULES)
    try:
        # extendedForPrepared: a plain Statement goes as a simple Query (so it may declare a
        # purpose), a PreparedStatement as a named server-side statement
        out = steps(proxy, "sales_cur", [
            f"prepare {SQL}", "query",
            "exec SET pgveil.purpose = 'T-1'", "query", "exec RESET pgveil.purpose", "query",
            "exec BEGIN", "exec SET pgveil.purpose = 'T-1'", "query", "exec ROLLBACK", "query",
            "exec SET pgveil.purpose = 'T-1'", "query", "exec RESET ALL", "query",
            "exec SET pgveil.purpose = 'T-1'", "query", "exec DISCARD ALL", "query"], mode="extendedForPrepared")
        rows = [line for line in out if line.startswith(("ROW", "ERR"))]
        assert [masked(r) for r in rows] == [True, False, True, False, True, False, True, False, True], out
    finally:
        proxy.stop()


def test_pgjdbc_purpose_declared_in_its_default_extended_mode(pg, grant_users, steps, tmp_path):
    """pgjdbc's default: every statement as Parse/Bind/Execute, the declaration included (it was
    refused: 'declare a purpose on its own, as a simple query')."""
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", PURPOSE_RULES)
    try:
        out = steps(proxy, "sales_cur", [
            f"prepare {SQL}", "query",
            "exec SET pgveil.purpose = 'T-1'", "query", "exec RESET pgveil.purpose", "query",
            "exec BEGIN", "exec SET pgveil.purpose = 'T-1'", "query", "exec ROLLBACK", "query",
            "autocommit off", "exec SET LOCAL pgveil.purpose = 'T-1'", "query", "rollback", "query",
            "autocommit on", "exec SET pgveil.purpose = 'T-1'", "query", "exec DISCARD ALL", f"prepare {SQL}", "query"])
        assert not [line for line in out if line.startswith("ERR")], out
        rows = [line for line in out if line.startswith("ROW")]
        assert [masked(r) for r in rows] == [True, False, True, False, True, False, True, False, True], out
    finally:
        proxy.stop()


def test_pgjdbc_reload_moves_the_identity(pg, grant_users, steps, tmp_path):
    rules = tmp_path / "rules.yaml"
    moved = BASE.replace("identities:", "identities:\n  - {user: sales_end, tier: dba}", 1)
    proxy = start_with_rules(pg, rules, moved, "--rules-poll", "0.2")
    go, ready = tmp_path / "reloaded", tmp_path / "ready"
    try:
        runner = steps(proxy, "sales_end", [f"prepare {SQL}", "query", "autocommit off", f"cursor {SQL[:-8]}",
                                            f"touch {ready}", f"wait_file {go}", "query", "next"], background=True)
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:  # prepared and opened under dba
            time.sleep(0.05)
        rules.write_text(BASE)
        deadline = time.monotonic() + 10
        while "rules_reloaded" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        go.write_text("go")
        out, err = runner.communicate(timeout=60)
        out = out.splitlines()
        assert clear(out[1]) and clear(out[3]) and masked(out[6]), (out, err)
        assert out[7].startswith("ERR 42501") and "access changed since it was opened" in out[7], out
    finally:
        proxy.stop()


def test_pgjdbc_search_path_changed_inside_one_statement_string(pg, tier_users, staging, steps, tmp_path):
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", BASE)
    try:
        write = (f"BEGIN; SET search_path = public; UPDATE customers SET name = name WHERE id = {staging} "
                 f"RETURNING id_number || ' ', bank_card || ' '; ROLLBACK")
        for mode in ("extended", "simple"):  # one batch of Parse/Bind/Execute per statement, or one Query
            out = steps(proxy, "crm_app", ["exec SET search_path = staging, public", f"rows {write}",
                                           "exec ROLLBACK"], mode=mode)
            assert out[1].startswith("ERR 42501") and "cannot be used in a write statement" in out[1], (mode, out)
    finally:
        proxy.stop()
