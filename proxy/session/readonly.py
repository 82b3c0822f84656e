"""Strict audit's one question about a statement: is it proven read-only?

Strict mode promises that nothing is seen or changed without a durable record.  A statement
that cannot change anything may be sent to the database at once, its answer held until its
record is durable (the sync overlaps the database's work); any other statement is sent only
once its record is durable.  So "proven" is meant narrowly, and anything in doubt is not:

- the decision says it reads and nothing else (kinds ``("read",)``, parsed, allowed);
- it is one statement starting with SELECT, WITH, VALUES, TABLE or SHOW;
- no word that writes, locks or runs something else appears in it (INSERT, UPDATE, DELETE,
  MERGE, INTO, COPY, SHARE as in FOR SHARE, ANALYZE as in EXPLAIN ANALYZE, ...);
- every relation it reads is a table, partitioned table or materialized view, without
  row-level security, and so is every inheritance child or partition of it; a decision that
  names no relations (an all-clear tier's, whose text is not analysed) is proven only for a
  statement that reads none (``SELECT 1``, ``SHOW ...``);
- every function it calls is one known not to write (aggregates, string and number functions,
  the mask expressions pgveil itself writes): ``nextval``, ``set_config``, ``pg_advisory_lock``,
  ``dblink`` or a user's function that writes are not.

It reads the statement's normalised text (literals already replaced by ``?``), so a string's
content never counts as a word; since ``?`` is also an operator character in PostgreSQL
(``<?>``, ``?-``), a statement whose text holds one anywhere (a jsonb ``?``, a string's) is not
proven.  One linear pass: a regular expression with possessive
quantifiers and a loop over its tokens.
"""

from __future__ import annotations

import re

from .. import shadowing

_TOKENS = re.compile(r'"(?:[^"]++|"")*+"|[A-Za-z_][A-Za-z0-9_$]*+|\S')
FIRST_WORDS = frozenset({"select", "with", "values", "table", "show"})
FORBIDDEN = frozenset({
    "insert", "update", "delete", "merge", "into", "copy", "create", "alter", "drop", "truncate", "grant",
    "revoke", "lock", "share", "call", "do", "execute", "prepare", "declare", "listen", "notify", "unlisten",
    "vacuum", "analyze", "analyse", "refresh", "reindex", "cluster", "comment", "security", "import", "load",
    "discard", "reset", "set", "begin", "commit", "rollback", "savepoint", "release", "checkpoint",
})
# words followed by "(" that are syntax, not a call
SYNTAX = frozenset({
    "in", "exists", "any", "all", "some", "values", "cast", "coalesce", "nullif", "greatest", "least", "row",
    "array", "over", "partition", "filter", "within", "as", "and", "or", "not", "on", "using", "from", "where",
    "select", "with", "lateral", "join", "by", "when", "then", "else", "is", "like", "ilike", "between",
    "having", "case", "distinct", "union", "intersect", "except", "limit", "offset", "returning", "table",
    "recursive", "materialized", "grouping", "rollup", "cube", "sets", "extract", "position", "substring",
    "overlay", "trim", "collate", "at", "zone", "tablesample", "only", "group", "order", "fetch", "first",
})
# functions that read and compute only (PostgreSQL's own, by name; pg_catalog's copies are the same)
READ_ONLY_FUNCTIONS = frozenset({
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "string_agg", "array_agg",
    "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "stddev", "variance", "percentile_cont",
    "percentile_disc", "mode", "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile",
    "lag", "lead", "first_value", "last_value", "nth_value", "lower", "upper", "length", "char_length",
    "octet_length", "left", "right", "repeat", "substr", "concat", "concat_ws", "btrim", "ltrim", "rtrim",
    "replace", "split_part", "strpos", "lpad", "rpad", "initcap", "reverse", "translate", "format", "md5",
    "to_char", "to_date", "to_timestamp", "to_number", "date_trunc", "date_part", "age", "now",
    "abs", "round", "trunc", "floor", "ceil", "ceiling", "mod", "power", "sqrt", "sign", "random",
    "json_build_object", "jsonb_build_object", "json_build_array", "jsonb_build_array", "to_json", "to_jsonb",
    "jsonb_extract_path_text", "json_extract_path_text", "unnest", "generate_series", "array_length",
    "cardinality", "regexp_replace", "regexp_match", "encode", "decode", "numeric", "decimal", "varchar",
    "char", "character", "bit", "varbit", "timestamp", "timestamptz", "time", "timetz", "interval", "float",
})


