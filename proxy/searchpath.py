"""The search_path that the earlier statements of one Query leave for the later ones.

The session knows the path the server reported before the Query; a Query of several statements
can change it part way (``SET search_path = public; UPDATE customers ...``).  Each statement is
decided under the path in force when PostgreSQL runs it:

- ``SET [SESSION] search_path = ...`` / ``TO ...``: the new path, read from its tokens
  (string literals and quoted names as written, other names folded to lower case);
- anything pgveil cannot follow within the Query: ``SET LOCAL``, ``... TO DEFAULT``, ``RESET``
  of the path or of everything, ``DISCARD ALL``, ``set_config(...)``, and ``ROLLBACK``/``ABORT``
  after one of these (it may undo a ``SET``): the path is *unknown*, and a later statement of the
  same Query that reaches relations is refused for restricted tiers;
- the transaction block, across Queries (:class:`Block`): ``BEGIN``/``START TRANSACTION`` and
  each ``SAVEPOINT`` note the path in force; ``ROLLBACK``/``ABORT`` go back to the block's,
  ``ROLLBACK TO SAVEPOINT`` to the savepoint's, ``RELEASE`` forgets savepoints, ``COMMIT`` keeps
  the last path set other than with ``SET LOCAL``.  When statements of the block may not have
  run as sent (an error, a block pgveil did not see begin), the path they leave is unknown.
  The policy is told what each of them leaves (``Context.block_ends``), so later statements of
  the same Query are decided under it.

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

from .codec import TxStatus

UNKNOWN = "unknown"


class Block:
    """The transaction block as the statements sent leave it: the path in force and the one a
    COMMIT keeps (a ``SET LOCAL`` changes only the first), noted when the block began and at
    each savepoint, for the path a rollback or a commit leaves.

    >>> from proxy.policy import split_statements
    >>> block = Block()
    >>> after(split_statements("BEGIN; SET search_path = public; SAVEPOINT a"), ("staging",), block=block)
    ('public',)
    >>> after(split_statements("SET search_path = x; ROLLBACK TO SAVEPOINT a"), ("public",), block=block)
    ('public',)
    >>> after(split_statements("ROLLBACK"), ("public",), block=block)
    ('staging',)
    """

    def __init__(self) -> None:
        self.marks: list | None = None  # None: no block; else [(savepoint name, or "" for the block's start, path, kept)]
        self.kept: tuple | str | None = None  # the path a COMMIT keeps (the last SET that was not LOCAL)
        self.sure = True  # False: statements of the block may not have run as sent
        self.failed = False  # an error since everything sent was last answered
        self.touched = False  # statements sent since then changed the block or the path

    def copy(self) -> "Block":
        """A copy to try statements on (the real block follows only statements that go)."""
        other = Block()
        other.marks = list(self.marks) if self.marks is not None else None
        other.kept, other.sure = self.kept, self.sure
        return other

    def moved(self, path) -> bool:
        """Could ending this block, or rolling back to a savepoint, leave another path than ``path``?"""
        return self.marks is not None and (not self.sure or self.kept != path or
                                           any(mark[1] != path or mark[2] != path for mark in self.marks))

    def error(self) -> None:
        """ErrorResponse: the statements sent after the failing one did not run."""
        self.failed = True

    def ready(self, status: bytes) -> None:
        """ReadyForQuery after everything sent was answered, with this transaction status."""
        if status == TxStatus.IDLE:
            self.marks, self.kept, self.sure = None, None, True
        elif (self.failed and self.touched) or self.marks is None:  # not run as sent, or not seen
            self.marks, self.sure = self.marks or [], False
        self.failed = self.touched = False

    def set(self, seg, new) -> None:
        """A statement changed the path to ``new`` (``SET``, ``RESET``, ``set_config``...)."""
        if self.marks is not None and not (seg.word == "SET" and seg.keyword(1) == "LOCAL"):
            self.kept = new

    def statement(self, seg, path):
        """The path after this transaction-control statement, or None (not one, or no change)."""
        word = seg.word
        if word in ("BEGIN", "START") and self.marks is None:
            self.marks, self.kept, self.sure = [("", path, path)], path, True
        elif word == "SAVEPOINT" and self.marks is not None and len(seg.tokens) > 1:
            self.marks.append((_name(seg.tokens[1]), path, self.kept))
        elif word == "RELEASE" and self.marks is not None and len(seg.tokens) > 1:
            self._back_to(_name(seg.tokens[-1]), keep=False)
        elif word in ("COMMIT", "END") and seg.keyword(1) != "PREPARED" or \
                word == "PREPARE" and seg.keyword(1) == "TRANSACTION":
            if self.marks is None:
                return None
            kept, self.marks = (self.kept if self.sure else UNKNOWN), None
            return kept
        elif word in ("ROLLBACK", "ABORT") and seg.keyword(1) != "PREPARED":
            return self._rollback(seg)
        return None

    def _rollback(self, seg):
        words = [seg.keyword(i) for i in range(1, min(len(seg.tokens), 4))]
        if "TO" in words:  # ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
            found = self._back_to(_name(seg.tokens[-1]), keep=True) if self.marks else None
            if found is None or not self.sure:
                return UNKNOWN
            self.kept = found[1]
            return found[0]
        if self.marks is None:
            return None  # no block pgveil knows of (an implicit one: see after)
        start = self.marks[0][1] if self.marks and self.sure else UNKNOWN
        self.marks, self.kept = ([("", start, start)], start) if "CHAIN" in words and "NO" not in words else (None, None)
        return start

    def _back_to(self, name: str, keep: bool) -> tuple | None:
        """Drop the savepoints after the latest named ``name`` (and it, unless ``keep``); its
        (path, kept), or None when there is no such savepoint."""
        for i in range(len(self.marks) - 1, 0, -1):
            if self.marks[i][0] == name:
                found = self.marks[i][1:]
                del self.marks[i + 1 if keep else i:]
                return found
        return None


def _name(token) -> str:
    """A savepoint's name as PostgreSQL folds it."""
    from .sql import fold_name
    return fold_name(token)


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


