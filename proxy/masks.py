"""SQL expressions that mask one column, keeping its type.

A mask never changes a column's type: the expression is cast back to the column's own type
(``character(18)`` stays ``character(18)``).  A non-text column masked becomes NULL of its type
unless the mask says otherwise.  Functions are schema-qualified so that nothing on the
search_path can stand in for them.

>>> from proxy.rules import Mask
>>> mask_sql('"phone"', "text", Mask("partial", 3, 4))[:45]
'CAST(CASE WHEN "phone" IS NULL THEN NULL WHEN'
>>> mask_sql('"amount"', "numeric(10,2)", Mask("partial", 3, 4))
'CAST(NULL AS numeric(10,2))'
"""

from __future__ import annotations

import os

from .rules import Mask

TEXT_TYPES = ("text", "character varying", "character", "varchar", "bpchar", "name", "citext")
HASH_KEY_ENV = "PGVEIL_HASH_KEY"


def is_text(type_name: str) -> bool:
    return type_name.split("(")[0].strip() in TEXT_TYPES or type_name.startswith("character")


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def null_of(type_name: str) -> str:
    return f"CAST(NULL AS {type_name})"


def mask_sql(column: str, type_name: str, mask: Mask | None) -> str:
    """The masking expression for ``column`` (already quoted) of type ``type_name``."""
    if mask is None or mask.fn == "null" or not is_text(type_name):
        return null_of(type_name)
    value = f"CAST({column} AS text)"
    if mask.fn == "redact":
        body = f"CASE WHEN {column} IS NULL THEN NULL ELSE {literal(mask.with_)} END"
    elif mask.fn == "partial":
        a, b = mask.keep_first, mask.keep_last
        n = f"pg_catalog.length({value})"
        body = (f"CASE WHEN {column} IS NULL THEN NULL "
                f"WHEN {n} <= {a + b} THEN pg_catalog.repeat('*', {n}) "
                f"ELSE pg_catalog.left({value}, {a}) || pg_catalog.repeat('*', {n} - {a + b}) || "
                f"pg_catalog.right({value}, {b}) END")
    elif mask.fn == "hash":
        key = os.environ.get(HASH_KEY_ENV, "")
        if not key:
            raise MaskError(f"mask fn: hash needs the key in the environment variable {HASH_KEY_ENV}")
        body = (f"CASE WHEN {column} IS NULL THEN NULL ELSE pg_catalog.encode(pg_catalog.sha256("
                f"pg_catalog.convert_to({literal(key)} || {value}, 'UTF8')), 'hex') END")
    else:  # pragma: no cover - rules validation rejects other names
        raise MaskError(f"unknown mask function {mask.fn!r}")
    return f"CAST({body} AS {type_name})"


class MaskError(Exception):
    pass
