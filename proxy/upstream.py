"""The database side: connections to the upstream server, their TLS, cancel forwarding and
the SCRAM verifier lookup.

:class:`Upstream` is one process's way to the database (``--upstream``, ``--upstream-sslmode``,
``--auth-dsn``); :class:`UpstreamLink` is one client's connection to it, an asyncio Protocol
that hands what the server sends to the client's link and couples the two sides' flow
control: when the client's write buffer is full, the server's side stops reading.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from . import codec, logs
from .config import Settings
from .scram import tls_server_end_point

log = logs.get("pgveil.upstream")
WRITE_HIGH_WATER = 256 * 1024


class UpstreamLink(asyncio.Protocol):
    """The connection to the database for one client."""

    def __init__(self, client) -> None:
        self.client = client  # proxy.clientlink.ClientLink
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.client.server_data(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.client.server_closed()

    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()


def make_upstream_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the upstream leg, as ``--upstream-sslmode`` asks (None: disable)."""
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


class Upstream:
    """Connections to the database: one per client session, one per forwarded cancel, and a
    small pool for the verifier lookup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tls = make_upstream_tls(settings)
        self._auth_pool = None

    async def open_socket(self) -> tuple[socket.socket, bool]:
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
            return sock, await self._negotiate_ssl(sock)
        raise ConnectionError(f"connection to {host}:{port} failed: {last}")

    async def _negotiate_ssl(self, sock: socket.socket) -> bool:
        """Ask a connected socket's server for SSL as the sslmode says: True to start TLS."""
        loop = asyncio.get_running_loop()
        host, port = self.settings.upstream_address
        mode = self.settings.upstream_sslmode
        if mode == "disable":
            return False
        try:
            await loop.sock_sendall(sock, codec.encode_startup(codec.SSLRequest()))
            answer = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            raise ConnectionError(f"SSL negotiation with {host}:{port} failed: {exc}") from None
        if answer == b"S":
            return True
        if mode == "prefer":
            return False
        sock.close()
        raise ConnectionError(f"the server at {host}:{port} does not support SSL, but sslmode is {mode}")

    async def connect(self, client):
        """One client's connection: (transport, :class:`UpstreamLink`, TLS started, the server
        certificate's tls-server-end-point hash or None)."""
        loop = asyncio.get_running_loop()
        sock, tls = await self.open_socket()
        host = self.settings.upstream_address[0]
        upstream = UpstreamLink(client)
        try:
            if tls:
                transport, _ = await loop.create_connection(
                    lambda: upstream, sock=sock, ssl=self.tls,
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
            sock, tls = await self.open_socket()
            packet = codec.encode_startup(request)
            if tls:
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=self.tls, server_hostname=self.settings.upstream_address[0])
                writer.write(packet)
                await writer.drain()
                await asyncio.wait_for(reader.read(1), 5)
                writer.close()
            else:
                await loop.sock_sendall(sock, packet)
                await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
                sock.close()
        except Exception as exc:  # noqa: BLE001 - a cancel that cannot be sent is logged
            log.warning("cancel_forward_failed", error=str(exc))

    async def lookup_verifier(self, user: str) -> str | None:
        """The role's SCRAM verifier, read with ``--auth-query`` by the ``--auth-dsn`` account."""
        import asyncpg

        if self._auth_pool is None:
            self._auth_pool = await asyncpg.create_pool(self.settings.auth_dsn, min_size=0, max_size=2)
        return await self._auth_pool.fetchval(self.settings.auth_query, user)

    async def close(self) -> None:
        """Close the verifier lookup's pool (terminated when it takes longer than 0.2 s)."""
        if self._auth_pool is not None:
            try:
                await asyncio.wait_for(self._auth_pool.close(), 0.2)
            except asyncio.TimeoutError:
                self._auth_pool.terminate()
