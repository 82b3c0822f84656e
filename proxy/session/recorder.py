"""The session's audit records: connection, statement, execution, outcome and session end.

:class:`Recorder` is a composed object, not a mixin: the session owns one (``session.recorder``)
and gives each method what it needs (who acts, the statement, its decision, the search path);
each returns the records to write, as :class:`~.commands.WriteAudit` commands, and keeps only
its own state (the statement counter, which statement ran under which access, which was proven
read-only, the executions awaiting an outcome).  It never reads or changes the session.  The
records' time and ids come from the session's configuration (``SessionConfig.stamp`` and
``record_id``, the server's :func:`proxy.audit.records.now` and ``new_id``), not from a clock
of its own.  (Sealed Bind and COPY records, made by :mod:`proxy.sealing`, still take theirs there.)
"""

from __future__ import annotations

from itertools import count, islice
from typing import Callable

from .. import limits
from ..audit import records
from ..codec import FE
from ..verdicts import Decision
from .commands import Command, WriteAudit
from .readonly import proven_read_only


_record_ids = count(1)
NO_CLOCK = "1970-01-01T00:00:00.000000Z"  # records' time without a clock (tests)
KEPT = 4096  # statements whose access and read-only proof a session remembers (the newest)
PROOFS_KEPT = 1024  # read-only proofs the worker remembers (of texts up to 4,000 characters)


