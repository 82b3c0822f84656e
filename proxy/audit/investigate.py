"""``pgveil audit investigate``: which executions used a value, opened with the investigators' key.

The journal holds, sealed (:mod:`proxy.audit.seal`, :mod:`proxy.sealing`): the text of every
statement that reached a protected relation (``statement`` records, field ``sealed``), the
parameters of each Bind of such a statement (``bind`` records) and the data of each ``COPY ...
FROM STDIN`` into one (``copy_data`` records).  An execution *used* the value V when

* a literal of its statement text is V (a string equal to V, or a number equal to V);
* one of its bound parameters is V: in text format, as a literal is; in binary format, when the
  bytes are V's UTF-8 text or, for an integer V, its int2, int4 or int8 big-endian encoding;
* a field of a line of its COPY data (text or CSV format) is V.

With ``--param-of schema.table.column`` only the uses of V *against that column* count: the
column compared with V (``=``, ``<>``, ``<``, ``>``, ``LIKE``, ``IN``), assigned V (``UPDATE ...
SET``) or given V (``INSERT (...) VALUES``, ``COPY (...) FROM STDIN``, which must name their
columns), where the statement names that table.  This reads the sealed statement text with
sqlglot, at investigation time only.

Each hit says who, when, tier, purpose, grant, the statement's normalised text and fingerprint,
and what came of it (status and rows, from the outcome record that follows).
"""

from __future__ import annotations

import base64
import csv
import struct
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from ..lexer import quick
from ..sql import SqlglotError, exp, tokenize
from ..normalize import LITERALS
from .seal import Opener

_COMMAND_TOKENS = ("COMMAND", "EXECUTE", "FETCH", "SHOW")


# ----------------------------------------------------------------------------- values
class Wanted:
    """The value looked for, and the forms it takes on the wire."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.number = _number(text)
        encodings = {text.encode("utf-8")}
        if self.number is not None and self.number == self.number.to_integral_value():
            n = int(self.number)
            for fmt, bits in ((">h", 16), (">i", 32), (">q", 64)):
                if -(1 << (bits - 1)) <= n < (1 << (bits - 1)):
                    encodings.add(struct.pack(fmt, n))
        self.encodings = frozenset(encodings)

    def text_matches(self, value: str) -> bool:
        if value == self.text:
            return True
        if self.number is None:
            return False
        other = _number(value)
        return other is not None and other == self.number

    def matches(self, value) -> bool:
        """A sealed value: text, None, or ``{"b": base64}`` (binary)."""
        if isinstance(value, str):
            return self.text_matches(value)
        if isinstance(value, dict) and "b" in value:
            return base64.b64decode(value["b"]) in self.encodings
        return False


def _number(text: str) -> Decimal | None:
    if not text or not (text[0].isdigit() or text[0] in "-+."):
        return None
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def literals(sql: str, nested: bool = False) -> list[str]:
    """The literal values of a statement text (strings unescaped, numbers as written)."""
    read = quick(sql)
    if read is not None:
        return [text for _, text in read[1]]
    try:
        tokens = tokenize(sql)
    except (SqlglotError, ValueError, IndexError):
        return []
    found = []
    for i, token in enumerate(tokens):
        kind = token.token_type.name
        if kind == "NUMBER" and token.start > 0 and sql[token.start - 1] == "$":
            continue  # $1: a parameter
        if kind == "STRING" and i and tokens[i - 1].token_type.name in _COMMAND_TOKENS and not nested:
            found += literals(token.text, nested=True)  # a command's arguments: EXECUTE s(42)
        elif kind in LITERALS:
            found.append(token.text)
    return found


# ----------------------------------------------------------------------------- --param-of
def _parse_all(sql: str) -> list:
    import sqlglot

    from ..sql import DIALECT
    try:
        return [t for t in sqlglot.parse(sql, read=DIALECT) if t is not None]
    except (SqlglotError, ValueError, RecursionError):
        return []


def _qualifiers(tree, schema: str, table: str) -> set:
    """The names a column of ``schema.table`` may be qualified with in this statement."""
    names = set()
    for node in tree.find_all(exp.Table):
        if node.name.lower() == table and (not node.db or node.db.lower() == schema):
            names.add(node.name.lower())
            if node.alias:
                names.add(node.alias.lower())
    return names


def _value_of(node, params: list | None):
    """A literal's text, or the bound value of ``$n``; None when neither."""
    while isinstance(node, (exp.Cast, exp.Paren)):
        node = node.this
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        return "-" + node.this.name
    if isinstance(node, exp.Literal):
        return node.name
    if isinstance(node, exp.Parameter) and params is not None:
        try:
            n = int(node.name)
        except ValueError:
            return None
        return params[n - 1] if 0 < n <= len(params) else None
    return None


