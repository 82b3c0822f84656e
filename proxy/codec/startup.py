"""Start-up packets: StartupMessage, SSLRequest, GSSENCRequest and CancelRequest.

They carry no type byte; :func:`decode_startup` tells them apart by their request code.

Pure: standard library only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .fields import ProtocolViolation, _raw, _text

PROTOCOL_3_0 = 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# the one byte a server answers an SSLRequest or GSSENCRequest with, before any message
SSL_ACCEPTED = b"S"
SSL_REFUSED = b"N"

MAX_STARTUP_PACKET = 10_000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
MAX_CANCEL_KEY = 256  # protocol 3.2: the secret key is 4 to 256 bytes


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
