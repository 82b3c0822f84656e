"""The search_path that the earlier statements of one Query leave for the later ones.

The session knows the path the server reported before the Query; a Query of several statements
can change it part way (``SET search_path = public; UPDATE customers ...``).  Each statement is
decided under the path in force when PostgreSQL runs it:

- ``SET [SESSION] search_path = ...`` / ``TO ...``: the new path, read from its tokens
  (string literals and quoted names as written, other names folded to lower case);
- anything pgveil cannot follow within the Query: ``SET LOCAL``, ``... TO DEFAULT``, ``RESET``
  of the path or of everything, ``DISCARD ALL``, ``set_config(...)``, and ``ROLLBACK``/``ABORT``
  after one of these (it may undo a ``SET``): the path is *unknown*, and a later statement of the
  same Query that reaches relations is refused for restricted tiers.  (A ``ROLLBACK`` undoing a
  ``SET`` of an earlier Query of the block is not followed: the statements after it are decided
  under the path before the ``ROLLBACK``, and, qualified, reach the relations decided on.)

Every relation pgveil sends is schema-qualified as well (:mod:`proxy.rewrite`), so a wrong path
could never redirect a statement to another relation; following the path keeps the decisions
right.

Pure.

>>> from proxy.policy import split_statements
>>> [change(s) for s in split_statements("SET search_path = 'Staging', public; SELECT 1")]
[('Staging', 'public'), None]
>>> change(split_statements("RESET ALL")[0]) is UNKNOWN
True
"""

from __future__ import annotations

import re

UNKNOWN = "unknown"


def change(seg, changed: bool = False) -> tuple | str | None:
    """How this statement changes the search_path: the new path, :data:`UNKNOWN`, or None.
    ``changed``: an earlier statement of the same Query or pipeline changed it (which a
    ROLLBACK may undo)."""
    word = seg.word
    if word == "SET":
        return _set(seg)
    if word == "RESET":
        argument = seg.text[seg.tokens[0].end + 1 - seg.offset:].strip().lower()
        return UNKNOWN if argument in ("all", "search_path") else None
    if word == "DISCARD":
        return UNKNOWN
    if word == "ROLLBACK" or word == "ABORT":
        return UNKNOWN if changed else None
    if "set_config" in seg.text.lower():
        return UNKNOWN
    return None


def _set(seg) -> tuple | str | None:
    """``SET [SESSION] search_path``, ``SET SCHEMA``: read as :func:`proxy.settings.read_set`
    reads every SET (by token types; strings and quoted names as written, words folded)."""
    from .settings import Unreadable, read_set
    local = seg.keyword(1) == "LOCAL"
    try:
        changes = read_set(False, seg.tokens[1:], seg.text, seg.offset)
    except Unreadable:
        return UNKNOWN
    for name, values in changes:
        if name == "search_path":
            if local or values is None or None in values:
                return UNKNOWN
            return tuple(values)
    return None


CHANGES = re.compile(r"\b(?:search_path|reset|discard|set_config|rollback|abort)\b", re.IGNORECASE)


def after(segs: list, path: tuple | str, changed: bool = False) -> tuple | str:
    """The path after these statements run, starting from ``path`` (or :data:`UNKNOWN`);
    ``changed``: a statement sent before these changed it."""
    for seg in segs:
        new = change(seg, changed)
        if new == UNKNOWN:
            return UNKNOWN
        if new is not None:
            path, changed = new, True
    return path