OPERATORS = frozenset({"=", "<", ">", "<>", "!=", "<=", ">=", "+", "-", "*", "/", "%", "||", "::", ".", ",", "(",
                       ")", "[", "]", ";", ":"})
_OPERATOR_RUN = re.compile(r"[+\-*/<>=~!@#%^&|`:]++")
CAST_TYPES = frozenset({
    "int", "int2", "int4", "int8", "integer", "bigint", "smallint", "text", "varchar", "numeric", "decimal",
    "bool", "boolean", "date", "timestamp", "timestamptz", "time", "timetz", "interval", "float4", "float8",
    "real", "double", "json", "jsonb", "uuid", "bytea", "oid", "name", "char", "character", "inet", "cidr",
    "money", "bpchar", "regclass", "pg_catalog",
})
TABLE_KINDS = frozenset("rpm")  # tables, partitioned tables, materialized views (not views, not foreign tables)
# (nor a table with row-level security, nor a parent with a child that is not one of these)


def proven_read_only(normalized: str, decision, catalog, search_path: str | None) -> bool:
    """Is the statement (its normalised text, and the policy's decision on it) proven not to
    change anything?  ``catalog`` tells the kind of each relation it reads (a view may call
    any function, a foreign table any server); ``search_path`` is the server's (pg_catalog
    searched first, unless it is named later).  False whenever in doubt."""
    if decision is None or decision.refused or decision.unparsed or tuple(decision.kinds) != ("read",):
        return False
    if not _tables_only(decision.relations, catalog) or not _catalog_first(search_path):
        return False
    if shadowing.users_objects(decision.sql or normalized, catalog) or shadowing.cast_columns(decision.relations,
                                                                                               catalog):
        return False  # a user's function, operator or type spelled like a built-in one, or a cast of the user's
    if "?" in (decision.sql or "?"):
        return False  # ? is an operator character (a user's <?> or ?-), and the normalised text's literal
    if any(run not in OPERATORS for run in _OPERATOR_RUN.findall(normalized)):
        return False  # an operator of the user's may run any function
    tokens = _TOKENS.findall(normalized)
    while tokens and tokens[-1] == ";":
        tokens.pop()
    if not tokens or tokens[0].lower() not in FIRST_WORDS or ";" in tokens:
        return False
    if not decision.relations and _names_a_relation(tokens):
        return False  # an all-clear tier's decision names no relations: the ones it reads are unknown
    return _words_read_only(tokens)


def _names_a_relation(tokens: list[str]) -> bool:
    """Could the statement read a relation?  Any FROM or JOIN (also ``extract(x FROM y)``: in
    doubt) or a TABLE statement."""
    return tokens[0].lower() == "table" or any(t.lower() in ("from", "join") for t in tokens)


def _words_read_only(tokens: list[str]) -> bool:
    previous = ""
    for i, token in enumerate(tokens):
        word = token.lower()
        if not token.isascii():
            return False  # the tokens split a name at non-ASCII: "ñlower(" is not lower(
        if word in FORBIDDEN:
            return False
        if previous == ":" and tokens[i - 2:i] == [":", ":"] and word.strip('"') not in CAST_TYPES:
            return False  # a cast to a type of the user's may run any function
        if i + 1 < len(tokens) and tokens[i + 1] == "(" and (word[:1].isalpha() or word[:1] in '"_'):
            name = word.strip('"')
            schema = tokens[i - 2].lower().strip('"') if previous == "." and i >= 2 else None
            if schema not in (None, "pg_catalog") or (name not in SYNTAX and name not in READ_ONLY_FUNCTIONS):
                return False
        previous = token
    return True


def _tables_only(relations, catalog) -> bool:
    if not relations:
        return True
    if catalog is None:
        return False
    for qualified in relations:
        schema, _, name = qualified.partition(".")
        relation = catalog.by_name.get((schema, name))
        if relation is None:
            return False
        # a read of a parent reads its children (a foreign one may run a program); a row-level
        # security policy's expression may call any function, on every row
        for read in (relation, *catalog.descendants(relation)):
            if read.kind not in TABLE_KINDS or read.row_security:
                return False
    return True


def _catalog_first(search_path: str | None) -> bool:
    """Unqualified function names resolve in pg_catalog first unless the path names it later."""
    if search_path is None or "pg_catalog" not in search_path:
        return True
    return search_path.lstrip().lstrip('"').startswith("pg_catalog")