def column_values(sql: str, column: str, params: list | None = None) -> list:
    """Values (literals, or bound values of ``$n``) used against ``schema.table.column`` in a
    statement text; see the module docstring for what counts."""
    schema, table, col = (part.lower() for part in column.split("."))
    found = []
    for tree in _parse_all(sql):
        qualifiers = _qualifiers(tree, schema, table)
        if not qualifiers:
            continue

        def is_column(node) -> bool:
            while isinstance(node, exp.Cast):
                node = node.this
            return isinstance(node, exp.Column) and node.name.lower() == col and \
                (not node.table or node.table.lower() in qualifiers)

        for node in tree.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike):
            for left, right in ((node.this, node.expression), (node.expression, node.this)):
                if is_column(left):
                    found.append(_value_of(right, params))
        for node in tree.find_all(exp.In):
            if is_column(node.this):
                found += [_value_of(e, params) for e in node.expressions]
        for node in tree.find_all(exp.Insert):
            target = node.this
            if isinstance(target, exp.Schema) and isinstance(node.expression, exp.Values):
                names = [e.name.lower() for e in target.expressions]
                if col in names:
                    at = names.index(col)
                    for row in node.expression.expressions:
                        if isinstance(row, exp.Tuple) and at < len(row.expressions):
                            found.append(_value_of(row.expressions[at], params))
    return [v for v in found if v is not None]


def copy_column(sql: str, column: str) -> int | None:
    """The position of the column among a ``COPY table (columns) FROM STDIN``'s, or None."""
    schema, table, col = (part.lower() for part in column.split("."))
    for tree in _parse_all(sql):
        if isinstance(tree, exp.Copy) and isinstance(tree.this, exp.Schema):
            target = tree.this.this
            if target.name.lower() == table and (not target.db or target.db.lower() == schema):
                names = [e.name.lower() for e in tree.this.expressions]
                if col in names:
                    return names.index(col)
    return None


