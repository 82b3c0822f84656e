"""The admin console across workers: what one worker answers about itself, and how the worker
holding a console connection asks the others.

With ``--workers N`` and ``--console``, the parent process makes a private directory (mode
0700, :func:`make_directory`) before it starts the workers; each worker listens there on a
Unix socket named after its pid (mode 0600, and a peer whose uid is not pgveil's own is
refused: only pgveil's processes reach it).  A console command is answered by the worker the
console connection landed on: it answers for itself (:func:`local`) and asks every other
worker's socket at once, each with a deadline (:data:`PEER_TIMEOUT`).  A worker that does not
answer in time (stopped, stalled, dead) costs at most that long; its rows are missing and the
console says so with a WARNING.

The requests are one line of JSON naming one of a few operations (:data:`OPS`), never SQL:
``{"op": "kill", "arg": SESSION_ID, "by": WHO, "deadline": UNIX_TIME}``; the answer is one
line of JSON.  A request read after its deadline is dropped, so a KILL or RELOAD the console
reported as not reaching a worker is not carried out later behind its back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import tempfile
import time

from . import logs
from .session import KillRequested

log = logs.get("pgveil.console")
PEER_TIMEOUT = float(os.environ.get("PGVEIL_CONSOLE_PEER_TIMEOUT") or 2.0)  # seconds per command
REQUEST_LIMIT = 64 * 1024
ANSWER_LIMIT = 256 * 1024 * 1024  # SHOW SESSIONS of a worker with many sessions
STATES = {b"I": "idle", b"T": "idle in transaction", b"E": "idle in failed transaction"}
OPS = ("sessions", "stats", "tiers", "audit", "rules", "kill", "reload")


# -- what one worker answers about itself ----------------------------------------------------
def _sessions(proxy) -> list:
    return [link.session for link in list(proxy.links) if link.session is not None]


def sessions(proxy) -> list:
    """SHOW SESSIONS's rows for this worker's client sessions."""
    now = time.monotonic()
    rows = []
    for s in _sessions(proxy):
        last = getattr(s, "last_statement", None)
        state = s.phase.value
        if state == "active":
            state = "active" if s.outstanding else STATES.get(s.transaction_status, "idle")
        rows.append([s.id, s.user, s.tier.name if s.tier else None,
                     "; ".join(g.label() for g in getattr(s, "_grants", ())) or None,
                     f"{s.peer[0]}:{s.peer[1]}", s.startup.param("application_name") if s.startup else None,
                     s.database, "on" if s.client_tls else "off", s.purpose, state,
                     last[0] if last else None, f"{now - last[1]:.3f}" if last else None,
                     f"{now - s.started:.3f}", s.stats.bytes_from_client, s.stats.bytes_from_server, os.getpid()])
    return rows


def stats(proxy) -> dict:
    """Per tier: [sessions, statements, refusals, rows, bytes in, bytes out] of this worker."""
    from . import metrics
    totals: dict[str, list] = {}

    def add(tier, at, value):
        totals.setdefault(tier, [0, 0, 0, 0, 0, 0])[at] += value
    metrics.flush()  # the counts waiting to be pushed into the metrics
    for metric, at in ((metrics.STATEMENTS, 1), (metrics.REFUSALS, 2), (metrics.ROWS, 3)):
        for family in metric.collect():  # this process's own counts, also in multiprocess mode
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    add(sample.labels.get("tier", "none"), at, int(sample.value))
    for s in _sessions(proxy):
        tier = s.tier.name.split("+")[0] if s.tier else "none"
        add(tier, 0, 1)
        add(tier, 4, s.stats.bytes_from_client)
        add(tier, 5, s.stats.bytes_from_server)
    return totals


def tiers(proxy) -> dict:
    """Open sessions of this worker per tier (grants set aside)."""
    counts: dict[str, int] = {}
    for s in _sessions(proxy):
        if s.tier is not None:
            name = s.tier.name.split("+")[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


def audit(proxy) -> list:
    """SHOW AUDIT's row for this worker's journal stream."""
    writer = proxy.audit
    journal = writer.journal
    uptime = max(time.monotonic() - proxy.started, 1e-6)
    shippers = getattr(proxy, "shippers", [])
    lag = ", ".join(f"{s.sink.name}:{journal.seq - s.last_seq}" for s in shippers) or None
    return [journal.stream, journal.seq, journal.head[:16], journal.file.name if journal.file else None,
            "yes" if writer.healthy else "no", writer.error or None, writer.mode, writer.written, writer.pending,
            writer.fsyncs, f"{writer.fsyncs / uptime:.2f}", f"{writer.last_fsync_seconds * 1000:.3f}",
            ", ".join(s.sink.name for s in shippers) or None, lag, os.getpid()]


def rules(proxy) -> list:
    """SHOW RULES's row: the rules in force in this worker."""
    engine = proxy.engine
    r = engine.rules
    return [r.version, proxy.settings.rules, engine.rules_sha256, len(r.tiers), len(r.classes), len(r.columns),
            len(r.identities), len(r.grants), os.getpid()]


