"""What a Query or Parse leaves for the statements after it, read once from its tokens: how it
changes the search_path, what it does to prepared statements and cursors, whether it clears
every setting (RESET ALL, DISCARD ALL).

The session follows these for every statement allowed to go (see
``proxy.session.statements``).  Reading them means tokenizing the whole text, which for a
4 MB statement or 3,000 statements in one Query takes tens of milliseconds, so a statement
decided in the analysing child process (:mod:`proxy.analyst`) is read there, together with its
decision (:attr:`proxy.verdicts.Decision.after`), and the event loop only applies the result:
work linear in the number of statements that change something, with no parser and no scan of
the text.  A statement decided on the loop (short, or answered from its shape) is read on the
loop, by the same :func:`read`.

Pure: plain tuples, so that an :class:`After` crosses between processes.

>>> after = read("SET search_path = staging; DECLARE c CURSOR FOR SELECT 1; RESET ALL")
>>> after.paths
(('staging',), 'unknown')
>>> after.opened, after.clears_all
((None, (None, ('declare', 'c', False)), None), True)
>>> follow(after.paths, ("public",))
'unknown'
>>> read("SELECT 1") is NOTHING
True
"""

from __future__ import annotations

from dataclasses import dataclass

from . import opened, searchpath

# words without which no statement changes what :func:`read` reads (substrings of the lower-cased
# text: a few scans in C); the session's quick look before it calls read (proxy.session.shared.STATE_WORDS)
WORDS = ("prepare", "execute", "declare", "fetch", "move", "close", "deallocate", "discard", "reset",
         "search_path", "set_config", "rollback", "abort")
_READ_SIZE = 48  # what one read statement holds in memory, roughly (for the decision cache's byte count)


@dataclass(frozen=True, slots=True)
class Depends:
    """A search_path change that depends on whether an earlier statement changed the path (a
    ROLLBACK may undo that change): what :func:`proxy.searchpath.change` gives either way."""
    changed: object
    unchanged: object


@dataclass(frozen=True, slots=True)
class After:
    """What a text's statements change for the ones after them."""
    paths: tuple = ()  # search_path changes, in order: a new path, searchpath.UNKNOWN, or a Depends
    opened: tuple | None = None  # proxy.opened.read of each statement; None when no statement opens or uses any
    clears_all: bool = False  # a RESET ALL or DISCARD ALL (it clears the purpose)
    size: int = 0  # bytes it holds, roughly (proxy.decision_cache.entry_bytes)


NOTHING = After()


def read(sql: str, low: str | None = None) -> After:
    """What ``sql`` (``low``: its lower-cased text, when the caller has it) changes for later
    statements: one tokenization and one pass over its statements, only when one of
    :data:`WORDS` occurs in it."""
    if low is None:
        low = sql.lower()
    if not any(word in low for word in WORDS):
        return NOTHING
    segs = opened.segments(sql)
    paths = changes(segs)
    reads = tuple(opened.read(seg) for seg in segs)
    uses = sum(one is not None for one in reads)
    clears = any(seg.word in ("RESET", "DISCARD") and clears_all(seg) for seg in segs)
    size = 8 * len(reads) + _READ_SIZE * (uses + len(paths)) + sum(map(_path_size, paths))
    return After(paths, reads if uses else None, clears, size)


def changes(segs: list) -> tuple:
    """The statements' search_path changes, in order (:func:`follow` applies them): what
    :func:`proxy.searchpath.change` says of each, whether or not an earlier statement changed the
    path; statements that change nothing are left out."""
    out = []
    for seg in segs:
        unchanged, changed = searchpath.change(seg, False), searchpath.change(seg, True)
        if unchanged != changed:
            out.append(Depends(changed, unchanged))
        elif unchanged is not None:
            out.append(unchanged)
    return tuple(out)


def follow(paths: tuple, path: tuple | str, changed: bool = False) -> tuple | str:
    """The path after these changes (:func:`changes`), starting from ``path``; ``changed``: a
    statement sent before them changed it.  As :func:`proxy.searchpath.after` of the statements."""
    for new in paths:
        if isinstance(new, Depends):
            new = new.changed if changed else new.unchanged
        if new == searchpath.UNKNOWN:
            return searchpath.UNKNOWN
        if new is not None:
            path, changed = new, True
    return path


def clears_all(seg) -> bool:
    """Is this statement RESET ALL or DISCARD ALL?  (sqlglot keeps a command's arguments as one
    string: they are read on their own, by token types.)"""
    if seg.word not in ("RESET", "DISCARD") or len(seg.tokens) < 2:
        return False
    from .heads import keyword
    from .sql import SqlglotError, tokenize
    rest = seg.text[seg.tokens[0].end + 1 - seg.offset:]
    try:
        tokens = tokenize(rest)
    except SqlglotError:
        return True  # unreadable: clear (that only masks more)
    return len(tokens) == 1 and keyword(tokens[0], rest) == "ALL"


def _path_size(new) -> int:
    if isinstance(new, tuple):
        return sum(len(name) + 56 for name in new)
    return 0
