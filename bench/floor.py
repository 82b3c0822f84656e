"""The floor: the cheapest proxy Python can be, to measure what the language costs.

A byte pump and nothing else: uvloop, one asyncio Protocol per side, every read written to the
other side as it is (no framing, no parsing, no records), TCP_NODELAY, flow control by
pause/resume, N worker processes sharing the port with SO_REUSEPORT as pgveil's workers do.
What pgveil adds on top of this is pgveil's cost; what this costs against PgBouncer is the
runtime's (CPython + uvloop: a Python callback per read and a ``write`` system call per
write).  ``bench/run.py --configs floor`` runs it beside the others.

    python bench/floor.py --listen 127.0.0.1:6500 --upstream 127.0.0.1:5432 [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket


class Side(asyncio.Protocol):
    """One end; ``peer`` is the other end's Side."""

    def __init__(self) -> None:
        self.transport = None
        self.peer: Side | None = None
        self.pending: list[bytes] = []  # what arrived before the peer was connected

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def client_side(upstream: tuple[str, int]):
    loop = asyncio.get_running_loop()

    class Client(Side):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            transport.pause_reading()
            loop.create_task(self._connect())

        async def _connect(self) -> None:
            try:
                _, server = await loop.create_connection(Side, *upstream)
            except OSError:
                self.transport.close()
                return
            server.peer, self.peer = self, server
            for data in self.pending:
                server.transport.write(data)
            self.pending.clear()
            self.transport.resume_reading()

    return Client


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(client_side(upstream), *listen, reuse_port=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            children = []
            break
        children.append(pid)
    try:
        import uvloop
        uvloop.run(serve((host, int(port)), (up_host, int(up_port))))
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
