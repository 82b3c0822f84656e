"""Start-up, SSL, the authentication relay and the SCRAM bridge; who may connect."""

from __future__ import annotations

from .. import codec, settings
from ..codec import BE, FE, ProtocolViolation
from ..scram import ScramError
from .commands import (Command, ForwardCancel, OpenUpstream, SendToClient, SendToServer, SessionStarted,
                       StartClientTLS)
from .events import UpstreamConnected, UpstreamFailed, VerifierFound
from .scram_bridge import ScramBridge
from .shared import Phase, enter, ALL_BYTES


class Handshake:
    """Start-up, SSL, the authentication relay and the SCRAM bridge; who may connect (a part of :class:`~proxy.session.Session`)."""

    def _init_handshake(self) -> None:
        """This part's state, set up by the session."""
        self._startup_buf = bytearray()
        self._scram: ScramBridge | None = None
        self._held = bytearray()  # client messages that arrived before authentication ended
        self._auth_request_pending = False  # the server asked for a password or SASL step
        self._upstream_cert_hash: bytes | None = None

    def _tls_established(self, _event=None) -> list[Command]:
        """The client's TLS handshake finished."""
        self.client_tls = True
        self.phase = enter(self.phase, "ClientTLSEstablished")
        return []

    def _upstream_connected(self, event: UpstreamConnected) -> list[Command]:
        """The upstream connection is open (and TLS is up on it when ``tls``)."""
        assert self.startup is not None
        self.upstream_tls = event.tls
        self._upstream_cert_hash = event.server_cert_hash
        self.phase = enter(self.phase, "UpstreamConnected")
        self._from_server = codec.Splitter(ALL_BYTES, self.config.max_message_size)
        commands: list[Command] = [SendToServer(codec.encode_startup(self.startup))]
        if self._held:
            early, self._held = bytes(self._held), bytearray()
            commands += self._client_bytes(early)
        return commands

    def _upstream_failed(self, event: UpstreamFailed) -> list[Command]:
        """The upstream connection could not be opened."""
        return self.fail("08006", f"pgveil could not connect to the database server: {event.reason}")

    def _verifier_found(self, event: VerifierFound) -> list[Command]:
        """The auth account answered a LookupVerifier (None: no such role or no SCRAM secret)."""
        assert self._scram is not None
        try:
            return self._scram_out(self._scram.verifier_found(event.verifier))
        except ScramError as exc:
            return self._scram_failed(exc)

    # ------------------------------------------------------------------ start-up
    def _client_startup(self, data: bytes) -> list[Command]:
        self._startup_buf += data
        try:
            length = codec.startup_length(self._startup_buf)
        except ProtocolViolation as exc:
            # PostgreSQL only logs a bad start-up length (COMMERROR) and closes, with no answer: a
            # client that wrote something else first (node-postgres' end() before connect) expects none
            return self._close(str(exc), error=True)
        if length is None or len(self._startup_buf) < length:
            return []
        packet = bytes(self._startup_buf[:length])
        rest = bytes(self._startup_buf[length:])
        self._startup_buf.clear()
        message = codec.decode_startup(packet)
        if isinstance(message, codec.SSLRequest):
            if rest:
                raise ProtocolViolation("received unencrypted data after SSL request")
            if self.client_tls:
                raise ProtocolViolation("SSLRequest on a connection that already uses TLS")
            if not self.config.tls_available:
                return [SendToClient(codec.SSL_REFUSED)]
            self.phase = enter(self.phase, "SSLRequest")
            return [SendToClient(codec.SSL_ACCEPTED), StartClientTLS()]
        if isinstance(message, codec.GSSENCRequest):
            return [SendToClient(codec.SSL_REFUSED)] + (self._client_startup(rest) if rest else [])
        if isinstance(message, codec.CancelRequest):
            return [ForwardCancel(message, client_waits=True)] + self._close("cancel request forwarded")
        return self._startup_message(message, rest)

    def _startup_message(self, message: codec.StartupMessage, rest: bytes) -> list[Command]:
        user = message.param("user")
        if not user:  # as PostgreSQL answers it
            return self.fail("28000", "no PostgreSQL user name specified in startup packet")
        self.startup = message
        self.user = user
        self.database = message.param("database") or user
        self.phase = enter(self.phase, "StartupMessage")
        self._held = bytearray(rest)  # a client may pipeline after the startup packet
        return [OpenUpstream(message)]

    # ------------------------------------------------------------------ authentication
    def _client_auth(self, data: bytes) -> list[Command]:
        out, marks = self._from_client.feed(data)
        commands: list[Command] = []
        for kind, start, end in marks:
            if kind == FE.TERMINATE:
                return commands + self._close("client terminated during authentication")
            if kind != FE.AUTH_RESPONSE or self._held:
                if self._auth_request_pending or kind == FE.AUTH_RESPONSE:
                    raise ProtocolViolation(
                        f"expected an authentication response, got message type {chr(kind)!r}")
                # as PostgreSQL does, keep what the client pipelined until it is authenticated
                self._held += out[start:end]
                continue
            self._auth_request_pending = False
            if self._scram is not None:
                commands += self._client_scram(bytes(out[start + 5:end]))
            else:
                commands.append(SendToServer(bytes(out[start:end])))
        return commands

    def _server_auth(self, data: bytes) -> list[Command]:
        out, marks = self._from_server.feed(data)
        commands: list[Command] = []
        for i, (kind, start, end) in enumerate(marks):
            message = bytes(out[start:end])
            if kind == BE.AUTHENTICATION:
                commands += self._server_authentication(message)
                if self.phase is Phase.CLOSED:
                    return commands  # refused at authentication: nothing after it reaches the client
                continue
            if kind == BE.BACKEND_KEY_DATA:
                key = codec.decode_message(codec.BACKEND, message)
                self.backend_key = codec.CancelRequest(key.pid, key.key)
            elif kind == BE.ERROR and self.config.audit:
                error = codec.decode_message(codec.BACKEND, message)
                result = "auth_failed" if self.phase is Phase.AUTH else "error"
                commands += self._connection_record(result, error.message or "", error.sqlstate)
            commands.append(SendToClient(message))
            if kind == BE.READY_FOR_QUERY:
                # start-up is over: from here on only the relay's few types are looked at
                self.phase = enter(self.phase, "ReadyForQuery")
                commands.append(SessionStarted())
                self._from_server.watch = self._active_watch
                self._observe_server(out, marks[i:])
                if end < len(out):
                    commands.append(SendToClient(out[end:]))
                if self._held:
                    early, self._held = bytes(self._held), bytearray()
                    commands += self._client_bytes(early)
                return commands
            self._observe_server(out, marks[i:i + 1])
        return commands

    def _server_authentication(self, message: bytes) -> list[Command]:
        auth = codec.decode_message(codec.BACKEND, message)
        if self._scram is not None:
            try:
                return self._scram_out(self._scram.server_message(auth))
            except ScramError as exc:
                return self._scram_failed(exc)
        self._auth_request_pending = auth.code not in (codec.Authentication.OK, codec.Authentication.SASL_FINAL)
        if self._auth_request_pending and self._held:
            kind = chr(self._held[0])
            return [SendToClient(message)] + self.fail(
                "08P01", f"expected an authentication response, got message type {kind!r}")
        if auth.code == codec.Authentication.OK:
            identified, accepted = self._identify()
            if not accepted:
                return identified
            self.phase = enter(self.phase, "AuthenticationOk")
            return identified + [SendToClient(message)]
        elif auth.code == codec.Authentication.SASL and self.upstream_tls:
            mechanisms = auth.mechanisms()
            if "SCRAM-SHA-256-PLUS" in mechanisms:
                return self._start_scram_bridge(mechanisms)
        return [SendToClient(message)]

    def _start_scram_bridge(self, mechanisms: tuple[str, ...]) -> list[Command]:
        if not self.config.scram_bridge_possible:
            if self.client_tls:
                return self.fail(
                    "28000", "pgveil cannot relay SCRAM authentication when both legs use TLS",
                    hint="Configure --auth-dsn so that pgveil can verify SCRAM itself, or use sslmode=disable upstream.")
            # the client has no TLS, so it will answer without channel binding: hide -PLUS
            plain = tuple(m for m in mechanisms if not m.endswith("-PLUS"))
            return [SendToClient(codec.encode(codec.Authentication.sasl(plain)))]
        self._scram = ScramBridge(self.user or "", client_tls=self.client_tls,
                                  client_cert_hash=self.config.client_cert_hash,
                                  server_cert_hash=self._upstream_cert_hash)
        return self._scram_out(self._scram.start())

    def _client_scram(self, body: bytes) -> list[Command]:
        assert self._scram is not None
        try:
            return self._scram_out(self._scram.client_message(body))
        except ScramError as exc:
            return self._scram_failed(exc)

    def _scram_out(self, commands: list[Command]) -> list[Command]:
        """The bridge's commands; once it has authenticated both legs, the identity is checked
        first (an identity no rule admits gets its refusal, not the bridge's last message)."""
        if not self._scram.authenticated:
            return commands
        identified, accepted = self._identify()
        if not accepted:
            return identified
        self._scram = None
        self.phase = enter(self.phase, "AuthenticationOk")
        return identified + commands

    def _scram_failed(self, exc: ScramError) -> list[Command]:
        return self.fail(exc.sqlstate, str(exc))

    # ------------------------------------------------------------------ policy
    def _identify(self) -> tuple[list[Command], bool]:
        """The authenticated user's tier, and whether the connection may go on: an identity no
        rule matches is refused (28000)."""
        engine = self.config.engine
        refusal = None
        if engine is not None:
            self._resolve(engine)
            if self.tier is None:
                refusal = ("28000", f'pgveil: no access rule matches user "{self.user}" from {self.peer[0] or "here"}',
                           "Ask the administration office for access; the rule file decides who may connect.")
            else:
                self._filtering = not self.tier.all_clear
                catalog = engine.catalog
                if self._filtering and catalog is not None and catalog.database and \
                        self.database != catalog.database:
                    refusal = ("28000", f'pgveil: tier {self.tier.name} may only use database "{catalog.database}"',
                               "pgveil analyses statements against that database's catalog.")
                elif self._filtering and self.startup is not None:
                    refusal = self._startup_refusal()
        audit = self._connection_record("refused" if refusal else "accepted", refusal[1] if refusal else "")
        if refusal:
            return audit + self.fail(refusal[0], refusal[1], hint=refusal[2]), False
        self._active_watch = self._server_watch()
        return audit, True

    def _startup_refusal(self) -> tuple | None:
        """A restricted tier's start-up parameters (and ``options``) must stay within its allow
        list of settings (see :mod:`proxy.settings`)."""
        problem = settings.startup_problem(self.startup.params, self.tier.settings)
        if problem is None:
            return None
        return ("28000", f"pgveil: {problem.replace('this tier', f'tier {self.tier.name}')} (a start-up parameter)",
                "Connect without that parameter (check PGOPTIONS and the connection's options and settings).")
