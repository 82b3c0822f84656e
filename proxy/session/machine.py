"""The session's state machine: one client connection, without I/O.

Theory of operation
-------------------
The server turns socket and task callbacks into past-tense events (:mod:`.events`) and gives
each to :meth:`Session.handle`, which returns the imperative commands (:mod:`.commands`) to
carry out, in order.  Nothing here touches a socket, a clock or the audit writer (the clocks
and the id source come in through :class:`~.shared.SessionConfig`), so a whole session can be
replayed as a script in a test (tests/test_playbook.py).  The session picks every SQLSTATE and
message it sends; the server only reports facts.

Phases, in h11's style (:data:`~.shared.TRANSITIONS`; anything else is a protocol violation)::

    STARTUP --SSLRequest--> TLS_HANDSHAKE --ClientTLSEstablished--> STARTUP
    STARTUP --StartupMessage--> CONNECTING --UpstreamConnected--> AUTH
    AUTH --AuthenticationOk--> POSTAUTH --ReadyForQuery--> ACTIVE
    any --error or close--> CLOSED

:data:`CLIENT_BYTES` and :data:`SERVER_BYTES` say which part reads each side's bytes in each
phase; :data:`HANDLERS` what every other event does.

Waiting is a state of the session, as mitmproxy pauses a layer on a blocking command.  Under
strict audit, an event whose commands include durable records returns only the records, each
``WriteAudit(durable=True, token=N)``; the rest waits until ``AuditDurable(N)`` has come for
every token (``AuditFailed`` ends the session with 58030 and sends nothing).  A statement
decided in a child process (``DecideApart``) waits likewise for ``DecidedApart``.  Meanwhile
the client's bytes are queued here and handled in order once the wait is over; past
``backlog_high_water`` queued bytes the session asks the server to stop reading from the
client (``PauseClientReading``, then ``ResumeClientReading``).  The server's bytes are never
held: they answer statements sent before.

The work is done by parts, one module each, which import only :mod:`.shared`, :mod:`.commands`
and :mod:`.events` (and the layers below the session).  Composed objects, owned by the session
and never calling back into it: :mod:`.recorder` (``session.recorder``: audit records; its
methods take who acts and what happened, and return the records to write), :mod:`.waits`
(``session.waits``: strict audit's waits; it takes an event's commands, queued client bytes and
durable or failed tokens, and returns what to carry out now; replaying the queue is the
session's, below) and :mod:`.refusals` (``session.refusals``: a refused statement's stand-in; it
takes the refusal, the refused statement's id, the server's error text and an ended statement's
id, and returns the bytes to send, the error to put back, or the outcome's SQLSTATE).  Still
mixins of :class:`Session`, sharing its attributes: :mod:`.handshake` (start-up, SSL,
authentication relay, the SCRAM bridge of :mod:`.scram_bridge`, who may connect), :mod:`.relay`
(splitting both streams; watching RowDescription, rows, CommandComplete, errors and
ReadyForQuery), :mod:`.gate` (identity, tier, grants, purpose, row limits: the decision on each
statement), :mod:`.statements` (prepared statements, portals, cursors, the statement tracker):
these four still read each other's state (a Bind prepared again is decided by the gate, the
relay feeds the tracker and the opened portals, the gate reads the search path the relay notes).
"""

from __future__ import annotations

from itertools import count

from .. import codec
from ..codec import ProtocolViolation, TxStatus
from .commands import Close, Command, ForwardCancel, SendToClient, SendToServer
from .events import (AuditDurable, AuditFailed, AuditHealth, ClientClosed, ClientData, ClientTLSEstablished,
                     DecidedApart, HandlerCrashed, KillRequested, RulesChanged, ServerClosed, ServerData,
                     ShutdownRequested, TimerFired, UpstreamConnected, UpstreamFailed, VerifierFound,
                     VerifierLookupFailed)
from .following import Following
from .gate import Gate
from .handshake import Handshake
from .recorder import Recorder
from .refusals import Refusals
from .relay import Relay
from .shared import ALL_BYTES, Phase, SessionConfig, Stats
from .statements import Statements
from .waits import Waits

_ids = count(1)


def _no_clock() -> float:
    return 0.0


