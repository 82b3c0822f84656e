"""Prepared statements of one session (named and unnamed), prepared again when the session's
effective access changes (:mod:`proxy.access`: rules, tier, grants, purpose, network).

A statement prepared under another access keeps the SQL decided then; its next Bind would run
it.  So before such a Bind, the session sends ``Close`` and ``Parse`` for the same name with
the text decided under the rules in force, and the server's replies to those two messages
(CloseComplete, ParseComplete) must not reach the client, which never asked for them.

To know which replies those are, the messages that the server answers with ParseComplete or
CloseComplete, and the sync points, are queued in order.  After an error the server skips to
the next Sync, answering nothing in between; a ReadyForQuery drops what was skipped.

Pure.

>>> from proxy.codec import BE, FE
>>> p = PreparedStatements()
>>> p.client(FE.PARSE); p.inject(); p.client(FE.SYNC)
>>> [p.server(k) for k in (BE.PARSE_COMPLETE, BE.CLOSE_COMPLETE, BE.PARSE_COMPLETE, BE.READY_FOR_QUERY)]
[False, True, True, False]
"""

from __future__ import annotations

from collections import deque

from .codec import BE, FE

PARSE, CLOSE, SYNC, QUERY, FUNCTION = FE.PARSE, FE.CLOSE, FE.SYNC, FE.QUERY, FE.FUNCTION_CALL
PARSE_COMPLETE, CLOSE_COMPLETE, ERROR, READY = BE.PARSE_COMPLETE, BE.CLOSE_COMPLETE, BE.ERROR, BE.READY_FOR_QUERY


class PreparedStatements:
    def __init__(self) -> None:
        self.statements: dict[str, tuple] = {}  # name -> (sql, param types, Access decided under)
        self.bytes = 0  # characters of statement text kept (proxy.limits.PREPARED_BYTES bounds it)
        self._owed: deque = deque()  # (kind, injected) for Parse/Close; (SYNC, False) for sync points
        self._injected = 0
        self._skipping = False

    def remember(self, name: str, sql: str, types: tuple, access) -> None:
        """The Parse just queued (by :meth:`client` or :meth:`inject`) prepares ``name`` as ``sql``
        decided under ``access``: kept once the server answers it with ParseComplete.  A Parse the
        server refuses (an existing name: 42P05, an error before it, a refusal) changes nothing,
        as on the server."""
        if self._owed and self._owed[-1][0] == PARSE:
            self._owed[-1][2] = (name, (sql, types, access))
            self.bytes += len(sql)  # counted from now on (PREPARED_BYTES): until it is answered too
        else:  # not queued (cannot happen): kept at once, as before
            self._keep(name, (sql, types, access))

    def forget(self, name: str) -> None:
        """The Close just queued closes ``name``: forgotten once the server answers CloseComplete
        (a Close skipped after an error leaves the statement prepared, as on the server)."""
        if self._owed and self._owed[-1][0] == CLOSE:
            self._owed[-1][2] = (name, None)
        else:
            self._keep(name, None)

    def _keep(self, name: str, entry: tuple | None, counted: bool = False) -> None:
        known = self.statements.pop(name, None)
        if known is not None:
            self.bytes -= len(known[0])
        if entry is not None:
            self.statements[name] = entry
            self.bytes += 0 if counted else len(entry[0])

    def _drop(self, change: tuple | None) -> None:
        """A queued Parse the server did not prepare: its text no longer counts."""
        if change is not None and change[1] is not None:
            self.bytes -= len(change[1][0])

    def fits(self, name: str, sql: str, limit: int) -> bool:
        """Whether keeping ``sql`` under ``name`` stays within ``limit`` characters in all."""
        known = self.statements.get(name)
        return self.bytes - (len(known[0]) if known else 0) + len(sql) <= limit

    @property
    def swallowing(self) -> bool:
        """Replies to injected messages are still to come."""
        return self._injected > 0

    def client(self, kind: int) -> None:
        """A client message went upstream."""
        if kind == PARSE or kind == CLOSE:
            self._owed.append([kind, False, None])
        elif kind == SYNC or kind == QUERY or kind == FUNCTION:
            self._owed.append([SYNC, False, None])

    def inject(self) -> None:
        """pgveil sent Close and Parse for a statement, in that order."""
        self._owed.append([CLOSE, True, None])
        self._owed.append([PARSE, True, None])
        self._injected += 2

    def server(self, kind: int) -> bool:
        """A server message arrived; True if the client must not see it."""
        if kind == PARSE_COMPLETE or kind == CLOSE_COMPLETE:
            while self._owed:
                owed_kind, injected, change = self._owed.popleft()
                if owed_kind == SYNC:
                    continue  # cannot happen in order; keep going rather than swallow wrongly
                if injected:
                    self._injected -= 1
                if change is not None:  # the server prepared (or closed) it: so does the record
                    self._keep(*change, counted=True)
                return injected
            return False
        if kind == ERROR:
            self._skipping = True
        elif kind == READY:
            # everything up to the sync point was answered, or skipped after an error
            while self._owed:
                owed_kind, injected, change = self._owed.popleft()  # skipped after an error: no change
                self._drop(change)
                if injected:
                    self._injected -= 1
                if owed_kind == SYNC:
                    break
            self._skipping = False
        return False
