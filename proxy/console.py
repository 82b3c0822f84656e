"""The admin console's protocol, without I/O: a virtual database ``pgveil`` answered by pgveil.

Once the client is authenticated (see :mod:`proxy.console_server`), :class:`ConsoleProtocol`
reads its messages and answers them as a PostgreSQL server would: a simple Query, or the
extended protocol's Parse / Bind / Describe / Execute / Sync (which asyncpg and JDBC use), with
ordinary RowDescription and DataRow messages (every column ``text``), so psql, DBeaver and
Grafana's PostgreSQL data source read the answers.  What a command *means* is left to a
``run(command, argument, protocol) -> Table`` coroutine function given by the server (it may
have to ask the other workers); this module only parses commands and speaks the protocol.

Commands (case-insensitive, an optional ``;``)::

    SHOW SESSIONS | RULES | GRANTS | TIERS | STATS | AUDIT | VERSION
    RELOAD
    KILL <session id>

>>> parse_command("show sessions;")
('SHOW SESSIONS', '')
>>> parse_command("KILL 3f2a9c")
('KILL', '3f2a9c')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from . import codec

SHOWS = ("SESSIONS", "RULES", "GRANTS", "TIERS", "STATS", "AUDIT", "VERSION")
_COMMAND = re.compile(r"^\s*+(?:(SHOW)\s++([A-Za-z]++)|(RELOAD)|(KILL)\s++([0-9A-Za-z_-]++))\s*+;?+\s*+$", re.I)
TEXT_OID = 25

# the columns of each answer, for Describe (asked before anything runs)
COLUMNS = {
    "SHOW SESSIONS": ("id", "user", "tier", "grants", "client_addr", "application_name", "database", "tls",
                      "purpose", "state", "statement", "statement_age_s", "age_s", "bytes_in", "bytes_out",
                      "worker"),
    "SHOW RULES": ("version", "file", "sha256", "tiers", "classes", "columns", "identities", "grants", "worker"),
    "SHOW GRANTS": ("user", "tier", "see", "starts", "ends", "seconds_left", "reason", "active"),
    "SHOW TIERS": ("tier", "statements", "see", "tables", "max_rows", "sessions"),
    "SHOW STATS": ("tier", "sessions", "statements", "refusals", "rows", "bytes_in", "bytes_out"),
    "SHOW AUDIT": ("stream", "seq", "head", "file", "healthy", "error", "mode", "written", "pending", "fsyncs",
                   "syncs_per_s", "last_fsync_ms", "sinks", "sink_lag", "worker"),
    "SHOW VERSION": ("version",),
    "RELOAD": (),
    "KILL": (),
}


class ConsoleError(Exception):
    """A command that cannot be answered: an ErrorResponse with this SQLSTATE."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass
class Table:
    """One command's answer: columns and rows of text (None is NULL), its command tag, and
    warnings sent before it (NoticeResponse: a worker that did not answer, say)."""
    columns: tuple
    rows: list
    tag: str
    notices: list = field(default_factory=list)


def parse_command(sql: str) -> tuple[str, str]:
    """``(command, argument)``, or ConsoleError 42601 naming what the console understands."""
    m = _COMMAND.match(sql)
    if m is not None:
        if m.group(1):
            what = m.group(2).upper()
            if what in SHOWS:
                return f"SHOW {what}", ""
        elif m.group(3):
            return "RELOAD", ""
        else:
            return "KILL", m.group(5)
    raise ConsoleError("42601", "the pgveil console understands SHOW SESSIONS | RULES | GRANTS | TIERS | STATS | "
                                "AUDIT | VERSION, RELOAD and KILL <session id>")


def row_description(columns: tuple) -> bytes:
    if not columns:
        return codec.encode(codec.NoData())
    return codec.encode(codec.RowDescription(tuple((name, 0, 0, TEXT_OID, -1, -1, 0) for name in columns)))


def _notices(table: Table) -> bytes:
    return b"".join(codec.encode(codec.NoticeResponse(
        ((b"S", "WARNING"), (b"V", "WARNING"), (b"C", "01000"), (b"M", text)))) for text in table.notices)


