"""SCRAM-SHA-256 on both legs, for when the upstream leg uses TLS.

Why: with TLS on both legs, a relayed SCRAM exchange cannot succeed under libpq's default
``channel_binding=prefer``.  Relaying the server's ``-PLUS`` offer makes the client bind to
pgveil's certificate, which the server rejects; hiding the offer makes the client say "y"
(I can bind, you cannot), which the server reads as a downgrade attack.

So pgveil plays server to the client and client to the server, the way PgBouncer's
auth_query does, without ever holding a password:

1. It offers the client SCRAM-SHA-256-PLUS (bound to pgveil's own certificate) and
   SCRAM-SHA-256, and reads the role's verifier ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey``
   through the auth account.
2. It checks the client's proof against StoredKey.  The proof is ``ClientKey XOR
   HMAC(StoredKey, AuthMessage)``, so a valid proof also yields ClientKey.
3. With ClientKey it authenticates upstream (same salt and iterations, since it is the same
   verifier), bound to the upstream's certificate, and checks the server's signature with
   ServerKey.  Only when the database says AuthenticationOk does the client get its final
   message: PostgreSQL stays the authority (expired roles, NOLOGIN, pg_hba all still apply).

Pure: hashing only, no I/O.  This module holds the verifier and the arithmetic; the exchange
itself, which returns the session's commands, is :class:`proxy.session.scram_bridge.ScramBridge`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SCRAM = "SCRAM-SHA-256"
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"
CB_TYPE = "tls-server-end-point"


class ScramError(Exception):
    """Authentication cannot go on; ``sqlstate`` says how the client should read it."""

    def __init__(self, message: str, sqlstate: str = "28P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ScramError("malformed SCRAM message: invalid base64", "08P01") from None


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _attributes(message: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part[:20]!r}", "08P01")
        attrs.setdefault(part[0], part[2:])
    return attrs


class Verifier:
    """A parsed ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`` secret."""

    def __init__(self, text: str) -> None:
        try:
            scheme, params, keys = text.split("$")
            iterations, salt = params.split(":")
            stored, server = keys.split(":")
            if scheme != SCRAM:
                raise ValueError(scheme)
            self.iterations = int(iterations)
            self.salt = base64.b64decode(salt, validate=True)
            self.stored_key = base64.b64decode(stored, validate=True)
            self.server_key = base64.b64decode(server, validate=True)
        except ValueError:
            raise ScramError("the role has no usable SCRAM-SHA-256 secret") from None

    @classmethod
    def from_password(cls, password: str, salt: bytes, iterations: int = 4096) -> "Verifier":
        """The verifier PostgreSQL would store for ``password`` (used by tests).

        >>> v = Verifier.from_password("secret", b"0123456789abcdef")
        >>> len(v.stored_key), v.iterations
        (32, 4096)
        """
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored = hashlib.sha256(client_key).digest()
        server = _hmac(salted, b"Server Key")
        return cls(f"{SCRAM}${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server)}")


def tls_server_end_point(der: bytes) -> bytes:
    """Channel binding data of RFC 5929 for a DER certificate.

    The hash is the certificate's signature hash, with MD5 and SHA-1 raised to SHA-256.
    The signature algorithm is the last AlgorithmIdentifier of the certificate.
    """
    algorithms = {
        # sha384WithRSAEncryption, sha512WithRSAEncryption, ecdsa-with-SHA384, ecdsa-with-SHA512
        bytes.fromhex("2a864886f70d01010c"): "sha384",
        bytes.fromhex("2a864886f70d01010d"): "sha512",
        bytes.fromhex("2a8648ce3d040303"): "sha384",
        bytes.fromhex("2a8648ce3d040304"): "sha512",
    }
    name = "sha256"
    tail = der[-600:]  # signatureAlgorithm and signature close the certificate
    best = -1
    for oid, algorithm in algorithms.items():
        at = tail.rfind(b"\x06" + bytes([len(oid)]) + oid)
        if at > best:
            best, name = at, algorithm
    if best < 0:
        name = "sha256"
    return hashlib.new(name, der).digest()
