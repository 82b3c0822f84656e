"""Prepared statements of one session (named and unnamed), prepared again when the session's
effective access changes (:mod:`proxy.access`: rules, tier, grants, purpose, network).

A statement prepared under another access keeps the SQL decided then; its next Bind would run
it.  So before such a Bind, the session sends ``Close`` and ``Parse`` for the same name with
the text decided under the rules in force, and the server's replies to those two messages
(CloseComplete, ParseComplete) must not reach the client, which never asked for them.

To know which replies those are, the messages that the server answers with ParseComplete or
CloseComplete, and the sync points, are queued in order.  After an error the server skips to
the next Sync, answering nothing in between; a ReadyForQuery drops what was skipped.

What a name holds changes only when the server answers: a Parse refused (42P05, a syntax error)
or skipped after an earlier error changes nothing, as on the server.  A Bind sent before those
answers arrive runs what :meth:`PreparedStatements.held` says: the latest Parse or Close of the
name sent since the last Sync (the Bind runs only if they succeeded), otherwise any of the
states that unanswered Parses and Closes of earlier sync points may leave.

The name space is the server's: SQL ``PREPARE`` names the same statements (kept with no text,
see :meth:`PreparedStatements.sql_prepared`), ``DEALLOCATE`` and ``DISCARD ALL`` remove them
(:mod:`proxy.opened` reports what the server confirmed).

Pure.

>>> from proxy.codec import BE, FE
>>> p = PreparedStatements()
>>> p.client(FE.PARSE); p.inject(); p.client(FE.SYNC)
>>> [p.server(k) for k in (BE.PARSE_COMPLETE, BE.CLOSE_COMPLETE, BE.PARSE_COMPLETE, BE.READY_FOR_QUERY)]
[False, True, True, False]
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from .codec import BE, FE

PARSE, CLOSE, SYNC, QUERY, FUNCTION = FE.PARSE, FE.CLOSE, FE.SYNC, FE.QUERY, FE.FUNCTION_CALL
PARSE_COMPLETE, CLOSE_COMPLETE, ERROR, READY = BE.PARSE_COMPLETE, BE.CLOSE_COMPLETE, BE.ERROR, BE.READY_FOR_QUERY


class Kept(NamedTuple):
    """A prepared statement: the client's text (None: prepared with SQL ``PREPARE``, whose
    statement pgveil cannot Parse again), its parameter types, the access it was decided under,
    its audit record's id and what it opens or closes when executed (:mod:`proxy.opened`)."""

    sql: str | None
    types: tuple
    access: object
    statement_id: str = ""
    effects: tuple = ()


def _size(entry) -> int:
    return len(entry[0] or "") if entry is not None else 0