def _rows(table: Table) -> bytes:
    out = [codec.encode(codec.DataRow(tuple(None if v is None else str(v).encode() for v in row)))
           for row in table.rows]
    return b"".join(out) + codec.encode(codec.CommandComplete(table.tag))


Q, P, B, D, E, S, H, C, X = (codec.FE.QUERY, codec.FE.PARSE, codec.FE.BIND, codec.FE.DESCRIBE, codec.FE.EXECUTE,
                              codec.FE.SYNC, codec.FE.FLUSH, codec.FE.CLOSE, codec.FE.TERMINATE)


class ConsoleProtocol:
    """An authenticated console client: bytes in, the answer's bytes out.  ``run`` carries out a
    command (awaited: it may ask the other workers); ``closed`` turns True on Terminate."""

    def __init__(self, run: Callable[[str, str, str], Awaitable[Table]], max_message_size: int = 1 << 20) -> None:
        self._run = run  # (command, argument, protocol) -> Table, or ConsoleError
        self._splitter = codec.Splitter(frozenset(range(256)), max_message_size)
        self._statements: dict[str, str] = {}
        self._portals: dict[str, str] = {}
        self._failed = False  # an error in the extended protocol: skip to Sync
        self.closed = False

    async def feed(self, data: bytes) -> bytes:
        out, marks = self._splitter.feed(data)
        replies = []
        for kind, start, end in marks:
            message = bytes(out[start:end])
            if kind == X:
                self.closed = True
                break
            if kind == S:
                self._failed = False
                replies.append(codec.encode(codec.ReadyForQuery(b"I")))
            elif kind == Q:
                replies.append(await self._query(codec.query_text(message)))
            elif self._failed or kind == H:
                continue
            else:
                try:
                    replies.append(await self._extended(kind, message))
                except ConsoleError as exc:
                    self._failed = True
                    replies.append(codec.error_response(exc.sqlstate, str(exc)))
        return b"".join(replies)

    async def _query(self, sql: str) -> bytes:
        ready = codec.encode(codec.ReadyForQuery(b"I"))
        if not sql.strip(" \t\r\n;"):
            return codec.encode(codec.EmptyQueryResponse()) + ready
        try:
            command, argument = parse_command(sql)
            table = await self._run(command, argument, "simple")
        except ConsoleError as exc:
            return codec.error_response(exc.sqlstate, str(exc)) + ready
        head = row_description(table.columns) if table.columns else b""
        return _notices(table) + head + _rows(table) + ready

    async def _extended(self, kind: int, message: bytes) -> bytes:
        decoded = codec.decode_message(codec.FRONTEND, message)
        if kind == P:
            parse_command(decoded.query)  # refused at Parse, as the server refuses bad SQL
            self._statements[decoded.name] = decoded.query
            return codec.encode(codec.ParseComplete())
        if kind == B:
            if decoded.statement not in self._statements:
                raise ConsoleError("26000", f'prepared statement "{decoded.statement}" does not exist')
            self._portals[decoded.portal] = self._statements[decoded.statement]
            return codec.encode(codec.BindComplete())
        if kind == D:
            names = self._statements if decoded.kind == b"S" else self._portals
            if decoded.name not in names:
                raise ConsoleError("26000" if decoded.kind == b"S" else "34000", f'"{decoded.name}" does not exist')
            columns = COLUMNS[parse_command(names[decoded.name])[0]]
            params = codec.encode(codec.ParameterDescription(())) if decoded.kind == b"S" else b""
            return params + row_description(columns)
        if kind == E:
            if decoded.portal not in self._portals:
                raise ConsoleError("34000", f'portal "{decoded.portal}" does not exist')
            command, argument = parse_command(self._portals[decoded.portal])
            table = await self._run(command, argument, "extended")
            return _notices(table) + _rows(table)
        if kind == C:
            (self._statements if decoded.kind == b"S" else self._portals).pop(decoded.name, None)
            return codec.encode(codec.CloseComplete())
        raise ConsoleError("08P01", f"the pgveil console does not take message type {chr(kind)!r}")
