"""The compact audit form, one record per execution (issue 17; proxy/audit/executions.py): a journal
written that way is verified, searched and reported as the usual two-records form is, and an
execution whose outcome never arrived reads "outcome unknown (proxy stopped)".  Pure: records
written with the journal itself, read with the CLI's functions; no proxy (the session that
writes this form is the session redesign's)."""

from __future__ import annotations

import argparse

from proxy.audit import records
from proxy.audit.cli import cmd_search, readable_records
from proxy.audit.executions import UNKNOWN_NOTE, Expander, expand
from proxy.audit.journal import Journal, verify
from proxy.audit.usage import Usage

WHO = {"session": "s1", "user": "li", "tier": "sales", "client_addr": "10.0.0.7", "client_port": 50000,
       "database": "crm", "application_name": "app"}


class Decision:
    normalized = "SELECT name, phone FROM customers WHERE id = ?"
    kinds, relations, verdict, reason, unparsed, refused = ("read",), ("public.customers",), "allow", "", False, False
    columns = [type("Use", (), {"relation": "public.customers", "column": "phone", "cls": "phone",
                                "action": "clear"})()]


def execution(n: int, ended: list | None = None) -> dict:
    record = {**records.base("execution", {"session": "s1"}, f"s1-x{n}"), "statement": "s1-1", "purpose": None,
              "grant": None}
    if ended:
        record["ended"] = ended
    return record


def ended(n: int, rows: int) -> dict:
    return {"execution": f"s1-x{n}", "status": "ok", "rows": rows, "duration_us": 300, "sqlstate": None}


def compact_session(stop_early: bool = False) -> list[dict]:
    """A session that runs one statement three times: one decision, three execution records."""
    out = [records.base("connection", WHO) | {"result": "accepted"},
           records.statement(WHO, "s1-1", Decision.normalized, "simple", Decision, "v1"),
           execution(1), execution(2, [ended(1, 1)]), execution(3, [ended(2, 1)])]
    if not stop_early:
        out.append(records.base("session_end", {"session": "s1"}) | {"ended": [ended(3, 0)]})
    return out


def test_each_execution_reads_as_an_outcome_with_the_sessions_fields():
    got = [r for r in expand(compact_session()) if r["type"] == "outcome"]
    assert [(r["id"], r["statement"], r["rows"], r["status"]) for r in got] == [
        ("s1-x1", "s1-1", 1, "ok"), ("s1-x2", "s1-1", 1, "ok"), ("s1-x3", "s1-1", 0, "ok")]
    assert all(r["user"] == "li" and r["tier"] == "sales" and r["client_addr"] == "10.0.0.7" for r in got)


def test_an_execution_whose_outcome_never_arrived_is_unknown():
    got = [r for r in expand(compact_session(stop_early=True)) if r["type"] == "outcome"]
    assert [r["status"] for r in got] == ["ok", "ok", "unknown"]
    assert got[-1]["note"] == UNKNOWN_NOTE
    session = compact_session()
    session[-1] = records.base("session_end", {"session": "s1"})  # ended without saying the last outcome
    expander = Expander()
    out = [r for record in session for r in expander.add(record)]
    assert [r["status"] for r in out if r["type"] == "outcome"] == ["ok", "ok", "unknown"]
    assert expander.finish() == [], "nothing kept once the session ended"


def test_records_of_the_usual_form_pass_unchanged():
    usual = [records.base("connection", WHO), records.statement(WHO, "s1-1", Decision.normalized, "simple", Decision,
                                                                 "v1"),
             records.outcome(WHO, "s1-1", "ok", 2, 0.001, None)]
    assert list(expand(usual)) == usual


def test_a_compact_journal_verifies_and_is_searched_and_reported_per_execution(tmp_path, capsys):
    journal = Journal(tmp_path)
    journal.append(journal.open())
    journal.append(compact_session(stop_early=True))
    journal.close()
    assert verify(tmp_path).ok
    usage = Usage()
    for record in readable_records(str(tmp_path)):
        usage.add(record)
    (row,) = usage.report().rows
    assert (row.user, row.cls, row.executions, row.rows) == ("li", "phone", 3, 2)
    args = argparse.Namespace(dir=str(tmp_path), since=None, until=None, json=False, type="statement", user=None,
                              tier=None, column=None, action=None, decision=None, fingerprint=None, session=None,
                              relation=None, purpose=None, grant=None, sql=None, refused=False, client_addr=None)
    assert cmd_search(args) == 0
    out = capsys.readouterr().out
    assert "li" in out and UNKNOWN_NOTE in out, out


def test_the_compact_records_are_described_by_the_schema(tmp_path):
    import json
    from pathlib import Path

    import jsonschema

    from proxy.audit.journal import read_records

    schema = json.loads((Path(records.__file__).parent / "audit.schema.json").read_text())
    journal = Journal(tmp_path)
    journal.append(journal.open())
    journal.append(compact_session())
    journal.close()
    seen = set()
    for _, _, record, _ in read_records(tmp_path):
        jsonschema.validate(record, schema)
        assert set(record) <= set(schema["properties"]), set(record) - set(schema["properties"])
        seen.add(record["type"])
    assert {"execution", "session_end", "statement"} <= seen
