"""PostgreSQL wire protocol 3.0 and 3.2: bytes in, typed messages out, and back.

Theory of operation
-------------------
Every message after start-up is ``type byte + int32 length (counting itself) + body``.
The same type byte means different things in each direction (``D`` is Describe from a
client and DataRow from a server), so the frontend and backend tables are kept apart:
``FRONTEND`` and ``BACKEND`` map a type byte to a message class.

Start-up packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) carry no
type byte; :func:`decode_startup` tells them apart by their request code.

Each message class declares its fields as ``(name, kind)`` pairs; one generic reader and
writer handle every class, so a new message is one declaration.  Decoding never raises
anything but :class:`ProtocolViolation`: a truncated body, a missing terminator or trailing
bytes are all the peer's fault and reported as such.

The hot relay path does not decode at all: :class:`Splitter` finds message boundaries in a
byte stream, hands back only the messages the caller watches, and passes the rest through
as bytes (even a message larger than the buffer is streamed, never held whole).

This module is pure: standard library only, no I/O.

>>> decode_message(BACKEND, encode(ReadyForQuery(status=b"I")))
ReadyForQuery(status=b'I')
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields as dc_fields
from typing import Any, ClassVar

PROTOCOL_3_0 = 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

MAX_STARTUP_PACKET = 10_000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
MAX_MESSAGE_SIZE = (1 << 30) - 1  # PostgreSQL's PQ_LARGE_MESSAGE_LIMIT
MAX_CANCEL_KEY = 256  # protocol 3.2: the secret key is 4 to 256 bytes


class ProtocolError(Exception):
    """Base of everything that is wrong with bytes on the wire."""


class ProtocolViolation(ProtocolError):
    """The peer sent bytes that are not a valid message here (SQLSTATE 08P01)."""


# --------------------------------------------------------------------------- fields
# Field kinds.  Arrays are ("array16", kind) or ("array32", kind); a record is a tuple of
# (name, kind) pairs wrapped as ("record", pairs).
INT8 = "int8"        # one byte as bytes of length 1 (status letters, Close/Describe kind)
INT16 = "int16"
INT32 = "int32"
CSTR = "cstr"        # NUL-terminated string
NBYTES = "nbytes"    # int32 length, then bytes; -1 is NULL (None)
REST = "rest"        # the rest of the body as bytes
CSTRLIST = "cstrlist"  # C strings until an empty one (SASL mechanisms)
FIELDLIST = "fieldlist"  # (code byte, C string) pairs until a zero byte (Error/Notice)


def _text(raw: bytes) -> str:
    # surrogateescape keeps any client_encoding's bytes round-tripping exactly
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ProtocolViolation("message is truncated")
        chunk = self.buf[self.pos:end]
        self.pos = end
        return bytes(chunk)

    def cstr(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolViolation("string is not NUL-terminated")
        chunk = self.buf[self.pos:end]
        self.pos = end + 1
        return _text(bytes(chunk))

    def read(self, kind: Any) -> Any:
        if kind == INT8:
            return self.take(1)
        if kind == INT16:
            return struct.unpack("!h", self.take(2))[0]
        if kind == INT32:
            return struct.unpack("!i", self.take(4))[0]
        if kind == CSTR:
            return self.cstr()
        if kind == NBYTES:
            n = struct.unpack("!i", self.take(4))[0]
            if n == -1:
                return None
            if n < -1:
                raise ProtocolViolation(f"invalid value length {n}")
            return self.take(n)
        if kind == REST:
            return self.take(len(self.buf) - self.pos)
        if kind == CSTRLIST:
            items = []
            while (item := self.cstr()) != "":
                items.append(item)
            return tuple(items)
        if kind == FIELDLIST:
            items = []
            while (code := self.take(1)) != b"\0":
                items.append((code, self.cstr()))
            return tuple(items)
        tag, inner = kind
        if tag == "record":
            return tuple(self.read(k) for _, k in inner)
        count = struct.unpack("!h" if tag == "array16" else "!i", self.take(2 if tag == "array16" else 4))[0]
        if count < 0:
            raise ProtocolViolation(f"invalid array length {count}")
        if count > len(self.buf) - self.pos:  # every element takes at least one byte
            raise ProtocolViolation("array length exceeds the message")
        return tuple(self.read(inner) for _ in range(count))


def _write(out: bytearray, kind: Any, value: Any) -> None:
    if kind == INT8:
        if len(value) != 1:
            raise ValueError("int8 field needs exactly one byte")
        out += value
    elif kind == INT16:
        out += struct.pack("!h", value)
    elif kind == INT32:
        out += struct.pack("!i", value)
    elif kind == CSTR:
        raw = _raw(value)
        if b"\0" in raw:
            raise ValueError("a C string cannot contain NUL")
        out += raw + b"\0"
    elif kind == NBYTES:
        if value is None:
            out += b"\xff\xff\xff\xff"
        else:
            out += struct.pack("!i", len(value)) + value
    elif kind == REST:
        out += value
    elif kind == CSTRLIST:
        for item in value:
            _write(out, CSTR, item)
        out += b"\0"
    elif kind == FIELDLIST:
        for code, text in value:
            out += code
            _write(out, CSTR, text)
        out += b"\0"
    else:
        tag, inner = kind
        if tag == "record":
            for (_, k), v in zip(inner, value):
                _write(out, k, v)
            return
        out += struct.pack("!h" if tag == "array16" else "!i", len(value))
        for item in value:
            _write(out, inner, item)


# --------------------------------------------------------------------------- messages
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


def _message(type_byte: bytes, spec: tuple = ()):
    def wrap(cls):
        cls = dataclass(frozen=True, slots=True)(cls)
        cls.TYPE = type_byte
        cls.SPEC = spec
        names = tuple(f.name for f in dc_fields(cls))
        assert names == tuple(n for n, _ in spec), (cls.__name__, names)
        return cls
    return wrap


ARR16_INT16 = ("array16", INT16)
ARR16_INT32 = ("array16", INT32)
ARR16_NBYTES = ("array16", NBYTES)


# Frontend (F) ---------------------------------------------------------------
@_message(b"B", (("portal", CSTR), ("statement", CSTR), ("param_formats", ARR16_INT16),
                 ("params", ARR16_NBYTES), ("result_formats", ARR16_INT16)))
class Bind(Message):
    """Bind (F)."""
    portal: str
    statement: str
    param_formats: tuple
    params: tuple
    result_formats: tuple


@_message(b"C", (("kind", INT8), ("name", CSTR)))
class Close(Message):
    """Close (F): kind is b'S' (statement) or b'P' (portal)."""
    kind: bytes
    name: str


@_message(b"d", (("data", REST),))
class CopyData(Message):
    """CopyData (F and B)."""
    data: bytes


@_message(b"c")
class CopyDone(Message):
    """CopyDone (F and B)."""


@_message(b"f", (("message", CSTR),))
class CopyFail(Message):
    """CopyFail (F)."""
    message: str


@_message(b"D", (("kind", INT8), ("name", CSTR)))
class Describe(Message):
    """Describe (F): kind is b'S' or b'P'."""
    kind: bytes
    name: str


@_message(b"E", (("portal", CSTR), ("max_rows", INT32)))
class Execute(Message):
    """Execute (F)."""
    portal: str
    max_rows: int


@_message(b"H")
class Flush(Message):
    """Flush (F)."""


@_message(b"F", (("function_oid", INT32), ("arg_formats", ARR16_INT16), ("args", ARR16_NBYTES),
                 ("result_format", INT16)))
class FunctionCall(Message):
    """FunctionCall (F)."""
    function_oid: int
    arg_formats: tuple
    args: tuple
    result_format: int


@_message(b"p", (("data", REST),))
class AuthResponse(Message):
    """PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse (F).

    They share the type byte; which one it is depends on the authentication request the
    server sent.  Use :func:`decode_as` with the specific class.
    """
    data: bytes


@_message(b"p", (("password", CSTR),))
class PasswordMessage(Message):
    """PasswordMessage (F): cleartext or md5 response."""
    password: str


@_message(b"p", (("mechanism", CSTR), ("data", NBYTES)))
class SASLInitialResponse(Message):
    """SASLInitialResponse (F)."""
    mechanism: str
    data: bytes | None


@_message(b"p", (("data", REST),))
class SASLResponse(Message):
    """SASLResponse (F)."""
    data: bytes


@_message(b"P", (("name", CSTR), ("query", CSTR), ("param_types", ARR16_INT32)))
class Parse(Message):
    """Parse (F)."""
    name: str
    query: str
    param_types: tuple


@_message(b"Q", (("query", CSTR),))
class Query(Message):
    """Query (F)."""
    query: str


@_message(b"S")
class Sync(Message):
    """Sync (F)."""


@_message(b"X")
class Terminate(Message):
    """Terminate (F)."""


# Backend (B) ----------------------------------------------------------------
@_message(b"R", (("code", INT32), ("data", REST)))
class Authentication(Message):
    """Authentication* (B).  ``code``: 0 Ok, 2 KerberosV5, 3 CleartextPassword, 5 MD5Password
    (data: 4-byte salt), 7 GSS, 8 GSSContinue, 9 SSPI, 10 SASL (data: mechanism list),
    11 SASLContinue, 12 SASLFinal."""
    code: int
    data: bytes

    OK: ClassVar[int] = 0
    CLEARTEXT: ClassVar[int] = 3
    MD5: ClassVar[int] = 5
    SASL: ClassVar[int] = 10
    SASL_CONTINUE: ClassVar[int] = 11
    SASL_FINAL: ClassVar[int] = 12

    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms of an AuthenticationSASL message."""
        reader = _Reader(self.data)
        return reader.read(CSTRLIST)

    @classmethod
    def sasl(cls, mechanisms: tuple[str, ...]) -> "Authentication":
        out = bytearray()
        _write(out, CSTRLIST, mechanisms)
        return cls(cls.SASL, bytes(out))


