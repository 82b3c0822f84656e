"""One record per execution (issue 17): the journal's compact form, read back as the readers know it.

Today each simple or extended statement makes two records: its decision (``statement``, with
the session's fields) and its ``outcome``.  The compact form a session may write instead:

- the **decision once** per statement shape of a session (a ``statement`` record, as today),
  and again only when it changes (rules, purpose, grants, tier);
- the **session's unchanging fields once**, in its ``connection`` record (user, tier,
  client_addr, client_port, database, application_name);
- per execution **one** ``execution`` record, made before any byte of its answer reaches the
  client (strict: durable before, see README "Strict auditing")::

      {"type": "execution", "id": "<session>-x<n>", "session": "<session>",
       "statement": "<id of the decision record>", "purpose": ..., "grant": ...,
       "ended": [{"execution": "<an earlier execution's id>", "status": "ok", "rows": 1,
                  "duration_us": 412, "sqlstate": null}, ...]}

  ``ended`` carries the outcomes of the session's earlier executions that finished since its
  last record, so that an execution costs one record, not two.  What is still open when the
  session ends is in its ``session_end`` record's ``ended``; an ``outcome`` record with an
  ``execution`` field says the same on its own (when nothing follows soon).

A simple Query decided as one before it in the session (the same normalised text, rules, tier,
purpose, grants and decision) is recorded in short, written today: a ``statement`` record with
who ran it, when, its verdict, ``decision_us`` and ``same_as``, the id of the full record it repeats (in
full again at least once a minute, see proxy/session/recorder.py)::

      {"type": "statement", "id": "<session>-7", "session": "<session>", "user": ..., ...,
       "protocol": "simple", "same_as": "<session>-3", "decision": "rewrite", "decision_us": 2}

Its outcome points at its own id, as any statement's.

:func:`expand` turns that back into what the readers (search, usage, investigate) already
read: a repeated statement gets the fields of the record it repeats (its own id, time and
chain fields kept); each execution becomes an ``outcome`` record with the session's fields, pointing at its
decision by ``statement``; an execution whose outcome never arrived (the proxy stopped, or the
journal ends) has ``status`` ``"unknown"`` and the note "outcome unknown (proxy stopped)".
Records of the usual form pass through unchanged.  The hash chain is of the records as
written: ``pgveil audit verify`` needs nothing of this.

Pure: records in, records out; memory is the sessions open in the journal read so far, their
full Query records (the newest 16,384 each) and their executions not yet ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

WHO = ("user", "tier", "client_addr", "client_port", "database", "application_name")
UNKNOWN = "unknown"
UNKNOWN_NOTE = "outcome unknown (proxy stopped)"
OUTCOME_FIELDS = ("status", "rows", "duration_us", "sqlstate")
# a repeated statement's own fields; the rest (sql, fingerprint, kinds, relations, columns, decision ...) are
# those of the record it repeats
OWN_FIELDS = frozenset(("id", "ts", "seq", "stream", "prev", "hash", "decision_us", "sealed"))
# a repeated Query's decision is written in full again after this many seconds (proxy/session/recorder.py),
# so that a journal read from any point (a sink's rows from --since, files rotated away) finds it near
RECORDED_AGAIN = 60.0
# full Query records kept per open session (the recorder: 4,096 shapes, each in full once a minute)
DECISIONS_KEPT = 16384


class Repeats:
    """Puts back the fields of short statement records (``same_as``), reading records in each
    stream's order; memory: each open session's newest full Query records."""

    def __init__(self) -> None:
        self._decisions: dict[str, dict] = {}  # session id -> {statement id: its full record}

    def fill(self, record: dict) -> dict:
        """A statement record as the readers know it: one that repeats an earlier decision gets
        that decision's fields back (its own id, time, chain fields and ``same_as`` kept)."""
        session = record.get("session")
        same_as = record.get("same_as")
        known = self._decisions.setdefault(session, {})
        if same_as is None:
            # only what a short record may name (proxy/session/recorder.py _same_as): a refusal or a
            # sealed statement never is, and must not push one out of the window
            if record.get("protocol") == "simple" and record.get("decision") != "refuse" and "sealed" not in record:
                known[record["id"]] = record
                if len(known) > DECISIONS_KEPT:
                    for key in list(islice(known, DECISIONS_KEPT // 4)):
                        del known[key]
            return record
        decision = known.get(same_as)
        if decision is None:  # not read (a sink's rows from --since, or files removed): as written
            return record
        filled = {key: value for key, value in decision.items() if key not in OWN_FIELDS}
        filled.update(record)
        return filled

    def ended(self, session: str | None) -> None:
        self._decisions.pop(session, None)


class Expander:
    """Reads records in each stream's order; :meth:`add` returns what the readers should see."""

    def __init__(self) -> None:
        self._who: dict[str, dict] = {}  # session id -> its unchanging fields
        self._open: dict[str, dict] = {}  # execution id -> its execution record, until its outcome
        self._repeats = Repeats()

    def add(self, record: dict) -> list[dict]:
        kind = record.get("type")
        session = record.get("session")
        if kind == "statement" and session is not None:
            return [self._repeats.fill(record)]
        if kind == "connection" and session is not None:
            self._who[session] = {k: record.get(k) for k in WHO if k in record}
            return [record]
        if kind == "execution":
            out = [record, *self._ended(record)]
            self._open[record["id"]] = record
            return out
        if kind == "outcome" and record.get("execution") is not None:
            return self._ended({"ended": [record]})
        if kind == "session_end":
            self._repeats.ended(session)
            out = self._ended(record)
            out += [self._outcome(e, {"status": UNKNOWN, "note": UNKNOWN_NOTE}, record.get("ts"))
                    for e in self._drop_session(session)]
            self._who.pop(session, None)
            return out + [record]
        return [record]

    def finish(self) -> list[dict]:
        """The executions still open where the journal ends: their outcome is unknown."""
        out = [self._outcome(e, {"status": UNKNOWN, "note": UNKNOWN_NOTE}, None) for e in self._open.values()]
        self._open.clear()
        return out

    def _ended(self, record: dict) -> list[dict]:
        out = []
        for ended in record.get("ended") or ():
            execution = self._open.pop(ended.get("execution"), None)
            if execution is not None:
                out.append(self._outcome(execution, ended, None))
        return out

    def _drop_session(self, session: str | None) -> list[dict]:
        ours = [e for e in self._open.values() if e.get("session") == session]
        for e in ours:
            del self._open[e["id"]]
        return ours

    def _outcome(self, execution: dict, ended: dict, ts: str | None) -> dict:
        """The execution as the ``outcome`` record the readers know."""
        record = {"v": execution.get("v", 1), "id": execution["id"], "ts": execution.get("ts", ts),
                  "type": "outcome", "session": execution.get("session"),
                  **self._who.get(execution.get("session"), {}),
                  "statement": execution.get("statement"), "execution": execution["id"],
                  "purpose": execution.get("purpose"), "grant": execution.get("grant")}
        for key in OUTCOME_FIELDS:
            record[key] = ended.get(key)
        if "note" in ended:
            record["note"] = ended["note"]
        if "stream" in execution:
            record["stream"], record["seq"] = execution["stream"], execution.get("seq")
        return record


def expand(records: Iterable[dict]) -> Iterator[dict]:
    """The records as the readers know them (see the module docstring)."""
    expander = Expander()
    for record in records:
        yield from expander.add(record)
    yield from expander.finish()
