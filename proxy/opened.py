"""What a session opened under one effective access and uses later: SQL prepared statements
(``PREPARE``/``EXECUTE``), cursors (``DECLARE``/``FETCH``/``MOVE``, ``WITH HOLD`` ones included)
and extended-protocol portals (Bind/Execute).

Each remembers the :class:`~proxy.access.Access` it was decided or opened under.  Later:

- ``EXECUTE`` of a statement prepared under another access is refused for a restricted tier:
  its text was decided then.  (Re-preparing it would mean adding DEALLOCATE and PREPARE to the
  client's Query, whose replies and transaction effects the client never asked for; the message
  says how to prepare it again.)
- ``FETCH``/``MOVE`` of a cursor, and Execute of a portal, opened under an access that has since
  narrowed are refused: their rows were decided then.  The rest of the session goes on.

Names are read from the statement's tokens (quoted names kept, others folded to lower case), only
for statements that start with one of these words.

Pure.

>>> from proxy.access import Access
>>> o = Opened()
>>> before, after = Access("v", "sales", (1,)), Access("v", "sales", ())
>>> o.query(segments("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), before, True) is None
True
>>> o.query(segments("FETCH 10 FROM c"), after, True)
'cursor c was opened under access that has since changed (tier sales, grants #1, purpose none); it returns no more rows: access changed since it was opened'
"""

from __future__ import annotations

import re

from .heads import keyword
from .sql import SqlglotError, fold_name, tokenize

WORDS = re.compile(r"\b(?:prepare|execute|declare|fetch|move|close|deallocate|discard)\b", re.IGNORECASE)
CHANGED = "access changed since it was opened"


def segments(sql: str) -> list:
    """The statements of a text (see :func:`proxy.policy.split_statements`); [] if it does not tokenize."""
    from .policy import split_statements
    try:
        return split_statements(sql, tokenize(sql))
    except SqlglotError:
        return []


_name = fold_name


def _arguments(seg) -> tuple[list, str]:
    """The tokens after a statement's first word, tokenized on their own (the tokenizer keeps a
    command's arguments as one string token), and the text they were read from."""
    if len(seg.tokens) < 2:
        return [], ""
    cut = seg.tokens[0].end + 1 - seg.offset
    try:
        return tokenize(seg.text[cut:]), seg.text[cut:]
    except SqlglotError:
        return [], ""


class Opened:
    """See the module docstring."""

    def __init__(self) -> None:
        self.prepared: dict[str, object] = {}  # SQL PREPARE name -> Access
        self.cursors: dict[str, object] = {}  # DECLARE name -> Access
        self.portals: dict[str, object] = {}  # Bind portal name -> Access

    @staticmethod
    def concerns(sql: str) -> bool:
        """Could this text prepare, execute, declare, fetch or close anything? (a quick look)"""
        return WORDS.search(sql) is not None

    def query(self, segs: list, access, restricted: bool) -> str | None:
        """A Query or Parse about to be sent: the reason to refuse it, or None (and then what it
        opens or closes is recorded)."""
        prepared, cursors = dict(self.prepared), dict(self.cursors)
        for seg in segs:
            word = seg.word
            if word not in ("PREPARE", "EXECUTE", "DECLARE", "FETCH", "MOVE", "CLOSE", "DEALLOCATE", "DISCARD"):
                continue
            arguments, text = _arguments(seg)
            tokens = [seg.tokens[0]] + arguments
            # ALL and TRANSACTION are keywords only unquoted: CLOSE "all" closes a cursor named all
            last = keyword(arguments[-1], text) if arguments else None
            if word == "PREPARE" and len(tokens) > 1 and keyword(tokens[1], text) != "TRANSACTION":
                prepared[_name(tokens[1])] = access
            elif word == "EXECUTE" and len(tokens) > 1:
                name = _name(tokens[1])
                if restricted and name in prepared and prepared[name] != access:
                    return (f"prepared statement {name} was prepared under other access ({prepared[name].describe()}); "
                            f"prepare it again: DEALLOCATE {name}, then PREPARE {name}")
            elif word == "DECLARE" and len(tokens) > 1:
                cursors[_name(tokens[1])] = access
            elif word in ("FETCH", "MOVE") and len(tokens) > 1:
                name = _name(tokens[-1])
                if name in cursors and cursors[name].narrowed_to(access):
                    return (f"cursor {name} was opened under access that has since changed "
                            f"({cursors[name].describe()}); it returns no more rows: {CHANGED}")
            elif word == "CLOSE" and len(tokens) > 1:
                cursors.pop(_name(tokens[-1]), None) if last != "ALL" else cursors.clear()
            elif word == "DEALLOCATE" and len(tokens) > 1:
                if last == "ALL":
                    prepared.clear()
                else:
                    prepared.pop(_name(tokens[-1]), None)
            elif word == "DISCARD" and len(tokens) > 1 and keyword(tokens[1], text) == "ALL":
                prepared.clear()
                cursors.clear()
        self.prepared, self.cursors = prepared, cursors
        return None

    def bind(self, portal: str, access) -> None:
        self.portals[portal] = access

    def execute(self, portal: str, access) -> str | None:
        """An Execute of a portal: the reason to refuse it, or None."""
        opened = self.portals.get(portal)
        if opened is None or not opened.narrowed_to(access):
            return None
        shown = f"portal {portal}" if portal else "the unnamed portal"
        return f"{shown} was opened under access that has since changed ({opened.describe()}): {CHANGED}"
