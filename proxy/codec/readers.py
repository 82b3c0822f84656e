"""Readers of the few fields the session needs, straight from a message's bytes.

The relay does not decode what it passes; where it must know a name (the portal an Execute
runs, the statement a Bind binds, the target of a Close) or a status (a ReadyForQuery's, a
CommandComplete's tag), these read just that, without building the whole message.  No module
outside the codec slices a message body.

Each reader takes the message **body** (the bytes after the type byte and the length word, as
``data[start + 5:end]`` for a Splitter mark ``(kind, start, end)``), reads only what it
returns, and raises :class:`ProtocolViolation` when those bytes are not what the message
kind says.  :func:`query_text` and :func:`row_sources` take the whole message instead (they
check its header too: they run on messages the caller has not looked at).

>>> from proxy.codec import Bind, Close, Execute, Target, encode
>>> bind_names(encode(Bind("p1", "s1", (), (), ()))[5:])
('p1', 's1')
>>> close_target(encode(Close(Target.STATEMENT, "s1"))[5:])
(b'S', 's1')
>>> execute_target(encode(Execute("", 0))[5:])
('', 0)

Pure: standard library only.
"""

from __future__ import annotations

from .backend import BACKEND, ErrorResponse, NoticeResponse, ParameterStatus, ReadyForQuery
from .fields import ProtocolViolation, _text
from .kinds import Field, Target, TxStatus
from .messages import FRONTEND, Parse, decode_as, decode_message, encode

_TARGETS = frozenset((Target.STATEMENT, Target.PORTAL))
_STATUSES = frozenset((TxStatus.IDLE, TxStatus.IN_BLOCK, TxStatus.FAILED))


def _cstr(body: bytes, pos: int, what: str) -> tuple[str, int]:
    """The C string at ``pos`` and the position after its NUL."""
    end = body.find(b"\0", pos)
    if end < 0:
        raise ProtocolViolation(f"{what} is not NUL-terminated")
    return _text(bytes(body[pos:end])), end + 1


def _done(body: bytes, pos: int, what: str) -> None:
    if pos != len(body):
        raise ProtocolViolation(f"{what} has {len(body) - pos} trailing bytes")


def bind_names(body: bytes) -> tuple[str, str]:
    """Bind (F): (portal, statement) names; the parameters are not read."""
    portal, pos = _cstr(body, 0, "Bind's portal name")
    statement, _ = _cstr(body, pos, "Bind's statement name")
    return portal, statement


def close_target(body: bytes, what: str = "Close") -> tuple[bytes, str]:
    """Close (F): (:class:`Target` ``STATEMENT`` or ``PORTAL``, name)."""
    kind = bytes(body[:1])
    if kind not in _TARGETS:
        raise ProtocolViolation(f"{what} names neither a statement nor a portal ({kind!r})")
    name, pos = _cstr(body, 1, f"{what}'s name")
    _done(body, pos, what)
    return kind, name


def describe_target(body: bytes) -> tuple[bytes, str]:
    """Describe (F): (:class:`Target` ``STATEMENT`` or ``PORTAL``, name)."""
    return close_target(body, "Describe")


def execute_target(body: bytes) -> tuple[str, int]:
    """Execute (F): (portal name, max rows; 0 means all)."""
    portal, pos = _cstr(body, 0, "Execute's portal name")
    if len(body) - pos != 4:
        raise ProtocolViolation("Execute's row count is not 4 bytes")
    return portal, int.from_bytes(body[pos:pos + 4], "big", signed=True)


def parse_fields(body: bytes) -> tuple[str, str, tuple]:
    """Parse (F): (statement name, query text, parameter type oids)."""
    parse = decode_as(Parse, bytes(body))
    return parse.name, parse.query, parse.param_types