@_message(b"K", (("pid", INT32), ("key", REST)))
class BackendKeyData(Message):
    """BackendKeyData (B): 4-byte key in protocol 3.0, up to 256 bytes in 3.2."""
    pid: int
    key: bytes


@_message(b"2")
class BindComplete(Message):
    """BindComplete (B)."""


@_message(b"3")
class CloseComplete(Message):
    """CloseComplete (B)."""


@_message(b"C", (("tag", CSTR),))
class CommandComplete(Message):
    """CommandComplete (B)."""
    tag: str


@_message(b"G", (("format", INT8), ("column_formats", ARR16_INT16)))
class CopyInResponse(Message):
    """CopyInResponse (B)."""
    format: bytes
    column_formats: tuple


@_message(b"H", (("format", INT8), ("column_formats", ARR16_INT16)))
class CopyOutResponse(Message):
    """CopyOutResponse (B)."""
    format: bytes
    column_formats: tuple


@_message(b"W", (("format", INT8), ("column_formats", ARR16_INT16)))
class CopyBothResponse(Message):
    """CopyBothResponse (B)."""
    format: bytes
    column_formats: tuple


@_message(b"D", (("values", ARR16_NBYTES),))
class DataRow(Message):
    """DataRow (B)."""
    values: tuple


@_message(b"I")
class EmptyQueryResponse(Message):
    """EmptyQueryResponse (B)."""


