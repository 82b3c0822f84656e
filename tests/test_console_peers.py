"""The workers' control sockets (proxy.console_peers) on their own: permissions, what a peer
accepts, deadlines, and a peer that does not answer.  No database: a stand-in worker with one
client session (its ``dispatch`` records what a KILL asks)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from types import SimpleNamespace

import pytest
import uvloop

from proxy import console_peers
from proxy.console_peers import Peers, make_directory, remove_directory
from proxy.session import KillRequested


class Link:
    def __init__(self, session_id: str) -> None:
        self.session = SimpleNamespace(id=session_id, tier=None)
        self.asked = []

    def dispatch(self, event):
        """The events the session is given (it picks 57P01 and the text: tests/test_playbook.py)."""
        self.asked.append(event)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine on the standard loop and on uvloop (the server's, when installed)."""
    def go(coro):
        if request.param == "uvloop":
            return uvloop.run(coro)
        return asyncio.run(coro)
    return go


@pytest.fixture
def directory():
    path = make_directory()
    yield path
    remove_directory(path)


async def raw(path: str, request: dict | bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return line


def test_the_directory_and_the_socket_are_private(run, directory):
    async def go():
        peers = Peers(SimpleNamespace(links=set()), directory, 2)
        await peers.start()
        try:
            return os.stat(directory).st_mode, os.stat(peers.path).st_mode
        finally:
            peers.close()
    dir_mode, sock_mode = run(go())
    assert stat.S_IMODE(dir_mode) == 0o700 and stat.S_ISSOCK(sock_mode) and stat.S_IMODE(sock_mode) == 0o600
    assert os.listdir(directory) == []  # closing removes the socket


def test_a_peer_answers_known_operations_only_and_before_their_deadline(run, directory):
    link = Link("feedbeef00000001")
    proxy = SimpleNamespace(links={link})

    async def go():
        peers = Peers(proxy, directory, 2)
        await peers.start()
        try:
            late = await raw(peers.path, {"op": "kill", "arg": link.session.id, "by": "x", "deadline": time.time() - 1})
            unknown = await raw(peers.path, {"op": "DROP TABLE customers", "deadline": time.time() + 5})
            garbage = await raw(peers.path, b"SELECT 1\n")
            kill = await raw(peers.path, {"op": "kill", "arg": link.session.id, "by": "pgveil console, by user u",
                                          "deadline": time.time() + 5})
            tiers = await raw(peers.path, {"op": "tiers", "deadline": time.time() + 5})
            return late, unknown, garbage, kill, tiers
        finally:
            peers.close()
    late, unknown, garbage, kill, tiers = run(go())
    assert late == unknown == garbage == b""  # closed without an answer
    assert json.loads(kill) == {"worker": os.getpid(), "answer": True}
    assert link.asked == [KillRequested("pgveil console, by user u")]
    assert json.loads(tiers)["answer"] == {}


def test_a_silent_peer_costs_its_timeout_and_is_named(run, directory, monkeypatch):
    monkeypatch.setattr(console_peers, "PEER_TIMEOUT", 0.3)

    async def go():
        silent = await asyncio.start_unix_server(lambda r, w: asyncio.sleep(60), os.path.join(directory, "4242.sock"))
        open(os.path.join(directory, "4343.sock"), "w").close()  # a dead worker's socket file
        peers = Peers(SimpleNamespace(links=set()), directory, 4)
        await peers.start()
        try:
            started = time.monotonic()
            answers, missing = await peers.ask("tiers")
            return answers, missing, time.monotonic() - started
        finally:
            peers.close()
            silent.close()
    answers, missing, took = run(go())
    assert answers == [] and took < 1.0
    assert len(missing) == 3
    assert "worker 4242 did not answer (no answer within 0.3 s)" in missing[0]
    assert "worker 4343 did not answer" in missing[1]
    assert missing[2].startswith("only 3 of 4 pgveil workers have a control socket")


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root")
def test_a_process_of_another_uid_gets_no_answer(directory):
    """Even with the directory and the socket opened up, a peer that is not pgveil's uid is refused."""
    import subprocess
    link = Link("feedbeef00000002")
    client = ("import json, socket, sys, time\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              "s.connect(sys.argv[1])\n"
              "try:\n"
              "    s.sendall(json.dumps({'op': 'kill', 'arg': sys.argv[2], 'deadline': time.time() + 5}).encode() + b'\\n')\n"
              "    print(repr(s.makefile('rb').readline()))\n"
              "except OSError:\n"
              "    print('reset')\n")

    async def go():
        peers = Peers(SimpleNamespace(links={link}), directory, 2)
        await peers.start()
        os.chmod(directory, 0o755)
        os.chmod(peers.path, 0o666)
        try:
            outputs = []
            for uid in (65534, os.getuid()):
                proc = await asyncio.create_subprocess_exec(
                    "/usr/bin/python3", "-c", client, peers.path, link.session.id, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    preexec_fn=lambda uid=uid: os.setuid(uid))
                outputs.append((await proc.communicate())[0].decode().strip())
            return outputs
        finally:
            peers.close()
    other, same = asyncio.run(go())
    assert other in ("b''", "reset") and '"answer": true' in same
    assert len(link.asked) == 1  # only pgveil's own uid reached the session


def test_a_peer_that_stops_reading_costs_the_answering_worker_its_timeout_only(run, monkeypatch):
    """The answering side's write is bounded too: a peer that asked and then stopped reading (a
    stopped worker) does not hold the handler, nor the answer it never reads, beyond PEER_TIMEOUT."""
    import socket
    monkeypatch.setattr(console_peers, "PEER_TIMEOUT", 0.3)
    monkeypatch.setattr(console_peers, "local", lambda proxy, op, arg, by: "x" * (16 << 20))  # SHOW SESSIONS of many

    async def go():
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.sendall(json.dumps({"op": "sessions", "deadline": time.time() + 5}).encode() + b"\n")
        reader, writer = await asyncio.open_unix_connection(sock=mine)
        peers = Peers(SimpleNamespace(links=set()), "/nonexistent", 2)
        started = time.monotonic()
        try:
            await asyncio.wait_for(peers._serve(reader, writer), 5)
        except asyncio.TimeoutError:
            return float("inf"), False
        finally:
            took = time.monotonic() - started
            theirs.close()
        return took, writer.transport.is_closing()
    took, closed = run(go())
    assert took < 1.5, f"the handler waited {took:.1f} s for a peer that does not read"
    assert closed
