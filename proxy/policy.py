"""The policy engine: (statement, identity, rules, catalog) -> :class:`Decision`.

A short pipeline, like sqlglot's optimizer: **split** the text into statements with
sqlglot's tokenizer, **classify** each by its leading keyword (never by sqlglot's guess: its
parser turns some statements it does not know into something else), **gate** the kind
against the tier, **parse** and **rewrite** (:mod:`proxy.rewrite`, :mod:`proxy.writes`), then
**generate** the SQL to send and check that it parses back to itself.

For a tier that is not all-clear the generated SQL is what reaches the database, never the
client's text: the database then runs exactly what was analysed (a comment, a quoting trick
or a parser difference cannot hide a relation from the analysis).  Anything the engine does
not understand is refused (fail closed).  An all-clear tier's statements go as they are.

The vocabulary (:class:`Decision`, :class:`Refusal` with its reason codes, :class:`Context`,
:class:`ColumnUse`) is :mod:`proxy.verdicts`; it is re-exported here.

Pure: no I/O.

>>> from proxy.rules import load_rules, EXAMPLE
>>> from proxy.catalog import Catalog
>>> rules = load_rules(EXAMPLE)
>>> catalog = Catalog.from_spec({"public.customers": {"id": "integer", "bank_card": "text"}})
>>> decide("SELECT bank_card FROM customers", Context(rules.tier("sales"), rules, catalog)).reason
'column customers.bank_card is not visible to tier sales'
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, replace

from .normalize import from_tokens as normalize_tokens
from . import heads, lexer, searchpath
from .limits import decided_apart, normalize_bounded
from .sql import SqlglotError, exp, parse_one, to_sql, tokenize

from . import settings
from .rewrite import PLACEHOLDER, Rewriter, name_of
from .verdicts import ColumnUse, Context, Decision, NotUnderstood, Reason, Refusal  # noqa: F401 (re-exported)
from .ddl import check_ddl
from .rowlimits import cursor_ref
from .writes import rewrite_copy, rewrite_write

TRANSACTION_WORDS = frozenset({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"})
CURSOR_WORDS = frozenset({"FETCH", "MOVE", "CLOSE"})
SESSION_WORDS = frozenset({"LISTEN", "UNLISTEN", "NOTIFY", "EXECUTE"})
# what each statement that carries a statement may carry (PostgreSQL's grammar)
EXPLAINABLE = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "(", "INSERT", "UPDATE", "DELETE", "MERGE", "EXECUTE",
                         "DECLARE", "CREATE"})
PREPARABLE = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "(", "INSERT", "UPDATE", "DELETE", "MERGE"})
CURSOR_QUERIES = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
HARMLESS_WORDS = frozenset({"DISCARD", "DEALLOCATE"})
QUERY_WORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
WRITE_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})
DDL_WORDS = frozenset({"CREATE", "ALTER", "DROP", "COMMENT"})
ALTER_WITH_SETTINGS = frozenset({"ROLE", "USER", "DATABASE", "SYSTEM", "FUNCTION", "PROCEDURE", "ROUTINE"})
CREATE_REFUSED = ("FUNCTION", "PROCEDURE", "RULE", "TRIGGER", "EVENT", "AGGREGATE", "OPERATOR", "LANGUAGE",
                  "EXTENSION", "CAST", "CONVERSION", "ROLE", "USER", "SERVER", "FOREIGN", "PUBLICATION",
                  "SUBSCRIPTION", "TRANSFORM")


@dataclass
class Segment:
    text: str
    tokens: list
    offset: int  # position of text in the whole statement

    @property
    def word(self) -> str:
        """The statement's leading keyword ("(" for a parenthesised query); "" when it does not
        start with an unquoted word: a quoted name is never a keyword."""
        first = self.tokens[0]
        if first.token_type.name == "L_PAREN":
            return "("
        return heads.keyword(first, self.text, self.offset) or ""

    def words(self, n: int) -> list[str]:
        """The first ``n`` tokens as keywords ("" for a token that is not an unquoted word)."""
        return [heads.keyword(t, self.text, self.offset) or "" for t in self.tokens[:n]]

    def keyword(self, i: int) -> str | None:
        return heads.keyword(self.tokens[i], self.text, self.offset) if i < len(self.tokens) else None


def split_statements(sql: str, tokens: list | None = None) -> list[Segment]:
    """Statements of a Query message, as the server will see them (empty ones dropped).
    ``tokens``: the text's tokens, when the caller has them already."""
    if tokens is None:
        tokens = tokenize(sql)
    segments, current = [], []
    for token in tokens + [None]:
        if token is None or token.token_type.name == "SEMICOLON":
            if current:
                start, end = current[0].start, current[-1].end + 1
                segments.append(Segment(sql[start:end], current, start))
            current = []
        else:
            current.append(token)
    return segments


