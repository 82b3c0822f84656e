"""``pgveil discover``: suggest classes for columns that hold personal data, from samples.

The detectors are pure; sampling reads the database with asyncpg.  No sampled value is ever
printed: only counts.

>>> kind_of("11010519491231002X"), kind_of("6222028386379402659"), kind_of("13800138000")
('id_number', 'bank_card', 'phone')
"""

from __future__ import annotations

import asyncio
import re

from .sampledata import id_check_digit, luhn_ok

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
MOBILE = re.compile(r"^(?:\+?86)?1[3-9]\d{9}$")
ID_NUMBER = re.compile(r"^\d{17}[\dXx]$")
CARD = re.compile(r"^\d{13,19}$")
TEXT_TYPES = ("text", "character varying", "character", "varchar", "bpchar", "citext")


def kind_of(value: str) -> str | None:
    v = value.strip().replace(" ", "").replace("-", "")
    if ID_NUMBER.match(v) and id_check_digit(v[:17]) == v[17].upper():
        return "id_number"
    if CARD.match(v) and luhn_ok(v):
        return "bank_card"
    if MOBILE.match(v):
        return "phone"
    if EMAIL.match(value.strip()):
        return "email"
    return None


def suggest(samples: dict, threshold: float = 0.8) -> list[tuple[str, str, int, int]]:
    """(schema.table.column, class, matching, sampled) for columns where most samples match."""
    out = []
    for column, values in samples.items():
        if not values:
            continue
        counts: dict[str, int] = {}
        for value in values:
            kind = kind_of(value)
            if kind:
                counts[kind] = counts.get(kind, 0) + 1
        if counts:
            kind, hits = max(counts.items(), key=lambda kv: kv[1])
            if hits >= threshold * len(values):
                out.append((column, kind, hits, len(values)))
    return out


DESCRIPTIONS = {"id_number": "resident ID numbers with valid check digits", "bank_card": "Luhn-valid card numbers",
                "phone": "mobile numbers", "email": "email addresses"}


def fragment(suggestions: list) -> str:
    lines = ["# pgveil discover: paste under 'columns:' (and define the classes you use under 'classes:')",
             "columns:"]
    for column, kind, hits, total in suggestions:
        lines.append(f"  {column}: {kind}   # {hits}/{total} sampled values are {DESCRIPTIONS[kind]}")
    if not suggestions:
        lines.append("  {}   # nothing found")
    return "\n".join(lines) + "\n"


async def sample(dsn: str, per_column: int = 200) -> dict:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        columns = await conn.fetch("""
            SELECT n.nspname AS schema, c.relname AS table, a.attname AS column
            FROM pg_catalog.pg_attribute a
            JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
              AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
              AND pg_catalog.format_type(a.atttypid, NULL) = ANY($1::text[])
            ORDER BY 1, 2, 3""", list(TEXT_TYPES))
        samples = {}
        for row in columns:
            q = '"{}"."{}"'.format(row["schema"].replace('"', '""'), row["table"].replace('"', '""'))
            col = '"{}"'.format(row["column"].replace('"', '""'))
            values = await conn.fetch(f"SELECT {col}::text AS v FROM {q} WHERE {col} IS NOT NULL LIMIT $1",
                                      per_column)
            samples[f"{row['schema']}.{row['table']}.{row['column']}"] = [r["v"] for r in values]
        return samples
    finally:
        await conn.close()


def cmd_discover(args) -> int:
    samples = asyncio.run(sample(args.dsn, args.sample))
    print(fragment(suggest(samples, args.threshold)), end="")
    return 0
