"""One client connection's protocol, without I/O: a typed contract between session and server.

The server turns socket and task callbacks into events (:mod:`.events`, past-tense facts)
and gives each to :meth:`Session.handle`, which returns commands (:mod:`.commands`,
imperatives) for the server to carry out in order.  Nothing here touches a socket, a clock or
the audit writer, so a whole session can be replayed as a script in a test
(tests/test_playbook.py).
"""

from .commands import (Alert, Close, Command, DecideApart, ForwardCancel, LookupVerifier, OpenUpstream,
                       PauseClientReading, PauseServerReading, RefreshCatalog, ResumeClientReading,
                       ResumeServerReading, SendToClient, SendToServer,
                       SessionStarted, StartClientTLS, WriteAudit)
from .events import (AuditDurable, AuditFailed, AuditHealth, ClientClosed, ClientData, ClientTLSEstablished,
                     DecidedApart, Event, HandlerCrashed, KillRequested, RulesChanged, ServerClosed, ServerData,
                     ShutdownRequested, TimerFired, UpstreamConnected, UpstreamFailed, VerifierFound,
                     VerifierLookupFailed)
from .machine import Phase, Session, SessionConfig, Stats

__all__ = [name for name in dir() if not name.startswith("_")]
