"""What ``max_rows`` needs from a statement besides its columns.

``max_rows`` counts the rows with sensitive columns that reach the client, however they travel.
Two things the relay cannot count by itself are read from the statement here:

- **Names that carry a result to another statement**: ``DECLARE c CURSOR FOR ...`` then
  ``FETCH 10 FROM c``; ``PREPARE p AS ...`` then ``EXECUTE p``.  The rows arrive under the FETCH
  or EXECUTE, which name no column: the session gives them the limit of the statement the
  name was declared with (:func:`cursor_ref`), and a cursor's rows are counted across FETCHes.
- **Rows packed into one**: aggregates that collect any number of rows into one value
  (``string_agg``, ``array_agg``, ``json_agg`` ...), ``ARRAY(SELECT ...)`` and recursive CTEs
  (which can concatenate row after row).  They are refused for a tier whose ``max_rows``
  applies to the statement's sensitive columns (:func:`packs_rows`): counting the rows they
  read would need the plan.

Pure.

>>> from proxy.sql import parse_one
>>> packs_rows(parse_one("SELECT grade, string_agg(phone, ',') FROM customers GROUP BY grade"))
'string_agg'
>>> packs_rows(parse_one("SELECT count(*), max(phone) FROM customers")) is None
True
"""

from __future__ import annotations

from .sql import exp, fold_name, tokenize

PACKING_TYPES = {exp.GroupConcat: "string_agg", exp.ArrayAgg: "array_agg", exp.JSONArrayAgg: "json_agg",
                 exp.JSONObjectAgg: "json_object_agg", exp.JSONBObjectAgg: "jsonb_object_agg"}
PACKING_NAMES = frozenset({
    "string_agg", "array_agg", "json_agg", "jsonb_agg", "json_agg_strict", "jsonb_agg_strict", "xmlagg",
    "json_object_agg", "jsonb_object_agg", "json_object_agg_strict", "jsonb_object_agg_strict",
    "json_object_agg_unique", "jsonb_object_agg_unique", "json_object_agg_unique_strict",
    "jsonb_object_agg_unique_strict", "json_arrayagg", "json_objectagg", "range_agg", "array_cat_agg",
})


def packs_rows(tree: exp.Expression) -> str | None:
    """The first construct in ``tree`` that packs many rows into one value, or None."""
    for node in tree.walk():
        for kind, name in PACKING_TYPES.items():
            if isinstance(node, kind):
                return name
        if isinstance(node, exp.Anonymous) and node.name.lower() in PACKING_NAMES:
            return node.name.lower()
        if isinstance(node, exp.Array) and any(isinstance(e, exp.Query) for e in node.expressions):
            return "ARRAY(subquery)"
        if isinstance(node, exp.With) and node.args.get("recursive"):
            return "WITH RECURSIVE"
    return None


_name = fold_name  # PostgreSQL lowers only ASCII letters of an unquoted name


def cursor_ref(text: str, first) -> tuple[str, str] | None:
    """(verb, name) for a statement (``text``, its first token ``first``) that declares or uses a
    cursor or an SQL prepared statement: ``declare``, ``fetch``, ``close``, ``prepare``,
    ``execute`` or ``deallocate``; the name ``*`` for CLOSE ALL and DEALLOCATE ALL.

    >>> from proxy.sql import tokenize
    >>> [cursor_ref(t, tokenize(t)[0]) for t in ('FETCH 10 FROM "My C"', 'EXECUTE p(1)', 'CLOSE ALL')]
    [('fetch', 'My C'), ('execute', 'p'), ('close', '*')]
    """
    verb = first.text.upper()
    if verb not in ("DECLARE", "FETCH", "MOVE", "CLOSE", "PREPARE", "EXECUTE", "DEALLOCATE"):
        return None
    tokens = tokenize(text[first.end + 1:])  # (the tokenizer keeps a command's arguments as one string)
    if not tokens:
        return None
    second = tokens[0].text.upper()
    if verb == "DECLARE":
        return "declare", _name(tokens[0])
    if verb == "FETCH":
        return "fetch", _name(tokens[-1])
    if verb == "CLOSE":
        return "close", "*" if second == "ALL" else _name(tokens[0])
    if verb == "PREPARE" and second != "TRANSACTION":
        return "prepare", _name(tokens[0])
    if verb == "EXECUTE":
        return "execute", _name(tokens[0])
    if verb == "DEALLOCATE":
        rest = tokens[1:] if second == "PREPARE" else tokens
        if rest:
            return "deallocate", "*" if rest[0].text.upper() == "ALL" else _name(rest[0])
    return None


class RowLimits:
    """One session's ``max_rows`` bookkeeping: the limit of each statement, the rows counted per
    result, and the limits that cursor and SQL prepared-statement names carry.

    A result is (statement id, binding of a portal): a portal fetched in pieces (Execute with a
    row count, PortalSuspended, Execute again) is one result, and so are all the FETCHes of a
    cursor.

    >>> limits = RowLimits()
    >>> limits.decided("s1", 2, (("declare", "c"),))
    >>> limits.decided("s2", None, (("fetch", "c"),))
    >>> [limits.row(("s2", None)) for _ in range(3)]
    [None, None, 2]
    """

    def __init__(self) -> None:
        self.limits: dict = {}  # statement id -> most rows one result may return
        self.counts: dict = {}  # result -> rows so far
        self.keys: dict = {}  # statement id -> the cursor whose rows it returns
        self.named: dict = {}  # ("cursor" | "prepared", name) -> limit

    def __bool__(self) -> bool:
        return bool(self.limits)

    def decided(self, statement_id: str, limit: int | None, cursors: tuple) -> None:
        """A statement was decided: ``limit`` from its own sensitive columns, ``cursors`` from
        :func:`cursor_ref`."""
        for verb, name in cursors:
            if verb in ("declare", "prepare"):
                kind = "cursor" if verb == "declare" else "prepared"
                self.named.pop((kind, name), None)
                self.counts.pop((kind, name), None)
                if limit is not None:
                    self.named[(kind, name)] = limit
            elif verb in ("fetch", "execute"):
                kind = "cursor" if verb == "fetch" else "prepared"
                named = self.named.get((kind, name))
                if named is not None:
                    limit = named if limit is None else min(limit, named)
                    if kind == "cursor":
                        self.keys[statement_id] = (kind, name)
            elif verb in ("close", "deallocate"):
                kind = "cursor" if verb == "close" else "prepared"
                for key in [k for k in self.named if k[0] == kind and name in ("*", k[1])]:
                    del self.named[key]
                    self.counts.pop(key, None)
        if limit is not None:
            self.limits[statement_id] = limit

    def idle(self) -> None:
        """No transaction is open: every portal is gone (a cursor WITH HOLD stays)."""
        for key in [k for k in self.counts if k[0] not in ("cursor", "prepared")]:
            del self.counts[key]

    def row(self, result: tuple) -> int | None:
        """Count a row of ``result``; the limit when this row is past it, else None."""
        limit = self.limits.get(result[0])
        if limit is None:
            return None
        key = self.keys.get(result[0], result)
        count = self.counts[key] = self.counts.get(key, 0) + 1
        return limit if count > limit else None

    def ended(self, result: tuple, status: str, live: set) -> None:
        """``result`` ended (``suspended``: its portal can be resumed, so its count stays).
        ``live``: statement ids that can still produce rows; the others' limits go."""
        if status != "suspended":
            self.counts.pop(result, None)
        for statement_id in [s for s in self.limits if s not in live]:
            del self.limits[statement_id]
            self.keys.pop(statement_id, None)
