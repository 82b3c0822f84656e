"""``pgveil.purpose`` as PostgreSQL treats a setting, transactions included.

pgveil answers ``SET pgveil.purpose`` itself (the database never sees it), so it keeps the
setting's state the way PostgreSQL keeps a GUC's:

- ``SET`` (or ``SET SESSION``) outside a transaction block holds at once; inside one it holds
  for the rest of the block, is kept by ``COMMIT`` and undone by ``ROLLBACK``;
- ``SET LOCAL`` holds until the block ends, whichever way (outside a block it does nothing,
  with PostgreSQL's warning);
- ``RESET``, ``RESET ALL`` and ``DISCARD ALL`` clear it (as a ``SET`` to nothing).

How a block ended is read from the server: the CommandComplete tags (``COMMIT``/``ROLLBACK``)
since the last ReadyForQuery, and ReadyForQuery's status byte.  Where that is ambiguous, the
purpose is cleared (fail closed): a ``ROLLBACK TO SAVEPOINT`` (its tag is ``ROLLBACK`` too) in a
block that changed the purpose, several blocks ending within one Query, a block ending with
another tag (``PREPARE TRANSACTION``).  Clearing only ever masks more.

The declaration itself is read by :func:`read_declaration` (one possessive regular expression,
linear in the text): the session only asks it and acts on the answer.

Pure.

>>> read_declaration("SET LOCAL pgveil.purpose = 'CS-1042'")
Declaration(value='CS-1042', local=True, tag='SET', audit_text='SET LOCAL pgveil.purpose = ?')
>>> p = PurposeSetting()
>>> p.set("T-1", local=False, in_block=False); p.current
'T-1'
>>> p.set(None, local=False, in_block=True); p.current is None
True
>>> p.tag("ROLLBACK"); p.ready(b"I"); p.current
'T-1'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .codec import TxStatus

ENDING_TAGS = ("COMMIT", "ROLLBACK", "PREPARE TRANSACTION")
PURPOSE_WORD = "pgveil.purpose"
# possessive throughout (linear in the text: nothing taken is given back to be tried again)
PURPOSE_SET = re.compile(r"""^\s*+(?:SET\s++(?:(?P<scope>SESSION|LOCAL)\s++)?+pgveil\.purpose\s*+(?:=|TO)\s*+"""
                         r"""(?:'(?P<value>(?:[^']++|'')*+)'|DEFAULT)|RESET\s++pgveil\.purpose)\s*+(?:;\s*+)?+$""",
                         re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Declaration:
    """``SET [SESSION|LOCAL] pgveil.purpose = '...'``, ``... TO DEFAULT`` or ``RESET pgveil.purpose``."""
    value: str | None  # the purpose; None clears it (RESET, DEFAULT, '')
    local: bool  # SET LOCAL: until the transaction block ends
    tag: str  # the CommandComplete tag the client gets: "SET" or "RESET"
    audit_text: str  # the statement as the audit records it (the purpose itself is a literal: left out)


def mentions_purpose(sql: str) -> bool:
    """Whether a statement's text names ``pgveil.purpose`` at all (then either it is a
    declaration of its own, or it is refused: :meth:`proxy.verdicts.Refusal.purpose_not_alone`)."""
    return PURPOSE_WORD in sql.lower()


def read_declaration(sql: str) -> Declaration | None:
    """A Query's text that declares the purpose and nothing else; None for any other text.

    >>> read_declaration("reset pgveil.purpose;")
    Declaration(value=None, local=False, tag='RESET', audit_text='RESET pgveil.purpose')
    >>> read_declaration("SET pgveil.purpose TO 'it''s T-7'").value
    "it's T-7"
    >>> read_declaration("SET pgveil.purpose = 'a'; SELECT 1") is None
    True
    """
    if PURPOSE_WORD not in sql.lower():
        return None
    match = PURPOSE_SET.match(sql)
    if match is None:
        return None
    value = match.group("value")
    value = (value.replace("''", "'") or None) if value is not None else None
    local = (match.group("scope") or "").upper() == "LOCAL"
    tag = "RESET" if sql.lstrip()[:1] in "rR" else "SET"
    audit = "RESET pgveil.purpose" if value is None else f"SET {'LOCAL ' if local else ''}pgveil.purpose = ?"
    return Declaration(value, local, tag, audit)


class PurposeSetting:
    def __init__(self) -> None:
        self.current: str | None = None  # in force now
        self._kept: str | None = None  # what a COMMIT keeps (the last non-LOCAL SET)
        self._before: str | None = None  # what a ROLLBACK restores (the value when the block began)
        self._changed = False  # the purpose changed within the current transaction block
        self._ended: list[str] = []  # transaction-ending tags since the last ReadyForQuery

    @property
    def watching(self) -> bool:
        """Does the session need CommandComplete tags (a block changed the purpose)?"""
        return self._changed

    def set(self, value: str | None, *, local: bool, in_block: bool) -> None:
        """A SET/RESET of the purpose went through, inside a transaction block or not."""
        if not in_block:
            if not local:
                self.current = self._kept = value
            return
        if not self._changed:
            self._changed, self._before, self._kept = True, self.current, self.current
        self.current = value
        if not local:
            self._kept = value

    def tag(self, tag: str) -> None:
        """A CommandComplete arrived (its tag)."""
        if self._changed and tag in ENDING_TAGS:
            self._ended.append(tag)

    def ready(self, status: bytes) -> None:
        """ReadyForQuery with this transaction status ('I', 'T' or 'E')."""
        if not self._changed:
            return
        ended, self._ended = self._ended, []
        if status == TxStatus.IDLE:
            if ended == ["COMMIT"]:
                self.current = self._kept
            elif ended == ["ROLLBACK"]:
                self.current = self._kept = self._before
            else:  # not told how it ended: nothing the block declared survives
                self.current = self._kept = None
            self._changed = False
        elif ended:  # a savepoint rolled back, or a block ended and another began: fail closed
            self.current = self._kept = self._before = None