CHANGES = re.compile(r"\b(?:search_path|reset|discard|set_config|rollback|abort|begin|start|savepoint|release|commit)\b",
                     re.IGNORECASE)
BLOCK_WORDS = frozenset({"BEGIN", "START", "SAVEPOINT", "RELEASE", "COMMIT", "END", "PREPARE", "ROLLBACK", "ABORT"})
ENDS = ("ROLLBACK", "ABORT", "COMMIT", "END")  # the statements whose path the policy is told (Context.block_ends)


def after(segs: list, path: tuple | str, changed: bool = False, block: Block | None = None,
          ends: list | None = None) -> tuple | str:
    """The path after these statements run, starting from ``path`` (or :data:`UNKNOWN`);
    ``changed``: a statement sent before these changed it; ``block``: the transaction block
    they run in (followed as they go); ``ends``: gets, for each ROLLBACK, ABORT, COMMIT and END,
    the path it leaves when it ends a block and changes the path (None otherwise)."""
    for seg in segs:
        if block is not None and seg.word in BLOCK_WORDS and (seg.word != "PREPARE" or seg.keyword(1) == "TRANSACTION"):
            block.touched = True
            in_block = block.marks is not None
            new = block.statement(seg, path)
            if seg.word in ENDS and seg.keyword(1) != "PREPARED":
                if ends is not None:
                    ends.append(new if in_block and new != path else None)
                if not in_block and seg.word in ("ROLLBACK", "ABORT"):
                    new = UNKNOWN if changed else None  # an implicit block's (several statements in one Query)
        else:
            new = change(seg, changed)
            if block is not None and new is not None:
                block.touched = True
                block.set(seg, new)
        if new is not None:
            path, changed = new, True
    return path
