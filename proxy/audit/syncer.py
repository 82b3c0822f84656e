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
# SYNCERS threads of the helper sync in parallel (on this disk two fdatasyncs overlap): a free one
# takes every request received so far and answers, after its fdatasync, b"K<n>": the first n
# requests are durable (n counts from the start; every sync covers what was written before it
# began, so a later one may answer first).  b"E<n> <text>": an fdatasync failed.  A record
# written while syncs run waits for one sync, started as soon as a thread is free.
#
# Each thread syncs through an open file of its own (reopened from /proc/self/fd): Linux reports
# a failed writeback once per open file, so a sync sharing the file with another could answer
# "durable" for pages whose failure the other one was told.  Without /proc the threads take
# turns on the one descriptor.
SYNCERS = 2
HELPER = r"""
import os, socket, sys, threading
sock = socket.socket(fileno=int(sys.argv[1]))
room = socket.CMSG_LEN(4)
state = threading.Condition()
turns = threading.Lock()
shared, generation, received, taken = -1, 0, 0, 0

def syncer():
    global taken
    mine, mine_of, alone = -1, -1, True
    while True:
        with state:
            while received == taken:
                state.wait()
            upto = taken = received
            if mine_of != generation:
                if mine >= 0:
                    os.close(mine)
                mine, mine_of, alone = -1, generation, True
                try:
                    if shared >= 0:
                        mine = os.open("/proc/self/fd/%d" % shared, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    try:
                        mine, alone = os.dup(shared), False
                    except OSError:
                        pass
        if alone:
            answer(mine, upto)
        else:
            with turns:  # one open file tells an error once: one sync at a time, and its answer
                answer(mine, upto)


def answer(fd, upto):
    try:
        if fd < 0:
            raise OSError("no journal file to sync")
        os.fdatasync(fd)
        reply = b"K%d" % upto
    except OSError as exc:
        reply = b"E%d " % upto + str(exc).encode("utf-8", "replace")[:400]
    try:
        sock.send(reply)
    except OSError:
        os._exit(0)


for _ in range(int(sys.argv[2])):
    threading.Thread(target=syncer, daemon=True).start()
while True:
    try:
        data, extra, _, _ = sock.recvmsg(64, room)
    except OSError:
        break
    if not data:
        break
    with state:
        if data == b"F":  # (the worker synced the file it left, before it wrote to this one)
            fds = [int.from_bytes(d[:4], sys.byteorder, signed=True) for level, kind, d in extra
                   if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(d) >= 4]
            if shared >= 0:
                os.close(shared)  # (each thread syncs through a descriptor of its own)
            shared, generation = (fds[0] if fds else -1), generation + 1
        else:
            received += 1
            state.notify()
os._exit(0)
"""


class Syncer:
    """A helper process that runs fdatasync on request; answers come back through the event loop.

    ``on_answer(count, error)``: the ``count`` oldest requests still unanswered are durable
    (error None), or not known to be (the helper's error text: then every request unanswered is
    counted); ``count`` may be 0 (a sync that a later one overtook).  ``on_lost()`` once, if the
    helper goes away with requests unanswered or not.  Not thread-safe: the event loop's thread
    only.
    """

    def __init__(self, loop, on_answer, on_lost) -> None:
        self._loop = loop
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._file = None  # the file object whose descriptor the helper holds
        self._asked = 0  # requests sent, since the start
        self._answered = 0  # of them, answered

    @property
    def in_flight(self) -> int:
        return self._asked - self._answered

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
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", HELPER, str(theirs.fileno()),
                                           str(SYNCERS)],
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
            self._asked += 1  # (a full socket nobody reads: the helper is gone)
            self._lost()
            return True
        except OSError:
            self._asked += 1  # answered by on_lost, with the others
            self._lost()
            return True
        self._asked += 1
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
        upto, _, error = answer[1:].partition(b" ")
        if answer[:1] == b"K":
            count = max(0, min(int(upto), self._asked) - self._answered)
            self._answered += count
            self._on_answer(count, None)
        else:  # fail closed: whatever was written before the helper was told is not known durable
            count, self._answered = self.in_flight, self._asked
            self._on_answer(count, error.decode("utf-8", "replace"))

    def _lost(self) -> None:
        self._close(wait=0)
        self._answered = self._asked
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
        self._answered = self._asked

