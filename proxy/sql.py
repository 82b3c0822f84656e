"""sqlglot, behind one module: the dialect pgveil reads and writes, and its three verbs.

The dialect is sqlglot's PostgreSQL with one change: ``oid`` and the ``reg*`` types are read
as ordinary type names, because sqlglot's object-identifier keywords do not accept an array
suffix (``$1::oid[]``, which asyncpg's type introspection sends).

>>> to_sql(parse_one("SELECT x = ANY($1::oid[])"))
'SELECT x = ANY(CAST($1 AS oid[]))'
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp  # noqa: F401  (re-exported for the engine's modules)
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import SqlglotError  # noqa: F401
from sqlglot.tokens import TokenType


class Pgveil(Postgres):
    class Tokenizer(Postgres.Tokenizer):
        KEYWORDS = {word: kind for word, kind in Postgres.Tokenizer.KEYWORDS.items()
                    if kind is not TokenType.OBJECT_IDENTIFIER}


DIALECT = Pgveil()


def parse_one(text: str) -> exp.Expression:
    return sqlglot.parse_one(text, read=DIALECT)


def tokenize(text: str) -> list:
    return DIALECT.tokenize(text)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_name(token) -> str:
    """A name token as PostgreSQL folds it: quoted as written, unquoted with ASCII letters only
    lowered (a UTF8 database's rule: ``FETCH Ä`` names the cursor "Ä", not "ä")."""
    return token.text if token.token_type.name == "IDENTIFIER" else token.text.translate(_ASCII_LOWER)


def to_sql(tree: exp.Expression) -> str:
    return tree.sql(dialect=DIALECT, comments=False)