# ----------------------------------------------------------------------------- decisions
class Statement:
    """One statement's analysis: its kind and the SQL to send."""

    def __init__(self, ctx: Context, rewriter: Rewriter) -> None:
        self.ctx = ctx
        self.rw = rewriter
        self.kinds: list[str] = []
        self.names: list[tuple[str, str, str]] = []
        self.rewritten = False

    @staticmethod
    def passthrough(seg: Segment) -> str:
        """A statement sent as the client wrote it: it must hold no second statement that a
        tokenizer difference could hide, so a ';' anywhere in it is refused."""
        if ";" in seg.text:
            raise NotUnderstood(f"a ';' inside {seg.word} is not accepted for this tier")
        return seg.text

    def need(self, kind: str, what: str) -> None:
        if kind not in self.ctx.tier.statements:
            raise Refusal(f"{kind} statements ({what}) are not allowed for tier {self.ctx.tier.name}",
                          Reason.STATEMENT_KIND)
        self.kinds.append(kind)

    def run(self, seg: Segment) -> str:
        misread = heads.misread(seg.text, seg.tokens, seg.offset)
        if misread is not None:
            raise NotUnderstood(misread)
        word = seg.word
        if word in TRANSACTION_WORDS:
            self.kinds.append("session")
            return self.passthrough(seg)
        if word in ("SET", "RESET"):
            return self.setting(seg)
        if word in HARMLESS_WORDS:
            self.kinds.append("session")
            return self.passthrough(seg)
        if word == "SHOW":
            self.need("read", "SHOW")
            return self.passthrough(seg)
        if word in ("FETCH", "MOVE"):
            return self.fetch(seg)
        if word in CURSOR_WORDS:
            self.need("read", word)
            return self.passthrough(seg)
        if word == "EXECUTE":
            return self.execute(seg)
        if word in SESSION_WORDS:
            self.need("session", word)
            return self.passthrough(seg)
        if word in QUERY_WORDS or word in WRITE_WORDS or word == "COPY":
            return self.parsed(seg)
        if word == "EXPLAIN":
            return self.explain(seg)
        if word == "PREPARE":
            return self.prepare(seg)
        if word == "DECLARE":
            return self.declare(seg)
        if word == "DO":
            raise Refusal(f"DO blocks are not allowed for tier {self.ctx.tier.name}", Reason.DO)
        if word in DDL_WORDS:
            return self.ddl(seg)
        self.need("admin", word or "a statement that does not start with a keyword")
        return self.passthrough(seg)

    # -- SET ------------------------------------------------------------------
    def setting(self, seg: Segment) -> str:
        """SET and RESET: each setting changed must be on the tier's allow list (:mod:`proxy.settings`)."""
        reset = seg.word == "RESET"
        if reset:  # sqlglot keeps RESET's arguments as one string: read them on their own
            _, body = self.body(seg)
            tokens, text, offset = body.tokens, body.text, body.offset
        else:
            tokens, text, offset = seg.tokens[1:], seg.text, seg.offset
        try:
            changes = settings.read_set(reset, tokens, text, offset)
        except settings.Unreadable as exc:
            raise NotUnderstood(f"{seg.word}: {exc}") from None
        for name, values in changes:
            problem = settings.check(name, values, self.ctx.tier.settings) if name != "all" else None
            if problem:
                raise Refusal(problem.replace("this tier", f"tier {self.ctx.tier.name}"), Reason.SETTING)
        self.kinds.append("session")
        return self.passthrough(seg)

    # -- statements with a statement inside ----------------------------------------
    @staticmethod
    def body(seg: Segment) -> tuple[str, Segment]:
        """The text after the leading keyword, tokenized on its own (the tokenizer keeps a
        command's arguments as one string)."""
        if len(seg.tokens) < 2:
            raise NotUnderstood(f"{seg.word} is incomplete")
        cut = seg.tokens[0].end + 1 - seg.offset  # (a command string token's own start is unreliable)
        rest = seg.text[cut:]
        parts = split_statements(rest)
        if len(parts) != 1:
            raise NotUnderstood(f"{seg.word} is not one statement")
        return seg.text[:cut], parts[0]

    def inner(self, head: str, body: Segment, index: int, allowed: frozenset) -> str:
        if index >= len(body.tokens):
            raise NotUnderstood("statement is incomplete")
        start = body.tokens[index].start - body.offset
        parts = split_statements(body.text[start:])  # fresh tokens: see body()
        if len(parts) != 1:
            raise NotUnderstood("the inner statement is not one statement")
        if parts[0].word not in allowed:
            raise NotUnderstood(f"{head.strip().split()[0].upper()} cannot carry {parts[0].word or 'this statement'}")
        if ";" in body.text[:start]:  # the head goes as written: no second statement may hide in it
            raise NotUnderstood(f"a ';' in the head of {head.strip().split()[0].upper()}")
        return " ".join(p for p in (head.strip(), body.text[:start].strip(), self.run(parts[0])) if p)

    def explain(self, seg: Segment) -> str:
        head, body = self.body(seg)
        i, analyze, tokens = 0, False, body.tokens
        if tokens[0].token_type.name == "L_PAREN":
            depth = 0
            while i < len(tokens):
                kind = tokens[i].token_type.name
                depth += kind == "L_PAREN"
                depth -= kind == "R_PAREN"
                # an option's name may be quoted ("analyze"): read by its text, the safe side
                if tokens[i].text.upper() in ("ANALYZE", "ANALYSE") and i + 1 < len(tokens) \
                        and tokens[i + 1].text.upper() not in ("FALSE", "OFF", "0"):
                    analyze = True
                i += 1
                if depth == 0:
                    break
        while i < len(tokens) and body.keyword(i) in ("ANALYZE", "ANALYSE", "VERBOSE"):
            analyze = analyze or body.keyword(i) != "VERBOSE"
            i += 1
        if not analyze:
            self.need("read", "EXPLAIN")
        before = len(self.kinds)
        text = self.inner(head, body, i, EXPLAINABLE)
        if not analyze:
            del self.kinds[before:]  # EXPLAIN without ANALYZE runs nothing
        return text

    def prepare(self, seg: Segment) -> str:
        """``PREPARE name [(types)] AS statement``: the statement is analysed now, and its name
        noted so that an EXECUTE of it can be checked (see :class:`proxy.sqlnames.SqlNames`)."""
        head, body = self.body(seg)
        if body.keyword(0) == "TRANSACTION" and body.tokens[1:2] and body.tokens[1].token_type.name == "STRING":
            self.need("admin", "PREPARE TRANSACTION")
            return self.passthrough(seg)
        self.need("session", "PREPARE")
        try:
            name, index = heads.prepare(body.tokens, body.text, body.offset)
        except heads.HeadError as exc:
            raise NotUnderstood(f"PREPARE: {exc}") from None
        text = self.inner(head, body, index, PREPARABLE)
        self.names.append(("declare", "statement", name))
        return text

    def declare(self, seg: Segment) -> str:
        """``DECLARE name ... CURSOR ... FOR query``: the query is analysed now, the name noted."""
        head, body = self.body(seg)
        try:
            name, index = heads.declare(body.tokens, body.text, body.offset)
        except heads.HeadError as exc:
            raise NotUnderstood(f"DECLARE: {exc}") from None
        before = len(self.kinds)
        text = self.inner(head, body, index, CURSOR_QUERIES)
        if set(self.kinds[before:]) - {"read"}:
            raise NotUnderstood("a cursor's query must only read")
        self.names.append(("declare", "cursor", name))
        return text

    def fetch(self, seg: Segment) -> str:
        """``FETCH``/``MOVE [direction] [FROM|IN] name``: reads a cursor declared before."""
        self.need("read", seg.word)
        _, body = self.body(seg)
        try:
            name = heads.fetch(body.tokens, body.text, body.offset)
        except heads.HeadError as exc:
            raise NotUnderstood(str(exc)) from None
        self.names.append(("use", "cursor", name))
        return self.passthrough(seg)

    def execute(self, seg: Segment) -> str:
        """``EXECUTE name [(expression, ...)]``: runs a statement prepared before; its parameters
        are expressions, analysed like a query's (a function there could read data)."""
        self.need("session", "EXECUTE")
        if len(seg.tokens) < 2:
            raise NotUnderstood("EXECUTE without a name")
        head, body = self.body(seg)
        try:
            name, paren = heads.execute(body.tokens, body.text, body.offset)
        except heads.HeadError as exc:
            raise NotUnderstood(str(exc)) from None
        self.names.append(("use", "statement", name))
        if paren is None:
            return self.passthrough(seg)
        start = body.tokens[paren].start - body.offset
        query = f"SELECT {body.text[start + 1:-1]}"  # the parameters, without their parentheses
        parts = split_statements(query)
        if len(parts) != 1:
            raise NotUnderstood("EXECUTE's parameters are not one list")
        misread = heads.misread(parts[0].text, parts[0].tokens, parts[0].offset)
        if misread is not None:
            raise NotUnderstood(misread)
        try:
            tree = parse_one(parts[0].text)
        except SqlglotError as exc:
            raise NotUnderstood(str(exc).splitlines()[0][:200]) from None
        if not isinstance(tree, exp.Select) or any(v for k, v in tree.args.items() if k != "expressions"):
            raise NotUnderstood("EXECUTE's parameters are not a list of expressions")
        self.rw.rewrite(tree)
        params = self.rw.substitute(generate(tree))
        if not params.startswith("SELECT "):
            raise NotUnderstood("EXECUTE's parameters did not generate as expected")
        return f"{head.strip()} {body.text[:start].strip()}({params[len('SELECT '):]})"

    def ddl(self, seg: Segment) -> str:
        words = [w for w in seg.words(6) if w not in ("OR", "REPLACE", "TEMP", "TEMPORARY", "UNLOGGED",
                                                      "CONSTRAINT", "DEFAULT", "TRUSTED", "PROCEDURAL")]
        if seg.word == "CREATE" and len(words) > 1 and words[1] in CREATE_REFUSED:
            raise Refusal(f"CREATE {words[1]} is not allowed for tier {self.ctx.tier.name}", Reason.CREATE)
        if seg.word == "ALTER" and len(words) > 1 and words[1] in ALTER_WITH_SETTINGS:
            self.alter_settings(seg, words[1])
        self.need("ddl", seg.word)
        if seg.word == "CREATE" and any(seg.keyword(i) == "AS" for i in range(len(seg.tokens))):
            return self.parsed(seg, ddl=True)
        catalog, ctx = self.ctx.catalog, self.ctx
        why = check_ddl(seg.tokens, lambda schema, name: catalog.resolve(schema, name, ctx.search_path, ctx.user)
                        if name else None, self.rw.ddl_protected)
        if why:
            raise Refusal(f"{why} for tier {ctx.tier.name}", Reason.DDL)
        return self.passthrough(seg)

    def alter_settings(self, seg: Segment, what: str) -> None:
        """``ALTER ROLE/DATABASE/FUNCTION ... SET|RESET``: settings for later sessions or calls
        are held to the same allow list as SET."""
        if what == "SYSTEM":
            raise Refusal(f"ALTER SYSTEM is not allowed for tier {self.ctx.tier.name}: "
                          f"it changes the server's settings", Reason.SETTING)
        for i in range(2, len(seg.tokens)):
            word = seg.keyword(i)
            if word in ("SET", "RESET"):
                rest = split_statements(seg.text[seg.tokens[i].end + 1 - seg.offset:])  # fresh tokens: see body()
                if len(rest) != 1:
                    raise NotUnderstood(f"ALTER {what} ... {word} is incomplete")
                try:
                    changes = settings.read_set(word == "RESET", rest[0].tokens, rest[0].text, rest[0].offset)
                except settings.Unreadable as exc:
                    raise NotUnderstood(f"ALTER {what} ... {word}: {exc}") from None
                for name, values in changes:
                    problem = settings.check(name, values, self.ctx.tier.settings) if name != "all" else None
                    if problem:
                        raise Refusal(f"ALTER {what} ... {word}: "
                                      + problem.replace("this tier", f"tier {self.ctx.tier.name}"), Reason.SETTING)
                return

    # -- parsed statements -----------------------------------------------------------
    def parsed(self, seg: Segment, ddl: bool = False) -> str:
        try:
            tree = parse_one(seg.text)
        except SqlglotError as exc:
            raise NotUnderstood(str(exc).splitlines()[0][:200]) from None
        word = seg.word
        if ddl:
            if not isinstance(tree, exp.Create) or not isinstance(tree.expression, exp.Query):
                raise NotUnderstood("CREATE ... AS with an unexpected shape")
            self.rw.rewrite(tree.expression)
        elif word in QUERY_WORDS and isinstance(tree, (exp.Query, exp.Values)):
            if tree.find(exp.Insert, exp.Update, exp.Delete, exp.Merge) is not None:
                raise Refusal(f"data-modifying statements inside a query (WITH ... DELETE and the like) "
                              f"are not allowed for tier {self.ctx.tier.name}", Reason.WRITE)
            if tree.args.get("into") is not None:
                self.need("ddl", "SELECT INTO")
            self.need("read", word)
            if tree.find(exp.Lock) is not None:
                # FOR UPDATE/SHARE locks rows: PostgreSQL asks UPDATE privilege for it, pgveil `write`
                # (a read-only tier holding locks would stall the application's writes)
                self.need("write", f"{word} ... FOR UPDATE/SHARE")
            self.rw.rewrite(tree)
        elif word in ("WITH",) and isinstance(tree, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
            ctes = tree.args.get("with_")
            if ctes is not None and ctes.find(exp.Insert, exp.Update, exp.Delete, exp.Merge) is not None:
                raise Refusal(f"data-modifying statements inside WITH are not allowed for tier {self.ctx.tier.name}",
                              Reason.WRITE)
            self.need("write", type(tree).__name__.upper())
            rewrite_write(self.rw, tree)
        elif word in WRITE_WORDS and isinstance(tree, (exp.Insert, exp.Update, exp.Delete, exp.Merge)) \
                and type(tree).__name__.upper() == word:
            self.need("write", word)
            rewrite_write(self.rw, tree)
        elif word == "COPY" and isinstance(tree, exp.Copy):
            self.need("copy", "COPY")
            rewrite_copy(self.rw, tree)
        else:
            raise NotUnderstood(f"{word} was parsed as {type(tree).__name__}")
        return self.rw.substitute(generate(tree))


def generate(tree: exp.Expression) -> str:
    """SQL text for the tree, checked to parse back to the same text (a misparse guard)."""
    try:
        text = to_sql(tree)
        again = to_sql(parse_one(text))
    except SqlglotError as exc:
        raise NotUnderstood(f"generated SQL does not parse: {exc}") from None
    if again != text:
        raise NotUnderstood("the statement does not round-trip through the parser")
    return text


def decide(sql: str, ctx: Context, templates: dict | None = None, tokens: list | None = None) -> Decision:
    """Decide one Query or Parse text for the context's tier (see the module docstring)."""
    if ctx.tier.all_clear:
        return _decide_all_clear(sql, ctx, tokens)
    try:
        segments = split_statements(sql, tokens)
    except SqlglotError as exc:
        return _refuse(NotUnderstood(f"it does not tokenize: {str(exc)[:200]}"))
    if not segments:
        return Decision("allow", sql)
    if PLACEHOLDER in sql:
        return _refuse(NotUnderstood("the statement contains pgveil's internal names"))
    if len(segments) > 1 and any(seg.word in DDL_WORDS for seg in segments):
        return _refuse(Refusal(f"DDL must be sent alone for tier {ctx.tier.name}: the statements after it would be "
                               f"decided against the catalog as it was before it ran", Reason.DDL))
    rw = Rewriter(ctx, templates)
    texts, kinds, cursors = [], [], []
    unknown_path = None  # the statement after which the Query's search_path cannot be followed
    changed = False  # an earlier statement of the Query changed the path
    try:
        names = []
        for seg in segments:
            statement = Statement(ctx, rw)
            reached = len(rw.analysis.relations)
            texts.append(statement.run(seg))
            if unknown_path and len(rw.analysis.relations) > reached:
                raise Refusal(f"this Query changes search_path with {unknown_path} in a way pgveil cannot follow "
                              f"and then uses relations; send the statements as separate queries", Reason.SEARCH_PATH)
            kinds += statement.kinds
            names += statement.names
            ref = cursor_ref(seg.text, seg.tokens[0])
            if ref is not None:
                cursors.append(ref)
            path = searchpath.change(seg, changed) if len(segments) > 1 else None
            changed = changed or path is not None
            if path == searchpath.UNKNOWN:
                unknown_path = unknown_path or " ".join(w for w in seg.words(3) if w)
            elif path is not None:  # later statements run under the path this one leaves
                ctx = rw.ctx = replace(ctx, search_path=path)
    except Refusal as exc:
        return _refuse(exc, rw)
    except (SqlglotError, RecursionError, ValueError, KeyError, AttributeError, TypeError) as exc:
        return _refuse(NotUnderstood(f"{type(exc).__name__}: {str(exc)[:200]}"), rw)
    columns = tuple(rw.analysis.columns.values())
    if rw.analysis.packs and columns and ctx.tier.row_limit({c.cls for c in columns}) is not None:
        return _refuse(Refusal(f"{rw.analysis.packs} packs many rows into one value: tier {ctx.tier.name} has "
                               f"max_rows, so it may not use it over sensitive columns", Reason.ROW_LIMIT), rw)
    masked = any(c.action != "clear" for c in columns) or any(
        ctx.tier.rows and rw.row_filter(ctx.catalog.by_name[tuple(r.split(".", 1))]) for r in rw.analysis.relations)
    return Decision("rewrite" if masked else "allow", "; ".join(texts), kinds=tuple(dict.fromkeys(kinds)),
                    relations=tuple(rw.analysis.relations), columns=columns, names=tuple(names),
                    cursors=tuple(cursors))


def _refuse(exc: Refusal, rw: Rewriter | None = None) -> Decision:
    return exc.decision(relations=tuple(rw.analysis.relations) if rw else ())


def _decide_all_clear(sql: str, ctx: Context, tokens: list | None = None) -> Decision:
    """All-clear tiers: the statement kinds are still gated; the text goes as it is."""
    try:
        segments = split_statements(sql, tokens)
    except SqlglotError:
        return Decision("allow", sql, unparsed=True)
    if not ctx.tier.statements >= frozenset({"read", "write", "ddl", "copy", "session", "admin"}):
        for seg in segments:
            misread = heads.misread(seg.text, seg.tokens, seg.offset)
            if misread is not None:
                return _refuse(NotUnderstood(misread))
    kinds = []
    for seg in segments:
        word = seg.word
        kind = ("session" if word in TRANSACTION_WORDS | HARMLESS_WORDS | SESSION_WORDS | {"SET", "RESET", "PREPARE"}
                else "read" if word in QUERY_WORDS | CURSOR_WORDS | {"SHOW", "EXPLAIN", "DECLARE"}
                else "write" if word in WRITE_WORDS else "copy" if word == "COPY"
                else "ddl" if word in DDL_WORDS else "admin")
        if kind not in ctx.tier.statements and word not in TRANSACTION_WORDS | {"SET", "RESET"}:
            return _refuse(Refusal(f"{kind} statements ({word}) are not allowed for tier {ctx.tier.name}",
                                   Reason.STATEMENT_KIND))
        kinds.append(kind)
    return Decision("allow", sql, kinds=tuple(dict.fromkeys(kinds)))


# Literal markers: parameter numbers PostgreSQL never accepts (it stops at 65535), one range per
# literal kind so that the kinds are part of the shape.
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


def failed_analysis(sql: str, tier, exc: BaseException | str) -> Decision:
    """The analysis of ``sql`` failed (an exception, a child process that died or took too long):
    refused for a restricted tier; for an all-clear tier relayed unanalysed, as a text its
    tokenizer cannot read is, unless the tier lacks a statement kind (then nothing proves the
    statement is of a kind it has)."""
    why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc)[:200]}"
    normalized = normalize_bounded(sql)
    if tier.all_clear and set(KINDS) <= set(tier.statements):
        return Decision("allow", sql, unparsed=True, normalized=normalized)
    return Refusal.analysis_failed(why).decision(unparsed=True, normalized=normalized)


