"""How much work one statement may cost the process that reads it, and the memory it may leave.

A worker process serves many sessions on one event loop: while it analyses one statement,
every other session of the worker waits.  Three things bound that:

- **Work off the loop.**  A statement whose cold decision could take long (a large text, deep
  nesting: :func:`decided_apart`) is decided in a child process (:mod:`proxy.analyst`); its
  session waits for the answer, the others go on.  What stays on the loop is linear in the
  text and cheap (a hash, a copy, a few scans in C).
- **Bounded caches.**  Every cache of client text is bounded in bytes, not only in entries:
  the decision cache (:data:`proxy.policy.CACHE_BYTES`), the audit text of statements
  (:func:`normalize_bounded` keeps long texts out of ``normalize``'s own cache) and the
  statements a session prepares (:data:`PREPARED_BYTES`).
- **Bounded audit text.**  A relay without rules normalises at most :data:`NORMALIZE_PREFIX`
  characters of a statement for its audit record (the record keeps 4,000 anyway).

Pure: no I/O.

>>> decided_apart("SELECT 1")
False
>>> decided_apart("SELECT " + "(" * 100 + "1" + ")" * 100)
True
>>> decided_apart("SELECT " + "ARRAY[" * 8 + "1" + "]" * 8)
True
"""

from __future__ import annotations

from .normalize import normalize

APART_BYTES = 2048  # a text this long may cost a cold decision more than a few milliseconds
APART_PARENS = 64  # nesting costs the parser's recursion whatever the length
APART_RELATIONS = 32  # relations a statement may name (FROM, JOIN, TABLE, commas), see decided_apart
APART_BRACKETS = 8  # sqlglot parses nested ARRAY[ in time exponential in depth (14: ~1 s, 20: ~4 min)
NORMALIZE_CACHED = 1024  # longer texts are normalised without normalize()'s LRU cache
NORMALIZE_PREFIX = 16 * 1024  # a relay's audit text of a longer statement is read from this much of it
PREPARED_BYTES = 16 << 20  # statement text one session may keep prepared (named statements)


def decided_apart(sql: str) -> bool:
    """Whether a cold decision of ``sql`` goes to a child process rather than the event loop.
    Besides its length and nesting, the relations it may read: a masking tier's decision writes
    a masking subquery per relation read (``TABLE customers`` 74 times, 1.9 KB, is 120 KB to
    write, 50-170 ms); FROM, JOIN, TABLE and the commas after the first FROM (``FROM a, b, c``)
    count, in C (a select list's commas do not; an IN list's after FROM do: a cold decision of
    a long one goes apart too)."""
    if len(sql) >= APART_BYTES or sql.count("(") >= APART_PARENS or sql.count("[") >= APART_BRACKETS:
        return True
    low = sql.lower()
    start = low.find("from")
    return (low.count("from") + low.count("join") + low.count("table") + (sql.count(",", start) if start >= 0 else 0)
            >= APART_RELATIONS)


def normalize_bounded(sql: str) -> str:
    """:func:`proxy.normalize.normalize`, without keeping long texts in its cache (8,192
    entries of any size) and reading at most :data:`NORMALIZE_PREFIX` characters.

    >>> normalize_bounded("SELECT '" + "x" * 100_000 + "'")
    'unreadable: SELECT ?'
    """
    if len(sql) <= NORMALIZE_CACHED:
        return normalize(sql)
    return normalize.__wrapped__(sql[:NORMALIZE_PREFIX])
