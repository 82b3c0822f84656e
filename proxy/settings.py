"""Which settings a restricted tier may change, and reading them as PostgreSQL reads them.

A setting can change how the server reads a statement (``client_encoding``,
``standard_conforming_strings``, ``backslash_quote``), what a name resolves to
(``search_path``), in which order it evaluates predicates around a row filter (the planner's
costs), or whose rights apply (``role``).  So for a restricted tier the settings a session may
change are an **allow list** of harmless ones; everything else is refused, naming the setting.
The same list holds at every door: ``SET``/``SET LOCAL``/``RESET`` (and their spellings ``SET
NAMES``, ``SET TIME ZONE``, ``SET SCHEMA``, ``SET XML OPTION``), ``set_config()``, start-up
parameters and the ``options`` string (``PGOPTIONS``), ``ALTER ROLE/DATABASE/FUNCTION ... SET``.
A tier's ``settings`` in the rules widen the list (names or globs).

Values are checked for the two settings whose values matter: ``client_encoding`` must name an
encoding pgveil reads (:mod:`proxy.encodings`), ``search_path`` must be names only, with
``pg_catalog`` first when it is named (a schema before it could hold functions and operators
that stand in for the built-in ones the analysis relies on).

Pure.

>>> check("cpu_operator_cost", None, ())
'changing cpu_operator_cost is not allowed for this tier (not on the allow list of settings)'
>>> check("DateStyle", ["ISO, MDY"], ()) is None
True
>>> options("-c search_path=public,pg_catalog --statement-timeout=5s -c x\\\\ y=a\\\\ b")
[('search_path', 'public,pg_catalog'), ('statement_timeout', '5s'), ('x y', 'a b')]
"""

from __future__ import annotations

import fnmatch

from . import encodings

ALLOWED = frozenset({
    "application_name",
    "datestyle", "intervalstyle", "timezone", "extra_float_digits", "bytea_output", "xmlbinary", "xmloption",
    "lc_monetary", "lc_numeric", "lc_time",
    "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout",
    "transaction_timeout",
    "client_min_messages", "jit",
    "default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable",
    "transaction_isolation", "transaction_read_only", "transaction_deferrable",
    "search_path", "client_encoding",
    # what pg_dump and restore scripts set: RLS errors instead of filtering, scan order only
    "row_security", "synchronize_seqscans",
})
_ON = frozenset({"on", "true", "yes", "1"})
# never allowed, whatever a tier's ``settings`` say: they change how the server reads statements
# or whose rights apply, which pgveil's analysis relies on
NEVER = {
    "role": "SET ROLE changes whose privileges apply",
    "session_authorization": "SET SESSION AUTHORIZATION changes the session's identity",
    "standard_conforming_strings": "it changes how the server reads string literals",
    "backslash_quote": "it changes how the server reads string literals",
    "session_replication_role": "it disables triggers and rules",
}
# start-up packet keys that are not settings
STARTUP_KEYS = frozenset({"user", "database", "options", "replication"})
_SPACE = " \t\n\r\v\f"


def allowed(name: str, extra: tuple = ()) -> bool:
    name = name.lower()
    return name in ALLOWED or any(fnmatch.fnmatchcase(name, p) for p in extra)


def check(name: str, values: list | None, extra: tuple = ()) -> str | None:
    """Why changing ``name`` to ``values`` (the value's items as PostgreSQL's SET lists them;
    None for RESET or a value pgveil could not read) is refused, or None."""
    name = name.lower()
    if name == "standard_conforming_strings" and (values is None or (values and set(values) <= _ON)):
        return None  # on is how pgveil reads strings (psql and pg_dump scripts set it); off is refused
    if name in NEVER:
        return f"changing {name} is not allowed for this tier: {NEVER[name]}"
    if not allowed(name, extra):
        return f"changing {name} is not allowed for this tier (not on the allow list of settings)"
    if name in ("client_encoding", "search_path") and values is not None and None in values:
        return f"pgveil cannot read this value of {name} for this tier: write it as a plain '...' string or a name"
    if name == "client_encoding" and values is not None:
        if len(values) != 1 or encodings.canonical(values[0]) not in encodings.READABLE:
            return (f"client_encoding {', '.join(values)[:40]} is not allowed for this tier: pgveil reads statements "
                    f"in {encodings.listed()}")
    if name == "search_path" and values is not None and search_path_problem(values):
        return f"this search_path is not allowed for this tier: {search_path_problem(values)}"
    return None