@_message(b"E", (("fields", FIELDLIST),))
class ErrorResponse(Message):
    """ErrorResponse (B): fields are (code, text) pairs, e.g. (b'C', '42501')."""
    fields: tuple

    def get(self, code: bytes) -> str | None:
        for c, text in self.fields:
            if c == code:
                return text
        return None


@_message(b"N", (("fields", FIELDLIST),))
class NoticeResponse(Message):
    """NoticeResponse (B): fields as in ErrorResponse (a WARNING, NOTICE, INFO ...)."""
    fields: tuple

    get = ErrorResponse.get


@_message(b"V", (("value", NBYTES),))
class FunctionCallResponse(Message):
    """FunctionCallResponse (B)."""
    value: bytes | None


@_message(b"v", (("newest_minor", INT32), ("unrecognized", ("array32", CSTR))))
class NegotiateProtocolVersion(Message):
    """NegotiateProtocolVersion (B)."""
    newest_minor: int
    unrecognized: tuple


@_message(b"n")
class NoData(Message):
    """NoData (B)."""


@_message(b"A", (("pid", INT32), ("channel", CSTR), ("payload", CSTR)))
class NotificationResponse(Message):
    """NotificationResponse (B)."""
    pid: int
    channel: str
    payload: str


@_message(b"t", (("type_oids", ARR16_INT32),))
class ParameterDescription(Message):
    """ParameterDescription (B)."""
    type_oids: tuple


