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
# The helper takes every request waiting when it is free, runs one fdatasync for all of them, and
# answers once: b"K<n>" (n requests done), or b"E<n> <error text>".  So a record written while a
# sync runs waits for that one and the next, never for a queue of syncs each covering a part.
HELPER = r"""
import os, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
room = socket.CMSG_LEN(4)
fd = -1
while True:
    asked, flags = 0, 0
    while True:  # wait for a request, then take those queued behind it without waiting
        try:  # (socket.recv_fds ignores its flags before Python 3.12)
            data, extra, _, _ = sock.recvmsg(64, room, flags)
        except BlockingIOError:
            break
        except OSError:
            sys.exit(0)
        if not data:
            sys.exit(0)
        if data == b"F":  # (the worker synced the file it left, before it wrote to this one)
            if fd >= 0:
                os.close(fd)
            fds = [int.from_bytes(d[:4], sys.byteorder, signed=True) for level, kind, d in extra
                   if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(d) >= 4]
            fd = fds[0] if fds else -1
            continue
        asked += 1
        flags = socket.MSG_DONTWAIT
    try:
        if fd < 0:
            raise OSError("no journal file to sync")
        os.fdatasync(fd)
        answer = b"K%d" % asked
    except OSError as exc:
        answer = b"E%d " % asked + str(exc).encode("utf-8", "replace")[:400]
    try:
        sock.send(answer)
    except OSError:
        break
"""


class Syncer:
    """A helper process that runs fdatasync on request; answers come back through the event loop.

    ``on_answer(count, error)`` is called once per fdatasync the helper ran, for the ``count``
    oldest requests still unanswered (error None, or the helper's error text); ``on_lost()``
    once, if the helper goes away with requests unanswered or not.  Not thread-safe: the event
    loop's thread only.
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

    def request(self, file) -> bool:
        """Ask for an fdatasync of ``file`` (an open file object) covering everything written so
        far.  False: not asked, as the socket is full of requests the helper has not read yet;
        the fdatasync that takes them starts after now, so it covers what was written too."""
        try:
            if file is not self._file:
                socket.send_fds(self._sock, [b"F"], [file.fileno()])
                self._file = file
            self._sock.send(b"S")
        except BlockingIOError:
            if self.in_flight:
                return False
            self.in_flight += 1  # (a full socket nobody reads: the helper is gone)
            self._lost()
            return True
        except OSError:
            self.in_flight += 1  # answered by on_lost, with the others
            self._lost()
            return True
        self.in_flight += 1
        return True

    def _readable(self) -> None:
        """Read one answer (another one waiting, or the helper's end closing, makes the socket
        readable again): a probe for more, answered EAGAIN, was half the recv calls of a strict
        worker."""
        try:
            answer = self._sock.recv(512)
        except BlockingIOError:
            return
        except OSError:
            answer = b""
        if not answer:
            self._lost()
            return
        count, _, error = answer[1:].partition(b" ")
        count = min(int(count), self.in_flight)
        self.in_flight -= count
        self._on_answer(count, None if answer[:1] == b"K" else error.decode("utf-8", "replace"))

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

