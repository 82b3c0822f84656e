"""One client connection's state machine, without I/O.

Theory of operation
-------------------
The server module feeds a :class:`Session` with past-tense events, one at a time
(``client_data``, ``server_data``, ``upstream_connected``, ``client_closed``, ...) and carries
out the imperative commands each returns (:class:`SendToClient`, :class:`SendToServer`,
:class:`ConnectUpstream`, ...).  Nothing here touches a socket, so a whole session can be
replayed as a script in a test.

Phases::

    STARTUP --SSLRequest--> TLS_HANDSHAKE --tls_established--> STARTUP
    STARTUP --StartupMessage--> CONNECTING --upstream_connected--> AUTH
    AUTH --AuthenticationOk--> POSTAUTH --ReadyForQuery--> ACTIVE
    any --error or close--> CLOSED

While authenticating, the session relays the exchange and watches it; PostgreSQL stays the
authority on passwords.  The one exception is SCRAM over an upstream TLS leg, where channel
binding cannot survive a relay: then :mod:`proxy.scram` runs the exchange on both legs
(see :class:`ScramBridge`).

In ACTIVE, bytes are relayed as they come.  A :class:`~proxy.codec.Splitter` per direction
finds the message boundaries; only the messages the session must see (ReadyForQuery,
ErrorResponse, ParameterStatus, BackendKeyData from the server; every message type from the
client, which is checked against the frontend table) are looked at, and rows pass as bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import re
from collections import deque
from itertools import count
from typing import Callable

from .. import codec, encodings, errors, limits, policy, settings
from ..access import Access, deciding_tier
from ..opened import QUERY as OPENED_QUERY, SYNC as OPENED_SYNC, Opened, segments
from ..purpose import PurposeSetting
from ..rowlimits import RowLimits
from .. import searchpath
from ..audit import records
from ..audit.tracker import StatementTracker
from ..prepared import PreparedStatements
from ..rules import STATEMENT_KINDS
from ..sqlnames import SqlNames
from ..codec import ProtocolViolation
from ..scram import ScramBridge, ScramError
from .commands import (Alert, Close, Command, DecideApart, ForwardCancel, LookupVerifier, OpenUpstream,
                       PauseClientReading, RefreshCatalog, ResumeClientReading, SendToClient, SendToServer,
                       SessionStarted, StartClientTLS, WriteAudit)
from .events import (AuditDurable, AuditFailed, AuditHealth, ClientClosed, ClientData, ClientTLSEstablished,
                     DecidedApart, HandlerCrashed, KillRequested, RulesChanged, ServerClosed, ServerData,
                     ShutdownRequested, TimerFired, UpstreamConnected, UpstreamFailed, VerifierFound,
                     VerifierLookupFailed)


class Phase(Enum):
    STARTUP = "startup"
    TLS_HANDSHAKE = "tls_handshake"
    CONNECTING = "connecting"
    AUTH = "auth"
    POSTAUTH = "postauth"
    ACTIVE = "active"
    CLOSED = "closed"


# Frontend message types allowed once authenticated ('p' is only for authentication).
ACTIVE_FRONTEND = frozenset(t for t in codec.FRONTEND if t != ord("p"))
# Server messages the relay must look at; everything else (rows above all) passes as bytes.
SERVER_WATCH = frozenset(b"ZESK")
ALL_BYTES = frozenset(range(256))
# For a restricted tier, also errors and notices (details stripped), RowDescription and
# NotificationResponse (payloads written by other sessions are outputs pgveil cannot mask).
FILTER_WATCH = frozenset(b"ZESKNTA")
OUTCOME_WATCH = frozenset(b"CsI")  # what the audit's outcome records need besides
OUTCOME_KINDS = frozenset(b"CsIEZ")
PURPOSE_WORD = "pgveil.purpose"
# possessive throughout (linear in the text: nothing taken is given back to be tried again)
PURPOSE_SET = re.compile(r"""^\s*+(?:SET\s++(?:(?P<scope>SESSION|LOCAL)\s++)?+pgveil\.purpose\s*+(?:=|TO)\s*+"""
                         r"""(?:'(?P<value>(?:[^']++|'')*+)'|DEFAULT)|RESET\s++pgveil\.purpose)\s*+(?:;\s*+)?+$""",
                         re.IGNORECASE)
RESET_ALL = re.compile(r"\b(?:reset|discard)\s++all\b", re.IGNORECASE)  # a quick look; the statements decide
# words after which the session's state needs a closer look (see _state_after); substrings of the
# lower-cased text, a third of a regular expression's time
STATE_WORDS = ("prepare", "execute", "declare", "fetch", "move", "close", "deallocate", "discard", "reset",
               "search_path", "set_config", "rollback", "abort")
PREPARE_WATCH = frozenset(b"13EZ")  # replies that tell which Parse/Close they answer
PREPARE_CLIENT = frozenset(b"PCSQF")
REFUSAL_MARK = "pgveil-refused-"
ALL_KINDS = frozenset(STATEMENT_KINDS)

Z, E, S, K, R, Q, X, F, N, P, T, B, C, D, p, A = (ord(c) for c in "ZESKRQXFNPTBCDpA")
COPY_DATA = ord("d")
C_, s_, I_ = (ord(c) for c in "CsI")
SEALED_MESSAGES = frozenset(b"Bdcf")  # Bind, CopyData, CopyDone, CopyFail (see proxy.sealing)
SYNC = ord("S")


@dataclass(slots=True)
class SessionConfig:
    tls_available: bool = False         # a certificate is configured for clients
    scram_bridge_possible: bool = False  # an --auth-dsn account can read SCRAM verifiers
    client_cert_hash: bytes | None = None  # tls-server-end-point hash of pgveil's certificate
    max_message_size: int = codec.MAX_MESSAGE_SIZE
    engine: object = None  # proxy.policy.Engine; None: relay without a policy
    audit: bool = False  # emit Audit commands
    audit_strict: bool = True  # a statement's decision is durable before the statement is sent
    clock: Callable[[], object] | None = None  # the server's UTC clock (datetime); None: no grant is in force
    monotonic: Callable[[], float] | None = None  # seconds, for durations; None: no durations (0)
    new_id: Callable[[], str] | None = None  # a session's id; None: a counter (tests)
    backlog_high_water: int = 256 * 1024  # client bytes queued while waiting before PauseClientReading
    sealing: object = None  # proxy.sealing.Sealing: values sealed for the investigators (--audit-seal-key)


@dataclass(slots=True)
class Stats:
    bytes_from_client: int = 0
    bytes_from_server: int = 0


_ids = count(1)


def _no_clock() -> float:
    return 0.0


def _clears_all(seg) -> bool:
    """Is this statement RESET ALL or DISCARD ALL?  (sqlglot keeps a command's arguments as one
    string: they are read on their own, by token types.)"""
    if seg.word not in ("RESET", "DISCARD") or len(seg.tokens) < 2:
        return False
    from ..heads import keyword
    from ..sql import SqlglotError, tokenize
    rest = seg.text[seg.tokens[0].end + 1 - seg.offset:]
    try:
        tokens = tokenize(rest)
    except SqlglotError:
        return True  # unreadable: clear (that only masks more)
    return len(tokens) == 1 and keyword(tokens[0], rest) == "ALL"


