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

from dataclasses import dataclass

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

    def set(self, new, local: bool) -> None:
        """A statement changed the path to ``new`` (``SET``, ``RESET``, ``set_config``...);
        ``local``: a ``SET LOCAL`` (a COMMIT does not keep it)."""
        if self.marks is not None and not local:
            self.kept = new

    def statement(self, step: "Step", path):
        """The path after this transaction-control statement, or None (no change)."""
        kind = step.kind
        if kind == "BEGIN" and self.marks is None:
            self.marks, self.kept, self.sure = [("", path, path)], path, True
        elif kind == "SAVEPOINT" and self.marks is not None:
            self.marks.append((step.name, path, self.kept))
        elif kind == "RELEASE" and self.marks is not None:
            self._back_to(step.name, keep=False)
        elif kind == "COMMIT" and self.marks is not None:
            kept = self.kept if self.sure else UNKNOWN
            self.marks, self.kept = ([("", kept, kept)], kept) if step.chain else (None, None)
            return kept
        elif kind == "ROLLBACK_TO":
            found = self._back_to(step.name, keep=True) if self.marks else None
            if found is None or not self.sure:
                return UNKNOWN
            self.kept = found[1]
            return found[0]
        elif kind == "ROLLBACK" and self.marks is not None:
            start = self.marks[0][1] if self.marks and self.sure else UNKNOWN
            self.marks, self.kept = ([("", start, start)], start) if step.chain else (None, None)
            return start
        return None

    def _back_to(self, name: str, keep: bool) -> tuple | None:
        """Drop the savepoints after the latest named ``name`` (and it, unless ``keep``); its
        (path, kept), or None when there is no such savepoint."""
        for i in range(len(self.marks) - 1, 0, -1):
            if self.marks[i][0] == name:
                found = self.marks[i][1:]
                del self.marks[i + 1 if keep else i:]
                return found
        return None


@dataclass(frozen=True, slots=True)
class Step:
    """A transaction-control statement as :class:`Block` reads it (plain data: it crosses
    between processes, see :mod:`proxy.state_after`)."""
    kind: str  # BEGIN (START TRANSACTION), SAVEPOINT, RELEASE, COMMIT (END, PREPARE TRANSACTION), ROLLBACK (ABORT), ROLLBACK_TO
    name: str = ""  # the savepoint's
    chain: bool = False  # AND CHAIN: a new block begins at once


@dataclass(frozen=True, slots=True)
class Local:
    """A ``SET LOCAL`` of the path: in force until the block ends, not kept by its COMMIT."""
    path: object


def step(seg) -> Step | None:
    """The transaction-control statement ``seg`` is, or None."""
    word = seg.word
    if word not in BLOCK_WORDS:
        return None
    words = [seg.keyword(i) for i in range(1, min(len(seg.tokens), 4))]
    chain = "CHAIN" in words and "NO" not in words
    if word in ("BEGIN", "START"):
        return Step("BEGIN")
    if word in ("SAVEPOINT", "RELEASE") and len(seg.tokens) > 1:
        return Step(word, _name(seg.tokens[1] if word == "SAVEPOINT" else seg.tokens[-1]))
    if word in ("COMMIT", "END") and "PREPARED" not in words[:1] or word == "PREPARE" and words[:1] == ["TRANSACTION"]:
        return Step("COMMIT", chain=chain)
    if word in ("ROLLBACK", "ABORT") and "PREPARED" not in words[:1]:
        if "TO" in words:  # ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
            return Step("ROLLBACK_TO", _name(seg.tokens[-1]))
        return Step("ROLLBACK", chain=chain)
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


BLOCK_WORDS = frozenset({"BEGIN", "START", "SAVEPOINT", "RELEASE", "COMMIT", "END", "PREPARE", "ROLLBACK", "ABORT"})
END_KINDS = ("ROLLBACK", "COMMIT", "ROLLBACK_TO")  # the steps whose path the policy is told (Context.block_ends)


def items(segs: list) -> list:
    """What each statement does to the path and the block: a :class:`Step`, a new path or
    :data:`UNKNOWN` (a :class:`Local` for ``SET LOCAL``), or None (nothing)."""
    out = []
    for seg in segs:
        found = step(seg)
        if found is None:
            new = change(seg, False) if seg.word not in ("ROLLBACK", "ABORT") else None
            if new is not None and seg.word == "SET" and seg.keyword(1) == "LOCAL":
                new = Local(new)
            found = new
        out.append(found)
    return out


def apply(item, path, changed: bool, block: "Block | None", ends: list | None):
    """The path after one of :func:`items` (None: unchanged), followed in ``block``;
    ``ends`` gets what each ROLLBACK/ABORT/COMMIT/END leaves (:func:`after`)."""
    if isinstance(item, Step):
        in_block = block is not None and block.marks is not None
        if block is not None:
            block.touched = True
        new = block.statement(item, path) if block is not None else None
        if item.kind in END_KINDS:
            if ends is not None:
                ends.append(new if in_block and new != path else None)
            if not in_block and item.kind == "ROLLBACK":
                new = UNKNOWN if changed else None  # an implicit block's (several statements in one Query)
        return new
    if item is None:
        return None
    local = isinstance(item, Local)
    new = item.path if local else item
    if block is not None:
        block.touched = True
        block.set(new, local)
    return new


def after(segs: list, path: tuple | str, changed: bool = False, block: Block | None = None,
          ends: list | None = None) -> tuple | str:
    """The path after these statements run, starting from ``path`` (or :data:`UNKNOWN`);
    ``changed``: a statement sent before these changed it; ``block``: the transaction block
    they run in (followed as they go); ``ends``: gets, for each ROLLBACK, ABORT, COMMIT and END,
    the path it leaves when it ends a block and changes the path (None otherwise)."""
    for item in items(segs):
        new = apply(item, path, changed, block, ends)
        if new is not None:
            path, changed = new, True
    return path
