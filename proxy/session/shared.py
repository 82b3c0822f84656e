"""What the parts of a session share: its phases, its configuration and the message kinds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

from .. import codec, state_after
from ..codec import BE, FE
from ..rules import STATEMENT_KINDS


class Phase(Enum):
    STARTUP = "startup"
    TLS_HANDSHAKE = "tls_handshake"
    CONNECTING = "connecting"
    AUTH = "auth"
    POSTAUTH = "postauth"
    ACTIVE = "active"
    CLOSED = "closed"


# h11's style: the phase each phase moves to on each trigger (a start-up packet, an event, a
# server message).  Anything else in that phase is a protocol violation; any phase may close.
TRANSITIONS = {
    Phase.STARTUP: {"SSLRequest": Phase.TLS_HANDSHAKE, "StartupMessage": Phase.CONNECTING},
    Phase.TLS_HANDSHAKE: {"ClientTLSEstablished": Phase.STARTUP},
    Phase.CONNECTING: {"UpstreamConnected": Phase.AUTH},
    Phase.AUTH: {"AuthenticationOk": Phase.POSTAUTH},
    Phase.POSTAUTH: {"ReadyForQuery": Phase.ACTIVE},
    Phase.ACTIVE: {},
}


def enter(phase: Phase, trigger: str) -> Phase:
    """The phase after ``trigger`` in ``phase``, per :data:`TRANSITIONS`."""
    try:
        return TRANSITIONS[phase][trigger]
    except KeyError:
        raise codec.ProtocolViolation(f"unexpected {trigger} while {phase.value}") from None


# Frontend message kinds allowed once authenticated (AuthResponse is only for authentication).
ACTIVE_FRONTEND = frozenset(t for t in codec.FRONTEND if t != FE.AUTH_RESPONSE)
# Server messages the relay must look at; everything else (rows above all) passes as bytes.
SERVER_WATCH = frozenset({BE.READY_FOR_QUERY, BE.ERROR, BE.PARAMETER_STATUS, BE.BACKEND_KEY_DATA})
ALL_BYTES = frozenset(range(256))
# For a restricted tier, also errors and notices (details stripped), RowDescription and
# NotificationResponse (payloads written by other sessions are outputs pgveil cannot mask).
FILTER_WATCH = SERVER_WATCH | {BE.NOTICE, BE.ROW_DESCRIPTION, BE.NOTIFICATION}
ENDS = frozenset({BE.COMMAND_COMPLETE, BE.PORTAL_SUSPENDED, BE.EMPTY_QUERY_RESPONSE})  # how an execution ended
OUTCOME_WATCH = ENDS  # what the audit's outcome records need besides
OUTCOME_KINDS = ENDS | {BE.ERROR, BE.READY_FOR_QUERY}
# words after which the session's state needs a closer look (see _state_after); substrings of the
# lower-cased text, a third of a regular expression's time
STATE_WORDS = state_after.WORDS
# replies that tell which Parse/Close they answer
PREPARE_WATCH = frozenset({BE.PARSE_COMPLETE, BE.CLOSE_COMPLETE, BE.ERROR, BE.READY_FOR_QUERY})
PREPARE_CLIENT = frozenset({FE.PARSE, FE.CLOSE, FE.SYNC, FE.QUERY, FE.FUNCTION_CALL})
REFUSAL_MARK = "pgveil-refused-"
ALL_KINDS = frozenset(STATEMENT_KINDS)


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
    stamp: Callable[[], str] | None = None  # audit records' UTC time (audit.records.now); None: a fixed time (tests)
    record_id: Callable[[], str] | None = None  # audit records' ids (audit.records.new_id); None: a counter (tests)
    backlog_high_water: int = 256 * 1024  # client bytes queued while waiting before PauseClientReading
    sealing: object = None  # proxy.sealing.Sealing: values sealed for the investigators (--audit-seal-key)


@dataclass(slots=True)
class Stats:
    bytes_from_client: int = 0
    bytes_from_server: int = 0