class Session:
    """The state of one client connection; see the module docstring."""

    def __init__(self, config: SessionConfig | None = None, peer: tuple = ("", 0)) -> None:
        self.config = config or SessionConfig()
        self.peer = peer
        self._now = self.config.monotonic or _no_clock
        self.id = self.config.new_id() if self.config.new_id else f"s{next(_ids)}"
        self.started = self._now()
        self._audit_ok = True  # the journal can be written (AuditHealth)
        self.statements = 0
        self._tracker = StatementTracker()
        self._prepared = PreparedStatements()
        self._sql_names = SqlNames()
        self._reader_key: tuple = ()
        self._reader: tuple = (None, "")
        self._opened = Opened()  # SQL prepared statements, cursors and portals, with their access
        self._ran_under: dict[str, tuple] = {}  # statement id -> (grant, purpose) for its outcome records
        self._refused_ids: set[str] = set()
        self.phase = Phase.STARTUP
        self.client_tls = False
        self.upstream_tls = False
        self.startup: codec.StartupMessage | None = None
        self.user: str | None = None
        self.database: str | None = None
        self.backend_key: codec.CancelRequest | None = None
        self.server_params: dict[str, str] = {}
        self.transaction_status = b"I"
        self.outstanding = 0  # Query/Sync/FunctionCall sent, ReadyForQuery not yet seen
        self.close_reason: str | None = None
        self.stats = Stats()
        self._startup_buf = bytearray()
        self._from_client = codec.Splitter(ALL_BYTES, self.config.max_message_size)
        self._from_server = codec.Splitter(ALL_BYTES, self.config.max_message_size)
        self._last_server_fatal = False
        self._scram: ScramBridge | None = None
        self.tier = None  # the rules' tier for this identity, once authenticated
        self._who_cache = None  # (tier, who) for the records, see _who
        self._ddl_seen = False
        self._filtering = False  # restricted tier: the server stream is inspected
        self._suppressing = False  # a result was stopped: drop until ReadyForQuery
        self._refusals: dict[str, tuple[str, str]] = {}
        self._refusal_states: dict[str, str] = {}  # refused statement id -> its SQLSTATE
        self._active_watch = SERVER_WATCH
        self._rules_version: str | None = None
        self._grants: tuple = ()
        self.access: Access | None = None  # the effective access, recomputed for every statement
        self._access_until = None  # when a grant of this user begins or ends next (datetime)
        self._access_catalog = None  # the catalog version the identity's roles were read from
        self._row_limits = RowLimits()  # max_rows: limits, counts, cursor names
        self._decision_us = 0
        self._purpose = PurposeSetting()  # declared with SET pgveil.purpose, kept as PostgreSQL keeps settings
        self._purpose_statement = ""  # the last declaration, for its audit record
        self._refusal_seq = 0
        self._search_path_text: str | None = None
        self._pending_path = None  # the path statements sent but not yet run leave (searchpath.UNKNOWN: lost)
        self._search_path_parsed: tuple = ("$user", "public")
        self._held = bytearray()  # client messages that arrived before authentication ended
        self._auth_request_pending = False  # the server asked for a password or SASL step
        self._upstream_cert_hash: bytes | None = None
        self._seals = self.config.sealing.session() if self.config.sealing is not None else None
        self.last_statement: tuple | None = None  # (fingerprint, monotonic time) of the latest, for the console
        self._apart_held: tuple | None = None  # (out, marks) waiting for a decision taken apart
        self._apart_ready: tuple | None = None  # (key, decision) of that decision, while it is used
        self._durable_tokens: set[int] = set()  # durable records not yet on disk (strict audit)
        self._durable_held: list[Command] = []  # what waits for them
        self._token = 0
        self._queued: deque[bytes] = deque()  # client bytes that arrived while waiting
        self._queued_bytes = 0
        self._reading_paused = False

    # ------------------------------------------------------------------ the one entry point
    def handle(self, event) -> list[Command]:
        """One event in, the commands to carry out (in order) out.  While the session waits (for a
        durable record, or a decision taken apart), what the client sends is queued here and
        handled, in order, once the wait is over."""
        if self.phase is Phase.CLOSED:
            return []
        kind = type(event)
        if kind is ClientData and (self._durable_tokens or self._apart_held is not None):
            return self._queue_client(event.data)
        return self._hold_for_durable(HANDLERS[kind](self, event))

    def _hold_for_durable(self, commands: list[Command]) -> list[Command]:
        """Strict audit: the records go out at once, and nothing else of this event before every
        durable one is on disk (AuditDurable for each token)."""
        if not any(type(c) is WriteAudit and c.durable and not c.token for c in commands):
            return commands  # (a token: already held, by the handler itself)
        audits: list[Command] = []
        for command in commands:
            if type(command) is not WriteAudit:
                self._durable_held.append(command)
            elif command.durable and not command.token:
                self._token += 1
                self._durable_tokens.add(self._token)
                audits.append(WriteAudit(command.record, True, self._token))
            else:
                audits.append(command)
        return audits

    def _queue_client(self, data: bytes) -> list[Command]:
        """Client bytes that arrived while the session waits; past the high-water mark the
        server stops reading from the client."""
        self._queued.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes > self.config.backlog_high_water and not self._reading_paused:
            self._reading_paused = True
            return [PauseClientReading()]
        return []

    def _replay(self) -> list[Command]:
        """The wait is over: handle what the client sent meanwhile, in order, until the next wait."""
        commands: list[Command] = []
        while self._queued and not self._durable_tokens and self._apart_held is None \
                and self.phase is not Phase.CLOSED:
            data = self._queued.popleft()
            self._queued_bytes -= len(data)
            commands += self.handle(ClientData(data))
        if self._reading_paused and not self._queued and not self._durable_tokens and self._apart_held is None \
                and self.phase is not Phase.CLOSED:
            self._reading_paused = False
            commands.append(ResumeClientReading())
        return commands

    def _audit_durable(self, event: AuditDurable) -> list[Command]:
        self._durable_tokens.discard(event.token)
        if self._durable_tokens:
            return []
        held, self._durable_held = self._durable_held, []
        return held + self._replay()

    def _audit_failed(self, event: AuditFailed) -> list[Command]:
        if event.token not in self._durable_tokens:
            return []
        self._durable_tokens.clear()
        self._durable_held = []
        return self.fail("58030", "pgveil cannot write its audit journal; the statement was not sent")

    def _timer_fired(self, event: TimerFired) -> list[Command]:
        if event.name == "startup" and self.phase is not Phase.ACTIVE:
            return self.fail("08P01", "pgveil: timeout expired before the client authenticated")
        return []

    @property
    def waiting(self) -> bool:
        """A statement waits for its durable record or its decision, or client bytes are queued."""
        return bool(self._durable_tokens or self._apart_held is not None or self._queued)

    # ------------------------------------------------------------------ events
    def _client_data(self, event: ClientData) -> list[Command]:
        """Bytes arrived from the client."""
        self.stats.bytes_from_client += len(event.data)
        return self._client_bytes(event.data)

    def _client_bytes(self, data: bytes) -> list[Command]:
        try:
            if self.phase is Phase.ACTIVE or self.phase is Phase.POSTAUTH:
                return self._client_active(data)
            if self.phase is Phase.STARTUP:
                return self._client_startup(data)
            if self.phase is Phase.AUTH:
                return self._client_auth(data)
            if self.phase is Phase.CLOSED:
                return []
            if self.phase is Phase.TLS_HANDSHAKE:
                raise ProtocolViolation("received unencrypted data after SSL request")
            raise ProtocolViolation(f"unexpected data from the client while {self.phase.value}")
        except ProtocolViolation as exc:
            return self.fail("08P01", str(exc))

    def _server_data(self, event: ServerData) -> list[Command]:
        """Bytes arrived from the upstream server."""
        data = event.data
        self.stats.bytes_from_server += len(data)
        try:
            if self.phase is Phase.ACTIVE:
                return self._server_active(data)
            if self.phase is Phase.AUTH or self.phase is Phase.POSTAUTH:
                return self._server_auth(data)
            if self.phase is Phase.CLOSED:
                return []
            raise ProtocolViolation(f"unexpected data from the server while {self.phase.value}")
        except ProtocolViolation as exc:
            return self.fail("08P01", f"upstream protocol error: {exc}")

    def _tls_established(self, _event=None) -> list[Command]:
        """The client's TLS handshake finished."""
        self.client_tls = True
        self.phase = Phase.STARTUP
        return []

    def _upstream_connected(self, event: UpstreamConnected) -> list[Command]:
        """The upstream connection is open (and TLS is up on it when ``tls``)."""
        assert self.startup is not None
        self.upstream_tls = event.tls
        self._upstream_cert_hash = event.server_cert_hash
        self.phase = Phase.AUTH
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

    def _client_closed(self, _event=None) -> list[Command]:
        """The client connection ended."""
        if self.phase is Phase.CLOSED:
            return []
        terminate = [SendToServer(codec.encode(codec.Terminate()))] if self.phase is Phase.ACTIVE else []
        return self._client_leaves(terminate, "client disconnected")

    def _client_leaves(self, terminate: list[Command], reason: str) -> list[Command]:
        """The client is gone: a statement still running upstream is cancelled, not left to run."""
        busy = self.outstanding > 0 or self._from_server.mid_message
        cancel: list[Command] = [ForwardCancel(self.backend_key)] if busy and self.backend_key else []
        return cancel + terminate + self._close(reason)

    def _server_closed(self, _event=None) -> list[Command]:
        """The upstream connection ended."""
        if self.phase is Phase.CLOSED:
            return []
        if self._from_server.mid_message or self._last_server_fatal:
            return self._close("server closed the connection", error=True)
        return self.fail("08006", "server closed the connection unexpectedly",
                           detail="The database server ended the session, or the connection to it was lost.")

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
                return [SendToClient(b"N")]
            self.phase = Phase.TLS_HANDSHAKE
            return [SendToClient(b"S"), StartClientTLS()]
        if isinstance(message, codec.GSSENCRequest):
            return [SendToClient(b"N")] + (self._client_startup(rest) if rest else [])
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
        self.phase = Phase.CONNECTING
        self._held = bytearray(rest)  # a client may pipeline after the startup packet
        return [OpenUpstream(message)]

    # ------------------------------------------------------------------ authentication
    def _client_auth(self, data: bytes) -> list[Command]:
        out, marks = self._from_client.feed(data)
        commands: list[Command] = []
        for kind, start, end in marks:
            if kind == X:
                return commands + self._close("client terminated during authentication")
            if kind != p or self._held:
                if self._auth_request_pending or kind == p:
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
            if kind == R:
                commands += self._server_authentication(message)
                if self.phase is Phase.CLOSED:
                    return commands  # refused at authentication: nothing after it reaches the client
                continue
            if kind == K:
                key = codec.decode_message(codec.BACKEND, message)
                self.backend_key = codec.CancelRequest(key.pid, key.key)
            elif kind == E and self.config.audit:
                error = codec.decode_message(codec.BACKEND, message)
                result = "auth_failed" if self.phase is Phase.AUTH else "error"
                commands += self._connection_record(result, error.get(b"M") or "", error.get(b"C"))
            commands.append(SendToClient(message))
            if kind == Z:
                # start-up is over: from here on only the relay's few types are looked at
                self.phase = Phase.ACTIVE
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
            self.phase = Phase.POSTAUTH
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

    def _scram_out(self, steps) -> list[Command]:
        commands: list[Command] = []
        if any(target == "done" for target, _ in steps):
            identified, accepted = self._identify()
            if not accepted:
                return identified
            commands += identified
        for target, payload in steps:
            if target == "client":
                commands.append(SendToClient(payload))
            elif target == "server":
                commands.append(SendToServer(payload))
            elif target == "lookup":
                commands.append(LookupVerifier(payload))
            elif target == "done":
                self._scram = None
                self.phase = Phase.POSTAUTH
        return commands

    def _scram_failed(self, exc: ScramError) -> list[Command]:
        return self.fail(exc.sqlstate, str(exc))

    # ------------------------------------------------------------------ relay
    def _client_active(self, data: bytes) -> list[Command]:
        out, marks = self._from_client.feed(data)
        return self._client_messages(out, marks)

    def _decided_apart(self, event: DecidedApart) -> list[Command]:
        """The decision a :class:`DecideApart` asked for: go on with the messages held since,
        then with what the client sent meanwhile."""
        if self._apart_held is None:
            return []
        out, marks = self._apart_held
        self._apart_held = None
        self._apart_ready = (event.key, event.decision)
        try:
            commands = self._client_messages(out, marks, resumed=True)
        except ProtocolViolation as exc:
            return self.fail("08P01", str(exc))
        finally:
            self._apart_ready = None
        return self._hold_for_durable(commands) + self._replay()

    def _apart(self, kind: int, out: bytes, start: int, end: int, sql: str | None) -> DecideApart | None:
        """A DecideApart for this Query or Parse when its cold decision belongs in a child process
        (see :mod:`proxy.limits`); None to decide it here."""
        engine = self.config.engine
        if engine is None or self.tier is None or kind == F:
            return None
        if sql is None:
            sql = codec.decode_message(codec.FRONTEND, out[start:end]).query if kind == P else \
                codec.query_text(out[start:end])
        if PURPOSE_WORD in sql.lower() or self._filtering and \
                self.server_params.get("standard_conforming_strings", "on") != "on":
            return None  # refused at once by _decide_message
        path = self._pending_path if self._pending_path is not None else self._search_path()
        tier, user = self.deciding_tier(), self.user or ""
        if path == searchpath.UNKNOWN:
            return None  # decided here, and refused if it reaches relations (_decide_message)
        apart = getattr(engine, "apart", None)  # an engine that decides everything itself has none
        key = apart(sql, tier, path, user, self.access) if apart is not None else None
        return DecideApart(key, sql, tier, path, user, self.access) if key is not None else None

    def _hold(self, out: bytes, marks: list, index: int, pieces: list, audits: list,
              apart: DecideApart) -> list[Command]:
        """Send what precedes message ``index``, keep it and the rest until ``decided_apart``."""
        self._apart_held = (out, marks[index:])
        sent = b"".join(pieces)
        return audits + ([SendToServer(sent)] if sent else []) + [apart]

    def _client_messages(self, out: bytes, marks: list, resumed: bool = False) -> list[Command]:
        """The client's complete messages in ``out``.  ``resumed``: the first of them was held for
        a decision taken apart, after everything before its decision had been done."""
        pieces: list[bytes] = []
        audits: list[Command] = []
        pos = marks[0][1] if resumed else 0
        decide = self.tier is not None or self.config.audit
        for index, (kind, start, end) in enumerate(marks):
            if resumed and index == 0:
                revoked = self._access_now(self.config.engine)  # a grant may have ended meanwhile
                if revoked:
                    return audits + revoked
                sql = codec.query_text(out[start:end]) if kind == Q else None
                apart = self._apart(kind, out, start, end, sql)
                if apart is not None and apart.key != self._apart_ready[0]:  # the rules changed meanwhile
                    return self._hold(out, marks, index, pieces + [out[pos:start]], audits, apart)
                replacement = self._decide_message(kind, out[start:end], audits, sql)
                if replacement is not None:
                    pieces += (out[pos:start], replacement)
                    pos = end
                continue
            if kind not in ACTIVE_FRONTEND:
                raise ProtocolViolation(f"invalid frontend message type {kind}")
            if kind == Q or kind == SYNC or kind == F:
                self.outstanding += 1
            elif kind == X:
                pieces.append(out[pos:end])
                return audits + self._client_leaves([SendToServer(b"".join(pieces))], "client terminated the session")
            engine = self.config.engine
            if engine is not None:
                if kind in PREPARE_CLIENT:
                    self._prepared.client(kind)
                if kind == Q or kind == SYNC or kind == F:  # answered in order (proxy.opened)
                    self._opened.client(OPENED_QUERY if kind == Q else OPENED_SYNC)
                if kind == Q or kind == P or kind == F or kind == B or kind == E:
                    # new rules, a grant that began or ended, a purpose: the access of this statement
                    revoked = self._access_now(engine)
                    if revoked:
                        return audits + revoked
                if kind == B:
                    again = self._prepare_again(out, start, end, audits)
                    if again is not None:
                        pieces += (out[pos:start], again)
                        pos = start
                    body = out[start + 5:end]
                    portal_end = body.index(b"\0")
                    self._opened.bind(codec._text(bytes(body[:portal_end])), self.access,
                                      codec._text(bytes(body[portal_end + 1:body.index(b"\0", portal_end + 1)])))
                elif kind == E:
                    self._opened.executed(codec._text(bytes(out[start + 5:out.index(b"\0", start + 5)])))
                if kind == E and self._opened.portals:
                    refused = self._refuse_execute(out, start, end)
                    if refused is not None:
                        pieces += (out[pos:start], refused)
                        pos = end
                        if self.config.audit:
                            self._track_extended(kind, out, start, end)
                        continue
                elif kind == C:
                    body = out[start + 5:end]
                    if body[:1] == b"S":
                        self._prepared.forget(codec._text(bytes(body[1:body.index(b"\0", 1)])))
                        self._opened.closed_statement(codec._text(bytes(body[1:body.index(b"\0", 1)])))
            sql = codec.query_text(out[start:end]) if kind == Q and decide else None  # read once for both below
            if sql is not None and engine is not None and self.tier is not None:
                reply = self._declare_purpose(sql)
                if reply is not None:
                    audits.append(SendToClient(reply))
                    pieces += (out[pos:start],)
                    pos = end
                    self._audit_purpose(audits)
                    continue
            if decide and (kind == Q or kind == P or kind == F):
                apart = self._apart(kind, out, start, end, sql)
                if apart is not None:  # the rest waits for the child's answer (decided_apart)
                    return self._hold(out, marks, index, pieces + [out[pos:start]], audits, apart)
                replacement = self._decide_message(kind, out[start:end], audits, sql)
                if replacement is not None:
                    pieces += (out[pos:start], replacement)
                    pos = end
            elif self.config.audit:
                self._track_extended(kind, out, start, end)
                if self._seals is not None and kind in SEALED_MESSAGES:  # Bind values, COPY data
                    audits += [WriteAudit(r, durable=kind == B and self.config.audit_strict)
                               for r in self._seals.message(kind, out[start:end], self._who())]
        if pieces or resumed:  # (resumed: what preceded the held message was sent before it was held)
            pieces.append(out[pos:])
            out = b"".join(pieces)
        commands: list[Command] = audits + ([SendToServer(out)] if out else [])
        if self._ddl_seen:
            self._ddl_seen = False
            commands.append(RefreshCatalog())
        return commands

    def _prepare_again(self, out: bytes, start: int, end: int, audits: list) -> bytes | None:
        """Before a Bind of a statement (named or unnamed) prepared under another effective access:
        Close and Parse it again, decided under the access in force (see :mod:`proxy.prepared`)."""
        body = out[start + 5:end]
        portal_end = body.index(b"\0")
        name = codec._text(bytes(body[portal_end + 1:body.index(b"\0", portal_end + 1)]))
        known = self._prepared.statements.get(name)
        if known is None or known[2] == self.access:
            return None
        sql, types, _ = known
        parse = codec.encode(codec.Parse(name, sql, types))
        self._prepared.inject()  # first: the decision below is kept once the server prepares it
        decided = self._decide_message(P, parse, audits)  # records the new decision as well
        return codec.encode(codec.Close(b"S", name)) + (decided if decided is not None else parse)

    def _refuse_execute(self, out: bytes, start: int, end: int) -> bytes | None:
        """An Execute of a portal opened under access that has since narrowed: in its place, a
        Parse that fails (of a name no client uses, so no statement is replaced), put back as the
        refusal; the server then skips to Sync as after any error."""
        body = out[start + 5:end]
        portal = codec._text(bytes(body[:body.index(b"\0")]))
        reason = self._opened.execute(portal, self.access)
        if reason is None:
            return None
        statement_id = self._tracker.portal_statement(portal)
        if statement_id:
            self._refused_ids.add(statement_id)
            self._refusal_states[statement_id] = "42501"
        return self._refusal(reason, "42501", parse=codec.Parse("pgveil_refused", "", ()))

    def _track_extended(self, kind: int, out: bytes, start: int, end: int) -> None:
        """Bind, Execute and Sync, for linking outcomes to statements (names read in place)."""
        if kind == B:
            body = out[start + 5:end]
            portal_end = body.index(b"\0")
            statement_end = body.index(b"\0", portal_end + 1)
            self._tracker.bind(codec._text(bytes(body[:portal_end])),
                               codec._text(bytes(body[portal_end + 1:statement_end])))
        elif kind == E:
            body = out[start + 5:end]
            self._tracker.execute(codec._text(bytes(body[:body.index(b"\0")])), self._now())
        elif kind == SYNC:
            self._tracker.sync()

    def _server_active(self, data: bytes) -> list[Command]:
        out, marks = self._from_server.feed(data)
        if not self._filtering and not self._refusals and not self._prepared.swallowing and not self._row_limits:
            audits = self._observe_server(out, marks) if marks else []
            return ([SendToClient(out)] if out else []) + audits
        return self._server_filtered(out, marks)

    def _observe_server(self, out: bytes, marks: list[tuple[int, int, int]],
                        prepared_seen: bool = False) -> list[Command]:
        audits: list[Command] = []
        for kind, start, end in marks:
            if not prepared_seen and kind in PREPARE_WATCH and self.config.engine is not None:
                self._prepared.server(kind)
            if kind == Z:
                self.transaction_status = out[start + 5:start + 6]
                self._purpose.ready(self.transaction_status)
                if self.transaction_status == b"I" and self._opened.portals:
                    self._opened.portals.clear()  # no transaction: no portal is left open
                self._opened.ready(self.transaction_status)
                if self.outstanding:
                    self.outstanding -= 1
                if not self.outstanding:
                    self._pending_path = None  # all ran: the server's report is the path
            elif kind == C_:
                if self._purpose.watching:
                    self._purpose.tag(codec._text(bytes(out[start + 5:end - 1])))
                self._opened.answered(codec._text(bytes(out[start + 5:end - 1])))
            elif kind == s_ or kind == I_:
                self._opened.answered(None)
            elif kind == E:
                self._opened.error()
                self._note_error(out[start:end])
            elif kind == S:
                self._note_parameter(out[start:end])
            if self.config.audit and len(self._tracker) and kind in OUTCOME_KINDS:
                audits += self._outcomes(kind, bytes(out[start + 5:end]))
        return audits

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

    def _rules_changed(self, _event=None) -> list[Command]:
        """The rules were reloaded: the identity's tier is resolved again, and an identity the new
        rules deny has its session ended (FATAL 28000)."""
        engine = self.config.engine
        if engine is None or self.phase is not Phase.ACTIVE:
            return []
        tier = self._resolve(engine)
        if tier is None:
            return self._connection_record("revoked", "the reloaded rules deny this identity") + self.fail(
                "28000", f'pgveil: the rules (version {engine.rules.version}) no longer give user "{self.user}" '
                         f"access; the session is ended")
        self.tier = tier
        self._filtering = not tier.all_clear
        self._active_watch = self._server_watch()
        # a result still counted against a row limit keeps its rows watched
        self._from_server.watch = self._active_watch | ({D} if self._row_limits else set())
        return []

    def _resolve(self, engine):
        """Resolve the identity at the server's clock: tier, grants and the effective access."""
        resolved = engine.resolve(self.user or "", self.peer[0], self.config.clock() if self.config.clock else None,
                                  self.purpose)
        self._rules_version = resolved.access.rules_version
        self._access_until = resolved.valid_until
        self._access_catalog = getattr(engine.catalog, "version", None)
        self.tier, self._grants, self.access = resolved.tier, resolved.grants, resolved.access
        return resolved.tier

    def _access_now(self, engine) -> list[Command]:
        """Bring the effective access up to date before a statement (new rules or catalog roles,
        a grant beginning or ending, a purpose declared or cleared).  Commands that end the
        session when the identity is now denied."""
        if self._rules_version != engine.rules.version or \
                self._access_catalog != getattr(engine.catalog, "version", None) or \
                (self._access_until is not None and self.config.clock() >= self._access_until):
            revoked = self._rules_changed()
            if revoked:
                return revoked
        if self.access is not None and self.access.purpose != self.purpose:
            self.access = self.access.with_purpose(self.purpose)
        return []

    def deciding_tier(self):
        """The tier statements are decided with now (purpose-bound classes masked until a purpose)."""
        return deciding_tier(self.tier, self.purpose)

    def _server_watch(self) -> frozenset:
        """The server messages the relay must see, for this session's tier and features."""
        watch = FILTER_WATCH if self._filtering else SERVER_WATCH
        if self.config.audit:
            watch |= OUTCOME_WATCH
        if self.config.engine is not None:
            watch |= PREPARE_WATCH | {C_, s_, I_}  # CommandComplete: how a block that set the purpose ended,
            # and (with PortalSuspended, EmptyQueryResponse) what a statement opened (proxy.opened)
        return watch

    # ------------------------------------------------------------------ audit
    def _who(self) -> dict:
        """Who acts, as this session's records say: built once the session is active, again when
        its tier changes.  Records copy it, never change it."""
        cached = self._who_cache
        if cached is not None and cached[0] is self.tier:
            return cached[1]
        startup = self.startup
        who = {"session": self.id, "user": self.user, "tier": self.tier.name if self.tier else None,
               "client_addr": self.peer[0], "client_port": self.peer[1], "database": self.database,
               "application_name": startup.param("application_name") if startup else None}
        if self.phase is Phase.ACTIVE:
            self._who_cache = (self.tier, who)
        return who

    def _connection_record(self, result: str, reason: str = "", sqlstate: str | None = None) -> list[Command]:
        if not self.config.audit:
            return []
        record = records.base("connection", self._who())
        record.update({"result": result, "reason": reason, "sqlstate": sqlstate, "tls": self.client_tls,
                       "upstream_tls": self.upstream_tls})
        return [WriteAudit(record)]

    def _session_end_record(self, reason: str) -> list[Command]:
        if not self.config.audit or self.user is None:
            return []
        record = records.base("session_end", self._who())
        record.update({"reason": reason, "duration_ms": int((self._now() - self.started) * 1000),
                       "statements": self.statements, "bytes_in": self.stats.bytes_from_client,
                       "bytes_out": self.stats.bytes_from_server})
        return [WriteAudit(record)]

    def _outcomes(self, kind: int, body: bytes) -> list[Command]:
        result = self._tracker.running_result() if self._row_limits else None
        ended = self._tracker.server(kind, body, self._now())
        commands: list[Command] = []
        if kind == Z and body[:1] == b"I":
            self._row_limits.idle()  # no transaction: no portal is left to resume
        for statement_id, status, rows, seconds, sqlstate in ended:
            if self._row_limits and result is not None and statement_id == result[0]:
                self._row_limits.ended(result, status, self._tracker.live_ids())  # (suspended: one result)
                if not self._row_limits:
                    self._from_server.watch = self._active_watch
            if statement_id in self._refused_ids:
                self._refused_ids.discard(statement_id)
                status, rows = "refused", None
                sqlstate = self._refusal_states.pop(statement_id, "42501")
            grant, purpose = self._ran_under.get(statement_id, (None, None))
            commands.append(WriteAudit(records.outcome(self._who(), statement_id, status, rows, seconds, sqlstate,
                                                  purpose=purpose, grant=grant)))
        return commands

    def _search_path(self) -> tuple:
        value = self.server_params.get("search_path")
        if value != self._search_path_text:
            self._search_path_text = value
            self._search_path_parsed = policy.parse_search_path(value)
        return self._search_path_parsed

    def _decide_message(self, kind: int, message: bytes, audits: list, sql: str | None = None) -> bytes | None:
        """Decide a Query (its text in ``sql`` when already read), Parse or FunctionCall; the bytes
        to send instead, or None."""
        decoded = codec.decode_message(codec.FRONTEND, message) if kind != Q else None
        engine = self.config.engine
        if kind == F:
            sql = f"/* FunctionCall message, function oid {decoded.function_oid} */"
            decision = None if self.tier is None or self.tier.all_clear else policy.Decision(
                "refuse", "", reason=f"the FunctionCall message is not allowed for tier {self.tier.name}",
                sqlstate="42501")
        else:
            if sql is None:
                sql = decoded.query if decoded is not None else codec.query_text(message)
            wire, reading = sql, self._reading()
            unreadable = self._unreadable(reading)
            if unreadable is None and reading is not None:
                try:
                    sql = encodings.decode(wire, reading)
                except UnicodeError:
                    unreadable = ("22021", f"invalid byte sequence for encoding "
                                           f"{self.server_params.get('client_encoding', 'UTF8')}: pgveil refuses "
                                           f"statements that are not valid in the session's client encoding")
            if unreadable is not None:
                decision = policy.Decision("refuse", "", sqlstate=unreadable[0], reason=unreadable[1])
            elif self._filtering and self.server_params.get("standard_conforming_strings", "on") != "on":
                decision = policy.Decision("refuse", "", sqlstate="42501", reason=(
                    "the server reports standard_conforming_strings off: pgveil would read string literals "
                    "differently from the server"))
            elif engine is not None and self.tier is not None and PURPOSE_WORD in (low := sql.lower()):
                decision = policy.Decision("refuse", "", sqlstate="42501", reason=(
                    "declare a purpose on its own, as a simple query: SET pgveil.purpose = 'ticket'"))
            elif engine is not None and self.tier is not None:
                tier = self.deciding_tier()
                started = self._now()
                path = self._pending_path if self._pending_path is not None else self._search_path()
                ready = () if self._apart_ready is None else (self._apart_ready,)  # decided apart
                decision = engine.decide(sql, tier, path if path != searchpath.UNKNOWN else self._search_path(),
                                         self.user or "", self.access, *ready)
                if path == searchpath.UNKNOWN and not tier.all_clear and decision.relations:
                    decision = policy.Decision("refuse", "", sqlstate="42501", reason=(
                        "a statement sent before this one changes search_path in a way pgveil cannot follow; "
                        "wait for its result before sending statements that use relations"))
                if not decision.refused and (self._pending_path is not None or any(w in low for w in STATE_WORDS)):
                    decision = self._state_after(sql, decision, path)
                self._decision_us = int((self._now() - started) * 1_000_000)
                if decision.names and not decision.refused:
                    decision = self._check_names(decision, tier)
                if tier is not self.tier and decision.columns:
                    self._purpose_notice(decision, audits)
            else:
                decision = None
        kept = kind == P and engine is not None  # the unnamed statement too: it can be bound again later
        if kept and not self._prepared.fits(decoded.name, sql, limits.PREPARED_BYTES):
            kept = False
            decision = policy.Decision("refuse", "", sqlstate="54000", reason=(
                f"pgveil keeps at most {limits.PREPARED_BYTES >> 20} MB of prepared statement text per session; "
                f"close (DEALLOCATE) prepared statements before preparing more"))
        if self.config.audit and not self._audit_ok:
            decision = policy.Decision("refuse", "", sqlstate="58030", reason=(
                "pgveil cannot write its audit journal, so it refuses statements until it can"))
        self._ddl_seen = self._ddl_seen or (decision is not None and "ddl" in decision.kinds)
        if kept:
            self._prepared.remember(decoded.name, wire, decoded.param_types, self.access)
        statement_id = self._audit_statement(kind, decoded, sql, decision, audits)
        if statement_id and decision is not None and self.tier is not None and self.tier.max_rows \
                and not decision.refused:
            limit = self.tier.row_limit({c.cls for c in decision.columns}) if decision.columns else None
            self._row_limits.decided(statement_id, limit, decision.cursors)
            if self._row_limits:
                self._from_server.watch = self._active_watch | {D, COPY_DATA}
        effects = self._opened.take()  # what it opens or closes, staged by _check_opened
        if engine is not None and kind != F and not (decision is not None and decision.refused):
            self._opened.sent(effects, decoded.name if kind == P else None)
        if decision is not None and decision.refused:
            if statement_id:
                self._refused_ids.add(statement_id)
                self._refusal_states[statement_id] = decision.sqlstate or "42501"
            return self._refusal(decision.reason, decision.sqlstate, parse=decoded if kind == P else None)
        if decision is None or decision.sql == sql:
            return None
        try:
            text = encodings.to_wire(decision.sql, reading) if reading is not None else decision.sql
        except UnicodeError:
            return self._refusal(f"the statement pgveil would send cannot be written in the client encoding "
                                 f"{self.server_params.get('client_encoding')}", "22P05",
                                 parse=decoded if kind == P else None)
        if kind == Q:
            return codec.encode(codec.Query(text))
        return codec.encode(codec.Parse(decoded.name, text, decoded.param_types))

    def _reading(self) -> str | None:
        """The codec a statement is read in, for a tier whose decisions depend on reading it as
        the server does (every tier but an all-clear one with every statement kind); None: the
        text goes as it came."""
        tier = self.tier
        if tier is None or (tier.all_clear and tier.statements >= ALL_KINDS):
            return None
        key = (self.server_params.get("client_encoding"), self.server_params.get("server_encoding"))
        if key != self._reader_key:
            self._reader_key = key
            self._reader = encodings.reader(*key)
        return self._reader[0] or "unreadable"

    def _unreadable(self, reading: str | None) -> tuple[str, str] | None:
        """(SQLSTATE, reason) when the server's parameters are ones pgveil cannot follow."""
        if reading is None:
            return None
        if reading == "unreadable":
            return "42501", f"{self._reader[1]}; set client_encoding to UTF8"
        path = self.server_params.get("search_path")
        if self._filtering and path is not None:
            names = settings.split_identifiers(path)
            if names is None or settings.search_path_problem(names):
                return "42501", f"the server reports a search_path pgveil cannot follow ({path[:60]}): " \
                                f"{settings.search_path_problem(names) if names else 'it does not parse'}"
        return None

    def _check_names(self, decision, tier):
        """Cursors and SQL-prepared statements: a use must name one declared through pgveil in
        this session (see :mod:`proxy.sqlnames`)."""
        reason = self._sql_names.apply(decision.names, self._prepared.statements, self.access)
        if reason is None:
            return decision
        return policy.Decision("refuse", "", reason=f"{reason} (tier {tier.name})", sqlstate="42501",
                               kinds=decision.kinds)

    def _state_after(self, sql: str, decision, path):
        """A statement allowed to go that may change what later ones run under: the search_path
        statements sent after it are decided under, the prepared statements and cursors it uses
        or opens, a purpose cleared by RESET ALL or DISCARD ALL."""
        if self._pending_path is not None or searchpath.CHANGES.search(sql):
            # statements sent before this one has run are decided under the path it leaves
            changed = self._pending_path not in (None, self._search_path())
            self._pending_path = searchpath.after(segments(sql), path, changed)
        if Opened.concerns(sql):
            decision = self._check_opened(sql, decision)
        if not decision.refused and RESET_ALL.search(sql):
            self._reset_all(sql)
        return decision

    def _check_opened(self, sql: str, decision):
        """A statement that executes, fetches from or opens a prepared statement or cursor: refused
        when what it uses was opened under other access (see :mod:`proxy.opened`)."""
        reason = self._opened.query(segments(sql), self.access, not self.tier.all_clear)
        if reason is None:
            return decision
        return policy.Decision("refuse", "", reason=reason, sqlstate="42501", kinds=decision.kinds,
                               relations=decision.relations, normalized=decision.normalized)

    def _audit_purpose(self, audits: list) -> None:
        if self.config.audit:
            self.statements += 1
            decision = policy.Decision("allow", "", kinds=("session",))
            record = records.statement(self._who(), f"{self.id}-{self.statements}", "SET pgveil.purpose = ''",
                                       "simple", decision, self.config.engine.rules.version, purpose=self.purpose)
            record["sql"] = self._purpose_statement
            audits.append(WriteAudit(record))

    def _purpose_notice(self, decision, audits: list) -> None:
        """Say which classes a purpose would show in clear (when the client stream allows a message)."""
        bound = sorted({c.cls for c in decision.columns if self.tier.action(c.cls).purpose})
        if bound and not self._from_server.mid_message:
            text = (f"pgveil: {', '.join(bound)} masked until you declare a purpose: "
                    f"SET pgveil.purpose = 'your ticket or reason'")
            audits.append(SendToClient(codec.encode(codec.NoticeResponse(
                ((b"S", "NOTICE"), (b"V", "NOTICE"), (b"C", "01000"), (b"M", text))))))

    def _declare_purpose(self, sql: str) -> bytes | None:
        """``SET pgveil.purpose = '...'`` / ``RESET pgveil.purpose`` (a Query's text), answered here:
        the database never sees it.  Returns the reply, or None if the Query is not such a statement."""
        if PURPOSE_WORD not in sql.lower():
            return None
        match = PURPOSE_SET.match(sql)
        if match is None or self.outstanding != 1:
            return None  # not alone: refused as any other statement naming it
        self.outstanding -= 1
        self._opened.unsent()
        status = self.transaction_status
        ready = codec.encode(codec.ReadyForQuery(status))
        if status == b"E":
            return codec.error_response("25P02", "current transaction is aborted, commands ignored until end of "
                                                 "transaction block") + ready
        value = match.group("value")
        value = value.replace("''", "'") or None if value is not None else None
        local = (match.group("scope") or "").upper() == "LOCAL"
        tag = "RESET" if sql.lstrip()[:1] in "rR" else "SET"
        self._purpose_statement = "RESET pgveil.purpose" if value is None else \
            f"SET {'LOCAL ' if local else ''}pgveil.purpose = ?"
        if local and status != b"T":
            warning = codec.encode(codec.NoticeResponse(((b"S", "WARNING"), (b"V", "WARNING"), (b"C", "25P01"), (
                b"M", "SET LOCAL can only be used in transaction blocks"))))
            return warning + codec.encode(codec.CommandComplete(tag)) + ready
        self._purpose.set(value, local=local, in_block=status == b"T")
        return codec.encode(codec.CommandComplete(tag)) + ready

    @property
    def purpose(self) -> str | None:
        """The purpose in force (see :mod:`proxy.purpose`)."""
        return self._purpose.current

    def _reset_all(self, sql: str) -> None:
        """RESET ALL or DISCARD ALL clear the purpose as they clear every setting (at once, before
        the server runs them: that only masks more)."""
        if any(_clears_all(seg) for seg in segments(sql)):
            self._purpose.set(None, local=False, in_block=self.transaction_status != b"I")

    def _grant_used(self, decision) -> str | None:
        """The grants that changed this statement: a tier grant always, a class grant when the
        statement reached one of its classes."""
        if not self._grants or decision is None:
            return None
        used = [g for g in self._grants
                if g.tier is not None or any(c.cls in g.see or "*" in g.see for c in decision.columns)]
        return "; ".join(g.label() for g in used) or None

    def _audit_statement(self, kind: int, decoded, sql: str, decision, audits: list) -> str | None:
        if not self.config.audit:
            return None
        self.statements += 1
        statement_id = f"{self.id}-{self.statements}"
        engine = self.config.engine
        record = records.statement(self._who(), statement_id, sql, "extended" if kind == P else "simple",
                                   decision, engine.rules.version if engine else None,
                                   purpose=self.purpose, grant=self._grant_used(decision))
        # strict: a statement that will reach the database waits for its record; a refusal reaches nothing
        record["decision_us"] = self._decision_us
        self._decision_us = 0
        if self._seals is not None:
            sealed = self._seals.statement(decoded.name if kind == P else None, statement_id, sql, decision, self.tier)
            if sealed is not None:
                record["sealed"] = sealed
        audits.append(WriteAudit(record, durable=self.config.audit_strict and not (decision and decision.refused)))
        self.last_statement = (record["fingerprint"], self._now())
        # each execution's outcome names the access its statement was decided under: a change of
        # access decides (and records) the statement again before it runs again
        self._ran_under[statement_id] = (record["grant"], record["purpose"])
        if len(self._ran_under) > 4096:
            del self._ran_under[next(iter(self._ran_under))]
        if kind == P:
            self._tracker.parse(decoded.name, statement_id)
        else:
            self._tracker.query(statement_id, self._now())
        return statement_id

    def _refusal(self, reason: str, sqlstate: str = "42501", parse=None) -> bytes:
        """A statement that fails on the server in place of a refused one.

        The server then does exactly what it does for any error (aborts the transaction block,
        skips to Sync in the extended protocol); its error is swapped for the refusal on the
        way back (see :meth:`_server_filtered`).
        """
        self._refusal_seq += 1
        token = f"{REFUSAL_MARK}{self._refusal_seq}"
        self._refusals[token] = (reason, sqlstate or "42501")
        sql = f"SELECT '{token}'::pg_catalog.int4"
        if parse is not None:
            return codec.encode(codec.Parse(parse.name, sql, ()))
        return codec.encode(codec.Query(sql))

    def _server_filtered(self, out: bytes, marks: list) -> list[Command]:
        """Relay for a restricted tier: refusals put back, row values kept out of error details,
        and the second check on every RowDescription."""
        pieces: list[bytes] = []
        pos = 0
        commands: list[Command] = []
        for kind, start, end in marks:
            if self._suppressing:
                if kind != Z:
                    if kind == E:  # the server still runs the rest: what it opens counts
                        self._opened.error()
                    elif kind in (C_, s_, I_):
                        self._opened.answered(codec._text(bytes(out[start + 5:end - 1])) if kind == C_ else None)
                    continue
                pos = start  # everything up to this ReadyForQuery is dropped
                self._suppressing = False
            message = out[start:end]
            replacement = None
            if kind in PREPARE_WATCH and self.config.engine is not None and self._prepared.server(kind):
                replacement = b""  # the reply to a Close or Parse the client never sent
            elif kind == E or kind == N:
                replacement = self._filter_error(message)
            elif kind == A and self._filtering:
                note = codec.decode_message(codec.BACKEND, message)
                if note.payload:  # any session's pg_notify() can carry any value: the payload is dropped
                    replacement = codec.encode(codec.NotificationResponse(note.pid, note.channel, ""))
            elif (kind == D or kind == COPY_DATA) and self._row_limits:  # a row, or a COPY TO line
                replacement = self._count_row(commands)
            elif kind == T and self._filtering:
                leak = self._leaking_column(message)
                if leak:
                    replacement = codec.error_response(
                        "42501", f"pgveil stopped a result: column {leak} is not visible in clear to tier "
                                 f"{self.tier.name}")
                    self._suppressing = True
                    commands.append(Alert("second_layer_stop", f"RowDescription named {leak} for tier "
                                                               f"{self.tier.name}"))
            if kind in OUTCOME_KINDS or kind == S:
                commands += self._observe_server(out, [(kind, start, end)], prepared_seen=True)
            if replacement is not None:
                pieces += (out[pos:start], replacement)
                pos = end
        if not self._suppressing:
            pieces.append(out[pos:])
        data = b"".join(pieces) if len(pieces) != 1 else pieces[0]
        if self._refusals and self.outstanding == 0:
            self._refusals.clear()  # e.g. a refusal inside an aborted transaction got 25P02 instead
        return ([SendToClient(data)] if data else []) + commands

    def _count_row(self, commands: list) -> bytes | None:
        """A row of a statement with a row limit: past the limit, the result stops here."""
        result = self._tracker.running_result()
        limit = self._row_limits.row(result) if result is not None else None
        if limit is None:
            return None
        statement_id = result[0]
        self._suppressing = True
        self._tracker.stop(statement_id, limit, "54000")
        commands.append(Alert("max_rows_stop", f"tier {self.tier.name} reached max_rows {limit}"))
        return codec.error_response(
            "54000", f"pgveil: tier {self.tier.name} may read at most {limit} rows with sensitive columns in one "
                     f"statement; the result was stopped after them",
            hint="Narrow the statement, or ask for a grant.")

    def _filter_error(self, message: bytes) -> bytes | None:
        error = codec.decode_message(codec.BACKEND, message)
        text = next((value for code, value in error.fields if code == b"M"), None) or ""  # a notice has no get()
        if REFUSAL_MARK in text:
            token = text[text.index(REFUSAL_MARK):].split('"')[0]
            found = self._refusals.pop(token, None)
            if found is not None:
                reason, sqlstate = found
                return codec.error_response(sqlstate, reason)
        if self._filtering:  # errors can print values: see proxy/errors.py
            fields = errors.scrub(error.fields, self.tier.name)
            return codec.encode(type(error)(fields)) if fields != error.fields else None
        return None

    def _leaking_column(self, message: bytes) -> str | None:
        hidden = self.config.engine.hidden_columns(self.deciding_tier())
        if not hidden:
            return None
        for name, table_oid, column in codec.row_sources(message):
            if table_oid and (table_oid, column) in hidden:
                return f"{name} (table {table_oid}, column {column})"
        return None

    def _note_error(self, message: bytes) -> None:
        error = codec.decode_message(codec.BACKEND, message)
        self._last_server_fatal = error.get(b"S") in ("FATAL", "PANIC")

    def _note_parameter(self, message: bytes) -> None:
        status = codec.decode_message(codec.BACKEND, message)
        self.server_params[status.name] = status.value

    # ------------------------------------------------------------------ ending
    def _shutdown(self, _event=None) -> list[Command]:
        """pgveil is shutting down: a statement still running upstream is cancelled, the server
        session ended, and the client told as PostgreSQL tells it (FATAL 57P01)."""
        if self.phase is Phase.CLOSED:
            return []
        busy = self.outstanding > 0 or self._from_server.mid_message
        commands: list[Command] = [ForwardCancel(self.backend_key)] if busy and self.backend_key else []
        if self.phase is Phase.ACTIVE:
            commands.append(SendToServer(codec.encode(codec.Terminate())))
        return commands + self.fail("57P01", "terminating connection due to administrator command")

    def fail(self, sqlstate: str, message: str, *, detail: str | None = None,
             hint: str | None = None) -> list[Command]:
        """End the session with a FATAL error to the client (when the stream allows one)."""
        if self.phase is Phase.CLOSED:
            return []
        commands: list[Command] = []
        if not self._from_server.mid_message and self.phase is not Phase.TLS_HANDSHAKE:
            commands.append(SendToClient(codec.error_response(
                sqlstate, message, severity="FATAL", detail=detail, hint=hint)))
        return commands + self._close(message, error=True)

    def _close(self, reason: str, error: bool = False) -> list[Command]:
        audit = self._session_end_record(reason) if self.phase in (Phase.ACTIVE, Phase.POSTAUTH) else []
        self.phase = Phase.CLOSED
        self.close_reason = reason
        return audit + [Close(reason, error)]



def _audit_health(session: Session, event: AuditHealth) -> list[Command]:
    session._audit_ok = event.ok
    return []


# event -> what the session does with it (in CLOSED, nothing: see Session.handle)
HANDLERS = {
    ClientData: Session._client_data,
    ServerData: Session._server_data,
    ClientTLSEstablished: Session._tls_established,
    UpstreamConnected: Session._upstream_connected,
    UpstreamFailed: Session._upstream_failed,
    VerifierFound: Session._verifier_found,
    VerifierLookupFailed: lambda s, e: s.fail("28000", "pgveil could not look up the role's credentials"),
    ClientClosed: Session._client_closed,
    ServerClosed: Session._server_closed,
    RulesChanged: Session._rules_changed,
    AuditHealth: _audit_health,
    AuditDurable: Session._audit_durable,
    AuditFailed: Session._audit_failed,
    TimerFired: Session._timer_fired,
    DecidedApart: Session._decided_apart,
    ShutdownRequested: Session._shutdown,
    KillRequested: lambda s, e: s.fail("57P01", f"terminating connection due to administrator command ({e.by})"),
    HandlerCrashed: lambda s, e: s.fail("XX000", "pgveil internal error"),
}
