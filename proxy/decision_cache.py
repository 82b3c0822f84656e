"""The decision cache: decisions by exact text, and by *shape* (the text with its literals
replaced by markers), so that statements differing only in their literals share one analysis.

Pure: no I/O (a bounded, in-process cache).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace

from . import heads, lexer
from .limits import normalize_bounded
from .normalize import from_tokens as normalize_tokens
from .pipeline import decide
from .segments import QUERY_WORDS, WRITE_WORDS
from .sql import SqlglotError, exp, to_sql, tokenize
from .verdicts import Context, Decision

MARKER_BASE = {"STRING": lexer.STRING_MARK, "NUMBER": lexer.NUMBER_MARK}
_MARKER = re.compile(r"\$([78]\d{4})(?!\d)")
_OTHER_LITERALS = frozenset({"BYTE_STRING", "HEREDOC_STRING", "BIT_STRING", "HEX_STRING", "NATIONAL_STRING",
                             "RAW_STRING", "UNICODE_STRING", "COMMAND", "SEMICOLON"})
UNCACHEABLE = object()
CACHE_BYTES = 64 << 20  # what a process's decision cache may hold: texts, rewritten texts, shapes
MAX_TEMPLATES = 4096
SHAPE_READ_LIMIT = 16 * 1024  # a large statement's shape is looked up when the quick reading costs little
ENTRY_OVERHEAD = 600  # the tuple, the Decision, the dict slots: measured about 500 bytes


def entry_bytes(key: tuple, value) -> int:
    """What a cache entry holds, counted in characters of its texts plus a fixed overhead (an
    all-clear decision shares its text with the key, and is still counted twice: an upper bound)."""
    size = ENTRY_OVERHEAD + sum(len(part) for part in key if isinstance(part, str))
    if isinstance(value, Template):
        size += sum(map(len, value.texts)) + len(value.decision.normalized)
    elif isinstance(value, Decision):
        size += len(value.sql) + len(value.normalized) + len(value.reason)
        size += value.after.size if value.after is not None else 0
    return size


def shape_of(sql: str, tokens: list) -> tuple[str, list] | None:
    """The statement with each plain string and number replaced by a marker, and the literals
    taken out; None when the statement is not of the kinds this applies to."""
    while tokens and tokens[-1].token_type.name == "SEMICOLON":
        tokens = tokens[:-1]  # one statement, as drivers often send it: "...;"
    if not tokens:
        return None
    first = "(" if tokens[0].token_type.name == "L_PAREN" else heads.keyword(tokens[0], sql)
    if first not in QUERY_WORDS | WRITE_WORDS:
        return None
    parts, literals, pos = [], [], 0
    for token in tokens:
        kind = token.token_type.name
        if kind in _OTHER_LITERALS:
            return None
        if kind == "NUMBER" and token.start > 0 and sql[token.start - 1] == "$":
            if int(token.text) > 65535:
                return None  # a "parameter" no server accepts: it could be mistaken for a marker
            continue
        if kind in MARKER_BASE:
            parts += (sql[pos:token.start], f"${MARKER_BASE[kind] + len(literals)}")
            literals.append((kind, token.text))
            pos = token.end + 1
    if len(literals) > 9999:
        return None
    parts.append(sql[pos:])
    return "".join(parts), literals


_PLAIN_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _render(kind: str, text: str) -> str:
    """A literal as the generator writes it, so that a cached decision gives the same text."""
    if kind == "NUMBER" and _PLAIN_NUMBER.fullmatch(text):
        return text  # what the generator writes for these (tests/test_lexer.py checks it)
    if kind == "STRING" and "\\" not in text:
        return "'" + text.replace("'", "''") + "'"
    node = exp.Literal.string(text) if kind == "STRING" else exp.Literal.number(text)
    return to_sql(node)


class Template:
    """A shape's decision, cut at its markers once, so that each statement of that shape only
    joins its own literals in."""

    __slots__ = ("decision", "texts", "slots")

    def __init__(self, decision: Decision, literals: list) -> None:
        self.decision = decision
        self.texts: list[str] = []
        self.slots: list[int] = []
        if decision.refused:
            return
        pieces = _MARKER.split(decision.sql)  # text, marker number, text, ...
        self.texts = pieces[0::2]
        for number in map(int, pieces[1::2]):
            kind = "STRING" if number < MARKER_BASE["NUMBER"] else "NUMBER"
            index = number - MARKER_BASE[kind]
            if index >= len(literals) or literals[index][0] != kind:
                raise LookupError("a marker of the wrong kind")
            self.slots.append(index)
        if set(self.slots) != set(range(len(literals))):  # (a barrier's copy repeats a literal)
            raise LookupError("a marker was lost")


def _with_text(decision: Decision, sql: str, normalized: str) -> Decision:
    """``dataclasses.replace(decision, sql=sql, normalized=normalized)``, at a tenth of its cost
    (it runs for every statement answered from a shape)."""
    copy = object.__new__(Decision)
    copy.__dict__.update(decision.__dict__, sql=sql, normalized=normalized)
    return copy


def instantiate(template: Template, literals: list, original: str, normalized: str, all_clear: bool) -> Decision:
    """A cached shape's decision for one statement: its literals put back where the markers are."""
    decision = template.decision
    if decision.refused or all_clear:
        return _with_text(decision, original if not decision.refused else "", normalized)
    texts = template.texts
    out = [texts[0]]
    for i, index in enumerate(template.slots, 1):
        out += (_render(*literals[index]), texts[i])
    return _with_text(decision, "".join(out), normalized)