def command_tag(body: bytes) -> str:
    """CommandComplete (B): its tag, e.g. ``'SELECT 3'``, ``'INSERT 0 1'``."""
    tag, pos = _cstr(body, 0, "CommandComplete's tag")
    _done(body, pos, "CommandComplete")
    return tag


def parameter_status(body: bytes) -> tuple[str, str]:
    """ParameterStatus (B): (name, value)."""
    status = decode_as(ParameterStatus, bytes(body))
    return status.name, status.value


def ready_status(body: bytes) -> bytes:
    """ReadyForQuery (B): the transaction status, one of :class:`TxStatus`."""
    status = bytes(body)
    if status not in _STATUSES:
        raise ProtocolViolation(f"ReadyForQuery with an unknown status {status[:8]!r}")
    return status


def error_fields(body: bytes) -> ErrorResponse:
    """ErrorResponse or NoticeResponse (B): the fields, read as an ErrorResponse
    (``.sqlstate``, ``.message``, ``.severity``, ``.get(Field.DETAIL)``)."""
    return decode_as(ErrorResponse, bytes(body))


def query_text(data: bytes) -> str:
    """The text of a whole Query message: ``decode_message(FRONTEND, data).query`` without
    building the message (it runs for every simple-protocol statement)."""
    end = len(data) - 1
    if end < 5 or data[0] != 0x51 or data[end] != 0 or data.find(b"\0", 5) != end \
            or int.from_bytes(data[1:5], "big") != end:
        return decode_message(FRONTEND, data).query  # raises the precise ProtocolViolation
    return _text(bytes(data[5:end]))


def row_sources(data: bytes) -> list[tuple[str, int, int]]:
    """(name, table oid, column number) of each field of a whole RowDescription message:
    ``decode_message(BACKEND, data).columns`` cut to what the relay's second check reads, without
    building the message (it runs for every result a restricted tier receives)."""
    n = len(data)
    if n >= 7 and data[0] == 0x54 and int.from_bytes(data[1:5], "big") == n - 1:
        count = int.from_bytes(data[5:7], "big", signed=True)
        pos, fields = 7, []
        for _ in range(count):  # a field: name, NUL, then 18 bytes (table, column, type, size, mod, format)
            end = data.find(b"\0", pos)
            if end < 0 or end + 19 > n:
                break
            fields.append((_text(bytes(data[pos:end])), int.from_bytes(data[end + 1:end + 5], "big", signed=True),
                           int.from_bytes(data[end + 5:end + 7], "big", signed=True)))
            pos = end + 19
        else:
            if count >= 0 and pos == n:
                return fields
    return [column[:3] for column in decode_message(BACKEND, data).columns]  # raises the precise ProtocolViolation


# --------------------------------------------------------------------------- writers
def error_response(sqlstate: str, message: str, *, severity: str = "ERROR",
                   detail: str | None = None, hint: str | None = None) -> bytes:
    """An ErrorResponse as bytes, as PostgreSQL writes it.

    >>> decode_message(BACKEND, error_response("08P01", "bad")).sqlstate
    '08P01'
    """
    fields = [(Field.SEVERITY, severity), (Field.SEVERITY_NONLOCALIZED, severity), (Field.SQLSTATE, sqlstate),
              (Field.MESSAGE, message)]
    if detail:
        fields.append((Field.DETAIL, detail))
    if hint:
        fields.append((Field.HINT, hint))
    return encode(ErrorResponse(tuple(fields)))


def notice_response(sqlstate: str, message: str, severity: str = "NOTICE") -> bytes:
    """A NoticeResponse as bytes (``severity``: WARNING, NOTICE, INFO ...)."""
    return encode(NoticeResponse(((Field.SEVERITY, severity), (Field.SEVERITY_NONLOCALIZED, severity),
                                  (Field.SQLSTATE, sqlstate), (Field.MESSAGE, message))))


def ready_for_query(status: bytes) -> bytes:
    """A ReadyForQuery as bytes."""
    return encode(ReadyForQuery(status))