def kill(proxy, session_id: str, by: str) -> bool:
    """End this worker's session ``session_id`` with FATAL 57P01 naming ``by``; False: not here."""
    for link in list(proxy.links):
        if link.session is not None and link.session.id == session_id:
            link.dispatch(KillRequested(by))  # the session ends with 57P01, naming who asked
            log.warning("console_kill", session=session_id, by=by)
            return True
    return False


def reload(proxy, by: str) -> dict:
    """Reload this worker's rules (as SIGHUP); the version in force after it."""
    ok = proxy.reload_rules(by)
    return {"ok": ok, "version": proxy.engine.rules.version}


def local(proxy, op: str, arg: str = "", by: str = ""):
    """This worker's answer to ``op`` (one of :data:`OPS`)."""
    if op == "kill":
        return kill(proxy, arg, by)
    if op == "reload":
        return reload(proxy, by)
    return {"sessions": sessions, "stats": stats, "tiers": tiers, "audit": audit, "rules": rules}[op](proxy)


# -- the control sockets ------------------------------------------------------------------
def make_directory() -> str:
    """The parent's private directory for the workers' control sockets (mode 0700); under /tmp
    when $TMPDIR is too long for a Unix socket's path (108 bytes)."""
    base = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="pgveil-workers-", dir=base if len(base) < 60 else "/tmp")


def remove_directory(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _peer_uid(sock) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return struct.unpack("3i", creds)[1]


class Peers:
    """This worker's control socket in ``directory``, and its way to ask the other workers."""

    def __init__(self, proxy, directory: str, workers: int) -> None:
        self.proxy = proxy
        self.directory = directory
        self.workers = workers
        self.path = os.path.join(directory, f"{os.getpid()}.sock")
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # mode 0600 from the start; bound here, with nothing awaited meanwhile
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        self.server = await asyncio.start_unix_server(self._serve, sock=sock, limit=REQUEST_LIMIT)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request from a peer, answered within :data:`PEER_TIMEOUT` each way: a peer that
        stops reading (stopped, stalled) has its connection dropped, with the answer it held."""
        try:
            uid = _peer_uid(writer.get_extra_info("socket"))
            if uid != os.getuid():
                log.warning("console_peer_refused", uid=uid, detail="a process of another user reached a control socket")
                return
            request = json.loads(await asyncio.wait_for(reader.readline(), PEER_TIMEOUT))
            if not isinstance(request, dict) or request.get("op") not in OPS:
                return
            if time.time() > float(request.get("deadline", 0)):
                log.warning("console_peer_late", op=request["op"], detail="dropped: the console gave up on it")
                return
            answer = local(self.proxy, request["op"], str(request.get("arg", "")), str(request.get("by", "")))
            writer.write(json.dumps({"worker": os.getpid(), "answer": answer}).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), PEER_TIMEOUT)
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("console_peer_failed", error=str(exc) or type(exc).__name__)
            writer.transport.abort()  # what is left unsent is dropped now, not kept until the peer reads
        finally:
            writer.close()

    def others(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        mine = os.path.basename(self.path)
        return sorted(os.path.join(self.directory, n) for n in names if n.endswith(".sock") and n != mine)

    async def ask(self, op: str, arg: str = "", by: str = "") -> tuple[list, list[str]]:
        """Every other worker's answer ``[(pid, answer)]``, and warnings naming those that gave none."""
        paths = self.others()
        deadline = time.time() + PEER_TIMEOUT
        request = json.dumps({"op": op, "arg": arg, "by": by, "deadline": deadline}).encode() + b"\n"
        results = await asyncio.gather(*(self._ask_one(path, request) for path in paths))
        answers, missing = [], []
        for path, result in zip(paths, results):
            pid = os.path.basename(path)[:-len(".sock")]
            if isinstance(result, str):
                missing.append(f"pgveil worker {pid} did not answer ({result}): its part of this answer is missing")
            else:
                answers.append((result["worker"], result["answer"]))
        if len(paths) < self.workers - 1:
            missing.append(f"only {len(paths) + 1} of {self.workers} pgveil workers have a control socket: the "
                           f"others' part of this answer is missing")
        return answers, missing

    async def _ask_one(self, path: str, request: bytes):
        """The peer's decoded answer, or a string saying why there is none."""
        writer = None
        try:
            async with asyncio.timeout(PEER_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(path, limit=ANSWER_LIMIT)
                writer.write(request)
                await writer.drain()
                line = await reader.readline()
            answer = json.loads(line) if line else None
            if not isinstance(answer, dict) or "answer" not in answer:
                return "it closed the connection"
            return answer
        except asyncio.TimeoutError:
            return f"no answer within {PEER_TIMEOUT:g} s"
        except (OSError, ValueError) as exc:
            return str(exc) or type(exc).__name__
        finally:
            if writer is not None:
                writer.close()

