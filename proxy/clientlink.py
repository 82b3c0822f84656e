"""One client connection: its socket callbacks become events for its session, and the commands
the session returns (:mod:`proxy.session`) are carried out here.

:class:`ClientLink` is an asyncio Protocol paired with an :class:`~proxy.upstream.UpstreamLink`.
It holds sockets, TLS, tasks and timers, and makes no protocol decision: it reports facts
(``ClientData``, ``ServerData``, ``UpstreamFailed``, ``TimerFired("startup")``, the audit
writer's ``AuditDurable``/``AuditFailed`` and health ...) and carries out commands
(``SendToClient``, ``WriteAudit``, ``PauseClientReading`` ...).  Events that arrive while one is
being handled wait their turn, in order.  Flow control couples the two links: when one side's
write buffer is full, the other side stops reading, so a large result streams at the client's
pace with bounded memory; the session may also hold the server (an answer waiting for its
durable record).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import deque
from itertools import count
from typing import TYPE_CHECKING

from . import logs, metrics
from .upstream import WRITE_HIGH_WATER, UpstreamLink
from .session import (Alert, AuditDurable, AuditFailed, AuditHealth, ClientClosed, ClientData, ClientTLSEstablished,
                      Close, DecideApart, DecidedApart, ForwardCancel, HandlerCrashed, LookupVerifier, OpenUpstream,
                      PauseClientReading, PauseServerReading, Phase, RefreshCatalog, ResumeClientReading,
                      ResumeServerReading, SendToClient, SendToServer, ServerClosed, ServerData, Session,
                      SessionStarted, ShutdownRequested, StartClientTLS, TimerFired, UpstreamConnected,
                      UpstreamFailed, VerifierFound, VerifierLookupFailed, WriteAudit)
from .tasks import Tasks

if TYPE_CHECKING:  # (the server imports this module)
    from .server import Proxy

log = logs.get("pgveil.server")
# a diagnosis aid (bench/stall.py sets it): events that hold the event loop longer are logged
SLOW_EVENT_S = float(os.environ.get("PGVEIL_SLOW_EVENT_MS") or 0) / 1000
_session_ids = count(1)


class ClientLink(asyncio.Protocol):
    """One client connection: socket callbacks become events for its session, and the commands
    the session returns are carried out here.  It holds sockets, TLS, tasks and timers."""

    def __init__(self, proxy: "Proxy") -> None:
        self.proxy = proxy
        self.session: Session | None = None
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamLink | None = None
        self.peer = ("", 0)
        self.started = time.monotonic()
        self.id = next(_session_ids)
        self.closed = False
        self._tasks = Tasks()
        self._reading_paused = False
        self._upstream_held: set[str] = set()  # why the server is not read now
        self._audit_ok = True  # the journal's health as last told to the session
        self._events: deque = deque()  # events that arrived while one was being handled
        self._handling = False
        self._cancel_forward: asyncio.Task | None = None  # this is a cancel connection: its forward

    # -- asyncio callbacks ------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1]) if isinstance(peer, tuple) else (str(peer), 0)
        self.session = Session(self.proxy.session_config, self.peer)
        self.proxy.links.add(self)
        self._startup_timer = asyncio.get_running_loop().call_later(
            self.proxy.settings.startup_timeout, self.dispatch, TimerFired("startup"))

    def data_received(self, data: bytes) -> None:
        self.dispatch(ClientData(data))

    def server_data(self, data: bytes) -> None:
        """Bytes from the database (UpstreamLink's callback)."""
        self.dispatch(ServerData(data))

    def server_closed(self) -> None:
        """The database connection ended (UpstreamLink's callback)."""
        self.dispatch(ServerClosed())

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.dispatch(ClientClosed())
        self._finish()

    def pause_writing(self) -> None:
        self._hold_upstream("client buffer", True)

    def resume_writing(self) -> None:
        self._hold_upstream("client buffer", False)

    def _hold_upstream(self, why: str, hold: bool) -> None:
        """The server is read while nothing holds it: the client's full write buffer, or the
        session holding an answer for its durable record."""
        held = bool(self._upstream_held)
        if hold:
            self._upstream_held.add(why)
        else:
            self._upstream_held.discard(why)
        if held != bool(self._upstream_held) and self.upstream and self.upstream.transport:
            if self._upstream_held:
                self.upstream.transport.pause_reading()
            else:
                self.upstream.transport.resume_reading()

    def pause_reading(self) -> None:
        if self.transport and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport and self._reading_paused:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    # -- events in, commands out ----------------------------------------------------
    def dispatch(self, event) -> None:
        """Feed one event to the session and carry out what it asks (an event raised by carrying
        out a command is handled after it, in order)."""
        self._events.append(event)
        if self._handling:
            return
        self._handling = True
        try:
            while self._events:
                event = self._events.popleft()
                healthy = self.proxy.audit.healthy
                if healthy is not self._audit_ok:  # the journal's health reaches the session as an event
                    self._audit_ok = healthy
                    self._handle(AuditHealth(healthy))
                self._handle(event) if not SLOW_EVENT_S else self._timed(event)
        finally:
            self._handling = False

    def _timed(self, event) -> None:
        """:meth:`_handle`, logging an event that held the loop longer than PGVEIL_SLOW_EVENT_MS,
        with the CPU time this thread spent on it (the rest: the machine ran something else)."""
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            self._handle(event)
        finally:
            wall = time.perf_counter() - wall
            if wall > SLOW_EVENT_S:
                log.warning("slow_event", session=self.id, what=type(event).__name__, wall_ms=round(wall * 1000, 1),
                            cpu_ms=round((time.thread_time() - cpu) * 1000, 1))

    def _handle(self, event) -> None:
        try:
            commands = self.session.handle(event)
        except Exception:  # a bug in the session must cost this connection only
            log.exception("session_error", session=self.id)
            commands = self.session.handle(HandlerCrashed())
        for command in commands:
            self.execute(command)

    def execute(self, command) -> None:
        kind = type(command)
        if kind is SendToServer:
            if self.upstream and self.upstream.transport:
                self.upstream.transport.write(command.data)
        elif kind is SendToClient:
            if self.transport and not self.transport.is_closing():
                self.transport.write(command.data)
        elif kind is WriteAudit:
            metrics.observe(command.record)
            self.proxy.audit.submit(command.record, self._durable_callback(command.token) if command.durable else None)
        elif kind is Close:
            if self._cancel_forward is not None:  # closed once the server has taken the cancel
                self._cancel_forward.add_done_callback(lambda _: self.close(command.reason, command.error))
            else:
                self.close(command.reason, command.error)
        elif kind is PauseClientReading:
            self.pause_reading()
        elif kind is ResumeClientReading:
            self.resume_reading()
        elif kind is PauseServerReading:
            self._hold_upstream("answer held", True)
        elif kind is ResumeServerReading:
            self._hold_upstream("answer held", False)
        else:
            self._execute_other(kind, command)

    def _execute_other(self, kind, command) -> None:
        if kind is OpenUpstream:
            self.pause_reading()
            self._tasks.spawn(self._connect_upstream())
        elif kind is StartClientTLS:
            self._tasks.spawn(self._start_tls())
        elif kind is ForwardCancel:
            forward = self.proxy.cancels.spawn(self.proxy.forward_cancel(command.request))
            if command.client_waits:
                self._cancel_forward = forward
        elif kind is LookupVerifier:
            self._tasks.spawn(self._lookup_verifier(command.user))
        elif kind is DecideApart:
            self.proxy.spawn(self._decide_apart(command))
        elif kind is RefreshCatalog:
            self.proxy.catalog_changed()
        elif kind is SessionStarted:
            self._started()
        elif kind is Alert:
            tier = self.session.tier.name if self.session.tier else "none"
            if command.event == "max_rows_stop":
                log.warning(command.event, session=self.id, user=self.session.user, detail=command.detail)
                metrics.ROW_LIMIT_STOPS.labels(tier).inc()
            else:
                log.error(command.event, session=self.id, user=self.session.user, detail=command.detail)
                metrics.SECOND_LAYER.labels(tier).inc()
        else:  # pragma: no cover - a new command without a handler is a bug
            raise TypeError(f"unknown command {command!r}")

    def _durable_callback(self, token: int):
        def done(error: Exception | None) -> None:
            if self.closed:
                return
            if error is not None:
                log.error("audit_write_failed", session=self.id, error=str(error))
                self.dispatch(AuditFailed(token, str(error)))
            else:
                self.dispatch(AuditDurable(token))
        return done

    def _started(self) -> None:
        """The session is active: log it, and check the role's privileges for a restricted tier."""
        self._startup_timer.cancel()
        s = self.session
        log.info("session_start", session=self.id, peer=f"{self.peer[0]}:{self.peer[1]}", user=s.user,
                 database=s.database, tier=s.tier.name if s.tier else None, tls=s.client_tls)
        if s.tier is not None and not s.tier.all_clear and s.user:
            self.proxy.check_privileges(s.user, s.tier)

    async def _decide_apart(self, command: DecideApart) -> None:
        """A large statement's cold decision, in one of the worker's child processes; the other
        sessions go on meanwhile (see :mod:`proxy.analyst`)."""
        engine = self.proxy.engine
        decision = await self.proxy.analyst.decide(engine, command.sql, command.tier, command.search_path,
                                                   command.user, command.access)
        engine.cache.adopt(command.key, decision)
        if not self.closed:
            self.dispatch(DecidedApart(command.key, decision))

    @property
    def busy(self) -> bool:
        """A statement is running or waiting (for its decision, its audit record or the server)."""
        s = self.session
        return s is not None and s.phase is Phase.ACTIVE and (s.outstanding > 0 or s.waiting)

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, self.proxy.client_tls, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            log.info("client_tls_failed", session=self.id, peer=self.peer[0], error=str(exc))
            self.close("TLS handshake failed", True)
            return
        if transport is None:
            return
        self.transport = transport
        self.dispatch(ClientTLSEstablished())

    async def _connect_upstream(self) -> None:
        started = time.monotonic()
        try:
            transport, upstream, tls, cert_hash = await self.proxy.open_upstream(self)
            metrics.UPSTREAM_CONNECT_SECONDS.observe(time.monotonic() - started)
        except Exception as exc:
            metrics.UPSTREAM_ERRORS.inc()
            self.resume_reading()
            self.dispatch(UpstreamFailed(str(exc) or type(exc).__name__))
            return
        if self.closed:
            transport.close()
            return
        self.upstream = upstream
        self.dispatch(UpstreamConnected(tls, cert_hash))
        self.resume_reading()

    async def _lookup_verifier(self, user: str) -> None:
        try:
            verifier = await self.proxy.lookup_verifier(user)
        except Exception as exc:
            log.warning("auth_query_failed", session=self.id, error=str(exc))
            self.dispatch(VerifierLookupFailed(str(exc)))
            return
        self.dispatch(VerifierFound(verifier))

    def terminate(self) -> None:
        """pgveil is shutting down: end the session (FATAL 57P01), cancelling what runs upstream."""
        if self.session is None or self.closed:
            self.close("pgveil is shutting down")
            return
        self.dispatch(ShutdownRequested())
        if not self.closed:
            self.close("pgveil is shutting down")

    def close(self, reason: str, error: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self._startup_timer.cancel()
        if self.transport:
            self.transport.close()
        if self.upstream and self.upstream.transport:
            self.upstream.transport.close()
        self._tasks.cancel()
        self._finish()

    def _finish(self) -> None:
        if self not in self.proxy.links:
            return
        self.proxy.links.discard(self)
        s = self.session
        log.info("session_end", session=self.id, peer=f"{self.peer[0]}:{self.peer[1]}", user=s.user,
                 database=s.database, tls=self.session.client_tls,
                 duration_s=round(time.monotonic() - self.started, 3),
                 bytes_in=s.stats.bytes_from_client, bytes_out=s.stats.bytes_from_server,
                 reason=s.close_reason)
