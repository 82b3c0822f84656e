"""Which statement each server response belongs to, for the audit's outcome records.

Pure.  The client side queues what will be answered: a Query (answered up to its
ReadyForQuery), an Execute (answered by CommandComplete, PortalSuspended, EmptyQueryResponse
or an error) and a Sync.  After an error in the extended protocol the server skips to Sync,
so the Executes queued before that Sync are recorded as skipped.

>>> from proxy.codec import BE
>>> t = StatementTracker()
>>> t.query("s1", 0.0)
>>> t.server(BE.COMMAND_COMPLETE, b"SELECT 3\\0", 0.002)
[]
>>> [(sid, status, rows) for sid, status, rows, _, _ in t.server(BE.READY_FOR_QUERY, b"I", 0.003)]
[('s1', 'ok', 3)]
"""

from __future__ import annotations

from collections import deque

from .. import codec
from ..codec import BE
from .records import rows_of

C, E, Z, s, I = (BE.COMMAND_COMPLETE, BE.ERROR, BE.READY_FOR_QUERY, BE.PORTAL_SUSPENDED,  # noqa: E741
                 BE.EMPTY_QUERY_RESPONSE)


class StatementTracker:
    def __init__(self) -> None:
        self._queue: deque = deque()  # [kind, statement id, started, rows, sqlstate, portal (, "limited")]
        self._statements: dict[str, str] = {}  # prepared statement name -> statement id
        self._portals: dict[str, str] = {}  # portal name -> statement id
        self._bindings: dict[str, str] = {}  # portal name -> this binding of it ("name#n")
        self._binds = 0

    def __len__(self) -> int:
        return len(self._queue)

    # -- the client's side ------------------------------------------------------------------
    def query(self, statement_id: str, started: float) -> None:
        self._queue.append(["Q", statement_id, started, None, None, None])

    def parse(self, name: str, statement_id: str) -> None:
        self._statements[name] = statement_id

    def bind(self, portal: str, statement: str) -> None:
        self._portals[portal] = self._statements.get(statement, "")
        self._binds += 1
        self._bindings[portal] = f"{portal}#{self._binds}"

    def portal_statement(self, portal: str) -> str:
        """The statement id a portal was bound from ('' if unknown)."""
        return self._portals.get(portal, "")

    def execute(self, portal: str, started: float) -> None:
        self._queue.append(["E", self._portals.get(portal, ""), started, None, None, self._bindings.get(portal, portal)])

    def sync(self) -> None:
        self._queue.append(["S", "", 0.0, None, None, None])

    def named_ids(self) -> set:
        """Statement ids of named prepared statements (the unnamed one is replaced by each Parse)."""
        return {sid for name, sid in self._statements.items() if name}

    def running(self) -> str | None:
        """The statement whose results arrive now."""
        for entry in self._queue:
            if entry[0] != "S":
                return entry[1]
        return None

    def running_result(self) -> tuple | None:
        """(statement id, binding) of the result arriving now: a portal fetched in pieces is one
        result, a portal bound again is another (the binding is None for a simple Query)."""
        for entry in self._queue:
            if entry[0] != "S":
                return entry[1], entry[5]
        return None

    def live_ids(self) -> set:
        """Statement ids that can still produce rows: prepared (the unnamed one too, until the
        next Parse replaces it), bound to a portal, or waiting for their answer."""
        return set(self._statements.values()) | set(self._portals.values()) | {entry[1] for entry in self._queue}

    def stop(self, statement_id: str, rows: int, sqlstate: str) -> None:
        """The relay stopped this statement's result: whatever the server says next, it ended so."""
        for entry in self._queue:
            if entry[1] == statement_id:
                entry[3], entry[4] = rows, sqlstate
                entry.append("limited")
                return

    # -- the server's side ------------------------------------------------------------------
    def server(self, kind: int, body: bytes, at: float) -> list[tuple]:
        """A response arrived: the (statement id, status, rows, duration s, sqlstate) it ends."""
        if not self._queue:
            return []
        head = self._queue[0]
        if head[0] == "Q":
            if kind == C:
                rows = rows_of(_tag(body))
                head[3] = (head[3] or 0) + rows if rows is not None else head[3]
            elif kind == E:
                head[4] = head[4] or _sqlstate(body)
            elif kind == Z:
                self._queue.popleft()
                return [(head[1], _status(head), head[3], at - head[2], head[4])]
            return []
        if head[0] == "E":
            if kind in (C, s, I):
                self._queue.popleft()
                rows = rows_of(_tag(body)) if kind == C else None
                return [(head[1], "suspended" if kind == s else "ok", rows, at - head[2], None)]
            if kind == E:
                self._queue.popleft()
                done = [(head[1], "error", None, at - head[2], _sqlstate(body))]
                while self._queue and self._queue[0][0] == "E":  # skipped up to the Sync
                    skipped = self._queue.popleft()
                    done.append((skipped[1], "skipped", None, 0.0, None))
                return done
            if kind == Z:  # a Sync came before anything answered this Execute
                self._queue.popleft()
                status = "limited" if len(head) > 6 else "skipped"
                return [(head[1], status, head[3], at - head[2], head[4])] + self.server(kind, body, at)
            return []
        if kind == E:  # an error answering Parse/Bind/Describe before the next Execute
            return []
        if kind == Z:
            self._queue.popleft()
        return []


def _status(entry: list) -> str:
    if len(entry) > 6:
        return entry[6]
    return "error" if entry[4] else "ok"


def _tag(body: bytes) -> str:
    """A CommandComplete's tag; '' for a malformed one (the outcome then has no row count)."""
    try:
        return codec.command_tag(body)
    except codec.ProtocolViolation:
        return ""


def _sqlstate(body: bytes) -> str | None:
    """An ErrorResponse's SQLSTATE; None for a malformed one."""
    try:
        return codec.error_fields(body).sqlstate
    except codec.ProtocolViolation:
        return None
