"""What to do: the imperatives a :class:`~proxy.session.Session` returns from ``handle``.

The server carries them out in order and reports back with events
(:mod:`proxy.session.events`) where a command has an answer (OpenUpstream, LookupVerifier,
WriteAudit with ``durable``, DecideApart).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import codec


@dataclass(frozen=True, slots=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendToServer:
    data: bytes


@dataclass(frozen=True, slots=True)
class StartClientTLS:
    """Upgrade the client connection to TLS (the 'S' answer has already been queued); answer
    with ClientTLSEstablished."""


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Open the upstream connection (TLS per the configured sslmode); answer with
    UpstreamConnected or UpstreamFailed."""
    startup: codec.StartupMessage


@dataclass(frozen=True, slots=True)
class ForwardCancel:
    """Open a fresh upstream connection and send this CancelRequest on it.  With ``client_waits``
    the client's own cancel connection is closed only once the server has closed that one (the
    backend has been signalled), as PostgreSQL does: clients wait for that close before they send
    their next statement, which an early close would let the cancel hit."""
    request: codec.CancelRequest
    client_waits: bool = False


@dataclass(frozen=True, slots=True)
class LookupVerifier:
    """Read the role's SCRAM verifier through the auth account; answer with VerifierFound or
    VerifierLookupFailed."""
    user: str


@dataclass(frozen=True, slots=True)
class WriteAudit:
    """Write an audit record.  With ``durable``, answer with AuditDurable(token) once it is on
    disk, or AuditFailed(token, error): until then the session carries out nothing after it or,
    with ``answer_only`` (a statement proven read-only, sent at once), releases none of the
    server's answer to the client."""
    record: dict
    durable: bool = False
    token: int = 0
    answer_only: bool = False


@dataclass(frozen=True, slots=True)
class PauseClientReading:
    """Stop reading from the client: what it sent while the session waits passed the high-water mark."""


@dataclass(frozen=True, slots=True)
class ResumeClientReading:
    """Read from the client again (after PauseClientReading)."""


@dataclass(frozen=True, slots=True)
class PauseServerReading:
    """Stop reading from the server: the answer held for a durable record passed the high-water mark."""


@dataclass(frozen=True, slots=True)
class ResumeServerReading:
    """Read from the server again (after PauseServerReading)."""


@dataclass(frozen=True, slots=True)
class RefreshCatalog:
    """A statement that may change the catalog went through: read it again soon."""


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """Authentication is over and the session is active (for the log and the privilege check)."""


@dataclass(frozen=True, slots=True)
class Alert:
    """Something that should never happen did: log it loudly."""
    event: str
    detail: str


@dataclass(frozen=True, slots=True)
class DecideApart:
    """Decide this statement in a child process (a cold decision that may take long), then answer
    with DecidedApart; the client's further messages wait in the session until then."""
    key: tuple
    sql: str
    tier: object
    search_path: tuple
    user: str
    access: object = None  # proxy.access.Access: part of the decision's key


@dataclass(frozen=True, slots=True)
class Close:
    """Close both connections (after flushing what was queued)."""
    reason: str
    error: bool = False


Command = (SendToClient | SendToServer | StartClientTLS | OpenUpstream | ForwardCancel | LookupVerifier | Alert
           | RefreshCatalog | WriteAudit | PauseClientReading | ResumeClientReading | PauseServerReading
           | ResumeServerReading | SessionStarted | DecideApart | Close)