def _forget_oldest(remembered: dict, kept: int) -> None:
    """Forget the oldest quarter at once: deleting one key at a time from the front costs a scan
    past every key deleted before it (CPython keeps their slots until the dict is resized), which
    made each statement of a long session pay microseconds per remembered statement."""
    for key in list(islice(remembered, kept // 4)):
        del remembered[key]


_PROOFS: dict = {}  # what proven_read_only said, by what it reads of a statement (see _proven_read_only)


def _proven_read_only(normalized: str, decision, catalog, search_path: str | None) -> bool:
    """:func:`~.readonly.proven_read_only`, remembered for the worker's sessions: it tokenizes the
    statement (and, when the catalog has functions, operators or types of its users, the
    decision's text again with sqlglot), 5-10 us per statement.  The key is everything the
    proof reads but the literals' values: the normalised text (literals as ``?``), the decision's
    verdict, kinds, relations and unparsed flag, the search path and the catalog.  The values
    cannot change the answer: the proof's words and operators are read from the normalised text,
    and the one reading of the decision's text (:func:`proxy.shadowing.users_objects`) skips
    string and number tokens; a rewritten text differs from another of the same shape and
    decision only in them."""
    if decision is None or decision.refused:
        return False
    version = getattr(catalog, "version", None)  # a digest of what the proof reads of the catalog
    key = (normalized, decision.verdict, decision.kinds, decision.relations, decision.unparsed, search_path,
           catalog if version is None else version)
    proven = _PROOFS.get(key)
    if proven is None:
        proven = _PROOFS[key] = proven_read_only(normalized, decision, catalog, search_path)
        if len(_PROOFS) > PROOFS_KEPT:
            _forget_oldest(_PROOFS, PROOFS_KEPT)
    return proven


class Recorder:
    """The audit records of one session (see the module docstring)."""

    def __init__(self, config, session_id: str, peer: tuple, now: Callable[[], float]) -> None:
        self._config = config  # reads audit, audit_strict, engine (rules version, catalog) and sealing
        self._id = session_id
        self._peer = peer
        self._now = now
        self._stamp = config.stamp or (lambda: NO_CLOCK)  # records' UTC time, from the session's configuration
        self._record_id = config.record_id or (lambda: f"r{next(_record_ids)}")
        self.statements = 0
        self._ran_under: dict[str, tuple] = {}  # statement id -> (grant, purpose) for its outcome records
        self._who_cache = None  # (tier, who) for the records, see who
        self.seals = config.sealing.session() if config.sealing is not None else None
        self.last_statement: tuple | None = None  # (fingerprint, monotonic time) of the latest, for the console
        self._uncovered: dict[str, bool] = {}  # statements of this batch whose record covers an execution
        # statement id -> proven read-only (strict audit), and under what: the search path and catalog
        self._read_only: dict[str, tuple] = {}
        self._executions: dict = {}  # statement id -> its executions awaiting an outcome: execution record id or None
        self._execution_seq = 0

    def who(self, tier, user: str | None, database: str | None, startup, active: bool) -> dict:
        """Who acts, as this session's records say: built once the session is active, again when
        its tier changes.  Records copy it, never change it."""
        cached = self._who_cache
        if cached is not None and cached[0] is tier:
            return cached[1]
        who = {"session": self._id, "user": user, "tier": tier.name if tier else None,
               "client_addr": self._peer[0], "client_port": self._peer[1], "database": database,
               "application_name": startup.param("application_name") if startup else None}
        if active:
            self._who_cache = (tier, who)
        return who

    def connection(self, who: dict, result: str, reason: str, sqlstate: str | None, tls: bool,
                   upstream_tls: bool) -> list[Command]:
        if not self._config.audit:
            return []
        record = records.base("connection", who, self._record_id(), self._stamp())
        record.update({"result": result, "reason": reason, "sqlstate": sqlstate, "tls": tls,
                       "upstream_tls": upstream_tls})
        return [WriteAudit(record)]

    def session_end(self, who: dict, reason: str, seconds: float, stats) -> list[Command]:
        if not self._config.audit or who["user"] is None:
            return []
        record = records.base("session_end", who, self._record_id(), self._stamp())
        record.update({"reason": reason, "duration_ms": int(seconds * 1000), "statements": self.statements,
                       "bytes_in": stats.bytes_from_client, "bytes_out": stats.bytes_from_server})
        return [WriteAudit(record)]

    def outcome(self, who: dict, statement_id: str, status: str, rows: int | None, seconds: float,
                sqlstate: str | None) -> WriteAudit:
        """What came of one execution, naming the access its statement ran under and, in the
        compact form, the execution record it ends."""
        grant, purpose = self._ran_under.get(statement_id, (None, None))
        record = records.outcome(who, statement_id, status, rows, seconds, sqlstate, purpose=purpose, grant=grant,
                                 record_id=self._record_id(), stamp=self._stamp())
        runs = self._executions.get(statement_id)
        if runs:
            execution = runs.pop(0)
            if execution is not None:
                record["execution"] = execution
            if not runs:
                del self._executions[statement_id]
        return WriteAudit(record)

    def statement(self, who: dict, kind: int, decoded, sql: str, decision, *, purpose: str | None,
                  grant: str | None, tier, decision_us: int, search_path: str | None) -> tuple[str, WriteAudit]:
        """The decision on one statement: its id and its record (strict audit: durable unless
        refused, and ``answer_only`` when proven read-only)."""
        self.statements += 1
        statement_id = f"{self._id}-{self.statements}"
        engine = self._config.engine
        record = records.statement(who, statement_id, sql, "extended" if kind == FE.PARSE else "simple",
                                   decision, engine.rules.version if engine else None, purpose=purpose, grant=grant,
                                   stamp=self._stamp())
        record["decision_us"] = decision_us
        if self.seals is not None:
            sealed = self.seals.statement(decoded.name if kind == FE.PARSE else None, statement_id, sql, decision, tier)
            if sealed is not None:
                record["sealed"] = sealed
        # strict: a statement that will reach the database waits for its record; a refusal reaches nothing
        durable = self._config.audit_strict and not (decision and decision.refused)
        # the record's text is the whole statement only up to 4,000 characters (and a prefix of a huge one)
        whole = len(sql) <= limits.NORMALIZE_PREFIX and len(record["sql"]) < 4000
        read_only = durable and whole and _proven_read_only(record["sql"], decision, getattr(engine, "catalog", None),
                                                            search_path)
        self._read_only[statement_id] = (read_only, self._read_only_under(search_path))
        if len(self._read_only) > KEPT:
            _forget_oldest(self._read_only, KEPT)
        if durable:  # its record covers its first execution in this batch; any other gets its own
            self._uncovered[statement_id] = read_only
        self.last_statement = (record["fingerprint"], self._now())
        # each execution's outcome names the access its statement was decided under: a change of
        # access decides (and records) the statement again before it runs again
        self._ran_under[statement_id] = (record["grant"], record["purpose"])
        if len(self._ran_under) > KEPT:
            _forget_oldest(self._ran_under, KEPT)
        return statement_id, WriteAudit(record, durable=durable, answer_only=read_only)

    def _read_only_under(self, search_path: str | None) -> tuple:
        """What a statement's read-only proof depends on besides its text: the server's search path
        and the catalog (its functions, operators and types)."""
        return search_path, getattr(getattr(self._config.engine, "catalog", None), "version", None)

    def execution(self, who: dict, statement_id: str | None, portal: str, search_path: str | None) -> list[Command]:
        """Strict audit: an Execute of a statement prepared in an earlier batch, or executed
        again, gets a durable record of its own (its answer, or it, waits as its statement's did)."""
        runs = self._executions.setdefault(statement_id, []) if statement_id is not None else []
        if statement_id is not None and self._uncovered.pop(statement_id, None) is not None:
            runs.append(None)  # (its outcome names no execution record)
            return []  # its first execution: the statement's record covers it
        self._execution_seq += 1
        read_only, under = self._read_only.get(statement_id, (False, None))
        # proven under another search path or catalog: md5(1) may now be public.md5(integer)
        read_only = read_only and under == self._read_only_under(search_path)
        grant, purpose = self._ran_under.get(statement_id, (None, None))
        # proxy/audit/executions.py's compact form: the outcome record says which execution it ends
        record = records.base("execution", who, f"{self._id}-x{self._execution_seq}", self._stamp())
        record.update({"statement": statement_id, "portal": portal, "purpose": purpose, "grant": grant})
        runs.append(record["id"])
        return [WriteAudit(record, durable=True, answer_only=read_only)]

    def batch_ended(self) -> None:
        """A statement's record covers its executions in the same batch only."""
        self._uncovered.clear()

    def purpose(self, who: dict, purpose: str | None, declaration: str) -> list[Command]:
        """The record of a purpose declared (or reset) with SET pgveil.purpose."""
        if not self._config.audit:
            return []
        self.statements += 1
        decision = Decision("allow", "", kinds=("session",))
        record = records.statement(who, f"{self._id}-{self.statements}", "SET pgveil.purpose = ''",
                                   "simple", decision, self._config.engine.rules.version, purpose=purpose,
                                   stamp=self._stamp())
        record["sql"] = declaration
        return [WriteAudit(record)]

    def sealed(self, who: dict, kind: int, message: bytes) -> list[Command]:
        """Bind values and COPY data sealed for the investigators (durable Binds under strict audit)."""
        if self.seals is None:
            return []
        return [WriteAudit(r, durable=kind == FE.BIND and self._config.audit_strict)
                for r in self.seals.message(kind, message, who)]
