"""Field kinds of the wire protocol and the one generic reader and writer of message bodies.

A message class declares its fields as ``(name, kind)`` pairs (:mod:`proxy.codec.messages`);
:class:`_Reader` and :func:`_write` handle every kind.  Reading raises nothing but
:class:`ProtocolViolation`: a truncated body or a missing terminator is the peer's fault.

Pure: standard library only.
"""

from __future__ import annotations

import struct
from typing import Any

MAX_MESSAGE_SIZE = (1 << 30) - 1  # PostgreSQL's PQ_LARGE_MESSAGE_LIMIT


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
