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

Pure: hashing only, no I/O.  :class:`ScramBridge` returns steps ``(target, payload)`` with
target ``client``/``server`` (bytes to send), ``lookup`` (a user name) or ``done``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Callable

from . import codec

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


class ScramBridge:
    """SCRAM with the client (as server) and with the database (as client); see module doc."""

    def __init__(self, user: str, *, client_tls: bool, client_cert_hash: bytes | None,
                 server_cert_hash: bytes | None, nonce: Callable[[], str] | None = None) -> None:
        self.user = user
        self.client_cb = client_cert_hash if client_tls else None
        self.server_cb = server_cert_hash
        self._nonce = nonce or (lambda: _b64(os.urandom(18)))
        self._state = "start"
        self._verifier: Verifier | None = None
        self._doomed = False  # unknown role: go on to the end, then fail like a wrong password
        self._client_key: bytes | None = None
        self._client_auth_message = b""
        self._server_auth_message = b""

    # -- client leg ---------------------------------------------------------
    def start(self) -> list[tuple[str, object]]:
        mechanisms = (SCRAM_PLUS, SCRAM) if self.client_cb else (SCRAM,)
        self._state = "client_first"
        return [("client", codec.encode(codec.Authentication.sasl(mechanisms)))]

    def client_message(self, body: bytes) -> list[tuple[str, object]]:
        if self._state == "client_first":
            return self._client_first(body)
        if self._state == "client_final":
            return self._client_final(body)
        raise ScramError("unexpected SASL message from the client", "08P01")

    def _client_first(self, body: bytes) -> list[tuple[str, object]]:
        initial = codec.decode_as(codec.SASLInitialResponse, body)
        if initial.mechanism not in ((SCRAM_PLUS, SCRAM) if self.client_cb else (SCRAM,)):
            raise ScramError(f"client selected an invalid SASL authentication mechanism {initial.mechanism!r}")
        text = (initial.data or b"").decode("utf-8", "replace")
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ScramError("malformed SCRAM message: client-first-message", "08P01")
        flag, authzid, bare = parts
        if flag.startswith("p="):
            if initial.mechanism != SCRAM_PLUS or flag[2:] != CB_TYPE:
                raise ScramError("unsupported SCRAM channel-binding type", "08P01")
        elif flag == "y":
            if self.client_cb:
                raise ScramError("SCRAM channel binding negotiation error: the client supports channel "
                                 "binding but thinks the server does not, and this server does", "08P01")
        elif flag != "n" or initial.mechanism == SCRAM_PLUS:
            raise ScramError("malformed SCRAM message: channel binding flag", "08P01")
        if authzid:
            raise ScramError("client uses authorization identity, but it is not supported", "0A000")
        attrs = _attributes(bare)
        if "r" not in attrs:
            raise ScramError("malformed SCRAM message: no nonce", "08P01")
        self._gs2_header = f"{flag},{authzid},".encode()
        self._client_first_bare = bare
        self._client_nonce = attrs["r"]
        self._state = "lookup"
        return [("lookup", self.user)]

    def verifier_found(self, text: str | None) -> list[tuple[str, object]]:
        if self._state != "lookup":
            raise ScramError("unexpected verifier", "XX000")
        try:
            self._verifier = Verifier(text or "")
        except ScramError:
            # as PostgreSQL does for an unknown role: a made-up salt, and failure at the end
            self._doomed = True
            self._verifier = Verifier.from_password(os.urandom(8).hex(), os.urandom(16))
        v = self._verifier
        self._combined_nonce = self._client_nonce + self._nonce()
        self._server_first = f"r={self._combined_nonce},s={_b64(v.salt)},i={v.iterations}"
        self._state = "client_final"
        payload = self._server_first.encode()
        return [("client", codec.encode(codec.Authentication(codec.Authentication.SASL_CONTINUE, payload)))]

    def _client_final(self, body: bytes) -> list[tuple[str, object]]:
        text = codec.decode_as(codec.SASLResponse, body).data.decode("utf-8", "replace")
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed SCRAM message: no proof", "08P01")
        attrs = _attributes(without_proof)
        expected_cb = self._gs2_header + (self.client_cb if self._gs2_header.startswith(b"p=") else b"")
        if _unb64(attrs.get("c", "")) != expected_cb:
            raise ScramError("SCRAM channel binding check failed")
        if attrs.get("r") != self._combined_nonce:
            raise ScramError("SCRAM nonce mismatch", "08P01")
        v = self._verifier
        assert v is not None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        proof = _unb64(proof_part)
        if len(proof) != 32:
            raise ScramError("malformed SCRAM message: invalid proof", "08P01")
        client_key = _xor(proof, _hmac(v.stored_key, auth_message))
        if self._doomed or not hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key):
            raise ScramError(f'password authentication failed for user "{self.user}"')
        self._client_key = client_key
        self._client_auth_message = auth_message
        return self._upstream_first()

    # -- server leg ---------------------------------------------------------
    def _upstream_first(self) -> list[tuple[str, object]]:
        if self.server_cb is not None:
            mechanism, gs2 = SCRAM_PLUS, f"p={CB_TYPE},,"
        else:
            mechanism, gs2 = SCRAM, "n,,"
        self._up_gs2 = gs2.encode()
        self._up_nonce = self._nonce()
        self._up_first_bare = f"n=,r={self._up_nonce}"
        self._up_mechanism = mechanism
        self._state = "server_first"
        data = (gs2 + self._up_first_bare).encode()
        return [("server", codec.encode(codec.SASLInitialResponse(mechanism, data)))]

    def server_message(self, auth: codec.Authentication) -> list[tuple[str, object]]:
        if auth.code == codec.Authentication.SASL and self._state in ("start", "client_first", "lookup",
                                                                       "client_final"):
            return []  # the upstream's offer: answered once the client is verified
        if auth.code == codec.Authentication.SASL_CONTINUE and self._state == "server_first":
            return self._upstream_final(auth.data.decode("utf-8", "replace"))
        if auth.code == codec.Authentication.SASL_FINAL and self._state == "server_final":
            return self._upstream_verify(auth.data.decode("utf-8", "replace"))
        if auth.code == codec.Authentication.OK and self._state == "server_ok":
            assert self._verifier is not None
            signature = _hmac(self._verifier.server_key, self._client_auth_message)
            final = codec.Authentication(codec.Authentication.SASL_FINAL, f"v={_b64(signature)}".encode())
            return [("client", codec.encode(final)), ("client", codec.encode(auth)), ("done", None)]
        raise ScramError(f"unexpected authentication request {auth.code} from the server", "08P01")

    def _upstream_final(self, server_first: str) -> list[tuple[str, object]]:
        v = self._verifier
        assert v is not None and self._client_key is not None
        attrs = _attributes(server_first)
        if not attrs.get("r", "").startswith(self._up_nonce):
            raise ScramError("the server's SCRAM nonce does not extend ours", "08P01")
        if _unb64(attrs.get("s", "")) != v.salt or attrs.get("i") != str(v.iterations):
            raise ScramError("the role's password changed during authentication")
        cb = self._up_gs2 + (self.server_cb if self.server_cb is not None else b"")
        without_proof = f"c={_b64(cb)},r={attrs['r']}"
        auth_message = f"{self._up_first_bare},{server_first},{without_proof}".encode()
        stored = hashlib.sha256(self._client_key).digest()
        proof = _xor(self._client_key, _hmac(stored, auth_message))
        self._server_auth_message = auth_message
        self._state = "server_final"
        payload = f"{without_proof},p={_b64(proof)}".encode()
        return [("server", codec.encode(codec.SASLResponse(payload)))]

    def _upstream_verify(self, server_final: str) -> list[tuple[str, object]]:
        assert self._verifier is not None
        attrs = _attributes(server_final)
        expected = _hmac(self._verifier.server_key, self._server_auth_message)
        if not hmac.compare_digest(_unb64(attrs.get("v", "")), expected):
            raise ScramError("the database server's SCRAM signature is invalid", "08006")
        self._state = "server_ok"
        return []
