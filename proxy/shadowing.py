"""A user's objects spelled like PostgreSQL's own: a function, operator or type outside pg_catalog
that a statement reaches by a name the policy and strict audit take for a built-in one.

``md5(1)`` is pg_catalog's md5 by name, but there is no ``pg_catalog.md5(integer)``: when
``public.md5(integer)`` exists, PostgreSQL runs it (the exact match wins over a cast, whatever
the search path's order), as the client's role, so it may read any column in clear or write
anything.  The same holds for an operator (``'a'::text + 'b'::text``: no built-in ``text + text``)
and for a cast to a domain whose CHECK calls a function (``CAST(1 AS d)``).  A name after a dot
that is not a column is a call too: attribute notation, ``o.f`` or ``(o).f`` is ``f(o)``, for
any function callable with one argument.  And keywords name operators and functions:
``a LIKE b`` is ``a ~~ b``, ``a IN (b)``, ``CASE a WHEN b``, ``NULLIF(a, b)``, ``IS DISTINCT
FROM`` and ``JOIN ... USING`` are ``a = b``, ``BETWEEN`` is ``>=`` and ``<=``, ``TRIM(x)`` is
``btrim(x)``, ``x AT TIME ZONE z`` is ``timezone(z, x)``: PostgreSQL resolves each by that name
and the argument types, so a user's ``integer ~~ text`` runs for ``quantity LIKE 'x'::text``.

The catalog lists the names of such objects (functions, operators, domains and base or range
types outside pg_catalog and information_schema, extensions' members aside); a statement whose
text, as PostgreSQL is sent it, calls such a name, uses such an operator or names such a type
is refused for restricted tiers unless the tier's ``functions`` lists it, and is never proven
read-only.  Nothing to do, and no cost, for a database without them.  One pass over sqlglot's
tokens of the text.
"""

from __future__ import annotations

import fnmatch

from sqlglot.tokens import TokenType

from .sql import DIALECT

def cast_columns(relations, catalog, allowed: tuple = (), search_path: tuple = ()) -> str | None:
    """A column of a relation read whose type a user's cast function converts (``lower(m)`` or
    ``m::text`` for an enum ``m`` whose owner wrote ``CREATE CAST (mood AS text) WITH FUNCTION
    f``: PostgreSQL runs ``f`` with no name of it in the text), as a phrase, or None.  The
    statement's columns are not all known here (``SELECT *``, expressions), so any column of
    such a type in a relation it reads counts, unless the tier's ``functions`` lists the cast's
    functions."""
    casts = getattr(catalog, "user_casts", None)
    if not casts:
        return None
    if "*" in casts and not all(_allowed(f, allowed, search_path) for f in casts["*"]):
        return f"a cast between built-in types by the user's function {min(casts['*'])}"
    for qualified in relations:
        relation = catalog.by_name.get(tuple(qualified.split(".", 1)))
        for column in relation.columns if relation is not None else ():
            name = column.type.removesuffix("[]").rpartition(".")[2].strip('"')
            if name in casts and not all(_allowed(f, allowed, search_path) for f in casts[name]):
                return (f"column {qualified}.{column.name} (its type {column.type} is cast by the user's function "
                        f"{min(casts[name])})")
    return None


_COMPARISONS = ("=", "<>", "<", ">", "<=", ">=")
# a keyword (sqlglot's token text, lower case) -> the operators and functions PostgreSQL resolves
# by name for it
KEYWORD_REACHES = {
    "like": ("~~", "!~~", "like_escape"), "ilike": ("~~*", "!~~*", "like_escape"),
    "similar to": ("~", "!~", "similar_to_escape", "similar_escape"), "~~": ("!~~",), "~~*": ("!~~*",),
    "in": _COMPARISONS, "case": _COMPARISONS, "nullif": _COMPARISONS, "distinct": _COMPARISONS,
    "using": _COMPARISONS, "natural": _COMPARISONS, "between": _COMPARISONS, "symmetric": _COMPARISONS,
    "trim": ("btrim", "ltrim", "rtrim"), "extract": ("date_part",), "at": ("timezone",),
    "overlaps": ("overlaps",), "normalized": ("is_normalized",), "collation": ("pg_collation_for",),
}
_NOT_CALLS = frozenset({TokenType.STRING, TokenType.NUMBER, TokenType.NATIONAL_STRING, TokenType.BIT_STRING,
                        TokenType.HEX_STRING, TokenType.BYTE_STRING, TokenType.HEREDOC_STRING})


def users_objects(sql: str, catalog, allowed: tuple = (), search_path: tuple = ()) -> str | None:
    """What in ``sql`` reaches a user's function, operator or type spelled like a built-in one
    (a phrase for the refusal), or None.  ``allowed``: the tier's ``functions`` patterns, matched
    as the policy matches them (the name qualified by each schema of ``search_path``, and bare)."""
    functions = getattr(catalog, "user_functions", frozenset())
    row_functions = getattr(catalog, "user_row_functions", frozenset())
    operators = getattr(catalog, "user_operators", frozenset())
    types = getattr(catalog, "user_types", frozenset()) | frozenset(getattr(catalog, "user_casts", ()))
    if not (functions or operators or types):
        return None
    tokens = DIALECT.tokenize(sql)
    for i, token in enumerate(tokens):
        if token.token_type in _NOT_CALLS:
            continue
        quoted = token.token_type is TokenType.IDENTIFIER
        name = token.text if quoted else token.text.lower()
        after = tokens[i + 1].token_type if i + 1 < len(tokens) else None
        before = tokens[i - 1].token_type if i else None
        qualified = before is TokenType.DOT and i >= 2 and tokens[i - 2].text.lower() == "pg_catalog"
        if after is TokenType.L_PAREN and name in functions and not qualified \
                and not _allowed(name, allowed, search_path):
            return f"function {name} (a function of that name exists outside pg_catalog)"
        if before is TokenType.DOT and after is not TokenType.L_PAREN and name in row_functions \
                and not _relation(tokens, i) and not _allowed(name, allowed, search_path):
            return f"{name} after a dot (attribute notation may call the function {name} outside pg_catalog)"
        for reached in () if quoted else KEYWORD_REACHES.get(name, ()):
            if reached in operators or reached in functions and not _allowed(reached, allowed, search_path):
                return f"{reached} (the {token.text.upper()} here may run a user's {reached} outside pg_catalog)"
        if name in operators and not token.text[:1].isalnum() and not quoted:
            return f"operator {name} (an operator of that name exists outside pg_catalog)"
        if name in types and before in (TokenType.DCOLON, TokenType.ALIAS):
            return f"type {name} (a type of that name exists outside pg_catalog)"
    return None


def _allowed(name: str, allowed: tuple, search_path: tuple) -> bool:
    """Does the tier's ``functions`` list name it (qualified by a schema of the path, or bare)?"""
    return any(fnmatch.fnmatchcase(c, p) for c in [f"{s}.{name}" for s in search_path] + [name] for p in allowed)


def _relation(tokens: list, i: int) -> bool:
    """Is ``schema.name`` at ``tokens[i - 2:i + 1]`` a relation named right after FROM, JOIN,
    ONLY or TABLE (``FROM public.t``)?  Elsewhere (``SELECT x, public.t FROM t AS public``) it is
    a column or attribute notation."""
    return i >= 3 and tokens[i - 3].token_type in (TokenType.FROM, TokenType.JOIN, TokenType.ONLY, TokenType.TABLE)
