"""The policy's vocabulary: what a decision is, why a statement is refused, and what it was
decided in.

- :class:`Context`: what a statement is decided in (tier, rules, catalog, search_path, user).
- :class:`Decision`: the verdict on one statement (allow, rewrite or refuse), the SQL to send,
  what it reaches (:class:`ColumnUse`), and for a refusal its message, SQLSTATE and
  :class:`Reason` code.
- :class:`Refusal`: why a statement is refused.  The engine raises it where it finds the
  reason; the session builds the refusals that are its to find (an audit journal it cannot
  write, bytes not valid in the client encoding, ...) with the **named constructors** below,
  so that every message, SQLSTATE and code is written here once.
- :class:`Reason`: a short code per kind of refusal.  Metrics count refusals by it and the
  audit records it (``reason_code``), so nothing sorts refusals by reading their English.

Pure: no I/O, no SQL parsing; the engine's modules (:mod:`proxy.policy`,
:mod:`proxy.rewrite`, :mod:`proxy.writes`) and the session import it.

>>> refusal = Refusal.audit_unavailable()
>>> decision = refusal.decision()
>>> decision.refused, decision.sqlstate, decision.code is Reason.AUDIT, str(decision.code)
(True, '58030', True, 'audit')
>>> Refusal("column t.c is not visible to tier sales", Reason.NOT_VISIBLE).decision().code == Reason.NOT_VISIBLE
True
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the vocabulary imports none of the engine
    from .catalog import Catalog
    from .rules import RuleSet, Tier


class Reason(StrEnum):
    """Why a statement is refused.  The values are the ``reason`` label of
    ``pgveil_refusals_total`` and the audit's ``reason_code``: keep them stable (the first
    eleven are the labels the metric had before the codes)."""
    NOT_VISIBLE = "not_visible"  # a relation, view or column the tier may not see
    NOT_UNDERSTOOD = "not_understood"  # pgveil cannot analyse the statement (fail closed)
    STATEMENT_KIND = "statement_kind"  # the tier lacks the statement's kind (read, write, ddl, ...)
    FUNCTION = "function"  # a function that reaches data by other doors
    WRITE = "write"  # writing a protected column or relation; data-modifying statements in a query
    AUDIT = "audit"  # the audit journal cannot be written (58030)
    CATALOG = "catalog"  # the catalog is not loaded yet (57P03)
    SETTING = "setting"  # a setting outside the tier's allow list
    COPY = "copy"  # COPY to or from a file or program
    DO = "do"  # a DO block
    CREATE = "create"  # CREATE FUNCTION, TRIGGER, RULE ... (code that would run with others' rights)
    DDL = "ddl"  # DDL on protected relations, or DDL sent with other statements
    MASK = "mask"  # a column whose mask cannot be built for its type
    ANALYSIS_FAILED = "analysis_failed"  # the analysis raised, died or ran out of time
    ROW_LIMIT = "row_limit"  # a construct that packs rows into one value, with max_rows
    SEARCH_PATH = "search_path"  # a search_path pgveil cannot follow
    ENCODING = "encoding"  # the text cannot be read (or written) as the server reads it
    PURPOSE = "purpose"  # a purpose declared other than on its own
    UNDECLARED = "undeclared"  # a cursor or SQL prepared statement not declared through pgveil
    ACCESS_CHANGED = "access_changed"  # opened under access that has narrowed since (grant, purpose, rules)
    PREPARED_LIMIT = "prepared_limit"  # the session's prepared statement text is at its bound (54000)
    MESSAGE = "message"  # a protocol message the tier may not send (FunctionCall)
    REVOKED = "revoked"  # the reloaded rules deny the identity: the session ends (28000)
    OTHER = "other"  # a refusal raised without a code (none should be)


# SQLSTATEs that only one kind of refusal uses
_BY_SQLSTATE = {"58030": Reason.AUDIT, "57P03": Reason.CATALOG, "54000": Reason.PREPARED_LIMIT,
                "22021": Reason.ENCODING, "22P05": Reason.ENCODING}


@dataclass(frozen=True)
class ColumnUse:
    """A classified column a statement reaches, and what the tier gets of it."""
    relation: str
    column: str
    cls: str
    action: str


@dataclass
class Context:
    """What a statement is decided in."""
    tier: Tier
    rules: RuleSet
    catalog: Catalog
    search_path: tuple = ("$user", "public")
    user: str = ""


@dataclass(frozen=True)
class Decision:
    verdict: str  # "allow", "rewrite" or "refuse"
    sql: str  # what to send upstream (the client's text for allow on an all-clear tier)
    reason: str = ""
    sqlstate: str = ""
    kinds: tuple = ()
    relations: tuple = ()
    columns: tuple = ()  # ColumnUse
    unparsed: bool = False
    # SQL-level cursors and prepared statements, in order: (op, what, name) with op "declare" or
    # "use" and what "cursor" or "statement"; the session checks each use against its declarations
    names: tuple = ()
    normalized: str = ""  # the text with literals and comments removed, for the audit
    cursors: tuple = ()  # (verb, name) of cursors and SQL prepared statements: see proxy/rowlimits.py
    code: str = ""  # a refusal's Reason ("" when not refused)
    after: object = None  # proxy.state_after.After, read with the decision in a child process; None: not read

    @property
    def refused(self) -> bool:
        return self.verdict == "refuse"

    @property
    def reason_code(self) -> str:
        """A refusal's :class:`Reason`: its code, or for one built without a code the one its
        SQLSTATE implies (58030 is the audit's, 57P03 the catalog's ...), else ``other``."""
        return self.code or _BY_SQLSTATE.get(self.sqlstate, Reason.OTHER)


class Refusal(Exception):
    """The statement is refused; ``str()`` is the message the client sees, ``code`` the
    :class:`Reason`, ``sqlstate`` the error's SQLSTATE (42501 unless a constructor says)."""

    sqlstate = "42501"

    def __init__(self, message: str, code: Reason = Reason.OTHER, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        if sqlstate is not None:
            self.sqlstate = sqlstate

    def decision(self, **fields) -> Decision:
        """The refusal as a decision; ``fields``: what else it records (kinds, relations,
        normalized, unparsed)."""
        return Decision("refuse", "", reason=str(self), sqlstate=self.sqlstate, code=self.code, **fields)

    # -- the engine's --------------------------------------------------------------------
    @classmethod
    def analysis_failed(cls, why: str) -> Refusal:
        """The analysis raised, its child process died or took too long."""
        return cls(f"pgveil could not analyze this statement: {why}", Reason.ANALYSIS_FAILED)

    @classmethod
    def catalog_not_loaded(cls) -> Refusal:
        return cls("pgveil has not loaded the database catalog yet; try again shortly", Reason.CATALOG, "57P03")

    # -- the session's -------------------------------------------------------------------
    @classmethod
    def audit_unavailable(cls) -> Refusal:
        """Auditing is on and the journal cannot be written: nothing runs unrecorded."""
        return cls("pgveil cannot write its audit journal, so it refuses statements until it can",
                   Reason.AUDIT, "58030")

    @classmethod
    def function_call(cls, tier: str) -> Refusal:
        """A FunctionCall message from a restricted tier (it runs a function by oid, unanalysed)."""
        return cls(f"the FunctionCall message is not allowed for tier {tier}", Reason.MESSAGE)

    @classmethod
    def unreadable_encoding(cls, problem: str) -> Refusal:
        """The session's client encoding is one pgveil cannot read as the server does."""
        return cls(f"{problem}; set client_encoding to UTF8", Reason.ENCODING)

    @classmethod
    def invalid_encoding(cls, encoding: str) -> Refusal:
        """The statement's bytes are not valid in the session's client encoding."""
        return cls(f"invalid byte sequence for encoding {encoding}: pgveil refuses statements that are not valid "
                   f"in the session's client encoding", Reason.ENCODING, "22021")

    @classmethod
    def untranslatable(cls, encoding: str | None) -> Refusal:
        """The statement pgveil would send cannot be written in the client encoding."""
        return cls(f"the statement pgveil would send cannot be written in the client encoding {encoding}",
                   Reason.ENCODING, "22P05")

    @classmethod
    def nonstandard_strings(cls) -> Refusal:
        """standard_conforming_strings off: backslashes in literals would be read differently."""
        return cls("the server reports standard_conforming_strings off: pgveil would read string literals "
                   "differently from the server", Reason.ENCODING)

    @classmethod
    def search_path_unreadable(cls, path: str, problem: str) -> Refusal:
        """The server reports a search_path that pgveil cannot resolve names under."""
        return cls(f"the server reports a search_path pgveil cannot follow ({path[:60]}): {problem}",
                   Reason.SEARCH_PATH)

    @classmethod
    def search_path_unknown(cls) -> Refusal:
        """A statement still running changed search_path in a way pgveil cannot follow."""
        return cls("a statement sent before this one changes search_path in a way pgveil cannot follow; "
                   "wait for its result before sending statements that use relations", Reason.SEARCH_PATH)

    @classmethod
    def purpose_not_alone(cls) -> Refusal:
        """``pgveil.purpose`` named anywhere but in a Query of its own."""
        return cls("declare a purpose on its own, as a simple query: SET pgveil.purpose = 'ticket'", Reason.PURPOSE)

    @classmethod
    def prepared_limit(cls, megabytes: int) -> Refusal:
        """The session keeps as much prepared statement text as it may."""
        return cls(f"pgveil keeps at most {megabytes} MB of prepared statement text per session; "
                   f"close (DEALLOCATE) prepared statements before preparing more", Reason.PREPARED_LIMIT, "54000")

    @classmethod
    def undeclared(cls, problem: str, tier: str) -> Refusal:
        """A cursor or SQL prepared statement used that was not declared through pgveil
        (``problem`` from :class:`proxy.sqlnames.SqlNames`)."""
        return cls(f"{problem} (tier {tier})", Reason.UNDECLARED)

    @classmethod
    def access_changed(cls, problem: str) -> Refusal:
        """A prepared statement, cursor or portal opened under access that has narrowed since
        (``problem`` from :class:`proxy.opened.Opened`)."""
        return cls(problem, Reason.ACCESS_CHANGED)

    @classmethod
    def revoked(cls, user: str, rules_version: str) -> Refusal:
        """The reloaded rules no longer give the identity access: the session ends (FATAL)."""
        return cls(f'pgveil: the rules (version {rules_version}) no longer give user "{user}" access; '
                   f"the session is ended", Reason.REVOKED, "28000")


class NotUnderstood(Refusal):
    """What pgveil cannot analyse is refused (fail closed)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"pgveil could not analyze this statement: {why}", Reason.NOT_UNDERSTOOD)