class PreparedStatements:
    def __init__(self) -> None:
        self.statements: dict[str, Kept] = {}  # name -> the statement the server confirmed
        self.bytes = 0  # characters of statement text kept (proxy.limits.PREPARED_BYTES bounds it)
        self._owed: deque = deque()  # [kind, injected, change, sync point] for Parse/Close; [SYNC, ...] for sync points
        self._names: dict[str, deque] = {}  # name -> its owed Parses and Closes, in order
        self._syncs = 0  # sync points sent: an owed entry's fourth item says after how many
        self._injected = 0
        self._skipping = False

    def remember(self, name: str, sql: str, types: tuple, access) -> None:
        """The Parse just queued (by :meth:`client` or :meth:`inject`) prepares ``name`` as ``sql``
        decided under ``access``: kept once the server answers it with ParseComplete.  A Parse the
        server refuses (an existing name: 42P05, an error before it, a refusal) changes nothing,
        as on the server."""
        if self._owed and self._owed[-1][0] == PARSE:
            self._change(self._owed[-1], name, Kept(sql, types, access))
            self.bytes += len(sql)  # counted from now on (PREPARED_BYTES): until it is answered too
        else:  # not queued (cannot happen): kept at once, as before
            self._keep(name, Kept(sql, types, access))

    def noted(self, statement_id: str | None, effects) -> None:
        """The audit record's id and the effects (:mod:`proxy.opened`) of the Parse just remembered."""
        if self._owed and self._owed[-1][0] == PARSE and self._owed[-1][2] is not None:
            name, kept = self._owed[-1][2]
            self._owed[-1][2] = (name, kept._replace(statement_id=statement_id or "", effects=tuple(effects)))

    def forget(self, name: str) -> None:
        """The Close just queued closes ``name``: forgotten once the server answers CloseComplete
        (a Close skipped after an error leaves the statement prepared, as on the server)."""
        if self._owed and self._owed[-1][0] == CLOSE:
            self._change(self._owed[-1], name, None)
        else:
            self._keep(name, None)

    def _change(self, entry: list, name: str, kept: Kept | None) -> None:
        entry[2] = (name, kept)
        self._names.setdefault(name, deque()).append(entry)

    def _answered(self, entry: list) -> None:
        """An owed Parse or Close was answered or skipped: no longer pending for its name."""
        if entry[2] is not None:
            pending = self._names.get(entry[2][0])
            if pending and pending[0] is entry:
                pending.popleft()
                if not pending:
                    del self._names[entry[2][0]]

    def held(self, name: str) -> tuple[Kept | None, list]:
        """What a Bind of ``name`` sent now runs: the statement the server holds then if every
        message sent before succeeds (None: none), and every statement it may hold.  A Parse or
        Close of the name sent since the last Sync leaves one answer (the Bind runs only if they
        succeeded); those of earlier sync points, still unanswered, may have failed."""
        confirmed = self.statements.get(name)
        pending = self._names.get(name)
        if not pending:
            return confirmed, [confirmed]
        expected = pending[-1][2][1]
        if pending[-1][3] == self._syncs:
            return expected, [expected]
        return expected, [confirmed] + [entry[2][1] for entry in pending]

    def _keep(self, name: str, entry: Kept | None, counted: bool = False) -> None:
        known = self.statements.pop(name, None)
        self.bytes -= _size(known)
        if entry is not None:
            self.statements[name] = entry
            self.bytes += 0 if counted else _size(entry)

    def _drop(self, change: tuple | None) -> None:
        """A queued Parse the server did not prepare: its text no longer counts."""
        if change is not None and change[1] is not None:
            self.bytes -= _size(change[1])

    # ------------------------------------------------------------------ SQL PREPARE, DEALLOCATE, DISCARD ALL
    def sql_prepared(self, name: str, access) -> None:
        """The server confirmed ``PREPARE name``: a statement pgveil cannot Parse again."""
        self._keep(name, Kept(None, (), access))

    def deallocated(self, name: str | None) -> None:
        """The server confirmed ``DEALLOCATE name`` (None: ``DEALLOCATE ALL`` or ``DISCARD ALL``)."""
        if name is not None:
            self._keep(name, None)
            return
        for known in self.statements.values():
            self.bytes -= _size(known)
        self.statements = {}

    def fits(self, name: str, sql: str, limit: int) -> bool:
        """Whether keeping ``sql`` under ``name`` stays within ``limit`` characters in all."""
        return self.bytes - _size(self.statements.get(name)) + len(sql) <= limit

    @property
    def swallowing(self) -> bool:
        """Replies to injected messages are still to come."""
        return self._injected > 0

    def client(self, kind: int) -> None:
        """A client message went upstream."""
        if kind == PARSE or kind == CLOSE:
            self._owed.append([kind, False, None, self._syncs])
        elif kind == SYNC or kind == QUERY or kind == FUNCTION:
            self._syncs += 1
            self._owed.append([SYNC, False, None, self._syncs])

    def inject(self, parse: bool = True) -> None:
        """pgveil sent Close and Parse for a statement, in that order (``parse`` False: a Close
        alone)."""
        self._owed.append([CLOSE, True, None, self._syncs])
        self._injected += 1
        if parse:
            self._owed.append([PARSE, True, None, self._syncs])
            self._injected += 1

    def server(self, kind: int) -> bool:
        """A server message arrived; True if the client must not see it."""
        if kind == PARSE_COMPLETE or kind == CLOSE_COMPLETE:
            while self._owed:
                entry = self._owed.popleft()
                owed_kind, injected, change = entry[:3]
                if owed_kind == SYNC:
                    continue  # cannot happen in order; keep going rather than swallow wrongly
                if injected:
                    self._injected -= 1
                self._answered(entry)
                if change is not None:  # the server prepared (or closed) it: so does the record
                    self._keep(*change, counted=True)
                return injected
            return False
        if kind == ERROR:
            self._skipping = True
        elif kind == READY:
            # everything up to the sync point was answered, or skipped after an error
            while self._owed:
                entry = self._owed.popleft()  # skipped after an error: no change
                owed_kind, injected, change = entry[:3]
                self._answered(entry)
                self._drop(change)
                if injected:
                    self._injected -= 1
                if owed_kind == SYNC:
                    break
            self._skipping = False
        return False
