"""DDL by a restricted tier that has it: nothing it writes may read or re-label protected data.

DDL is sent as the client wrote it (sqlglot does not parse PostgreSQL's DDL reliably), so what
it may touch is read from its tokens, and anything doubtful is refused:

- An expression in DDL runs over the base table, not the masking subquery: an index
  (``CREATE INDEX ON customers ((id_number::int))``), a CHECK, a DEFAULT or a generated column
  (``GENERATED ALWAYS AS (id_number) STORED`` copies it into a column no rule names), ``ALTER
  TYPE ... USING``.  Classes follow column names, so a RENAME would also take a column out of
  its class.  A DDL statement that names a relation the tier cannot see whole *and* one of that
  relation's columns the tier may not see in clear, or that names such a relation twice
  (whole-row references, a table made its own parent), is refused.  DDL that names no protected
  column (``CREATE INDEX ON customers (id)``, ``DROP TABLE ...``) goes through.
- In a Query of several statements, a later statement would be decided against the catalog as
  it was before the earlier ones ran: a restricted tier's DDL must come alone.

Pure.
"""

from __future__ import annotations

from .sql import fold_name

SKIPPED_TOKENS = frozenset({"STRING", "NUMBER", "DOT", "L_PAREN", "R_PAREN", "COMMA", "SEMICOLON", "DCOLON",
                            "NATIONAL_STRING", "HEREDOC_STRING", "BIT_STRING", "HEX_STRING", "BYTE_STRING"})


_name = fold_name  # PostgreSQL lowers only ASCII letters of an unquoted name


def named_relations(tokens: list, resolve) -> list:
    """(index, relation) of every name in ``tokens`` that ``resolve(schema, name)`` finds."""
    found = []
    for i, token in enumerate(tokens):
        if token.token_type.name in SKIPPED_TOKENS:
            continue
        schema = None
        if i >= 2 and tokens[i - 1].token_type.name == "DOT":
            schema = _name(tokens[i - 2])
        rel = resolve(schema, _name(token))
        if rel is not None:
            found.append((i, rel))
    return found


def check_ddl(tokens: list, resolve, protected_columns) -> str | None:
    """Why this DDL statement is refused, or None.  ``resolve(schema, name)``: the relation a
    name means; ``protected_columns(relation)``: the names of its columns the tier may not see
    in clear, or None when it sees the relation whole."""
    names = {_name(t) for t in tokens if t.token_type.name not in SKIPPED_TOKENS}
    seen: dict = {}
    for _, rel in named_relations(tokens, resolve):
        hidden = protected_columns(rel)
        if hidden is None:
            continue
        seen[rel.qualified] = seen.get(rel.qualified, 0) + 1
        touched = sorted(hidden & names)
        if touched:
            return (f"DDL naming {rel.qualified}.{touched[0]}, which the tier may not see in clear, is not allowed "
                    f"(an expression, constraint or rename over it would read it or take it out of its class)")
        if seen[rel.qualified] > 1:
            return f"DDL naming {rel.qualified} more than once is not allowed (a whole-row reference reads every column)"
    return None
