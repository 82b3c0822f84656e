"""Refusals put in a statement's place: the failing statement sent instead, and its error put back.

A refused statement is not simply dropped: the server is sent a statement that fails in its
place (``SELECT 'pgveil-refused-N'::int4``), so that the server does exactly what it does for
any error (aborts the transaction block, skips to Sync in the extended protocol), and the
server's error naming that token is swapped for the refusal on the way back.

:class:`Refusals` is a composed object, not a mixin: the session owns one (``session.refusals``).
It is given the refusal (reason, SQLSTATE), the refused statement's id, the server's error text
and the ended statement's id, and returns the bytes to send, the error to put back, or the
SQLSTATE of the refused statement's outcome.  It keeps only its own state and never calls back
into the session.
"""

from __future__ import annotations

from .. import codec
from .shared import REFUSAL_MARK


class Refusals:
    """One session's refusals in a statement's place (see the module docstring)."""

    def __init__(self) -> None:
        self._standing: dict[str, tuple[str, str]] = {}  # token -> (reason, SQLSTATE), awaiting the server's error
        self._seq = 0
        self._states: dict[str, str] = {}  # refused statement id -> its SQLSTATE, awaiting its outcome

    @property
    def standing(self) -> bool:
        """A failing statement was sent whose error is still to be put back."""
        return bool(self._standing)

    def stand_in(self, reason: str, sqlstate: str = "42501", parse=None) -> bytes:
        """The statement (a Query, or a Parse of ``parse``'s name) that fails on the server in
        place of a refused one; its error is swapped for the refusal by :meth:`error`."""
        self._seq += 1
        token = f"{REFUSAL_MARK}{self._seq}"
        self._standing[token] = (reason, sqlstate or "42501")
        sql = f"SELECT '{token}'::pg_catalog.int4"
        if parse is not None:
            return codec.encode(codec.Parse(parse.name, sql, ()))
        return codec.encode(codec.Query(sql))

    def error(self, text: str) -> bytes | None:
        """The refusal's ErrorResponse in place of the server's error with this message text, or
        None when the error is not a stand-in's."""
        if REFUSAL_MARK not in text:
            return None
        found = self._standing.pop(text[text.index(REFUSAL_MARK):].split('"')[0], None)
        if found is None:
            return None
        reason, sqlstate = found
        return codec.error_response(sqlstate, reason)

    def settled(self) -> None:
        """Nothing is outstanding on the server: a stand-in not answered by its own error (e.g.
        25P02 inside an aborted transaction) will never be."""
        self._standing.clear()

    def refused(self, statement_id: str, sqlstate: str) -> None:
        """A recorded statement was refused: its outcome says so, with this SQLSTATE."""
        self._states[statement_id] = sqlstate

    def is_refused(self, statement_id: str | None) -> bool:
        return statement_id in self._states

    def ended(self, statement_id: str) -> str | None:
        """A statement's execution ended: the SQLSTATE of its refusal (then forgotten), or None."""
        return self._states.pop(statement_id, None)
