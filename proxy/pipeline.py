"""The decision on one text: split, gate, rewrite, generate (see :mod:`proxy.policy`).

:func:`decide` runs each statement of a Query or Parse text through
:class:`proxy.statement.Statement` and joins what they give; :func:`failed_analysis` is the
decision when that analysis itself fails.

Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import replace

from . import heads, searchpath, shadowing
from .limits import normalize_bounded
from .rewrite import PLACEHOLDER, Rewriter
from .rowlimits import cursor_ref
from .segments import (CURSOR_WORDS, DDL_WORDS, HARMLESS_WORDS, QUERY_WORDS, SESSION_WORDS, TRANSACTION_WORDS,
                       WRITE_WORDS, split_statements)
from .sql import SqlglotError
from .statement import Statement
from .verdicts import Context, Decision, NotUnderstood, Reason, Refusal


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
    reached = shadowing.users_objects("; ".join(texts), ctx.catalog, tuple(ctx.tier.functions), ctx.search_path) \
        or shadowing.cast_columns(rw.analysis.relations, ctx.catalog, tuple(ctx.tier.functions), ctx.search_path)
    if reached:
        return _refuse(Refusal(f"{reached} is not allowed for tier {ctx.tier.name}: PostgreSQL may run the user's "
                               f"object, not its own", Reason.FUNCTION), rw)
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
