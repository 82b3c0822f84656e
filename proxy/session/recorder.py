"""The session's audit records: connection, statement, outcome and session end."""

from __future__ import annotations

from .. import limits
from ..audit import records
from ..audit.tracker import StatementTracker
from ..codec import BE, FE, TxStatus
from ..verdicts import Decision
from .commands import Command, WriteAudit
from .readonly import proven_read_only
from .shared import Phase


class Recorder:
    """The session's audit records: connection, statement, outcome and session end (a part of :class:`~proxy.session.Session`)."""

    def _init_recorder(self) -> None:
        """This part's state, set up by the session."""
        self.statements = 0
        self._tracker = StatementTracker()
        self._ran_under: dict[str, tuple] = {}  # statement id -> (grant, purpose) for its outcome records
        self._who_cache = None  # (tier, who) for the records, see _who
        self._decision_us = 0
        self._seals = self.config.sealing.session() if self.config.sealing is not None else None
        self.last_statement: tuple | None = None  # (fingerprint, monotonic time) of the latest, for the console
        self._uncovered: dict[str, bool] = {}  # statements of this batch whose record covers an execution
        # statement id -> proven read-only (strict audit), and under what: the search path and catalog
        self._read_only: dict[str, tuple] = {}
        self._executions: dict = {}  # statement id -> its executions awaiting an outcome: execution record id or None
        self._execution_seq = 0

    # ------------------------------------------------------------------ audit
    def _who(self) -> dict:
        """Who acts, as this session's records say: built once the session is active, again when
        its tier changes.  Records copy it, never change it."""
        cached = self._who_cache
        if cached is not None and cached[0] is self.tier:
            return cached[1]
        startup = self.startup
        who = {"session": self.id, "user": self.user, "tier": self.tier.name if self.tier else None,
               "client_addr": self.peer[0], "client_port": self.peer[1], "database": self.database,
               "application_name": startup.param("application_name") if startup else None}
        if self.phase is Phase.ACTIVE:
            self._who_cache = (self.tier, who)
        return who

    def _connection_record(self, result: str, reason: str = "", sqlstate: str | None = None) -> list[Command]:
        if not self.config.audit:
            return []
        record = records.base("connection", self._who())
        record.update({"result": result, "reason": reason, "sqlstate": sqlstate, "tls": self.client_tls,
                       "upstream_tls": self.upstream_tls})
        return [WriteAudit(record)]

    def _session_end_record(self, reason: str) -> list[Command]:
        if not self.config.audit or self.user is None:
            return []
        record = records.base("session_end", self._who())
        record.update({"reason": reason, "duration_ms": int((self._now() - self.started) * 1000),
                       "statements": self.statements, "bytes_in": self.stats.bytes_from_client,
                       "bytes_out": self.stats.bytes_from_server})
        return [WriteAudit(record)]

    def _outcomes(self, kind: int, body: bytes) -> list[Command]:
        result = self._tracker.running_result() if self._row_limits else None
        ended = self._tracker.server(kind, body, self._now())
        commands: list[Command] = []
        if kind == BE.READY_FOR_QUERY and body[:1] == TxStatus.IDLE:
            self._row_limits.idle()  # no transaction: no portal is left to resume
        for statement_id, status, rows, seconds, sqlstate in ended:
            if self._row_limits and result is not None and statement_id == result[0]:
                self._row_limits.ended(result, status, self._tracker.live_ids())  # (suspended: one result)
                if not self._row_limits:
                    self._from_server.watch = self._active_watch
            if statement_id in self._refused_ids:
                self._refused_ids.discard(statement_id)
                status, rows = "refused", None
                sqlstate = self._refusal_states.pop(statement_id, "42501")
            grant, purpose = self._ran_under.get(statement_id, (None, None))
            record = records.outcome(self._who(), statement_id, status, rows, seconds, sqlstate,
                                     purpose=purpose, grant=grant)
            runs = self._executions.get(statement_id)
            if runs:
                execution = runs.pop(0)
                if execution is not None:
                    record["execution"] = execution
                if not runs:
                    del self._executions[statement_id]
            commands.append(WriteAudit(record))
        return commands

    def _grant_used(self, decision) -> str | None:
        """The grants that changed this statement: a tier grant always, a class grant when the
        statement reached one of its classes."""
        if not self._grants or decision is None:
            return None
        used = [g for g in self._grants
                if g.tier is not None or any(c.cls in g.see or "*" in g.see for c in decision.columns)]
        return "; ".join(g.label() for g in used) or None

    def _audit_statement(self, kind: int, decoded, sql: str, decision, audits: list) -> str | None:
        if not self.config.audit:
            return None
        self.statements += 1
        statement_id = f"{self.id}-{self.statements}"
        engine = self.config.engine
        record = records.statement(self._who(), statement_id, sql, "extended" if kind == FE.PARSE else "simple",
                                   decision, engine.rules.version if engine else None,
                                   purpose=self.purpose, grant=self._grant_used(decision))
        # strict: a statement that will reach the database waits for its record; a refusal reaches nothing
        record["decision_us"] = self._decision_us
        self._decision_us = 0
        if self._seals is not None:
            sealed = self._seals.statement(decoded.name if kind == FE.PARSE else None, statement_id, sql, decision, self.tier)
            if sealed is not None:
                record["sealed"] = sealed
        durable = self.config.audit_strict and not (decision and decision.refused)
        # the record's text is the whole statement only up to 4,000 characters (and a prefix of a huge one)
        whole = len(sql) <= limits.NORMALIZE_PREFIX and len(record["sql"]) < 4000
        read_only = durable and whole and proven_read_only(record["sql"], decision, getattr(engine, "catalog", None),
                                                           self.server_params.get("search_path"))
        audits.append(WriteAudit(record, durable=durable, answer_only=read_only))
        self._read_only[statement_id] = (read_only, self._read_only_under())
        if len(self._read_only) > 4096:
            del self._read_only[next(iter(self._read_only))]
        if durable:  # its record covers its first execution in this batch; any other gets its own
            self._uncovered[statement_id] = read_only
        self.last_statement = (record["fingerprint"], self._now())
        # each execution's outcome names the access its statement was decided under: a change of
        # access decides (and records) the statement again before it runs again
        self._ran_under[statement_id] = (record["grant"], record["purpose"])
        if len(self._ran_under) > 4096:
            del self._ran_under[next(iter(self._ran_under))]
        if kind == FE.PARSE:
            self._tracker.parse(decoded.name, statement_id)
        else:
            self._tracker.query(statement_id, self._now())
        return statement_id

    def _read_only_under(self) -> tuple:
        """What a statement's read-only proof depends on besides its text: the server's search path
        and the catalog (its functions, operators and types)."""
        return self.server_params.get("search_path"), getattr(getattr(self.config.engine, "catalog", None),
                                                              "version", None)

    def _execution_record(self, portal: str) -> list[Command]:
        """Strict audit: an Execute of a statement prepared in an earlier batch, or executed
        again, gets a durable record of its own (its answer, or it, waits as its statement's did)."""
        statement_id = self._tracker.portal_statement(portal) or None
        if statement_id in self._refused_ids:
            return []  # it fails on the server in the refusal's place
        runs = self._executions.setdefault(statement_id, []) if statement_id is not None else []
        if statement_id is not None and self._uncovered.pop(statement_id, None) is not None:
            runs.append(None)  # (its outcome names no execution record)
            return []  # its first execution: the statement's record covers it
        self._execution_seq += 1
        read_only, under = self._read_only.get(statement_id, (False, None))
        # proven under another search path or catalog: md5(1) may now be public.md5(integer)
        read_only = read_only and under == self._read_only_under()
        grant, purpose = self._ran_under.get(statement_id, (None, None))
        # proxy/audit/executions.py's compact form: the outcome record says which execution it ends
        record = records.base("execution", self._who(), f"{self.id}-x{self._execution_seq}")
        record.update({"statement": statement_id, "portal": portal, "purpose": purpose, "grant": grant})
        runs.append(record["id"])
        return [WriteAudit(record, durable=True, answer_only=read_only)]

    def _audit_purpose(self, audits: list) -> None:
        if self.config.audit:
            self.statements += 1
            decision = Decision("allow", "", kinds=("session",))
            record = records.statement(self._who(), f"{self.id}-{self.statements}", "SET pgveil.purpose = ''",
                                       "simple", decision, self.config.engine.rules.version, purpose=self.purpose)
            record["sql"] = self._purpose_statement
            audits.append(WriteAudit(record))
