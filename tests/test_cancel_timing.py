"""A cancel connection closes only once the backend has been signalled, as PostgreSQL's does.

Clients rely on that: asyncpg waits for its cancel connection to close before it sends the next
statement, so a cancel acknowledged early can land on that next statement instead.  A relay that
delays cancel requests on their way to PostgreSQL (a slow network between proxy and database)
makes the race certain instead of occasional."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import asyncpg
import pytest

from tests.conftest import start_proxy

CANCEL_DELAY = 1.0  # seconds the relay holds a CancelRequest before PostgreSQL sees it
CANCEL_CODE = 80877102


class DelayingRelay:
    """TCP relay to PostgreSQL that holds each CancelRequest for CANCEL_DELAY seconds."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream_port))
        first = client.recv(8, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(first) == 8 and struct.unpack("!II", first) == (16, CANCEL_CODE):
            time.sleep(CANCEL_DELAY)
        threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
        self._pipe(client, server)

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.closing = True
        self.listener.close()


@pytest.fixture(scope="module")
def slow_cancel_proxy(pg):
    relay = DelayingRelay(pg.port)
    process = start_proxy(relay.port, "--upstream-sslmode", "disable")
    yield process
    process.stop()
    relay.close()


def test_cancel_connection_closes_after_delivery(slow_cancel_proxy):
    """Raw socket: the proxy keeps the cancel connection open until PostgreSQL has taken the request."""
    with socket.create_connection(("127.0.0.1", slow_cancel_proxy.port)) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        sock.sendall(struct.pack("!IIII", 16, CANCEL_CODE, 4242, 1234))  # no such backend: PostgreSQL ignores it
        assert sock.recv(1) == b""
        assert time.monotonic() - started >= CANCEL_DELAY * 0.9


async def test_timeout_cancel_does_not_hit_next_statement(slow_cancel_proxy):
    """asyncpg's timeout, then the next statements on the same connection: none of them is cancelled
    by the late request (asyncpg's test_timeout_05 saw 'canceling statement due to user request')."""
    conn = await asyncpg.connect(slow_cancel_proxy.dsn())
    try:
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("SELECT pg_sleep(0.5)", timeout=0.2)  # ends before the cancel arrives
            assert await conn.fetchval("SELECT 1 FROM pg_sleep(1.5)", timeout=10) == 1
    finally:
        await conn.close()
