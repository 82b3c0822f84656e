"""The only asyncio and socket code: accept clients, open upstream connections, carry out
the commands a :class:`~proxy.session.Session` returns.

Each client connection is a :class:`ClientLink` (an asyncio Protocol) paired with an
:class:`UpstreamLink`.  Events reach the session one at a time, from the event loop's
callbacks; the commands come back and are executed here.  Flow control couples the two
links: when one side's write buffer is full, the other side stops reading, so a large result
streams at the client's pace with bounded memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import ssl
import time
from collections import deque
from datetime import datetime, timezone
from itertools import count

from . import codec, logs, metrics
from .config import Settings, split_host_port
from .audit import records as audit_records
from .audit.writer import AuditWriter
from .scram import tls_server_end_point
from .tasks import Tasks
from .tools import load_engine
from .analyst import Analyst
from .session import (Alert, AuditDurable, AuditFailed, AuditHealth, ClientClosed, ClientData, ClientTLSEstablished,
                      Close, DecideApart, DecidedApart, ForwardCancel, HandlerCrashed, LookupVerifier, OpenUpstream,
                      PauseClientReading, PauseServerReading, Phase, RefreshCatalog, ResumeClientReading,
                      ResumeServerReading, RulesChanged, SendToClient, SendToServer, ServerClosed, ServerData, Session,
                      SessionConfig, SessionStarted, ShutdownRequested, StartClientTLS, TimerFired, UpstreamConnected,
                      UpstreamFailed, VerifierFound, VerifierLookupFailed, WriteAudit)

log = logs.get("pgveil.server")
WRITE_HIGH_WATER = 256 * 1024
# a diagnosis aid (bench/stall.py sets it): events that hold the event loop longer are logged
SLOW_EVENT_S = float(os.environ.get("PGVEIL_SLOW_EVENT_MS") or 0) / 1000
_session_ids = count(1)


class UpstreamLink(asyncio.Protocol):
    """The connection to the database for one client."""

    def __init__(self, client: "ClientLink") -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.client.dispatch(ServerData(data))

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.client.dispatch(ServerClosed())

    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()


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
    """Listens for clients and owns what is shared between their sessions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.links: set[ClientLink] = set()
        self.client_tls = make_client_tls(settings)
        self.upstream_tls = make_upstream_tls(settings)
        cert_hash = None
        if settings.tls_cert:
            with open(settings.tls_cert, encoding="ascii") as f:
                cert_hash = tls_server_end_point(ssl.PEM_cert_to_DER_cert(f.read()))
        # stamped before reading: a change in between is seen by the first poll
        self._rules_stamp = _file_stamp(settings.rules) if settings.rules else ()
        self.engine = load_engine(settings)  # already checked by the command line
        self.session_config = SessionConfig(
            tls_available=self.client_tls is not None,
            scram_bridge_possible=bool(settings.auth_dsn),
            client_cert_hash=cert_hash,
            max_message_size=settings.max_message_size,
            engine=self.engine,
            audit=settings.audit_mode != "off",
            audit_strict=settings.audit_mode == "strict",
            clock=_utc_clock,
            monotonic=time.monotonic,
            new_id=lambda: os.urandom(8).hex(),
        )
        self.audit = AuditWriter(settings.audit_dir, settings.audit_mode, str(settings.worker_index),
                                 settings.audit_interval)
        self.sealer = self._make_sealer()
        self._catalog_refresh_pending = False
        self._privileges_checked: set = set()  # (user, tier, rules version, catalog version) checked
        self.metrics_server = None
        self.metrics_seen: dict = {}
        self._auth_pool = None
        self._tasks = Tasks()
        self.server: asyncio.base_events.Server | None = None
        self.analyst = Analyst()
        self.cancels = Tasks()  # CancelRequests on their way: stopping waits a moment for them

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
        if self.engine is not None:
            self.audit.submit(dict(audit_records.base("rules", {}), event="loaded", file=self.settings.rules,
                                   rules_version=self.engine.rules.version, sha256=self.engine.rules_sha256))
        if self.engine is not None:  # before listening, so that the first sessions find it
            self.spawn(self.analyst.prestart())
            await self.refresh_catalog()
            self.spawn(self._refresh_periodically())
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
        """Reload the rule file when it changes (polled: works for edits, renames and the
        symlink swaps a Kubernetes ConfigMap volume does)."""
        while True:
            await asyncio.sleep(self.settings.rules_poll)
            stamp = _file_stamp(self.settings.rules)
            if stamp != self._rules_stamp:
                self._rules_stamp = stamp
                self.reload_rules("file changed")

    def reload_rules(self, why: str = "SIGHUP") -> bool:
        """Load, validate and compile the rule file, then swap it in whole; a file that fails
        keeps the rules in force.  Every open session's next statement is decided under the new
        rules, and sessions whose identity they deny are ended."""
        from .rules import RuleError, load_rules
        path = self.settings.rules
        record = audit_records.base("rules", {})
        record.update(file=path, reason=why)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            record["sha256"] = hashlib.sha256(text.encode()).hexdigest()
            rules = load_rules(text, path, datetime.now(timezone.utc))
        except (RuleError, OSError) as exc:
            message = str(exc) if isinstance(exc, RuleError) else f"{path}: {exc.strerror or exc}"
            log.error("rules_reload_rejected", error=message, kept_version=self.engine.rules.version)
            metrics.RULES_RELOADS.labels("rejected").inc()
            self.audit.submit(dict(record, event="rejected", error=message,
                                   rules_version=self.engine.rules.version))
            return False
        if rules.version == self.engine.rules.version:
            return True
        old = self.engine.rules.version
        self.engine.rules, self.engine.rules_sha256 = rules, record["sha256"]
        log.info("rules_reloaded", version=rules.version, previous=old, reason=why)
        metrics.RULES_RELOADS.labels("accepted").inc()
        self.audit.submit(dict(record, event="reloaded", rules_version=rules.version, previous_version=old))
        for link in list(self.links):
            if link.session is not None:
                link.dispatch(RulesChanged())
        return True

    async def refresh_catalog(self) -> bool:
        import asyncpg

        from .catalog import load_catalog
        dsn = self.settings.catalog_dsn or self.settings.auth_dsn
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                catalog = await load_catalog(conn)
            finally:
                await conn.close()
        except Exception as exc:
            log.error("catalog_load_failed", error=str(exc))
            return False
        if self.engine.catalog is None or catalog.version != self.engine.catalog.version:
            log.info("catalog_loaded", relations=len(catalog.by_oid), version=catalog.version)
        self.engine.catalog = catalog
        return True

    def check_privileges(self, user: str, tier) -> None:
        """Warn (log line and metric) when the session's database role can read a column its tier
        has blocked: the database would not refuse what pgveil refuses (pgveil privileges prints
        the fix).  Once per role, tier, rules and catalog version."""
        engine = self.engine
        if engine is None or engine.catalog is None or not (self.settings.catalog_dsn or self.settings.auth_dsn):
            return
        key = (user, tier.name, engine.rules.version, engine.catalog.version)
        if key in self._privileges_checked:
            return
        if len(self._privileges_checked) > 10_000:
            self._privileges_checked.clear()
        self._privileges_checked.add(key)

        async def check() -> None:
            import asyncpg

            from .privileges import blocked, readable_blocked
            catalog = engine.catalog
            columns = blocked(engine.rules, catalog, tier)
            if not columns:
                return
            pairs = [(oid, col.name) for oid, names in columns.items() for col in catalog.by_oid[oid].columns
                     if names is None or col.name in names]
            try:
                conn = await asyncpg.connect(self.settings.catalog_dsn or self.settings.auth_dsn, timeout=10)
                try:
                    rows = await conn.fetch(
                        "SELECT t.oid, t.attname FROM unnest($2::oid[], $3::text[]) AS t(oid, attname) "
                        "WHERE pg_catalog.has_column_privilege($1, t.oid, t.attname, 'SELECT')",
                        user, [p[0] for p in pairs], [p[1] for p in pairs])
                finally:
                    await conn.close()
            except Exception as exc:
                log.warning("privilege_check_failed", user=user, error=str(exc))
                return
            readable = {(r[0], r[1]) for r in rows}
            found = readable_blocked(catalog, columns, lambda rel, name: (rel.oid, name) in readable)
            if found:
                metrics.PRIVILEGE_WARNINGS.labels(tier.name).inc()
                log.warning("role_can_read_blocked_columns", user=user, tier=tier.name, columns=found[:20],
                            count=len(found), fix="pgveil privileges RULES --catalog-dsn DSN")
        self.spawn(check())

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.catalog_refresh if self.engine.catalog is not None else 2)
            await self.refresh_catalog()

    def catalog_changed(self) -> None:
        """DDL went through a session: refresh once it has had time to commit."""
        if self._catalog_refresh_pending:
            return
        self._catalog_refresh_pending = True

        async def later():
            for delay in (0.2, 1.0):
                await asyncio.sleep(delay)
                await self.refresh_catalog()
            self._catalog_refresh_pending = False
        self.spawn(later())

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
        if self._auth_pool is not None:
            try:
                await asyncio.wait_for(self._auth_pool.close(), 0.2)
            except asyncio.TimeoutError:
                self._auth_pool.terminate()
        # the cancels of statements still running upstream, and the journal's last sync, together
        waits = [asyncio.ensure_future(self.audit.close())]
        if self.cancels:
            waits.append(asyncio.ensure_future(asyncio.wait(list(self.cancels), timeout=0.2)))
        await asyncio.gather(*waits)
        self._tasks.cancel()
        for shipper in getattr(self, "shippers", []):
            await shipper.sink.close()

    # -- upstream -------------------------------------------------------------------
    async def _open_socket(self) -> tuple[socket.socket, bool]:
        """A connected socket to the database, and whether TLS should be started on it."""
        loop = asyncio.get_running_loop()
        host, port = self.settings.upstream_address
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        last: Exception | None = None
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, addr), 10)
            except (OSError, asyncio.TimeoutError) as exc:
                sock.close()
                last = exc
                continue
            if family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = self.settings.upstream_sslmode
            if mode == "disable":
                return sock, False
            try:
                await loop.sock_sendall(sock, codec.encode_startup(codec.SSLRequest()))
                answer = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
            except (OSError, asyncio.TimeoutError) as exc:
                sock.close()
                raise ConnectionError(f"SSL negotiation with {host}:{port} failed: {exc}") from None
            if answer == b"S":
                return sock, True
            if mode == "prefer":
                return sock, False
            sock.close()
            raise ConnectionError(f"the server at {host}:{port} does not support SSL, but sslmode is {mode}")
        raise ConnectionError(f"connection to {host}:{port} failed: {last}")

    async def open_upstream(self, client: ClientLink):
        loop = asyncio.get_running_loop()
        sock, tls = await self._open_socket()
        host = self.settings.upstream_address[0]
        upstream = UpstreamLink(client)
        try:
            if tls:
                transport, _ = await loop.create_connection(
                    lambda: upstream, sock=sock, ssl=self.upstream_tls,
                    server_hostname=host,  # checked only in verify-full (check_hostname)
                    ssl_handshake_timeout=10)
            else:
                transport, _ = await loop.create_connection(lambda: upstream, sock=sock)
        except BaseException:
            sock.close()
            raise
        cert_hash = None
        if tls:
            der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            cert_hash = tls_server_end_point(der) if der else None
        return transport, upstream, tls, cert_hash

    async def forward_cancel(self, request: codec.CancelRequest) -> None:
        """Send a CancelRequest to the database on a fresh connection; the key is the server's own."""
        loop = asyncio.get_running_loop()
        try:
            sock, tls = await self._open_socket()
            packet = codec.encode_startup(request)
            if tls:
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=self.upstream_tls, server_hostname=self.settings.upstream_address[0])
                writer.write(packet)
                await writer.drain()
                await asyncio.wait_for(reader.read(1), 5)
                writer.close()
            else:
                await loop.sock_sendall(sock, packet)
                await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
                sock.close()
        except Exception as exc:
            log.warning("cancel_forward_failed", error=str(exc))

    async def lookup_verifier(self, user: str) -> str | None:
        import asyncpg

        if self._auth_pool is None:
            self._auth_pool = await asyncpg.create_pool(self.settings.auth_dsn, min_size=0, max_size=2)
        return await self._auth_pool.fetchval(self.settings.auth_query, user)


