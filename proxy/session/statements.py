"""Prepared statements, portals, cursors and the statement tracker (each execution, for its outcome record); refusals in a statement's place are :mod:`.refusals`'."""

from __future__ import annotations

from .. import codec, state_after
from ..audit.tracker import StatementTracker
from ..codec import BE, FE, Target, TxStatus
from .commands import Command
from ..opened import Opened
from ..prepared import PreparedStatements
from ..sqlnames import SqlNames
from ..verdicts import Refusal


class Statements:
    """Prepared statements, portals, cursors and the statement tracker (a part of :class:`~proxy.session.Session`)."""

    def _init_statements(self) -> None:
        """This part's state, set up by the session."""
        self._prepared = PreparedStatements()
        self._tracker = StatementTracker()  # each statement's executions, for their outcome records
        self._sql_names = SqlNames()
        self._opened = Opened()  # SQL prepared statements, cursors and portals, with their access
        self._pending_path = None  # the path statements sent but not yet run leave (searchpath.UNKNOWN: lost)

    def _prepare_again(self, out: bytes, start: int, end: int, audits: list) -> bytes | None:
        """Before a Bind of a statement (named or unnamed) prepared under another effective access:
        Close and Parse it again, decided under the access in force (see :mod:`proxy.prepared`)."""
        _, name = codec.bind_names(out[start + 5:end])
        known = self._prepared.statements.get(name)
        if known is None or known[2] == self.access:
            return None
        sql, types, _ = known
        parse = codec.encode(codec.Parse(name, sql, types))
        self._prepared.inject()  # first: the decision below is kept once the server prepares it
        decided = self._decide_message(FE.PARSE, parse, audits)  # records the new decision as well
        return codec.encode(codec.Close(Target.STATEMENT, name)) + (decided if decided is not None else parse)

    def _prepare_apart(self, out: bytes, start: int, end: int):
        """Before :meth:`_prepare_again`: a DecideApart when the statement's decision under the
        access in force belongs in a child process (a large text, see :mod:`proxy.limits`); the
        Bind and what follows it then wait for the answer, as after a Parse decided apart."""
        known = self._prepared.statements.get(codec.bind_names(out[start + 5:end])[1])
        if known is None or known[2] == self.access:
            return None
        apart = self._apart(FE.PARSE, b"", 0, 0, known[0])
        if apart is None or self._apart_ready is not None and apart.key == self._apart_ready[0]:
            return None  # decided here, or decided apart just now
        return apart

    def _refuse_execute(self, out: bytes, start: int, end: int) -> bytes | None:
        """An Execute of a portal opened under access that has since narrowed: in its place, a
        Parse that fails (of a name no client uses, so no statement is replaced), put back as the
        refusal; the server then skips to Sync as after any error."""
        portal = codec.execute_target(out[start + 5:end])[0]
        reason = self._opened.execute(portal, self.access)
        if reason is None:
            return None
        statement_id = self._tracker.portal_statement(portal)
        if statement_id:
            self.refusals.refused(statement_id, "42501")
        return self.refusals.stand_in(reason, "42501", parse=codec.Parse("pgveil_refused", "", ()))

    def _track_extended(self, kind: int, out: bytes, start: int, end: int) -> None:
        """Bind, Execute and Sync, for linking outcomes to statements (names read in place)."""
        if kind == FE.BIND:
            self._tracker.bind(*codec.bind_names(out[start + 5:end]))
        elif kind == FE.EXECUTE:
            self._tracker.execute(codec.execute_target(out[start + 5:end])[0], self._now())
        elif kind == FE.SYNC:
            self._tracker.sync()

    def _check_names(self, decision, tier):
        """Cursors and SQL-prepared statements: a use must name one declared through pgveil in
        this session (see :mod:`proxy.sqlnames`)."""
        reason = self._sql_names.apply(decision.names, self._prepared.statements, self.access)
        if reason is None:
            return decision
        return Refusal.undeclared(reason, tier.name).decision(kinds=decision.kinds)

    def _state_after(self, sql: str, decision, path):
        """A statement allowed to go that may change what later ones run under: the search_path
        statements sent after it are decided under, the prepared statements and cursors it uses
        or opens, a purpose cleared by RESET ALL or DISCARD ALL.  Read with the decision when it was
        taken apart (:mod:`proxy.state_after`): then no parser runs here."""
        after = decision.after if decision.after is not None else state_after.read(sql)
        if self._pending_path is not None or after.paths:
            # statements sent before this one has run are decided under the path it leaves
            changed = self._pending_path not in (None, self._search_path())
            self._pending_path = state_after.follow(after.paths, path, changed)
        if after.opened is not None:
            decision = self._check_opened(after.opened, decision)
        if not decision.refused and after.clears_all:
            self._reset_all()
        return decision

    def _check_opened(self, reads: tuple, decision):
        """A statement that executes, fetches from or opens a prepared statement or cursor: refused
        when what it uses was opened under other access (see :mod:`proxy.opened`)."""
        reason = self._opened.judge(reads, self.access, not self.tier.all_clear)
        if reason is None:
            return decision
        return Refusal.access_changed(reason).decision(kinds=decision.kinds, relations=decision.relations,
                                                       normalized=decision.normalized)

    def _reset_all(self) -> None:
        """RESET ALL or DISCARD ALL clear the purpose as they clear every setting (at once, before
        the server runs them: that only masks more)."""
        self._purpose.set(None, local=False, in_block=self.transaction_status != TxStatus.IDLE)

    # ------------------------------------------------------------------ their records (see .recorder)
    def _audit_statement(self, kind: int, decoded, sql: str, decision, audits: list) -> str | None:
        """Record the decision on a statement (its id, or None without audit), and track it."""
        if not self.config.audit:
            return None
        statement_id, record = self.recorder.statement(
            self._who(), kind, decoded, sql, decision, purpose=self.purpose, grant=self._grant_used(decision),
            tier=self.tier, decision_us=self._decision_us, search_path=self.server_params.get("search_path"))
        self._decision_us = 0
        audits.append(record)
        if kind == FE.PARSE:
            self._tracker.parse(decoded.name, statement_id)
        else:
            self._tracker.query(statement_id, self._now())
        return statement_id

    def _execution_record(self, portal: str) -> list[Command]:
        """Strict audit: the record of an Execute (none for a refused statement's: it fails on the
        server in the refusal's place)."""
        statement_id = self._tracker.portal_statement(portal) or None
        if self.refusals.is_refused(statement_id):
            return []
        return self.recorder.execution(self._who(), statement_id, portal, self.server_params.get("search_path"))

    def _outcomes(self, kind: int, body: bytes) -> list[Command]:
        """The outcome records of the executions this server message ends, and their row limits."""
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
            refused = self.refusals.ended(statement_id)
            if refused is not None:
                status, rows, sqlstate = "refused", None, refused
            commands.append(self.recorder.outcome(self._who(), statement_id, status, rows, seconds, sqlstate))
        return commands