class Session(Handshake, Relay, Statements, Gate, Following):
    """The state of one client connection; see the module docstring."""

    def __init__(self, config: SessionConfig | None = None, peer: tuple = ("", 0)) -> None:
        self.config = config or SessionConfig()
        self.peer = peer
        self._now = self.config.monotonic or _no_clock
        self.id = self.config.new_id() if self.config.new_id else f"s{next(_ids)}"
        self.started = self._now()
        self._audit_ok = True  # the journal can be written (AuditHealth)
        self.phase = Phase.STARTUP
        self.client_tls = False
        self.upstream_tls = False
        self.startup: codec.StartupMessage | None = None
        self.user: str | None = None
        self.database: str | None = None
        self.backend_key: codec.CancelRequest | None = None
        self.server_params: dict[str, str] = {}
        self.transaction_status = TxStatus.IDLE
        self.outstanding = 0  # Query/Sync/FunctionCall sent, ReadyForQuery not yet seen
        self.close_reason: str | None = None
        self.stats = Stats()
        self._from_client = codec.Splitter(ALL_BYTES, self.config.max_message_size)
        self._from_server = codec.Splitter(ALL_BYTES, self.config.max_message_size)
        self.recorder = Recorder(self.config, self.id, peer, self._now)
        self.waits = Waits(self.config.backlog_high_water)
        self.refusals = Refusals()
        for init in (self._init_handshake, self._init_relay, self._init_statements, self._init_gate,
                     self._init_following):
            init()

    # ------------------------------------------------------------------ the one entry point
    def handle(self, event) -> list[Command]:
        """One event in, the commands to carry out (in order) out.  While the session waits (for a
        durable record, or a decision taken apart), what the client sends is queued here and
        handled, in order, once the wait is over."""
        if self.phase is Phase.CLOSED:
            return []
        commands = self._step(event)
        return self.waits.hold_answers(commands, self.phase is Phase.CLOSED) if self.waits.answers else commands

    def _step(self, event) -> list[Command]:
        """:meth:`handle` but for the answers held for a read's record (applied once, outside)."""
        kind = type(event)
        if kind is ClientData and (self.waits.changes or self._apart_held is not None):
            return self.waits.queue_client(event.data)
        return self.waits.hold_for_durable(HANDLERS[kind](self, event))

    # ------------------------------------------------------------------ waiting (see .waits)
    @property
    def waiting(self) -> bool:
        """A statement waits for its durable record or its decision, or client bytes are queued."""
        return self.waits.busy or self._apart_held is not None

    def _replay(self) -> list[Command]:
        """The wait is over: handle what the client sent meanwhile, in order, until the next wait."""
        commands: list[Command] = []
        while not self.waits.changes and self._apart_held is None and self.phase is not Phase.CLOSED:
            data = self.waits.next_queued()
            if data is None:
                return commands + self.waits.resume_reading()
            commands += self._step(ClientData(data))
        return commands

    def _audit_durable(self, event: AuditDurable) -> list[Command]:
        released, over = self.waits.durable(event.token)
        return released + self._replay() if over else released

    def _audit_failed(self, event: AuditFailed) -> list[Command]:
        message = self.waits.failed(event.token)
        return self.fail("58030", message) if message is not None else []

    def _timer_fired(self, event: TimerFired) -> list[Command]:
        if event.name == "startup" and self.phase is not Phase.ACTIVE:
            return self.fail("08P01", "pgveil: timeout expired before the client authenticated")
        return []

    # ------------------------------------------------------------------ audit (see .recorder)
    def _who(self) -> dict:
        """Who acts, for this session's records."""
        return self.recorder.who(self.tier, self.user, self.database, self.startup, self.phase is Phase.ACTIVE)

    def _connection_record(self, result: str, reason: str = "", sqlstate: str | None = None) -> list[Command]:
        return self.recorder.connection(self._who(), result, reason, sqlstate, self.client_tls, self.upstream_tls)

    @property
    def last_statement(self) -> tuple | None:
        """(fingerprint, monotonic time) of the latest statement recorded, for the console."""
        return self.recorder.last_statement

    # ------------------------------------------------------------------ events
    def _client_data(self, event: ClientData) -> list[Command]:
        """Bytes arrived from the client."""
        self.stats.bytes_from_client += len(event.data)
        return self._client_bytes(event.data)

    def _client_bytes(self, data: bytes) -> list[Command]:
        try:
            handler = CLIENT_BYTES.get(self.phase)
            if handler is None:
                raise ProtocolViolation("received unencrypted data after SSL request" if self.phase is
                                        Phase.TLS_HANDSHAKE else f"unexpected data from the client while "
                                                                 f"{self.phase.value}")
            return handler(self, data)
        except ProtocolViolation as exc:
            return self.fail("08P01", str(exc))

    def _server_data(self, event: ServerData) -> list[Command]:
        """Bytes arrived from the upstream server."""
        self.stats.bytes_from_server += len(event.data)
        try:
            handler = SERVER_BYTES.get(self.phase)
            if handler is None:
                raise ProtocolViolation(f"unexpected data from the server while {self.phase.value}")
            return handler(self, event.data)
        except ProtocolViolation as exc:
            return self.fail("08P01", f"upstream protocol error: {exc}")

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
        audit = self.recorder.session_end(self._who(), reason, self._now() - self.started, self.stats) \
            if self.phase in (Phase.ACTIVE, Phase.POSTAUTH) else []
        self.phase = Phase.CLOSED
        self.close_reason = reason
        return audit + [Close(reason, error)]


def _audit_health(session: Session, event: AuditHealth) -> list[Command]:
    session._audit_ok = event.ok
    return []


# what each phase does with the bytes of either side (a phase not listed does not expect them)
CLIENT_BYTES = {Phase.STARTUP: Session._client_startup, Phase.AUTH: Session._client_auth,
                Phase.POSTAUTH: Session._client_active, Phase.ACTIVE: Session._client_active}
SERVER_BYTES = {Phase.AUTH: Session._server_auth, Phase.POSTAUTH: Session._server_auth,
                Phase.ACTIVE: Session._server_active}

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