def _utc_clock() -> datetime:
    """The clock sessions decide grants by (they read none themselves)."""
    return datetime.now(timezone.utc)


def _file_stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def make_client_tls(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def make_upstream_tls(settings: Settings) -> ssl.SSLContext | None:
    mode = settings.upstream_sslmode
    if mode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode in ("verify-ca", "verify-full"):
        context.load_verify_locations(settings.upstream_ca)
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
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


def install_event_loop_policy() -> None:
    """Use uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve_forever(settings: Settings, sock: socket.socket | None, ready=None) -> None:
    proxy = Proxy(settings)
    await proxy.start(sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if proxy.engine is not None:
        loop.add_signal_handler(signal.SIGHUP, proxy.reload_rules)
    log.info("listening", listen=settings.listen, upstream=settings.upstream, pid=os.getpid(),
             tls=proxy.client_tls is not None, upstream_sslmode=settings.upstream_sslmode)
    if settings.audit_mode == "off":
        log.warning("audit_off", detail="auditing is OFF (--audit-mode off): use this only to measure its cost")
    if ready:
        ready()
    await stop.wait()
    log.info("shutting_down", grace_s=settings.shutdown_grace, sessions=len(proxy.links))
    last_resort(settings.shutdown_grace)
    await proxy.stop(settings.shutdown_grace)


def last_resort(grace: float) -> None:
    """Should stopping hang (it should not), SIGALRM's default action ends the process a second
    after the grace period."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, grace + 1.0)


def _exit_now(status: int) -> None:
    """The journal is synced and closed, the sessions ended: exit without the interpreter's
    teardown of every module (a few tenths of a second of the 2 s a stop may take)."""
    import sys
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def raise_file_limit() -> int:
    """Two descriptors per client session: lift the soft limit to the hard one, as servers do."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def serve(settings: Settings) -> int:
    """Run the proxy until SIGTERM/SIGINT, in ``settings.workers`` processes."""
    install_event_loop_policy()
    raise_file_limit()
    host, port = settings.listen_address
    if settings.workers == 1:
        asyncio.run(_serve_forever(settings, None))
        _exit_now(0)
    # bind once here so a bad address fails early; each worker binds its own SO_REUSEPORT socket
    probe = listen_socket(host, port, reuse_port=True, listen=False)
    children = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:
            probe.close()
            settings.worker_index = len(children)
            try:
                asyncio.run(_serve_forever(settings, listen_socket(host, port, reuse_port=True)))
            finally:
                os._exit(0)
        children.append(pid)
    probe.close()

    def forward(signum, _frame):
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its rules
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    _exit_now(status)