def search_path_problem(names: list) -> str | None:
    """``names``: the schemas, folded as PostgreSQL folds them."""
    if "pg_catalog" in names and names[0] != "pg_catalog":
        return "pg_catalog must come first"
    if any(not n or "\0" in n for n in names):
        return "an empty schema name"
    return None


def split_identifiers(value: str) -> list | None:
    """A list setting's text as PostgreSQL's SplitIdentifierString reads it (unquoted names
    lower-cased, ``""`` in quoted ones); None when malformed.

    >>> split_identifiers('"$user", Public,"A""b"')
    ['$user', 'public', 'A"b']
    """
    names, i, n = [], 0, len(value)
    while True:
        while i < n and value[i] in _SPACE:
            i += 1
        if i < n and value[i] == '"':
            end, parts = i + 1, []
            while True:
                close = value.find('"', end)
                if close < 0:
                    return None
                parts.append(value[end:close])
                if value[close + 1:close + 2] != '"':
                    break
                parts.append('"')
                end = close + 2
            names.append("".join(parts))
            i = close + 1
        else:
            start = i
            while i < n and value[i] != "," and value[i] not in _SPACE:
                i += 1
            if i == start:
                return None if names or i < n else names
            names.append(value[start:i].lower())
        while i < n and value[i] in _SPACE:
            i += 1
        if i >= n:
            return names
        if value[i] != ",":
            return None
        i += 1


def options(text: str) -> list | None:
    """The ``options`` start-up parameter as PostgreSQL reads it (pg_split_opts, then the
    backend's switches): ``[(name, value)]`` for ``-c name=value``, ``-cname=value`` and
    ``--name=value`` (dashes in the name read as underscores); None when it holds anything else
    (other switches set settings too: ``-f``, ``-S``, ``-e`` ...)."""
    words, current, escaped, started = [], [], False, False
    for ch in text + " ":
        if ch in _SPACE and not escaped:
            if started:
                words.append("".join(current))
            current, started = [], False
            continue
        started = True
        if not escaped and ch == "\\":
            escaped = True
            continue
        escaped = False
        current.append(ch)
    found, i = [], 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            pair, i = words[i + 1], i + 2
        elif word.startswith("-c") and len(word) > 2:
            pair, i = word[2:], i + 1
        elif word.startswith("--") and len(word) > 2:
            pair, i = word[2:], i + 1
        else:
            return None
        if "=" not in pair:
            return None
        name, value = pair.split("=", 1)
        found.append((name.replace("-", "_"), value))
    return found


def startup_problem(params: tuple, extra: tuple = ()) -> str | None:
    """Why a restricted tier's start-up parameters are refused, or None.  ``params``: the
    start-up packet's (key, value) pairs."""
    for key, value in params:
        low = key.lower()
        if low in ("user", "database"):
            continue
        if low == "replication":
            if value.lower() not in ("false", "off", "no", "0"):
                return "replication connections are not allowed for this tier"
            continue
        if low.startswith("_pq_."):
            return f"protocol option {key} is not allowed for this tier"
        if low == "options":
            pairs = options(value)
            if pairs is None:
                return "the options parameter may hold only -c name=value and --name=value settings"
            for name, item in pairs:
                problem = check(name, _values(name, item), extra)
                if problem:
                    return f"{problem} (in options)"
            continue
        problem = check(key, _values(key, value), extra)
        if problem:
            return problem
    return None


def _values(name: str, value: str) -> list | None:
    """A setting's text as the list its checks read."""
    if name.lower() == "search_path":
        return split_identifiers(value) if split_identifiers(value) is not None else [""]
    return [value]


# ----------------------------------------------------------------------------- SET and RESET
_SPELLED = {"NAMES": "client_encoding", "SCHEMA": "search_path", "ROLE": "role", "AUTHORIZATION":
            "session_authorization", "CATALOG": "catalog"}
_NOTHING = frozenset({"TRANSACTION", "CHARACTERISTICS", "CONSTRAINTS"})  # transaction modes, not settings


class Unreadable(ValueError):
    """A SET or RESET that pgveil cannot read as PostgreSQL does."""


