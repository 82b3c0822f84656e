"""Audit records (schema version 1, see ``audit.schema.json``): plain dicts, built without I/O.

The journal adds ``seq``, ``stream``, ``prev`` and ``hash``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import time

from . import SCHEMA_VERSION
from ..limits import normalize_bounded

_COUNT = re.compile(r"(\d+)\s*$")


_second = [0, ""]  # the last whole second formatted, and its text: two records per statement ask


def now() -> str:
    """UTC, microseconds: ``2026-11-22T08:00:00.123456Z``."""
    stamp = time.time_ns() // 1000
    second, micro = divmod(stamp, 1_000_000)
    if second != _second[0]:
        _second[:] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{micro:06d}Z"


_PREFIX = os.urandom(6).hex()  # this process's; the counter makes each id unique within it
_counter = itertools.count(1)


def new_id() -> str:
    return f"{_PREFIX}{next(_counter):x}"


def base(kind: str, who: dict, record_id: str | None = None, stamp: str | None = None) -> dict:
    """A record's common fields.  ``record_id`` and ``stamp`` (the UTC time, as :func:`now`
    writes it) come from the caller when it has its own id source and clock (a session has);
    otherwise they are made here."""
    return {"v": SCHEMA_VERSION, "id": record_id or new_id(), "ts": stamp or now(), "type": kind, **who}


def statement(who: dict, statement_id: str, sql: str, protocol: str, decision, rules_version: str | None,
              purpose: str | None = None, grant: str | None = None, stamp: str | None = None) -> dict:
    """The decision on one statement: recorded before the statement reaches the database.
    (Built as one dict literal: a record per statement, on the event loop.)"""
    if decision is None:
        normalized = normalize_bounded(sql)
        return {"v": SCHEMA_VERSION, "id": statement_id, "ts": stamp or now(), "type": "statement", **who,
                "protocol": protocol, "sql": normalized, "fingerprint": fingerprint(normalized), "kinds": [],
                "relations": [], "columns": [], "decision": "allow", "reason": "", "unparsed": False,
                "rules_version": rules_version, "purpose": purpose, "grant": grant}
    normalized = decision.normalized or normalize_bounded(sql)
    record = {"v": SCHEMA_VERSION, "id": statement_id, "ts": stamp or now(), "type": "statement", **who,
              "protocol": protocol, "sql": normalized, "fingerprint": fingerprint(normalized),
              "kinds": list(decision.kinds), "relations": list(decision.relations),
              "columns": [{"relation": c.relation, "column": c.column, "class": c.cls, "action": c.action}
                          for c in decision.columns] if decision.columns else [],
              "decision": decision.verdict, "reason": decision.reason, "unparsed": bool(decision.unparsed),
              "rules_version": rules_version, "purpose": purpose, "grant": grant}
    if decision.refused:
        record["reason_code"] = str(decision.reason_code)  # proxy.verdicts.Reason
    return record


def outcome(who: dict, statement_id: str, status: str, rows: int | None, seconds: float,
            sqlstate: str | None, purpose: str | None = None, grant: str | None = None,
            record_id: str | None = None, stamp: str | None = None) -> dict:
    """What came of one execution of a statement: linked to its decision record by ``statement``,
    naming the purpose and grants it ran under.  Records hold no floats, so that their canonical
    JSON is the same in every JSON library."""
    return {"v": SCHEMA_VERSION, "id": record_id or new_id(), "ts": stamp or now(), "type": "outcome", **who,
            "statement": statement_id, "status": status, "rows": rows, "duration_us": int(seconds * 1_000_000),
            "sqlstate": sqlstate, "purpose": purpose, "grant": grant}


@functools.lru_cache(maxsize=8192)
def fingerprint(normalized: str) -> str:
    """A short, stable name for a statement's shape (its normalised text, :mod:`proxy.normalize`)."""
    return hashlib.sha256(normalized.encode()).hexdigest()[:16]


def rows_of(tag: str) -> int | None:
    """Rows from a CommandComplete tag: 'SELECT 5', 'INSERT 0 3', 'COPY 10' ..."""
    m = _COUNT.search(tag)
    return int(m.group(1)) if m else None
