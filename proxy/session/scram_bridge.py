"""The SCRAM bridge of the handshake: SCRAM-SHA-256 with the client (pgveil as the server) and with
the database (pgveil as the client), for when channel binding cannot survive a relay (see
:mod:`proxy.scram` for why and how).  It returns the session's commands (SendToClient,
SendToServer, LookupVerifier) and raises :class:`~proxy.scram.ScramError`; ``authenticated``
turns True with the message that ends the exchange."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable

from .. import codec
from ..scram import (CB_TYPE, SCRAM, SCRAM_PLUS, ScramError, Verifier, _attributes, _b64, _hmac, _unb64,
                     _xor)
from .commands import Command, LookupVerifier, SendToClient, SendToServer


class ScramBridge:
    """SCRAM with the client (as server) and with the database (as client); see :mod:`proxy.scram`."""

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
        self.authenticated = False  # the database said AuthenticationOk, and the client has been told

    # -- client leg ---------------------------------------------------------
    def start(self) -> list[Command]:
        mechanisms = (SCRAM_PLUS, SCRAM) if self.client_cb else (SCRAM,)
        self._state = "client_first"
        return [SendToClient(codec.encode(codec.Authentication.sasl(mechanisms)))]

    def client_message(self, body: bytes) -> list[Command]:
        if self._state == "client_first":
            return self._client_first(body)
        if self._state == "client_final":
            return self._client_final(body)
        raise ScramError("unexpected SASL message from the client", "08P01")

    def _client_first(self, body: bytes) -> list[Command]:
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
        return [LookupVerifier(self.user)]

    def verifier_found(self, text: str | None) -> list[Command]:
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
        return [SendToClient(codec.encode(codec.Authentication(codec.Authentication.SASL_CONTINUE, payload)))]

    def _client_final(self, body: bytes) -> list[Command]:
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
    def _upstream_first(self) -> list[Command]:
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
        return [SendToServer(codec.encode(codec.SASLInitialResponse(mechanism, data)))]

    def server_message(self, auth: codec.Authentication) -> list[Command]:
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
            self.authenticated = True
            return [SendToClient(codec.encode(final)), SendToClient(codec.encode(auth))]
        raise ScramError(f"unexpected authentication request {auth.code} from the server", "08P01")

    def _upstream_final(self, server_first: str) -> list[Command]:
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
        return [SendToServer(codec.encode(codec.SASLResponse(payload)))]

    def _upstream_verify(self, server_final: str) -> list[Command]:
        assert self._verifier is not None
        attrs = _attributes(server_final)
        expected = _hmac(self._verifier.server_key, self._server_auth_message)
        if not hmac.compare_digest(_unb64(attrs.get("v", "")), expected):
            raise ScramError("the database server's SCRAM signature is invalid", "08006")
        self._state = "server_ok"
        return []