# ----------------------------------------------------------------------------- COPY data
def _text_fields(line: str) -> list[str]:
    """COPY's text format: tab-separated, backslash escapes, \\N for NULL."""
    out = []
    for raw in line.split("\t"):
        if raw == "\\N" or "\\" not in raw:
            out.append(raw)
            continue
        chars, i = [], 0
        while i < len(raw):
            ch = raw[i]
            if ch == "\\" and i + 1 < len(raw):
                nxt = raw[i + 1]
                chars.append({"t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}.get(nxt, nxt))
                i += 2
            else:
                chars.append(ch)
                i += 1
        out.append("".join(chars))
    return out


class CopyReader:
    """One COPY's data, part after part: its lines' fields, a line cut between parts kept."""

    def __init__(self, sql: str) -> None:
        lowered = sql.lower()
        self.csv = "csv" in lowered
        self.binary = "binary" in lowered
        self._rest = b""

    def lines(self, data: bytes, last: bool = False):
        if self.binary:
            return
        data = self._rest + data
        lines = data.split(b"\n")
        self._rest = b"" if last else lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if line == "\\.":
                continue
            yield next(csv.reader([line])) if self.csv else _text_fields(line)


# ----------------------------------------------------------------------------- the search
@dataclass
class Hit:
    statement: dict  # the statement record (who, when, tier, purpose, grant, sql, fingerprint)
    how: str  # "literal", "parameter $n", "copy line n"
    ts: str
    outcome: dict | None = None
    rows: int | None = None

    def as_dict(self) -> dict:
        s = self.statement
        return {"ts": self.ts, "session": s.get("session"), "user": s.get("user"), "tier": s.get("tier"),
                "client_addr": s.get("client_addr"), "application_name": s.get("application_name"),
                "purpose": s.get("purpose"), "grant": s.get("grant"), "how": self.how,
                "statement": s.get("id"), "fingerprint": s.get("fingerprint"), "sql": s.get("sql"),
                "decision": s.get("decision"), "status": self.outcome.get("status") if self.outcome else None,
                "rows": self.rows}


@dataclass
class Investigation:
    opener: Opener
    wanted: Wanted
    param_of: str | None = None
    hits: list = field(default_factory=list)
    sealed_records: int = 0
    unopened: int = 0  # sealed fields no key opened (wrong key, or altered)
    _statements: dict = field(default_factory=dict)  # id -> (record, sealed text) of sealed statements
    _executions: dict = field(default_factory=dict)  # statement id -> deque of [hit or None, rows]
    _copies: dict = field(default_factory=dict)  # statement id -> (CopyReader, column index, line count)
    _literal_ids: set = field(default_factory=set)  # extended statements whose text holds the value
    _copy_hits: dict = field(default_factory=dict)  # statement id -> the hit in its COPY data

    def add(self, record: dict) -> None:
        kind = record.get("type")
        if kind == "seal_key":
            self.opener.add_key(record)
        elif kind == "statement" and "sealed" in record:
            self._statement(record)
        elif kind == "bind":
            self._bind(record)
        elif kind == "copy_data":
            self._copy(record)
        elif kind == "outcome":
            self._outcome(record)

    def _open(self, record: dict) -> dict | None:
        self.sealed_records += 1
        payload = self.opener.open(record.get("sealed"))
        if payload is None:
            self.unopened += 1
        return payload

    def _statement(self, record: dict) -> None:
        payload = self._open(record)
        if payload is None:
            return
        sql = payload.get("sql")
        if sql is None:
            sql = base64.b64decode(payload.get("sql64", "")).decode("utf-8", "replace")
        if record.get("protocol") == "extended" or "copy" in sql.lower():  # bound or fed later
            self._statements[record["id"]] = (record, sql)
        if self.param_of:
            used = any(self.wanted.text_matches(v) for v in column_values(sql, self.param_of) if isinstance(v, str))
        else:
            used = any(self.wanted.text_matches(v) for v in literals(sql))
        if record.get("protocol") == "extended":  # executed by its Binds, each a hit of its own
            if used:
                self._literal_ids.add(record["id"])
            return
        hit = Hit(record, "literal", record["ts"]) if used else None
        if hit is not None:
            self.hits.append(hit)
        self._executions.setdefault(record["id"], deque()).append([hit, None])

    def _bind(self, record: dict) -> None:
        payload = self._open(record)
        known = self._statements.get(record.get("statement"))
        if payload is None or known is None:
            return
        statement, sql = known
        params = payload.get("params", [])
        how = None
        if self.param_of:
            if any(self.wanted.matches(v) for v in column_values(sql, self.param_of, params)):
                how = "parameter"
        else:
            numbers = [str(i + 1) for i, v in enumerate(params) if self.wanted.matches(v)]
            how = "parameter $" + ", $".join(numbers) if numbers else None
        hit = None
        if how is not None or statement["id"] in self._literal_ids:
            hit = Hit(statement, how or "literal", record["ts"])
            self.hits.append(hit)
        self._executions.setdefault(statement["id"], deque()).append([hit, None])

    def _copy(self, record: dict) -> None:
        payload = self._open(record)
        known = self._statements.get(record.get("statement"))
        if payload is None or known is None:
            return
        statement, sql = known
        reader, at, count = self._copies.get(statement["id"]) or (CopyReader(sql), None, 0)
        if self.param_of:
            at = copy_column(sql, self.param_of)
            if at is None:
                return
        for fields in reader.lines(base64.b64decode(payload.get("b", ""))):
            count += 1
            values = fields if at is None else fields[at:at + 1]
            if statement["id"] not in self._copy_hits and any(self.wanted.text_matches(v) for v in values):
                hit = self._copy_hits[statement["id"]] = Hit(statement, f"copy line {count}", record["ts"])
                self.hits.append(hit)
        self._copies[statement["id"]] = (reader, at, count)

    def _outcome(self, record: dict) -> None:
        statement_id = record.get("statement")
        queue = self._executions.get(statement_id)
        hit = self._copy_hits.get(statement_id)
        if hit is not None and hit.outcome is None:  # a COPY's outcome: its one execution
            hit.outcome, hit.rows = record, record.get("rows")
        if not queue:
            return
        entry = queue[0]
        rows = record.get("rows")
        if rows is not None:
            entry[1] = (entry[1] or 0) + rows
        if record.get("status") == "suspended":
            return  # a portal read in pieces: one execution, several outcomes
        queue.popleft()
        if entry[0] is not None:
            entry[0].outcome, entry[0].rows = record, entry[1]