@_message(b"S", (("name", CSTR), ("value", CSTR)))
class ParameterStatus(Message):
    """ParameterStatus (B)."""
    name: str
    value: str


@_message(b"1")
class ParseComplete(Message):
    """ParseComplete (B)."""


@_message(b"s")
class PortalSuspended(Message):
    """PortalSuspended (B)."""


@_message(b"Z", (("status", INT8),))
class ReadyForQuery(Message):
    """ReadyForQuery (B): status b'I' idle, b'T' in a transaction, b'E' failed transaction."""
    status: bytes


FIELD_SPEC = (("name", CSTR), ("table_oid", INT32), ("column", INT16), ("type_oid", INT32),
              ("type_size", INT16), ("type_mod", INT32), ("format", INT16))


@_message(b"T", (("columns", ("array16", ("record", FIELD_SPEC))),))
class RowDescription(Message):
    """RowDescription (B): each column is (name, table_oid, column, type_oid, type_size,
    type_mod, format)."""
    columns: tuple


FRONTEND_MESSAGES = (Bind, Close, CopyData, CopyDone, CopyFail, Describe, Execute, Flush,
                     FunctionCall, AuthResponse, Parse, Query, Sync, Terminate)
BACKEND_MESSAGES = (Authentication, BackendKeyData, BindComplete, CloseComplete, CommandComplete,
                    CopyInResponse, CopyOutResponse, CopyBothResponse, CopyData, CopyDone,
                    DataRow, EmptyQueryResponse, ErrorResponse, NoticeResponse,
                    FunctionCallResponse, NegotiateProtocolVersion, NoData,
                    NotificationResponse, ParameterDescription, ParameterStatus, ParseComplete,
                    PortalSuspended, ReadyForQuery, RowDescription)
FRONTEND: dict[int, type[Message]] = {m.TYPE[0]: m for m in FRONTEND_MESSAGES}
BACKEND: dict[int, type[Message]] = {m.TYPE[0]: m for m in BACKEND_MESSAGES}
assert len(FRONTEND) == len(FRONTEND_MESSAGES) and len(BACKEND) == len(BACKEND_MESSAGES)


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


# --------------------------------------------------------------------------- start-up
@dataclass(frozen=True, slots=True)
class StartupMessage:
    """StartupMessage (F): protocol version and parameters, in the client's order."""
    version: int
    params: tuple  # ((name, value), ...)

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """SSLRequest (F)."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """GSSENCRequest (F)."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """CancelRequest (F): the backend's pid and secret key, as the server issued them."""
    pid: int
    key: bytes


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def startup_length(buf: bytes | bytearray) -> int | None:
    """Length of the start-up packet at the head of ``buf``, None until 4 bytes arrived."""
    if len(buf) < 4:
        return None
    length = struct.unpack_from("!i", buf, 0)[0]
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolViolation(f"invalid length of startup packet ({length})")
    return length


def decode_startup(packet: bytes) -> StartupPacket:
    """Decode one whole start-up packet (its length word included).

    >>> decode_startup(encode_startup(StartupMessage(PROTOCOL_3_0, (("user", "app"),))))
    StartupMessage(version=196608, params=(('user', 'app'),))
    """
    length = startup_length(packet)
    if length != len(packet):
        raise ProtocolViolation("startup packet length does not match its bytes")
    code = struct.unpack_from("!i", packet, 4)[0]
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        if length != 8:
            raise ProtocolViolation("SSLRequest/GSSENCRequest must be 8 bytes")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if length < 16 or length > 12 + MAX_CANCEL_KEY:
            raise ProtocolViolation("invalid length of CancelRequest")
        pid = struct.unpack_from("!i", packet, 8)[0]
        return CancelRequest(pid, bytes(packet[12:]))
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.2")
    body = bytes(packet[8:])
    if not body.endswith(b"\0"):
        raise ProtocolViolation("startup packet is not NUL-terminated")
    content = body[:-1]  # the pairs, each string NUL-terminated
    if content and not content.endswith(b"\0"):
        raise ProtocolViolation("startup packet is not NUL-terminated")
    parts = content[:-1].split(b"\0") if content else []
    if len(parts) % 2:
        raise ProtocolViolation("startup packet has a name without a value")
    params = tuple((_text(parts[i]), _text(parts[i + 1])) for i in range(0, len(parts), 2))
    if any(name == "" for name, _ in params):
        raise ProtocolViolation("startup packet has an empty parameter name")
    return StartupMessage(code, params)


