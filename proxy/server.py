"""The client side's asyncio and socket code: accept clients, carry out the commands a
:class:`~proxy.session.Session` returns, run the timers and background tasks.  The database
side (connections, their TLS, cancels, verifiers) is :mod:`proxy.upstream`'s; the rules and
catalog in force are :mod:`proxy.runtime`'s; the process's start-up is :mod:`proxy.startup`'s.

Each client connection is a :class:`ClientLink` (an asyncio Protocol) paired with an
:class:`UpstreamLink`.  Events reach the session one at a time, from the event loop's
callbacks; the commands come back and are executed here.  Flow control couples the two
links: when one side's write buffer is full, the other side stops reading, so a large result
streams at the client's pace with bounded memory.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections import deque
from itertools import count

from . import codec, logs, metrics
from .config import Settings, split_host_port
from .audit.writer import AuditWriter
from .scram import tls_server_end_point
from .tasks import Tasks
from .analyst import Analyst
from .runtime import Runtime, utc_now
from .upstream import WRITE_HIGH_WATER, Upstream, UpstreamLink
from .session import (Alert, AuditDurable, AuditFailed, AuditHealth, ClientClosed, ClientData, ClientTLSEstablished,
                      Close, DecideApart, DecidedApart, ForwardCancel, HandlerCrashed, LookupVerifier, OpenUpstream,
                      PauseClientReading, PauseServerReading, Phase, RefreshCatalog, ResumeClientReading,
                      ResumeServerReading, RulesChanged, SendToClient, SendToServer, ServerClosed, ServerData, Session,
                      SessionConfig, SessionStarted, ShutdownRequested, StartClientTLS, TimerFired, UpstreamConnected,
                      UpstreamFailed, VerifierFound, VerifierLookupFailed, WriteAudit)

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


class Proxy:
    """Listens for clients and owns what is shared between their sessions: the runtime (rules
    and catalog in force), the way upstream, the audit writer, and the tasks and timers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.links: set[ClientLink] = set()
        self.client_tls = make_client_tls(settings)
        self.runtime = Runtime(settings, submit=lambda record: self.audit.submit(record))
        self.upstream = Upstream(settings)
        cert_hash = None
        if settings.tls_cert:
            with open(settings.tls_cert, encoding="ascii") as f:
                cert_hash = tls_server_end_point(ssl.PEM_cert_to_DER_cert(f.read()))
        self.session_config = SessionConfig(
            tls_available=self.client_tls is not None,
            scram_bridge_possible=bool(settings.auth_dsn),
            client_cert_hash=cert_hash,
            max_message_size=settings.max_message_size,
            engine=self.engine,
            audit=settings.audit_mode != "off",
            audit_strict=settings.audit_mode == "strict",
            clock=utc_now,
            monotonic=time.monotonic,
            new_id=lambda: os.urandom(8).hex(),
        )
        self.audit = AuditWriter(settings.audit_dir, settings.audit_mode, str(settings.worker_index),
                                 settings.audit_interval)
        self.sealer = self._make_sealer()
        self.metrics_server = None
        self.metrics_seen: dict = {}
        self._tasks = Tasks()
        self.server: asyncio.base_events.Server | None = None
        self.analyst = Analyst()
        self.cancels = Tasks()  # CancelRequests on their way: stopping waits a moment for them

    @property
    def engine(self):
        """The policy engine sessions share (None: no rule file, relay only)."""
        return self.runtime.engine

    def _make_sealer(self):
        """With --audit-seal-key: this worker's sealer, its data keys journaled like any record."""
        if not self.settings.audit_seal_key or self.engine is None or not self.session_config.audit:
            return None
        from .audit.seal import PUBLIC_TAG, Sealer, read_key
        from .sealing import Sealing
        sealer = Sealer(read_key(self.settings.audit_seal_key, PUBLIC_TAG), lambda record: self.audit.submit(record))
        self.session_config.sealing = Sealing(self.engine, sealer)
        return sealer

    async def _expire_seal_key(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sealer.expire()

    def spawn(self, coro) -> asyncio.Task:
        return self._tasks.spawn(coro)

    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.metrics and self.settings.worker_index == 0:
            host, port = split_host_port(self.settings.metrics, "metrics")
            self.metrics_server = await metrics.serve_metrics(self, host, port)
        if sock is None:
            sock = listen_socket(*self.settings.listen_address, reuse_port=self.settings.workers > 1)
        self.audit.start()
        from .audit.sinks import Shipper, make_sink
        self.shippers = [Shipper(self.settings.audit_dir, self.audit.journal.stream, make_sink(spec))
                         for spec in self.settings.audit_sink]
        for shipper in self.shippers:
            self.spawn(shipper.run())
        self.runtime.announce()
        if self.engine is not None:  # before listening, so that the first sessions find it
            self.spawn(self.analyst.prestart())
            await self.runtime.refresh_catalog()
            self.spawn(self.runtime.refresh_periodically())
            if self.settings.rules_poll > 0:
                self.spawn(self._watch_rules())
        self.server = await loop.create_server(lambda: ClientLink(self), sock=sock)
        self.started = time.monotonic()
        if self.settings.console:
            from .console_server import start_console
            self.console = await start_console(self, *split_host_port(self.settings.console, "console"))
        self.spawn(self._update_metrics())
        if self.sealer is not None:
            self.spawn(self._expire_seal_key())

    async def _update_metrics(self) -> None:
        while True:
            metrics.update(self)
            await asyncio.sleep(2.0)

    async def _watch_rules(self) -> None:
        """Reload the rule file when it changes (polled every ``--rules-poll`` seconds)."""
        while True:
            await asyncio.sleep(self.settings.rules_poll)
            if self.runtime.rules_file_changed():
                self.reload_rules("file changed")

    def reload_rules(self, why: str = "SIGHUP") -> bool:
        """Reload the rule file (:meth:`Runtime.reload_rules`); False when it is rejected.  Every
        open session's next statement is decided under the new rules, and sessions whose
        identity they deny are ended."""
        outcome = self.runtime.reload_rules(why)
        if outcome == "reloaded":
            for link in list(self.links):
                if link.session is not None:
                    link.dispatch(RulesChanged())
        return outcome != "rejected"

    async def refresh_catalog(self) -> bool:
        return await self.runtime.refresh_catalog()

    def check_privileges(self, user: str, tier) -> None:
        """Warn when the session's database role can read a column its tier has blocked
        (:meth:`Runtime.privilege_check`)."""
        check = self.runtime.privilege_check(user, tier)
        if check is not None:
            self.spawn(check)

    def catalog_changed(self) -> None:
        """DDL went through a session: refresh once it has had time to commit."""
        refresh = self.runtime.after_ddl()
        if refresh is not None:
            self.spawn(refresh)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting; let running statements finish for up to ``grace`` seconds, ending each
        session as soon as it is idle, then end the rest, all with FATAL 57P01 as PostgreSQL's
        fast shutdown does; then flush and sync the audit journal."""
        if self.server:
            self.server.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if getattr(self, "console", None) is not None:
            self.console.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            last = loop.time() >= deadline
            for link in list(self.links):
                if last or not link.busy:
                    link.terminate()
            if not self.links or last:
                break
            await asyncio.sleep(0.02)
        self.analyst.close()
        metrics.process_exit()
        for link in list(self.links):
            link.close("pgveil is shutting down")
        await self.upstream.close()
        # the cancels of statements still running upstream, and the journal's last sync, together
        waits = [asyncio.ensure_future(self.audit.close())]
        if self.cancels:
            waits.append(asyncio.ensure_future(asyncio.wait(list(self.cancels), timeout=0.2)))
        await asyncio.gather(*waits)
        self._tasks.cancel()
        for shipper in getattr(self, "shippers", []):
            await shipper.sink.close()

    # -- the way upstream (proxy.upstream): the names ClientLink and the console call ------
    @property
    def upstream_tls(self) -> ssl.SSLContext | None:
        return self.upstream.tls

    async def _open_socket(self) -> tuple[socket.socket, bool]:
        return await self.upstream.open_socket()

    async def open_upstream(self, client: ClientLink):
        return await self.upstream.connect(client)

    async def forward_cancel(self, request: codec.CancelRequest) -> None:
        await self.upstream.forward_cancel(request)

    async def lookup_verifier(self, user: str) -> str | None:
        return await self.upstream.lookup_verifier(user)


def make_client_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context offered to clients (None: no --tls-cert)."""
    if not settings.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def listen_socket(host: str, port: int, *, reuse_port: bool, listen: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(1024)
    sock.setblocking(False)
    return sock
