"""The journal's fdatasync, run by a small helper process.

Strict auditing puts an fdatasync in every statement's path, so the time from "records written"
to "told they are on disk" is what a client waits.  In an executor thread that round trip needs
the GIL twice (to pick the work up, to hand the result back), and under load the event loop holds
it: on two busy cores the round trip took about three times the fdatasync itself.  A helper
process has a GIL of its own.  The worker sends it the journal's file descriptor once per file
(SCM_RIGHTS) and then one byte per sync request; the helper answers each request, in order, once
its fdatasync returned.  Measured with pgbench -S through a strict relay: about 1.4x the
throughput of the thread.

The helper is a few lines of plain Python, started with the worker's interpreter and no site
packages; it exits when the worker's end of the socket closes (also when the worker is killed).
If it cannot be started or dies, :class:`Syncer` says so and the writer falls back to the thread.
"""

from __future__ import annotations

import socket
import subprocess
import sys

# One request per datagram: b"F" with a descriptor (sync this file from now on), b"S" (sync now).
# One answer per b"S": b"K", or b"E" and the error text.
HELPER = r"""
import os, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
fd = -1
while True:
    try:
        data, fds, _, _ = socket.recv_fds(sock, 64, 1)
    except OSError:
        break
    if not data:
        break
    if data == b"F":
        if fd >= 0:
            os.close(fd)
        fd = fds[0] if fds else -1
        continue
    try:
        if fd < 0:
            raise OSError("no journal file to sync")
        os.fdatasync(fd)
        answer = b"K"
    except OSError as exc:
        answer = b"E" + str(exc).encode("utf-8", "replace")[:400]
    try:
        sock.send(answer)
    except OSError:
        break
"""


class Syncer:
    """A helper process that runs fdatasync on request; answers come back through the event loop.

    ``on_answer(error)`` is called once per :meth:`request`, in order (error None, or the
    helper's error text); ``on_lost()`` once, if the helper goes away with requests unanswered
    or not.  Not thread-safe: the event loop's thread only.
    """

    def __init__(self, loop, on_answer, on_lost) -> None:
        self._loop = loop
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._file = None  # the file object whose descriptor the helper holds
        self.in_flight = 0

    @property
    def alive(self) -> bool:
        return self._sock is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> bool:
        if not sys.executable:
            return False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", HELPER, str(theirs.fileno())],
                                          pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                          close_fds=True)
        except OSError:
            ours.close()
            return False
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._loop.add_reader(ours.fileno(), self._readable)
        return True

    def request(self, file) -> None:
        """Ask for an fdatasync of ``file`` (an open file object) covering everything written so far."""
        try:
            if file is not self._file:
                socket.send_fds(self._sock, [b"F"], [file.fileno()])
                self._file = file
            self._sock.send(b"S")
        except OSError:
            self.in_flight += 1  # answered by on_lost, with the others
            self._lost()
            return
        self.in_flight += 1

    def _readable(self) -> None:
        """Read the answers to the requests outstanding when the socket turned readable, and stop:
        a probe for more, answered EAGAIN, was half the recv calls of a strict worker.  An answer
        that arrives meanwhile (or the helper's end closing) makes the socket readable again."""
        expected = max(self.in_flight, 1)  # at least one read: an end of file must be seen
        while self._sock is not None and expected > 0:
            try:
                answer = self._sock.recv(512)
            except BlockingIOError:
                return
            except OSError:
                answer = b""
            if not answer:
                self._lost()
                return
            expected -= 1
            self.in_flight -= 1
            self._on_answer(None if answer == b"K" else answer[1:].decode("utf-8", "replace"))

    def _lost(self) -> None:
        self._close(wait=0)
        self.in_flight = 0
        self._on_lost()

    def _close(self, wait: float) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._file = None
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout=wait)  # it exits when its end of the socket closes
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self, wait: float = 2) -> None:
        """Stop the helper (after its current fdatasync, if any; killed after ``wait`` seconds)."""
        self._close(wait=wait)
        self.in_flight = 0

