"""`pgveil report usage`: who did see what, from a journal with known contents (issue 19).

The expected table below was worked out by hand from the records written here; the same records
shipped to the PostgreSQL sink give the same answer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from proxy.audit.journal import Journal
from proxy.audit.sinks import PostgresSink
from proxy.audit.usage import OfficeHours


def stmt(sid, ts, user, columns, decision="rewrite", addr="10.0.0.5", purpose=None, grant=None, tier="sales",
         reason=""):
    return {"v": 1, "id": sid, "ts": ts, "type": "statement", "session": "s-" + user, "user": user, "tier": tier,
            "client_addr": addr, "client_port": 5000, "database": "crm", "application_name": "psql",
            "protocol": "simple", "sql": "SELECT ?", "fingerprint": "f" + sid, "kinds": ["read"],
            "relations": ["public.customers"], "decision": decision, "reason": reason, "unparsed": False,
            "rules_version": "r1", "purpose": purpose, "grant": grant,
            "columns": [{"relation": "public.customers", "column": c, "class": k, "action": a} for c, k, a in columns]}


def outcome(sid, ts, rows, status="ok", user="li"):
    return {"v": 1, "id": "o" + sid + ts, "ts": ts, "type": "outcome", "session": "s-" + user, "user": user,
            "statement": sid, "status": status, "rows": rows, "duration_us": 100, "sqlstate": None}


ID = ("id_number", "id_number", "mask")
ID_CLEAR = ("id_number", "id_number", "clear")
CARD = ("bank_card", "bank_card", "mask")
PHONE = ("phone", "phone", "clear")

RECORDS = [
    # li (sales), Monday 2026-11-02, 10:00 UTC: in office hours
    stmt("s1", "2026-11-02T10:00:00.000000Z", "li", [ID, PHONE]),
    outcome("s1", "2026-11-02T10:00:00.100000Z", 3),
    # the same prepared statement executed twice more, the second time at 20:00 (outside)
    outcome("s1", "2026-11-02T11:00:00.100000Z", 4),
    outcome("s1", "2026-11-02T20:00:00.100000Z", 5),
    # li from a second address, a refusal
    stmt("s2", "2026-11-03T09:30:00.000000Z", "li", [], decision="refuse", addr="10.0.0.9",
         reason="column public.customers.bank_card is blocked"),
    outcome("s2", "2026-11-03T09:30:00.000100Z", None, status="refused"),
    # zhang (customer_service) with a purpose and a grant, stopped by max_rows, on a Saturday
    stmt("s3", "2026-11-07T10:00:00.000000Z", "zhang", [ID_CLEAR, CARD], addr="10.0.0.7", purpose="CS-1042",
         grant="CS-1042 refund", tier="customer_service"),
    outcome("s3", "2026-11-07T10:00:01.000000Z", 100, status="limited", user="zhang"),
    # a statement with no sensitive column: not in the usage table
    stmt("s4", "2026-11-04T10:00:00.000000Z", "zhang", [], decision="allow", addr="10.0.0.7",
         tier="customer_service"),
    outcome("s4", "2026-11-04T10:00:00.100000Z", 1, user="zhang"),
    # outside the period asked for
    stmt("s5", "2026-12-02T10:00:00.000000Z", "li", [ID]),
    outcome("s5", "2026-12-02T10:00:00.100000Z", 9),
]

# worked out by hand from RECORDS, for 2026-11-01 .. 2026-12-01, office hours 09:00-18:00 mon-fri UTC
EXPECTED_USAGE = [
    {"user": "li", "class": "id_number", "action": "mask", "executions": 3, "rows": 12, "tiers": ["sales"],
     "purposes": [], "grants": []},
    {"user": "li", "class": "phone", "action": "clear", "executions": 3, "rows": 12, "tiers": ["sales"],
     "purposes": [], "grants": []},
    {"user": "zhang", "class": "bank_card", "action": "mask", "executions": 1, "rows": 100,
     "tiers": ["customer_service"], "purposes": ["CS-1042"], "grants": ["CS-1042 refund"]},
    {"user": "zhang", "class": "id_number", "action": "clear", "executions": 1, "rows": 100,
     "tiers": ["customer_service"], "purposes": ["CS-1042"], "grants": ["CS-1042 refund"]},
]


@pytest.fixture(scope="module")
def journal_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("usage-journal")
    journal = Journal(directory, stream="7")
    journal.open()
    journal.append([dict(r) for r in RECORDS])
    journal.close()
    return directory


def usage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", "report", "usage", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def check(report: dict) -> None:
    assert report["usage"] == EXPECTED_USAGE
    flags = report["flags"]
    # the execution at 20:00 on Monday, and zhang's Saturday statement
    assert [(f["user"], f["ts"]) for f in flags["off_hours"]] == [
        ("li", "2026-11-02T20:00:00.100000Z"), ("zhang", "2026-11-07T10:00:01.000000Z")]
    assert [(f["user"], f["reason"]) for f in flags["refusals"]] == [
        ("li", "column public.customers.bank_card is blocked")]
    assert [(f["user"], f["rows"], f["classes"]) for f in flags["max_rows_stops"]] == [
        ("zhang", 100, ["bank_card", "id_number"])]
    assert flags["shared_accounts"] == {"li": ["10.0.0.5", "10.0.0.9"]}


PERIOD = ("--since", "2026-11-01", "--until", "2026-12-01")


def test_usage_from_the_journal_equals_the_hand_checked_table(journal_dir):
    got = usage(str(journal_dir), *PERIOD, "--format", "json")
    assert got.returncode == 0, got.stderr
    check(json.loads(got.stdout))


def test_a_pipe_gets_csv_and_a_table_is_readable(journal_dir):
    got = usage(str(journal_dir), *PERIOD)
    lines = got.stdout.splitlines()
    assert lines[0].startswith("kind,user,class,action,executions,rows")
    assert "usage,li,id_number,mask,3,12,,,,sales,," in lines
    assert any(line.startswith("shared_account,li,") and "10.0.0.5;10.0.0.9" in line for line in lines)
    table = usage(str(journal_dir), *PERIOD, "--format", "table").stdout
    assert "zhang  id_number  clear" in table and "outside office hours: 2" in table


def test_office_hours_follow_the_time_zone_and_days():
    shanghai = OfficeHours.parse("09:00-18:00", "mon-fri", "Asia/Shanghai")
    assert shanghai.contains("2026-11-02T02:00:00Z")       # 10:00 in Shanghai, Monday
    assert not shanghai.contains("2026-11-02T10:00:00Z")   # 18:00 there: closed
    night = OfficeHours.parse("22:00-06:00", "sun-sat")
    assert night.contains("2026-11-07T23:00:00Z") and not night.contains("2026-11-07T12:00:00Z")
    with pytest.raises(ValueError, match="HH:MM"):
        OfficeHours.parse("9 to 5")
    with pytest.raises(ValueError, match="office days"):
        OfficeHours.parse("09:00-17:00", "weekdays")


def test_usage_from_the_postgresql_sink_is_the_same(pg, journal_dir):
    dsn = pg.dsn(database="crm")
    lines = [(json.dumps(r) + "\n").encode() for r in RECORDS]
    for i, line in enumerate(lines):  # the sink needs stream and seq, as the journal gives them
        record = json.loads(line)
        lines[i] = (json.dumps(dict(record, stream="7", seq=i + 1)) + "\n").encode()

    async def ship():
        sink = PostgresSink(dsn)
        await sink.deliver(lines)
        await sink.close()
    asyncio.run(ship())
    try:
        got = usage("--sink-dsn", dsn, *PERIOD, "--format", "json")
        assert got.returncode == 0, got.stderr
        check(json.loads(got.stdout))
    finally:
        import psycopg
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE pgveil_audit")


def test_bad_arguments_are_told_clearly(journal_dir):
    assert "either an audit directory or --sink-dsn" in usage().stderr
    got = usage(str(journal_dir), "--office-hours", "nine-five")
    assert got.returncode == 2 and "HH:MM-HH:MM" in got.stderr
