"""What happened: the facts the server feeds a :class:`~proxy.session.Session`, one at a time.

Every event is a frozen dataclass named in the past tense; :meth:`Session.handle` takes one and
returns the commands (:mod:`proxy.session.commands`) to carry out.  The server turns socket and
task callbacks into these and nothing else: it never asks the session to fail, and never picks
an SQLSTATE.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientData:
    """Bytes arrived from the client."""
    data: bytes


@dataclass(frozen=True, slots=True)
class ServerData:
    """Bytes arrived from the database server."""
    data: bytes


@dataclass(frozen=True, slots=True)
class ClientTLSEstablished:
    """The client's TLS handshake (asked for by StartClientTLS) finished."""


@dataclass(frozen=True, slots=True)
class UpstreamConnected:
    """The connection an OpenUpstream asked for is open (TLS up on it when ``tls``)."""
    tls: bool
    server_cert_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    """The connection an OpenUpstream asked for could not be opened."""
    reason: str


@dataclass(frozen=True, slots=True)
class VerifierFound:
    """The auth account answered a LookupVerifier (None: no such role or no SCRAM secret)."""
    verifier: str | None


@dataclass(frozen=True, slots=True)
class VerifierLookupFailed:
    """The auth account could not be asked (LookupVerifier)."""
    error: str


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """The client connection ended."""


@dataclass(frozen=True, slots=True)
class ServerClosed:
    """The upstream connection ended."""


@dataclass(frozen=True, slots=True)
class RulesChanged:
    """The rules were reloaded: the identity is resolved again."""


@dataclass(frozen=True, slots=True)
class AuditHealth:
    """The audit journal became writable (``ok``) or stopped being so: while it cannot be written,
    statements are refused (58030)."""
    ok: bool


@dataclass(frozen=True, slots=True)
class AuditDurable:
    """The record of WriteAudit(..., token=token) is on disk."""
    token: int


@dataclass(frozen=True, slots=True)
class AuditFailed:
    """The record of WriteAudit(..., token=token) cannot be written."""
    token: int
    error: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A timer ran out: ``"startup"`` (the client did not authenticate in time)."""
    name: str


@dataclass(frozen=True, slots=True)
class DecidedApart:
    """The decision a DecideApart asked for, taken in a child process."""
    key: tuple
    decision: object


@dataclass(frozen=True, slots=True)
class ShutdownRequested:
    """pgveil is shutting down."""


@dataclass(frozen=True, slots=True)
class KillRequested:
    """An administrator ended the session (``by`` says who, for the message)."""
    by: str


@dataclass(frozen=True, slots=True)
class HandlerCrashed:
    """Handling an event raised: a bug, which must cost this connection only."""


Event = (ClientData | ServerData | ClientTLSEstablished | UpstreamConnected | UpstreamFailed | VerifierFound
         | VerifierLookupFailed | ClientClosed | ServerClosed | RulesChanged | AuditHealth | AuditDurable
         | AuditFailed | TimerFired | DecidedApart | ShutdownRequested | KillRequested | HandlerCrashed)