class DecisionCache:
    """Decisions by (rules version, catalog version, tier, search_path, user, text); LRU.

    Statements that differ only in their literals (``WHERE id = 42`` and ``WHERE id = 43``) share
    one decision: the statement's *shape* (literals replaced by markers) is decided once, and each
    statement gets that decision with its own literals put back, rendered as the generator renders
    them.  The first time a shape is seen its result is checked against a full decision of the
    same statement; a shape whose results differ in anything is never used.
    """

    def __init__(self, size: int = 20_000, max_bytes: int = CACHE_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0  # what the entries hold, by :func:`entry_bytes`
        self._entries: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self.templates: dict = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, key):
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def _put(self, key, value) -> None:
        """Keep ``value``, dropping the least recently used entries beyond the entry and byte
        bounds; an entry larger than a sixteenth of the byte bound is not kept at all."""
        size = entry_bytes(key, value)
        if key in self._entries:
            self.bytes -= self._sizes.pop(key)
            del self._entries[key]
        if size > self.max_bytes // 16:
            return
        self._entries[key] = value
        self._sizes[key] = size
        self.bytes += size
        while len(self._entries) > self.size or self.bytes > self.max_bytes:
            old, _ = self._entries.popitem(last=False)
            self.bytes -= self._sizes.pop(old)
        if len(self.templates) > MAX_TEMPLATES:  # masking subqueries of rules and catalogs gone by
            self.templates.clear()

    def key(self, sql: str, ctx: Context, access=None) -> tuple:
        """The exact text's cache key in this context (as :meth:`decide` makes it)."""
        catalog_version = ctx.catalog.version if ctx.catalog is not None else None
        return (ctx.rules.version, catalog_version, access if access is not None else ("tier", ctx.tier.name),
                ctx.search_path, ctx.user, sql)

    def cached(self, key: tuple) -> Decision | None:
        return self._entries.get(key)

    def adopt(self, key: tuple, decision: Decision) -> None:
        """A decision taken elsewhere (a child process) for this exact key."""
        self._put(key, decision)

    def decide(self, sql: str, ctx: Context, access=None) -> Decision:
        """``access``: the session's effective access (:class:`proxy.access.Access`), the key of
        its decisions; without a session (explain, tests) the tier's name stands in."""
        catalog_version = ctx.catalog.version if ctx.catalog is not None else None
        base = (ctx.rules.version, catalog_version, access if access is not None else ("tier", ctx.tier.name),
                ctx.search_path, ctx.user)
        found = self._get(base + (sql,))
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        read = lexer.quick(sql)  # most statements: their shape read without sqlglot's tokenizer
        if read is not None:
            shape, literals, normalized = read
            decision = self._from_template(base + ("shape", shape), literals, sql, normalized[:4000], ctx)
            if decision is not None:
                self._put(base + (sql,), decision)
                return decision
        try:
            tokens = tokenize(sql)
        except SqlglotError:
            tokens = None
        normalized = normalize_tokens(sql, tokens) if tokens is not None else normalize_bounded(sql)
        shaped = shape_of(sql, tokens) if tokens is not None else None
        decision = None
        if shaped is not None:
            decision = self._from_shape(base, shaped, sql, normalized, ctx, tokens)
        if decision is None:
            decision = replace(decide(sql, ctx, self.templates, tokens), normalized=normalized)
        self._put(base + (sql,), decision)
        return decision

    def _from_template(self, key: tuple, literals: list, sql: str, normalized: str, ctx: Context) -> Decision | None:
        """The decision of a shape decided before, with this statement's literals; None when the
        shape is new or unusable."""
        template = self._get(key)
        if template is None or template is UNCACHEABLE:
            return None
        try:
            return instantiate(template, literals, sql, normalized, ctx.tier.all_clear)
        except LookupError:
            self._put(key, UNCACHEABLE)
            return None

    def _from_shape(self, base: tuple, shaped: tuple, sql: str, normalized: str, ctx: Context,
                    tokens: list) -> Decision | None:
        shape, literals = shaped
        key = base + ("shape", shape)
        if key in self._entries:  # decided before, usable or not
            return self._from_template(key, literals, sql, normalized, ctx)
        decided = decide(shape, ctx, self.templates)
        full = replace(decide(sql, ctx, self.templates, tokens), normalized=normalized)
        try:
            template = Template(decided, literals)
            same = instantiate(template, literals, sql, normalized, ctx.tier.all_clear) == full
        except LookupError:
            same = False
        self._put(key, template if same and not decided.unparsed else UNCACHEABLE)
        return full
