"""Identity, tier, grants, purpose and row limits: the decision on each statement."""

from __future__ import annotations

from .. import codec, encodings, limits, policy, searchpath, settings
from ..access import Access, deciding_tier
from ..codec import BE, FE, TxStatus
from ..purpose import PurposeSetting, mentions_purpose, read_declaration
from ..rowlimits import RowLimits
from ..verdicts import Refusal
from .commands import Command, SendToClient
from .shared import Phase, SERVER_WATCH, FILTER_WATCH, OUTCOME_WATCH, STATE_WORDS, PREPARE_WATCH, ALL_KINDS


class Gate:
    """Identity, tier, grants, purpose and row limits: the decision on each statement (a part of :class:`~proxy.session.Session`)."""

    def _init_gate(self) -> None:
        """This part's state, set up by the session."""
        self._reader_key: tuple = ()
        self._reader: tuple = (None, "")
        self.tier = None  # the rules' tier for this identity, once authenticated
        self._ddl_seen = False
        self._filtering = False  # restricted tier: the server stream is inspected
        self._active_watch = SERVER_WATCH
        self._rules_version: str | None = None
        self._grants: tuple = ()
        self.access: Access | None = None  # the effective access, recomputed for every statement
        self._access_until = None  # when a grant of this user begins or ends next (datetime)
        self._access_catalog = None  # the catalog version the identity's roles were read from
        self._row_limits = RowLimits()  # max_rows: limits, counts, cursor names
        self._decision_us = 0  # the engine's time on the latest statement, for its record
        self._purpose = PurposeSetting()  # declared with SET pgveil.purpose, kept as PostgreSQL keeps settings
        self._purpose_statement = ""  # the last declaration, for its audit record
        self._search_path_text: str | None = None
        self._search_path_parsed: tuple = ("$user", "public")

    def _rules_changed(self, _event=None) -> list[Command]:
        """The rules were reloaded: the identity's tier is resolved again, and an identity the new
        rules deny has its session ended (FATAL 28000)."""
        engine = self.config.engine
        if engine is None or self.phase is not Phase.ACTIVE:
            return []
        tier = self._resolve(engine)
        if tier is None:
            revoked = Refusal.revoked(self.user, engine.rules.version)
            return self._connection_record("revoked", "the reloaded rules deny this identity") + self.fail(
                revoked.sqlstate, str(revoked))
        self.tier = tier
        self._filtering = not tier.all_clear
        self._active_watch = self._server_watch()
        # a result still counted against a row limit keeps its rows watched
        self._from_server.watch = self._active_watch | ({BE.DATA_ROW} if self._row_limits else set())
        return []

    def _resolve(self, engine):
        """Resolve the identity at the server's clock: tier, grants and the effective access."""
        resolved = engine.resolve(self.user or "", self.peer[0], self.config.clock() if self.config.clock else None,
                                  self.purpose)
        self._rules_version = resolved.access.rules_version
        self._access_until = resolved.valid_until
        self._access_catalog = getattr(engine.catalog, "version", None)
        self.tier, self._grants, self.access = resolved.tier, resolved.grants, resolved.access
        return resolved.tier

    def _access_now(self, engine) -> list[Command]:
        """Bring the effective access up to date before a statement (new rules or catalog roles,
        a grant beginning or ending, a purpose declared or cleared).  Commands that end the
        session when the identity is now denied."""
        if self._rules_version != engine.rules.version or \
                self._access_catalog != getattr(engine.catalog, "version", None) or \
                (self._access_until is not None and self.config.clock() >= self._access_until):
            revoked = self._rules_changed()
            if revoked:
                return revoked
        if self.access is not None and self.access.purpose != self.purpose:
            self.access = self.access.with_purpose(self.purpose)
        return []

    def deciding_tier(self):
        """The tier statements are decided with now (purpose-bound classes masked until a purpose)."""
        return deciding_tier(self.tier, self.purpose)

    def _server_watch(self) -> frozenset:
        """The server messages the relay must see, for this session's tier and features."""
        watch = FILTER_WATCH if self._filtering else SERVER_WATCH
        if self.config.audit:
            watch |= OUTCOME_WATCH
        if self.config.engine is not None:
            watch |= PREPARE_WATCH | {BE.COMMAND_COMPLETE, BE.PORTAL_SUSPENDED, BE.EMPTY_QUERY_RESPONSE}  # CommandComplete: how a block that set the purpose ended,
            # and (with PortalSuspended, EmptyQueryResponse) what a statement opened (proxy.opened)
        return watch

    def _search_path(self) -> tuple:
        value = self.server_params.get("search_path")
        if value != self._search_path_text:
            self._search_path_text = value
            self._search_path_parsed = policy.parse_search_path(value)
        return self._search_path_parsed

    def _decide_message(self, kind: int, message: bytes, audits: list, sql: str | None = None) -> bytes | None:
        """Decide a Query (its text in ``sql`` when already read), Parse or FunctionCall; the bytes
        to send instead, or None."""
        decoded = codec.decode_message(codec.FRONTEND, message) if kind != FE.QUERY else None
        engine = self.config.engine
        wire = reading = None
        if kind == FE.FUNCTION_CALL:
            sql = f"/* FunctionCall message, function oid {decoded.function_oid} */"
            decision = None if self.tier is None or self.tier.all_clear else \
                Refusal.function_call(self.tier.name).decision()
        else:
            if sql is None:
                sql = decoded.query if decoded is not None else codec.query_text(message)
            wire, reading = sql, self._reading()
            sql, decision = self._decide_text(wire, reading, audits)
        kept = kind == FE.PARSE and engine is not None  # the unnamed statement too: it can be bound again later
        if kept and not self._prepared.fits(decoded.name, sql, limits.PREPARED_BYTES):
            kept = False
            decision = Refusal.prepared_limit(limits.PREPARED_BYTES >> 20).decision()
        if self.config.audit and not self._audit_ok:
            decision = Refusal.audit_unavailable().decision()
        self._ddl_seen = self._ddl_seen or (decision is not None and "ddl" in decision.kinds)
        if kept:
            self._prepared.remember(decoded.name, wire, decoded.param_types, self.access)
        statement_id = self._audit_statement(kind, decoded, sql, decision, audits)
        if statement_id and decision is not None and self.tier is not None and self.tier.max_rows \
                and not decision.refused:
            limit = self.tier.row_limit({c.cls for c in decision.columns}) if decision.columns else None
            self._row_limits.decided(statement_id, limit, decision.cursors)
            if self._row_limits:
                self._from_server.watch = self._active_watch | {BE.DATA_ROW, BE.COPY_DATA}
        effects = self._opened.take()  # what it opens or closes, staged by _check_opened
        if engine is not None and kind != FE.FUNCTION_CALL and not (decision is not None and decision.refused):
            self._opened.sent(effects, decoded.name if kind == FE.PARSE else None)
        if decision is not None and decision.refused:
            if statement_id:
                self.refusals.refused(statement_id, decision.sqlstate or "42501")
            return self.refusals.stand_in(decision.reason, decision.sqlstate, parse=decoded if kind == FE.PARSE else None)
        if decision is None or decision.sql == sql:
            return None
        try:
            text = encodings.to_wire(decision.sql, reading) if reading is not None else decision.sql
        except UnicodeError:
            untranslatable = Refusal.untranslatable(self.server_params.get("client_encoding"))
            return self.refusals.stand_in(str(untranslatable), untranslatable.sqlstate,
                                 parse=decoded if kind == FE.PARSE else None)
        if kind == FE.QUERY:
            return codec.encode(codec.Query(text))
        return codec.encode(codec.Parse(decoded.name, text, decoded.param_types))

    def _decide_text(self, wire: str, reading: str | None, audits: list) -> tuple[str, object]:
        """A statement's text as the server reads it, and its decision (None: no policy)."""
        sql, engine = wire, self.config.engine
        unreadable = self._unreadable(reading)
        if unreadable is None and reading is not None:
            try:
                sql = encodings.decode(wire, reading)
            except UnicodeError:
                unreadable = Refusal.invalid_encoding(self.server_params.get("client_encoding", "UTF8"))
        if unreadable is not None:
            return sql, unreadable.decision()
        if self._filtering and self.server_params.get("standard_conforming_strings", "on") != "on":
            return sql, Refusal.nonstandard_strings().decision()
        if engine is None or self.tier is None:
            return sql, None
        if mentions_purpose(sql):
            return sql, Refusal.purpose_not_alone().decision()
        return sql, self._decide_sql(sql, sql.lower(), audits)

    def _decide_sql(self, sql: str, low: str, audits: list):
        """The engine's decision under the access in force, and the session's own checks on it."""
        tier = self.deciding_tier()
        started = self._now()
        path = self._pending_path if self._pending_path is not None else self._search_path()
        ready = () if self._apart_ready is None else (self._apart_ready,)  # decided apart
        decision = self.config.engine.decide(sql, tier, path if path != searchpath.UNKNOWN else self._search_path(),
                                             self.user or "", self.access, *ready)
        if path == searchpath.UNKNOWN and not tier.all_clear and decision.relations:
            decision = Refusal.search_path_unknown().decision()
        if not decision.refused and (self._pending_path is not None or decision.after is not None
                                     or any(w in low for w in STATE_WORDS)):
            decision = self._state_after(sql, decision, path)
        self._decision_us = int((self._now() - started) * 1_000_000)
        if decision.names and not decision.refused:
            decision = self._check_names(decision, tier)
        if tier is not self.tier and decision.columns:
            self._purpose_notice(decision, audits)
        return decision

    def _grant_used(self, decision) -> str | None:
        """The grants that changed this statement: a tier grant always, a class grant when the
        statement reached one of its classes."""
        if not self._grants or decision is None:
            return None
        used = [g for g in self._grants
                if g.tier is not None or any(c.cls in g.see or "*" in g.see for c in decision.columns)]
        return "; ".join(g.label() for g in used) or None

    def _reading(self) -> str | None:
        """The codec a statement is read in, for a tier whose decisions depend on reading it as
        the server does (every tier but an all-clear one with every statement kind); None: the
        text goes as it came."""
        tier = self.tier
        if tier is None or (tier.all_clear and tier.statements >= ALL_KINDS):
            return None
        key = (self.server_params.get("client_encoding"), self.server_params.get("server_encoding"))
        if key != self._reader_key:
            self._reader_key = key
            self._reader = encodings.reader(*key)
        return self._reader[0] or "unreadable"

    def _unreadable(self, reading: str | None) -> Refusal | None:
        """The refusal when the server's parameters are ones pgveil cannot follow."""
        if reading is None:
            return None
        if reading == "unreadable":
            return Refusal.unreadable_encoding(self._reader[1])
        path = self.server_params.get("search_path")
        if self._filtering and path is not None:
            names = settings.split_identifiers(path)
            if names is None or settings.search_path_problem(names):
                return Refusal.search_path_unreadable(
                    path, settings.search_path_problem(names) if names else "it does not parse")
        return None

    def _purpose_notice(self, decision, audits: list) -> None:
        """Say which classes a purpose would show in clear (when the client stream allows a message)."""
        bound = sorted({c.cls for c in decision.columns if self.tier.action(c.cls).purpose})
        if bound and not self._from_server.mid_message:
            text = (f"pgveil: {', '.join(bound)} masked until you declare a purpose: "
                    f"SET pgveil.purpose = 'your ticket or reason'")
            audits.append(SendToClient(codec.notice_response("01000", text)))

    def _declare_purpose(self, sql: str) -> bytes | None:
        """``SET pgveil.purpose = '...'`` / ``RESET pgveil.purpose`` (a Query's text), answered here:
        the database never sees it.  Returns the reply, or None if the Query is not such a statement."""
        declared = read_declaration(sql)
        if declared is None or self.outstanding != 1:
            return None  # not alone: refused as any other statement naming it
        self.outstanding -= 1
        self._opened.unsent()
        status = self.transaction_status
        ready = codec.encode(codec.ReadyForQuery(status))
        if status == TxStatus.FAILED:
            return codec.error_response("25P02", "current transaction is aborted, commands ignored until end of "
                                                 "transaction block") + ready
        value, local, tag = declared.value, declared.local, declared.tag
        self._purpose_statement = declared.audit_text
        if local and status != TxStatus.IN_BLOCK:
            warning = codec.notice_response("25P01", "SET LOCAL can only be used in transaction blocks", "WARNING")
            return warning + codec.encode(codec.CommandComplete(tag)) + ready
        self._purpose.set(value, local=local, in_block=status == TxStatus.IN_BLOCK)
        return codec.encode(codec.CommandComplete(tag)) + ready

    @property
    def purpose(self) -> str | None:
        """The purpose in force (see :mod:`proxy.purpose`)."""
        return self._purpose.current
