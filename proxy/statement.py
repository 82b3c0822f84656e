"""One statement's analysis: its kind gated against the tier, then the SQL to send.

:class:`Statement` classifies a :class:`proxy.segments.Segment` by its leading keyword and
takes it down one path: statements that go as written (transaction control, SHOW, FETCH ...)
are only gated; SET/RESET and ALTER ... SET are held to the tier's settings; statements that
carry a statement (EXPLAIN, PREPARE, DECLARE, EXECUTE's parameters) have the inner one analysed;
queries, writes and COPY are parsed and rewritten (:mod:`proxy.rewrite`, :mod:`proxy.writes`)
and generated again (:func:`generate`).  What it cannot follow raises
:class:`proxy.verdicts.NotUnderstood`; what the tier may not do raises
:class:`proxy.verdicts.Refusal` with its reason code.

Pure: no I/O.
"""

from __future__ import annotations

from . import heads, settings
from .ddl import check_ddl
from .rewrite import Rewriter
from .segments import (CURSOR_WORDS, DDL_WORDS, HARMLESS_WORDS, QUERY_WORDS, SESSION_WORDS, TRANSACTION_WORDS,
                       WRITE_WORDS, Segment, split_statements)
from .sql import SqlglotError, exp, parse_one, to_sql
from .verdicts import Context, NotUnderstood, Reason, Refusal
from .writes import rewrite_copy, rewrite_write

# what each statement that carries a statement may carry (PostgreSQL's grammar)
EXPLAINABLE = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "(", "INSERT", "UPDATE", "DELETE", "MERGE", "EXECUTE",
                         "DECLARE", "CREATE"})
PREPARABLE = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "(", "INSERT", "UPDATE", "DELETE", "MERGE"})
CURSOR_QUERIES = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
ALTER_WITH_SETTINGS = frozenset({"ROLE", "USER", "DATABASE", "SYSTEM", "FUNCTION", "PROCEDURE", "ROUTINE"})
CREATE_REFUSED = ("FUNCTION", "PROCEDURE", "RULE", "TRIGGER", "EVENT", "AGGREGATE", "OPERATOR", "LANGUAGE",
                  "EXTENSION", "CAST", "CONVERSION", "ROLE", "USER", "SERVER", "FOREIGN", "PUBLICATION",
                  "SUBSCRIPTION", "TRANSFORM")


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
