"""A simple Query decided as one before it in the session is recorded in short (issue 17: the
decision once per statement text per session): who ran it and when, and ``same_as``, the id of
the full record it repeats.  The readers (search, usage) see it as the full record it stands
for; anything that changes the decision, the access or the rules records it in full again, and
so does a minute's passing.  Pure: a session, its records, the journal, the readers."""

from __future__ import annotations

from datetime import timedelta

from playbook import DESCRIPTION, ROW, T0, active, complete, extended, q, ready
from proxy import metrics
from proxy.audit.cli import readable_records
from proxy.audit.executions import expand
from proxy.audit.journal import Journal, verify
from proxy.audit.usage import Usage
from proxy.session import WriteAudit
from proxy.session.events import ClientData, ServerData

ANSWER = DESCRIPTION + ROW + complete("SELECT 1") + ready()
SHAPES = ["SELECT id_number FROM customers WHERE id = 1",
          "SELECT id_number FROM customers WHERE id = 22",
          "SELECT id_number\n  FROM customers\n WHERE id = 333  -- the third"]  # one normalised text


def run(session, message: bytes, answer: bytes = ANSWER) -> list[dict]:
    """The records of one statement: sent, then answered."""
    out = []
    for event in (ClientData(message), ServerData(answer)):
        out += [c.record for c in session.handle(event) if isinstance(c, WriteAudit)]
    return out


def statements(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "statement"]


def session(user: str = "sales_li", now=None, monotonic=None):
    return active(user, now=now, audit=True, audit_strict=False, monotonic=monotonic)


def test_a_repeated_query_is_recorded_in_short_and_read_back_in_full():
    s = session()
    written = [r for sql in SHAPES for r in run(s, q(sql))]
    full, *short = statements(written)
    assert "sql" in full and "same_as" not in full
    assert [r.get("same_as") for r in short] == [full["id"]] * 2
    assert all("sql" not in r and "columns" not in r for r in short)  # the short form: who, when, same_as
    assert all(r["decision"] == "rewrite" == full["decision"] for r in short)  # (the sink's decision column)
    assert all(r["user"] == "sales_li" and r["session"] == full["session"] and r["ts"] for r in short)
    read = statements(list(expand(written)))
    assert [r["id"] for r in read] == [r["id"] for r in statements(written)]
    for r in read:
        for key in ("sql", "fingerprint", "kinds", "relations", "columns", "decision", "reason", "rules_version"):
            assert r[key] == full[key], key
    outcomes = [r for r in written if r["type"] == "outcome"]
    assert [o["statement"] for o in outcomes] == [r["id"] for r in read]  # each execution its own outcome


def test_the_usage_report_counts_each_execution_of_a_repeated_query(tmp_path):
    s = session()
    written = [r for sql in SHAPES for r in run(s, q(sql))]
    journal = Journal(tmp_path)
    journal.open()
    journal.append(written)
    journal.close()
    assert verify(tmp_path).ok
    usage = Usage()
    for record in readable_records(tmp_path):
        usage.add(record)
    (row,) = usage.report().rows
    assert (row.user, row.cls, row.action, row.executions, row.rows) == ("sales_li", "id_number", "mask", 3, 3)


def test_refusals_parses_and_other_texts_are_recorded_in_full():
    s = session("clerk_wu")
    refused = [r for _ in range(2) for r in statements(run(s, q("DROP TABLE customers"), ready()))]
    assert [r["decision"] for r in refused] == ["refuse", "refuse"]
    parsed = [r for _ in range(2) for r in statements(run(s, extended("SELECT id FROM customers WHERE id = $1")))]
    assert len(parsed) == 2 and all("same_as" not in r and r["protocol"] == "extended" for r in parsed)
    other = statements(run(s, q("SELECT id FROM customers WHERE id = 1")) + run(s, q("SELECT id FROM customers")))
    assert all("same_as" not in r for r in other)


def test_a_change_of_access_or_a_minute_records_the_decision_in_full_again():
    clock = [T0]
    ticks = [0.0]
    s = session(now=lambda: clock[0], monotonic=lambda: ticks[0])
    first = statements(run(s, q(SHAPES[0])) + run(s, q(SHAPES[1])))
    assert "same_as" not in first[0] and first[1]["same_as"] == first[0]["id"]
    clock[0] = T0 + timedelta(seconds=15)  # the grant of id_number in clear is in force
    granted = statements(run(s, q(SHAPES[2])) + run(s, q(SHAPES[0])))
    assert "same_as" not in granted[0] and granted[0]["grant"] and granted[0]["columns"][0]["action"] == "clear"
    assert granted[1]["same_as"] == granted[0]["id"]
    clock[0] = T0 + timedelta(seconds=25)  # the grant ended: masked again, the masked decision repeats
    ended = statements(run(s, q(SHAPES[1])))
    assert ended[0]["same_as"] == first[0]["id"]
    ticks[0] = 61.0
    later = statements(run(s, q(SHAPES[1])) + run(s, q(SHAPES[2])))
    assert "same_as" not in later[0] and later[1]["same_as"] == later[0]["id"]


def test_the_metrics_count_a_repeated_query_as_its_decision():
    metrics.flush()
    sensitive = metrics.SENSITIVE.labels("sales", "id_number", "mask")
    counted = metrics.STATEMENTS.labels("sales", "read", "rewrite")
    before = sensitive._value.get(), counted._value.get()
    s = session()
    for record in (r for sql in SHAPES for r in run(s, q(sql))):
        metrics.observe(record)
    metrics.flush()
    assert (sensitive._value.get() - before[0], counted._value.get() - before[1]) == (3, 3)


def _short_after_full(since: str) -> list[dict]:
    """A decision written in full 30 s before ``since``, repeated in short 10 s after it."""
    from test_usage_report import ID, outcome, stmt
    full = stmt("r1", "2026-11-02T09:59:30.000000Z", "li", [ID])
    short = {key: full[key] for key in ("v", "type", "session", "user", "tier", "client_addr", "client_port",
                                        "database", "application_name", "protocol")}
    short.update(id="r2", ts="2026-11-02T10:00:10.000000Z", same_as="r1", decision_us=2)
    return [full, outcome("r1", "2026-11-02T09:59:30.100000Z", 1), short,
            outcome("r2", "2026-11-02T10:00:10.100000Z", 7)]


def test_usage_since_a_time_counts_a_short_record_whose_decision_came_just_before(tmp_path, pg):
    import json

    from test_usage_report import usage
    since = ("--since", "2026-11-02T10:00:00Z", "--format", "json")
    records = _short_after_full(since[1])
    journal = Journal(tmp_path, stream="7")
    journal.open()
    journal.append([dict(r) for r in records])
    journal.close()
    from_journal = usage(str(tmp_path), *since)
    assert from_journal.returncode == 0, from_journal.stderr
    rows = json.loads(from_journal.stdout)["usage"]
    assert [(r["user"], r["class"], r["executions"], r["rows"]) for r in rows] == [("li", "id_number", 1, 7)]

    import asyncio

    import psycopg

    from proxy.audit.sinks import PostgresSink
    dsn = pg.dsn(database="crm")
    lines = [(json.dumps(dict(r, stream="7", seq=i + 1)) + "\n").encode() for i, r in enumerate(records)]

    async def ship():
        sink = PostgresSink(dsn)
        await sink.deliver(lines)
        await sink.close()
    asyncio.run(ship())
    try:
        from_sink = usage("--sink-dsn", dsn, *since)
        assert from_sink.returncode == 0, from_sink.stderr
        assert json.loads(from_sink.stdout)["usage"] == rows
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE pgveil_audit")
