"""The typed messages, one frozen dataclass per message, each saying its direction.

Frontend (F) messages are declared here, backend (B) ones in :mod:`proxy.codec.backend`;
CopyData and CopyDone travel both ways and are declared once.  :func:`encode` writes any
message, :func:`decode_message` reads one with the direction's table (``FRONTEND`` or
``BACKEND``), :func:`decode_as` reads a body as a given class.

Pure: standard library only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields as dc_fields
from typing import ClassVar

from .fields import (CSTR, INT8, INT16, INT32, NBYTES, REST, ProtocolViolation, _Reader,  # noqa: F401
                     _write)
from .kinds import FE


class Message:
    """A typed message.  Subclasses are frozen dataclasses with SPEC and TYPE."""

    TYPE: ClassVar[bytes] = b""
    SPEC: ClassVar[tuple] = ()

    def body(self) -> bytes:
        out = bytearray()
        for (name, kind) in self.SPEC:
            _write(out, kind, getattr(self, name))
        return bytes(out)

    @classmethod
    def from_body(cls, body: bytes) -> "Message":
        reader = _Reader(body)
        values = [reader.read(kind) for _, kind in cls.SPEC]
        if reader.pos != len(body):
            raise ProtocolViolation(f"{cls.__name__} has {len(body) - reader.pos} trailing bytes")
        return cls(*values)


def _message(code: int, spec: tuple = ()):
    """Declare a message class: its kind (:class:`FE` or :class:`BE` code) and its fields."""
    def wrap(cls):
        cls = dataclass(frozen=True, slots=True)(cls)
        cls.TYPE = bytes((code,))
        cls.SPEC = spec
        names = tuple(f.name for f in dc_fields(cls))
        assert names == tuple(n for n, _ in spec), (cls.__name__, names)
        return cls
    return wrap


ARR16_INT16 = ("array16", INT16)
ARR16_INT32 = ("array16", INT32)
ARR16_NBYTES = ("array16", NBYTES)


# Frontend (F) ---------------------------------------------------------------
@_message(FE.BIND, (("portal", CSTR), ("statement", CSTR), ("param_formats", ARR16_INT16),
                 ("params", ARR16_NBYTES), ("result_formats", ARR16_INT16)))
class Bind(Message):
    """Bind (F)."""
    portal: str
    statement: str
    param_formats: tuple
    params: tuple
    result_formats: tuple


@_message(FE.CLOSE, (("kind", INT8), ("name", CSTR)))
class Close(Message):
    """Close (F): kind is b'S' (statement) or b'P' (portal)."""
    kind: bytes
    name: str


@_message(FE.COPY_DATA, (("data", REST),))
class CopyData(Message):
    """CopyData (F and B)."""
    data: bytes


@_message(FE.COPY_DONE)
class CopyDone(Message):
    """CopyDone (F and B)."""


@_message(FE.COPY_FAIL, (("message", CSTR),))
class CopyFail(Message):
    """CopyFail (F)."""
    message: str


@_message(FE.DESCRIBE, (("kind", INT8), ("name", CSTR)))
class Describe(Message):
    """Describe (F): kind is b'S' or b'P'."""
    kind: bytes
    name: str


@_message(FE.EXECUTE, (("portal", CSTR), ("max_rows", INT32)))
class Execute(Message):
    """Execute (F)."""
    portal: str
    max_rows: int


@_message(FE.FLUSH)
class Flush(Message):
    """Flush (F)."""


@_message(FE.FUNCTION_CALL, (("function_oid", INT32), ("arg_formats", ARR16_INT16), ("args", ARR16_NBYTES),
                 ("result_format", INT16)))
class FunctionCall(Message):
    """FunctionCall (F)."""
    function_oid: int
    arg_formats: tuple
    args: tuple
    result_format: int


@_message(FE.AUTH_RESPONSE, (("data", REST),))
class AuthResponse(Message):
    """PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse (F).

    They share the type byte; which one it is depends on the authentication request the
    server sent.  Use :func:`decode_as` with the specific class.
    """
    data: bytes


@_message(FE.AUTH_RESPONSE, (("password", CSTR),))
class PasswordMessage(Message):
    """PasswordMessage (F): cleartext or md5 response."""
    password: str


@_message(FE.AUTH_RESPONSE, (("mechanism", CSTR), ("data", NBYTES)))
class SASLInitialResponse(Message):
    """SASLInitialResponse (F)."""
    mechanism: str
    data: bytes | None


@_message(FE.AUTH_RESPONSE, (("data", REST),))
class SASLResponse(Message):
    """SASLResponse (F)."""
    data: bytes


@_message(FE.PARSE, (("name", CSTR), ("query", CSTR), ("param_types", ARR16_INT32)))
class Parse(Message):
    """Parse (F)."""
    name: str
    query: str
    param_types: tuple


@_message(FE.QUERY, (("query", CSTR),))
class Query(Message):
    """Query (F)."""
    query: str


@_message(FE.SYNC)
class Sync(Message):
    """Sync (F)."""


@_message(FE.TERMINATE)
class Terminate(Message):
    """Terminate (F)."""


FRONTEND_MESSAGES = (Bind, Close, CopyData, CopyDone, CopyFail, Describe, Execute, Flush,
                     FunctionCall, AuthResponse, Parse, Query, Sync, Terminate)
FRONTEND: dict[int, type[Message]] = {m.TYPE[0]: m for m in FRONTEND_MESSAGES}
assert len(FRONTEND) == len(FRONTEND_MESSAGES)


def encode(message: Message) -> bytes:
    """The bytes of a typed message, header included.

    >>> encode(Query("select 1"))
    b'Q\\x00\\x00\\x00\\rselect 1\\x00'
    """
    body = message.body()
    return message.TYPE + struct.pack("!i", len(body) + 4) + body


def decode_as(cls: type[Message], body: bytes) -> Message:
    """Decode ``body`` as ``cls``; only :class:`ProtocolViolation` escapes."""
    try:
        return cls.from_body(body)
    except ProtocolViolation:
        raise
    except Exception as exc:  # struct.error, UnicodeError, ... are all malformed input
        raise ProtocolViolation(f"malformed {cls.__name__}: {exc}") from None


def decode_message(table: dict[int, type[Message]], data: bytes) -> Message:
    """Decode one whole message (header included) with the direction's table."""
    if len(data) < 5:
        raise ProtocolViolation("message is shorter than its header")
    cls = table.get(data[0])
    if cls is None:
        raise ProtocolViolation(f"unknown message type {chr(data[0])!r}")
    length = struct.unpack_from("!i", data, 1)[0]
    if length != len(data) - 1:
        raise ProtocolViolation(f"length {length} does not match the {len(data) - 1} bytes given")
    return decode_as(cls, data[5:])