def read_set(reset: bool, tokens: list, text: str, offset: int = 0) -> list:
    """The settings a ``SET``/``RESET`` changes (``tokens``: after its first word), as
    ``[(name, values)]``; values None for RESET, DEFAULT or a value pgveil reads as unknown.
    ``RESET ALL`` is ``[("all", None)]``; transaction modes and constraint modes are ``[]``.

    >>> from proxy.sql import tokenize
    >>> text = "SESSION search_path TO 'a''b', \\"X\\", c"
    >>> read_set(False, tokenize(text), text)
    [('search_path', ["a'b", 'X', 'c'])]
    >>> text = "NAMES 'SJIS'"
    >>> read_set(False, tokenize(text), text)
    [('client_encoding', ['SJIS'])]
    """
    from .heads import HeadError, keyword, name
    kw = lambda i: keyword(tokens[i], text, offset) if i < len(tokens) else None  # noqa: E731
    i = 1 if kw(0) in ("SESSION", "LOCAL") and len(tokens) > 1 and not _is_assign(tokens, 1) else 0
    word = kw(i)
    if word in _NOTHING and not reset:
        return []
    if reset and word == "ALL" and len(tokens) == i + 1:
        return [("all", None)]
    if word == "TIME" and kw(i + 1) == "ZONE":
        setting, i = "timezone", i + 2
    elif word == "XML" and kw(i + 1) == "OPTION":
        setting, i = "xmloption", i + 2
    elif word == "SESSION" and kw(i + 1) == "AUTHORIZATION":
        setting, i = "session_authorization", i + 2
    elif word in _SPELLED and not _is_assign(tokens, i + 1):
        setting, i = _SPELLED[word], i + 1
    else:
        parts = []
        try:
            parts.append(name(tokens[i], text, offset))
            i += 1
            while i + 1 < len(tokens) and tokens[i].token_type.name == "DOT":
                parts.append(name(tokens[i + 1], text, offset))
                i += 2
        except (HeadError, IndexError):
            raise Unreadable("the setting's name") from None
        setting = ".".join(parts).lower()  # settings' names are matched without regard to case
        if not reset:
            if kw(i) == "FROM" and kw(i + 1) == "CURRENT" and len(tokens) == i + 2:
                return [(setting, None)]
            if not _is_assign(tokens, i):
                raise Unreadable("expected TO or =")
            i += 1
    if reset:
        if i != len(tokens):
            raise Unreadable("RESET takes one setting")
        return [(setting, None)]
    return [(setting, _items(tokens[i:], text, offset))]


def _is_assign(tokens: list, i: int) -> bool:
    if i >= len(tokens):
        return False
    return tokens[i].token_type.name == "EQ" or (tokens[i].text.upper() == "TO" and
                                                 tokens[i].token_type.name != "IDENTIFIER")


def _items(tokens: list, text: str, offset: int) -> list | None:
    """A SET's value list as PostgreSQL passes it on (quoted names and strings as written, words
    lower-cased); None for DEFAULT or a value holding a form pgveil does not read here."""
    from .heads import keyword, raw
    if not tokens:
        raise Unreadable("SET without a value")
    items, current = [], []
    for token in tokens + [None]:
        if token is None or token.token_type.name == "COMMA":
            if not current:
                raise Unreadable("an empty item in SET's value")
            items.append(current)
            current = []
        else:
            current.append(token)
    values = []
    for item in items:
        first = item[0]
        kind, written = first.token_type.name, raw(first, text, offset)
        if len(item) == 1 and kind == "STRING" and written.startswith("'"):
            values.append(first.text)
        elif len(item) == 1 and kind == "IDENTIFIER" and written.startswith('"'):
            values.append(first.text)
        elif len(item) == 1 and keyword(first, text, offset) is not None:
            if keyword(first, text, offset) == "DEFAULT" and len(items) == 1:
                return None
            values.append(written.lower())
        elif kind in ("NUMBER", "DASH", "PLUS") and all(t.token_type.name in ("NUMBER", "DASH", "PLUS", "DOT")
                                                        for t in item):
            values.append("".join(raw(t, text, offset) for t in item))
        else:
            return [None]  # read as unknown: the checked settings refuse it, the others do not care
    return values