def encode_startup(packet: StartupPacket) -> bytes:
    """The bytes of a start-up packet, length word included."""
    if isinstance(packet, SSLRequest):
        return struct.pack("!ii", 8, SSL_REQUEST_CODE)
    if isinstance(packet, GSSENCRequest):
        return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)
    if isinstance(packet, CancelRequest):
        return struct.pack("!iii", 12 + len(packet.key), CANCEL_REQUEST_CODE, packet.pid) + packet.key
    body = bytearray(struct.pack("!i", packet.version))
    for name, value in packet.params:
        body += _raw(name) + b"\0" + _raw(value) + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + bytes(body)


# --------------------------------------------------------------------------- helpers
def error_response(sqlstate: str, message: str, *, severity: str = "ERROR",
                   detail: str | None = None, hint: str | None = None) -> bytes:
    """An ErrorResponse as bytes, as PostgreSQL writes it.

    >>> decode_message(BACKEND, error_response("08P01", "bad")).get(b"C")
    '08P01'
    """
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message)]
    if detail:
        fields.append((b"D", detail))
    if hint:
        fields.append((b"H", hint))
    return encode(ErrorResponse(tuple(fields)))


# --------------------------------------------------------------------------- splitting
_LENGTH = struct.Struct("!I").unpack_from


class Splitter:
    """Finds message boundaries in one direction of a stream, without copying what it passes.

    ``feed(data)`` returns ``(out, marks)``: ``out`` is every byte that may be forwarded now
    (all complete messages, and the head of a long message nobody watches), ``marks`` lists
    ``(type, start, end)`` of each *watched* message inside ``out``.  A watched message is
    only released whole; one longer than ``max_size`` is a :class:`ProtocolViolation`.

    >>> s = Splitter(watch=b"Z")
    >>> out, marks = s.feed(encode(CommandComplete("SELECT 1")) + encode(ReadyForQuery(b"I"))[:3])
    >>> marks
    []
    >>> out, marks = s.feed(encode(ReadyForQuery(b"I"))[3:])
    >>> marks, bytes(out)
    ([(90, 0, 6)], b'Z\\x00\\x00\\x00\\x05I')
    """

    __slots__ = ("_buf", "_skip", "_need", "watch", "max_size")

    def __init__(self, watch: bytes | frozenset[int], max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes still to pass of an unwatched message already started
        self._need = 0  # length of the watched message held back in _buf, once its header is in
        self.watch = frozenset(watch)
        self.max_size = max_size

    @property
    def mid_message(self) -> bool:
        """True while part of a message has been released and the rest has not arrived."""
        return self._skip > 0

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the rest of their message."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        skip = self._skip
        if skip:
            if len(data) <= skip:
                self._skip = skip - len(data)
                return data, []
            head, data = data[:skip], data[skip:]
            self._skip = 0
        else:
            head = b""
            if self._need > len(self._buf) + len(data):
                self._buf += data  # a long message arriving in pieces: appended, not joined again each time
                return b"", []
        # scan the caller's bytes in place; only a held-back partial message is joined
        buf = (bytes(self._buf) + data) if self._buf else data
        n = len(buf)
        pos = 0
        marks = []
        watch = self.watch
        max_size = self.max_size
        unpack = _LENGTH  # reads in place: half the time of slicing out four bytes (a COPY is a message per row)
        base = len(head)
        last = n - 5
        need = 0
        while pos <= last:
            kind = buf[pos]
            length = unpack(buf, pos + 1)[0]
            if length < 4 or length > max_size:
                raise ProtocolViolation(f"invalid message length {length} for type {chr(kind)!r}")
            end = pos + 1 + length
            if kind in watch:
                if end > n:
                    need = end - pos
                    break
                marks.append((kind, base + pos, base + end))
            elif end > n:
                # pass the head of a long unwatched message through now, stream the rest
                self._skip = end - n
                pos = n
                break
            pos = end
        self._buf = bytearray(buf[pos:]) if pos < n else bytearray()
        self._need = need
        out = buf if pos == n else buf[:pos]
        return (head + out) if head else out, marks
