"""The client side's asyncio and socket code: listen, accept clients, run the timers and
background tasks a process's sessions share.  Each client connection is a
:class:`~proxy.clientlink.ClientLink` (socket callbacks in as session events, the session's
commands carried out).  The database side (connections, their TLS, cancels, verifiers) is
:mod:`proxy.upstream`'s; the rules and catalog in force are :mod:`proxy.runtime`'s; the
process's start-up is :mod:`proxy.startup`'s.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time

from . import codec, logs, metrics
from .config import Settings, split_host_port
from .audit import records
from .audit.writer import AuditWriter
from .scram import tls_server_end_point
from .tasks import Tasks
from .analyst import Analyst
from .runtime import Runtime, utc_now
from .upstream import Upstream
from .clientlink import ClientLink
from .session import RulesChanged, SessionConfig

log = logs.get("pgveil.server")


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
            stamp=records.now,
            record_id=records.new_id,
        )
        self.audit = AuditWriter(settings.audit_dir, settings.audit_mode, str(settings.worker_index),
                                 settings.audit_interval, preallocate=settings.audit_preallocate)
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
