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

What a statement opens or closes (DECLARE, CLOSE, PREPARE, DEALLOCATE, DISCARD ALL) is recorded
only when the server confirms it with its CommandComplete tag: a DECLARE of an existing name
(42P03) or a CLOSE skipped after an error changes nothing, as on the server.  A Query's
statements are answered in order, an error skips the rest of it (or, in the extended protocol,
everything up to the next Sync), so the effects wait in a queue in the order sent.

Names are read from the statement's tokens (quoted names kept, others folded to lower case), only
for statements that start with one of these words.

Pure.

>>> from proxy.access import Access
>>> o = Opened()
>>> before, after = Access("v", "sales", (1,)), Access("v", "sales", ())
>>> o.query(segments("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), before, True) is None
True
>>> o.client(QUERY); o.sent(o.take()); o.answered("DECLARE CURSOR"); o.ready(b"I")
>>> o.query(segments("FETCH 10 FROM c"), after, True)
'cursor c was opened under access that has since changed (tier sales, grants #1, purpose none); it returns no more rows: access changed since it was opened'
"""

from __future__ import annotations

from collections import deque

from . import heads
from .codec import TxStatus
from .heads import keyword
from .sql import SqlglotError, fold_name, tokenize

CHANGED = "access changed since it was opened"


def segments(sql: str) -> list:
    """The statements of a text (see :func:`proxy.segments.split_statements`); [] if it does not tokenize."""
    from .segments import split_statements
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


_WORDS = frozenset({"PREPARE", "EXECUTE", "DECLARE", "FETCH", "MOVE", "CLOSE", "DEALLOCATE", "DISCARD"})


def read(seg) -> tuple | None:
    """What one statement does to prepared statements and cursors, read from its tokens alone
    (no session state; :meth:`Opened.judge` weighs it): None when it starts with none of the
    words, else ``(written, op)``.  ``written``: a ``U&"..."`` name PostgreSQL reads otherwise
    than pgveil would (or None); ``op``: ``("prepare", name)``, ``("execute", name)``,
    ``("declare", name, held)``, ``("fetch", name)`` (FETCH or MOVE), ``("close", name)``,
    ``("close_all",)``, ``("deallocate", name)``, ``("deallocate_all",)``, ``("discard_all",)``,
    or None.  Plain tuples: they cross from the analysing process (:mod:`proxy.analyst`).

    >>> [read(s) for s in segments("SELECT 1; DECLARE C CURSOR WITH HOLD FOR SELECT 1; CLOSE ALL")]
    [None, (None, ('declare', 'c', True)), (None, ('close_all',))]
    """
    word = seg.word
    if word not in _WORDS:
        return None
    arguments, text = _arguments(seg)
    written = heads.unicode_name(arguments, text)
    if not arguments:
        return written, None
    first = keyword(arguments[0], text)
    # ALL and TRANSACTION are keywords only unquoted: CLOSE "all" closes a cursor named all
    last = keyword(arguments[-1], text)
    op = None
    if word == "PREPARE" and first != "TRANSACTION":
        op = ("prepare", _name(arguments[0]))
    elif word == "EXECUTE":
        op = ("execute", _name(arguments[0]))
    elif word == "DECLARE":
        op = ("declare", _name(arguments[0]), _held(arguments, text))
    elif word in ("FETCH", "MOVE"):
        op = ("fetch", _name(arguments[-1]))
    elif word == "CLOSE":
        op = ("close_all",) if last == "ALL" else ("close", _name(arguments[-1]))
    elif word == "DEALLOCATE":
        op = ("deallocate_all",) if last == "ALL" else ("deallocate", _name(arguments[-1]))
    elif word == "DISCARD" and first == "ALL":
        op = ("discard_all",)
    return written, op


class _Unknown:
    """What a name was opened under when pgveil cannot tell (the server answered otherwise than
    pgveil expected): any later use of it is refused for a restricted tier."""

    def narrowed_to(self, new) -> bool:
        return True

    def describe(self) -> str:
        return "unknown: the server's answers did not match what pgveil expected"


UNKNOWN = _Unknown()
QUERY, PORTAL, SYNC = "query", "portal", "sync"
# the CommandComplete tag by which the server confirms each effect
TAGS = {"declare": "DECLARE CURSOR", "close": "CLOSE CURSOR", "close_all": "CLOSE CURSOR ALL", "prepare": "PREPARE",
        "deallocate": "DEALLOCATE", "deallocate_all": "DEALLOCATE ALL", "discard_all": "DISCARD ALL",
        "purpose": "SET", "purpose_reset": "RESET"}  # purpose: SET pgveil.purpose run as a prepared statement


def _held(arguments: list, text: str) -> bool:
    """Is this DECLARE's cursor WITH HOLD?  (True when its head does not read: kept longer.)"""
    try:
        _, query = heads.declare(arguments, text)
    except heads.HeadError:
        return True
    words = [keyword(t, text) for t in arguments[:query]]
    return any(a == "WITH" and b == "HOLD" for a, b in zip(words, words[1:]))


class Opened:
    """See the module docstring."""

    def __init__(self, statements=None) -> None:
        self.statements = statements  # proxy.prepared.PreparedStatements: the same name space, told what the server confirmed
        self.prepared: dict[str, object] = {}  # SQL PREPARE name -> Access (the server confirmed it)
        self.cursors: dict[str, object] = {}  # DECLARE name -> Access (the server confirmed it)
        self.held: set[str] = set()  # confirmed cursors declared WITH HOLD
        self.portals: dict[str, object] = {}  # Bind portal name -> Access
        self._owed: deque = deque()  # [QUERY, effects] / [PORTAL, effects] / [SYNC]: what is to be answered
        self._staged: list | None = None  # effects of the statement just decided (see take)
        self._bound: dict[str, list] = {}  # portal -> effects when executed
        self._waiting: dict[tuple, dict] = {}  # (declare|prepare, name) -> {Access: count} in _owed
        self.confirmed: list = []  # purpose declarations the server confirmed, for the session to take

    # ------------------------------------------------------------------ pending effects
    def _pending(self, what: str, name: str) -> list:
        """Accesses ``name`` may have been opened under by statements sent but not yet answered."""
        return list(self._waiting.get((what, name), ()))

    def _wait(self, effects, delta: int) -> None:
        """Count effects that enter (+1) or leave (-1) the queue: :meth:`_pending` in constant time."""
        for effect in effects:
            if effect is not None and effect[0] in ("declare", "prepare"):
                counts = self._waiting.setdefault(effect[:2], {})
                counts[effect[2]] = counts.get(effect[2], 0) + delta
                if counts[effect[2]] <= 0:
                    del counts[effect[2]]
                    if not counts:
                        del self._waiting[effect[:2]]

    def pending_prepares(self, name: str) -> list:
        """Accesses of SQL ``PREPARE name`` statements sent but not yet answered."""
        return self._pending("prepare", name)

    def _possible(self, what: str, name: str) -> list:
        known = (self.cursors if what == "declare" else self.prepared).get(name)
        return ([known] if known is not None else []) + self._pending(what, name)

    def query(self, segs: list, access, restricted: bool) -> str | None:
        """A Query or Parse about to be sent: the reason to refuse it, or None (and then what it
        opens or closes is staged, see :meth:`take`, and recorded once the server confirms it).
        Its statements are read by :func:`read` and judged by :meth:`judge`."""
        return self.judge([read(seg) for seg in segs], access, restricted)

    def judge(self, reads: list, access, restricted: bool) -> str | None:
        """:meth:`query` of statements already read (:func:`read`, one per statement: a large
        statement's are read in the process that decided it, so no parser runs here).

        Within one Query the statements run in order and an error skips the rest, so a use after
        a DECLARE/CLOSE of the same Query is judged by that statement.  Otherwise a use is judged
        against every access the name may have: the confirmed one and those of statements sent
        but not yet answered (fail closed: a DECLARE the server may refuse does not hide the
        cursor it would leave in place)."""
        cursors, prepared = {}, {}  # this Query's own changes: name -> Access, or None when closed
        all_closed = all_deallocated = False
        effects: list = []
        for one in reads:
            effects.append(None)
            if one is None:
                continue
            written, op = one
            if written is not None and restricted:  # PostgreSQL reads another name than pgveil would
                return heads.UNICODE_NAME.format(written[:40])
            kind, effect = op[0] if op is not None else None, None
            if kind == "prepare":
                prepared[op[1]], effect = access, ("prepare", op[1], access)
            elif kind == "execute":
                problem = self._execute_problem(op[1], prepared, all_deallocated, access, restricted)
                if problem is not None:
                    return problem
            elif kind == "declare":
                cursors[op[1]], effect = access, ("declare", op[1], access, op[2])
            elif kind == "fetch":
                problem = self._fetch_problem(op[1], cursors, all_closed, access)
                if problem is not None:
                    return problem
            elif kind == "close_all":
                cursors, all_closed, effect = {}, True, op
            elif kind == "close":
                cursors[op[1]], effect = None, op
            elif kind == "deallocate_all":
                prepared, all_deallocated, effect = {}, True, op
            elif kind == "deallocate":
                prepared[op[1]], effect = None, op
            elif kind == "discard_all":
                cursors, prepared, all_closed, all_deallocated = {}, {}, True, True
                effect = op
            effects[-1] = effect
        self._staged = effects
        return None

    def _execute_problem(self, name: str, prepared: dict, all_deallocated: bool, access,
                         restricted: bool) -> str | None:
        """EXECUTE ``name``: refused (for a restricted tier) when the statement may have been
        prepared under other access; ``prepared``: this Query's own PREPAREs and DEALLOCATEs."""
        if name in prepared or all_deallocated:
            opened = [prepared[name]] if prepared.get(name) is not None else []
        else:
            opened = self._possible("prepare", name)
        if restricted and any(a != access for a in opened):
            shown = next(a for a in opened if a != access).describe()
            return (f"prepared statement {name} was prepared under other access ({shown}); "
                    f"prepare it again: DEALLOCATE {name}, then PREPARE {name}")
        return None

    def _fetch_problem(self, name: str, cursors: dict, all_closed: bool, access) -> str | None:
        """FETCH or MOVE from ``name``: refused when the cursor may have been opened under access
        that has narrowed since; ``cursors``: this Query's own DECLAREs and CLOSEs."""
        if name in cursors or all_closed:
            opened = [cursors[name]] if cursors.get(name) is not None else []
        else:
            opened = self._possible("declare", name)
        narrowed = [a for a in opened if a.narrowed_to(access)]
        if narrowed:
            return (f"cursor {name} was opened under access that has since changed "
                    f"({narrowed[0].describe()}); it returns no more rows: {CHANGED}")
        return None

    def take(self) -> list:
        """The effects staged by the last :meth:`query` (one per statement), and forget them."""
        staged, self._staged = self._staged, None
        return staged or []

    # ------------------------------------------------------------------ what the client sent
    def client(self, kind: str) -> None:
        """A Query (QUERY), Sync or FunctionCall (SYNC) went upstream, in order."""
        self._owed.append([QUERY, deque()] if kind == QUERY else [SYNC, ()])

    def unsent(self) -> None:
        """The last Query was answered by pgveil itself (it never reaches the server)."""
        if self._owed:
            entry = self._owed.pop()
            self._wait(entry[1], -1)

    def sent(self, effects: list) -> None:
        """The Query just queued by :meth:`client` goes upstream with these effects (see
        :meth:`take`).  A Parse's effects are kept with its statement
        (:class:`proxy.prepared.Kept`), kept once the server prepared it."""
        if self._owed and self._owed[-1][0] == QUERY:
            self._owed[-1][1] = deque(effects)
            self._wait(effects, +1)

    def bind(self, portal: str, access, effects=()) -> None:
        """A Bind of ``portal`` from a statement with these effects (those of the statement the
        server holds when the Bind runs, see :meth:`proxy.prepared.PreparedStatements.held`).
        A named portal still open makes the Bind fail (42P03) and may run again (after ROLLBACK
        TO SAVEPOINT): when it was opened under wider access, that access stays noted for it
        (fail closed: its Executes are refused until the transaction ends)."""
        older = self.portals.get(portal)
        if portal and older is not None and older.narrowed_to(access):
            access = older
        self.portals[portal] = access
        if any(e is not None for e in effects):
            self._bound[portal] = effects
        else:
            self._bound.pop(portal, None)

    def executed(self, portal: str) -> None:
        """An Execute of ``portal`` went upstream: one answer (CommandComplete, PortalSuspended,
        EmptyQueryResponse or an error) is owed for it."""
        effects = [e for e in self._bound.get(portal, ()) if e is not None][:1]
        self._owed.append([PORTAL, deque(effects)])
        self._wait(effects, +1)

    # ------------------------------------------------------------------ what the server answered
    def answered(self, tag: str | None) -> None:
        """CommandComplete (its tag), PortalSuspended or EmptyQueryResponse (None)."""
        if not self._owed or self._owed[0][0] == SYNC:
            return  # a statement of a message pgveil did not look into
        entry = self._owed[0]
        if entry[0] == PORTAL:
            self._owed.popleft()
        if entry[1]:
            effect = entry[1].popleft()
            self._wait((effect,), -1)
            if effect is not None and tag is not None:
                self._apply(effect, tag)
            elif effect is not None and effect[0] in ("declare", "prepare"):
                self._apply(effect, "")  # not confirmed as expected: unknown

    def error(self) -> None:
        """ErrorResponse: the rest of a Query, or everything up to the next Sync, is skipped."""
        if self._owed and self._owed[0][0] == QUERY:
            self._wait(self._owed[0][1], -1)
            self._owed[0][1] = deque()
            return
        while self._owed and self._owed[0][0] == PORTAL:
            self._wait(self._owed.popleft()[1], -1)

    def ready(self, status: bytes) -> None:
        """ReadyForQuery: a Query or Sync is answered in full.  Outside a transaction block no
        cursor declared without HOLD is left (held ones of a block rolled back are gone too, but
        remembering a cursor that does not exist only refuses its use: kept)."""
        while self._owed:
            entry = self._owed.popleft()
            self._wait(entry[1], -1)
            if entry[0] != PORTAL:
                break
        if status == TxStatus.IDLE and len(self.held) < len(self.cursors):
            self.cursors = {n: a for n, a in self.cursors.items() if n in self.held}

    def bound(self, portal: str) -> list:
        """The effects an Execute of ``portal`` has (those of the statement it was bound from)."""
        return [e for e in self._bound.get(portal, ()) if e is not None]

    def _apply(self, effect: tuple, tag: str) -> None:
        kind = effect[0]
        if kind in ("purpose", "purpose_reset"):
            if tag == TAGS[kind]:
                self.confirmed.append(effect)
            return
        if tag != TAGS[kind]:  # answered otherwise than expected: what it opened is unknown
            if kind == "declare":
                self.cursors[effect[1]] = UNKNOWN
                self.held.add(effect[1])
            elif kind == "prepare":
                self.prepared[effect[1]] = UNKNOWN
                self._statement_change(kind, effect[1], UNKNOWN)
            return
        self._statement_change(kind, *effect[1:3])
        if kind == "close":  # cursors and the protocol's portals are one name space
            self.portals.pop(effect[1], None)
            self._bound.pop(effect[1], None)
        elif kind in ("close_all", "discard_all"):
            self.portals.clear()
            self._bound.clear()
        if kind == "declare":
            self.cursors[effect[1]] = effect[2]
            (self.held.add if effect[3] else self.held.discard)(effect[1])
        elif kind == "close":
            self.cursors.pop(effect[1], None)
            self.held.discard(effect[1])
        elif kind == "prepare":
            self.prepared[effect[1]] = effect[2]
        elif kind == "deallocate":
            self.prepared.pop(effect[1], None)
        if kind in ("close_all", "discard_all"):
            self.cursors, self.held = {}, set()
        if kind in ("deallocate_all", "discard_all"):
            self.prepared = {}

    def _statement_change(self, kind: str, name: str | None = None, access=None) -> None:
        """SQL PREPARE, DEALLOCATE and DISCARD ALL change the protocol's prepared statements too."""
        if self.statements is None:
            return
        if kind == "prepare":
            self.statements.sql_prepared(name, access)
        elif kind == "deallocate":
            self.statements.deallocated(name)
        elif kind in ("deallocate_all", "discard_all"):
            self.statements.deallocated(None)

    def execute(self, portal: str, access) -> str | None:
        """An Execute of a portal: the reason to refuse it, or None.  A cursor is a portal too:
        an Execute naming one declared with DECLARE fetches its rows."""
        opened = self.portals.get(portal)
        if opened is None:
            narrowed = [a for a in self._possible("declare", portal) if a.narrowed_to(access)]
            if narrowed:
                return f"cursor {portal} was opened under access that has since changed ({narrowed[0].describe()}): {CHANGED}"
            return None
        if not opened.narrowed_to(access):
            return None
        shown = f"portal {portal}" if portal else "the unnamed portal"
        return f"{shown} was opened under access that has since changed ({opened.describe()}): {CHANGED}"

    @property
    def any_open(self) -> bool:
        """Could an Execute name something opened under other access (a portal or a cursor)?"""
        return bool(self.portals or self.cursors or self._waiting)