KINDS = ("read", "write", "ddl", "copy", "session", "admin")


def parse_search_path(value: str | None) -> tuple:
    """``"$user", public`` (as ParameterStatus reports it) to ('$user', 'public')."""
    if not value:
        return ("$user", "public")
    parts = []
    for part in re.findall(r'"((?:[^"]|"")*)"|([^,\s]+)', value):
        quoted, plain = part
        parts.append(quoted.replace('""', '"') if quoted else plain.lower())
    return tuple(parts)


class Engine:
    """Rules, catalog and decision cache, shared by every session of a process.

    The server swaps ``rules`` and ``catalog`` when they change; sessions only read them.
    """

    def __init__(self, rules, catalog=None) -> None:
        self.rules = rules
        self._catalog = None
        self.catalog = catalog
        self.cache = DecisionCache()
        self.rules_sha256 = ""
        self._hidden: dict = {}

    @property
    def catalog(self):
        return self._catalog

    @catalog.setter
    def catalog(self, new) -> None:
        """A newly read catalog: columns renamed since the last one keep their class (pinned by
        relation and attnum, for as long as this process runs)."""
        if new is not None and self._catalog is not None and new is not self._catalog:
            new.pinned = carried_classes(self.rules, self._catalog, new)
        self._catalog = new

    def tier_for(self, user: str, address: str | None = None, now=None):
        return self.identity(user, address, now)[0]

    def identity(self, user: str, address: str | None = None, now=None) -> tuple:
        """(tier, grants in force) of an identity at ``now``."""
        roles = self.catalog.roles_of(user) if self.catalog is not None else frozenset()
        return self.rules.effective_tier(user, roles, address, now)

    def resolve(self, user: str, address: str | None, now, purpose: str | None):
        """The identity's effective access at ``now`` (:func:`proxy.access.resolve`)."""
        from .access import resolve
        roles = self.catalog.roles_of(user) if self.catalog is not None else frozenset()
        return resolve(self.rules, user, roles, address, now, purpose)

    def decide(self, sql: str, tier, search_path: tuple, user: str, access=None,
               ready: tuple | None = None) -> Decision:
        """The decision for one statement.  ``ready``: (key, decision) taken in a child process
        (see :meth:`apart`), used when the key is still this statement's.  Any failure of the
        analysis (a RecursionError on deep nesting, a parser bug) is a refusal for a restricted
        tier and a relay for an all-clear tier, never an exception."""
        if self.catalog is None and not tier.all_clear:
            return Refusal.catalog_not_loaded().decision()
        ctx = Context(tier, self.rules, self.catalog, search_path, user)
        if ready is not None and ready[0] == self.cache.key(sql, ctx, access):
            return ready[1]
        try:
            return self.cache.decide(sql, ctx, access)
        except Exception as exc:  # noqa: BLE001 - whatever the analysis raises, the session goes on
            return failed_analysis(sql, tier, exc)

    def apart(self, sql: str, tier, search_path: tuple, user: str, access=None) -> tuple | None:
        """The cache key of a statement to decide in a child process (a large or deeply nested
        text not decided before: see :mod:`proxy.limits`), or None to decide it here."""
        if not decided_apart(sql) or (self.catalog is None and not tier.all_clear):
            return None
        key = self.cache.key(sql, Context(tier, self.rules, self.catalog, search_path, user), access)
        if self.cache.cached(key) is not None:
            return None
        if len(sql) <= SHAPE_READ_LIMIT:  # a shape decided before is reused here, cheaply
            read = lexer.quick(sql)
            if read is not None and isinstance(self.cache.cached(key[:-1] + ("shape", read[0])), Template):
                return None
        return key

    def hidden_columns(self, tier) -> frozenset:
        """(table oid, attnum) of every column this tier may not see in clear: the second,
        independent check on RowDescription uses it."""
        if self.catalog is None or tier.all_clear:
            return frozenset()
        key = (self.rules.version, self.catalog.version, tier.name)
        found = self._hidden.get(key)
        if found is None:
            rw = Rewriter(Context(tier, self.rules, self.catalog))
            found = frozenset((rel.oid, col.attnum) for rel in self.catalog.by_oid.values()
                              if rel.schema not in ("pg_catalog", "information_schema")
                              for col in rel.columns if rw.class_action(rel, col.name)[1].action != "clear")
            self._hidden = {key: found}
        return found


def carried_classes(rules, old, new) -> dict:
    """(oid, attnum) -> class for the columns of ``new`` that had a class in ``old`` (by name or
    pinned) and have none by their name now: renamed columns, or columns of renamed relations."""
    pinned = {}
    for oid, rel in new.by_oid.items():
        before = old.by_oid.get(oid)
        if before is None or rel.schema in ("pg_catalog", "information_schema"):
            continue
        for col in rel.columns:
            prior = next((c for c in before.columns if c.attnum == col.attnum), None)
            if prior is None:
                continue
            cls = rules.class_of(before.schema, before.name, prior.name) or old.pinned.get((oid, col.attnum))
            if cls is not None and rules.class_of(rel.schema, rel.name, col.name) is None:
                pinned[(oid, col.attnum)] = cls
    return pinned


__all__ = ["Engine", "Decision", "DecisionCache", "Context", "decide", "split_statements", "parse_search_path", "name_of"]
