"""Cold decisions of large statements, in child processes: the event loop never waits for them.

A worker serves all its sessions on one event loop, and the policy engine holds the GIL while
it parses, so a thread would not help: a 500-branch UNION over a protected table costs seconds
of analysis, during which every other session of the worker would wait.  The statements that
may cost that much (:func:`proxy.limits.decided_apart`: long or deeply nested texts, not
decided before) are decided here instead, by the same :func:`proxy.policy.decide`, in a
child process given the rules and the catalog; only the statement's own session waits.

- **Bounded.**  At most ``children`` processes per worker (one by default): statements beyond
  that wait their turn, so a flood of large statements costs those sessions time, never the
  worker's other sessions nor unbounded memory.
- **Fail closed.**  A child that takes longer than ``timeout`` seconds is killed; a child that
  dies (killed for memory, a crash) is replaced.  Either way the statement gets
  :func:`proxy.policy.failed_analysis`: refused for a restricted tier, relayed unanalysed only
  for an all-clear tier that has every statement kind.
- **Snapshots.**  The rules and catalog go to a child pickled once per (rules version,
  catalog version), and only when that child has not seen them; the child keeps its
  masking-subquery templates across statements of the same snapshot.
- **Memory.**  A child whose resident memory passed ``RETIRE_RSS`` after a statement (a
  200,000-element IN list parses into some 600 MB of trees) says so and is replaced.
- **Prompt shutdown.**  :meth:`Analyst.close` kills the children at once.

Frames on the child's stdin/stdout: a 4-byte big-endian length, then a pickle.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import logs, state_after
from .policy import Decision, DecisionCache, Template, failed_analysis

log = logs.get("pgveil.analyst")
ROOT = Path(__file__).resolve().parent.parent
RETIRE_RSS = 512 << 20
CHILD_NICENESS = 10
SAME_TEXT = "\x00same"  # in an answer: the decision's SQL is the statement's own text (no Query holds a NUL)
DEFAULT_TIMEOUT = 60.0
_HEADER = struct.Struct(">I")
# what a child writes once it has read a request: a child that ends before it died before this
# statement (while idle: it is asked again of a fresh child); one that ends after it, on it
TAKEN = b"\x01"
_CHILD = ("import sys; sys.path.insert(0, {root!r}); from proxy.analyst import child_main; "
          "raise SystemExit(child_main())")


# ----------------------------------------------------------------------------- the child
def decide_cold(sql: str, ctx, templates: dict, access=None) -> tuple[Decision, tuple | None]:
    """A first decision of ``sql``, as :class:`proxy.policy.DecisionCache` takes it on a miss (with
    what the statement changes for later ones: :mod:`proxy.state_after`), and the decision of its shape when one was made and can be reused ((key, template), for the
    worker's cache: statements of the same shape are then decided there, cheaply)."""
    cache = DecisionCache()
    cache.templates = templates
    decision = cache.decide(sql, ctx, access)
    if not decision.refused:  # what it changes for later statements, read here rather than on the loop
        decision = replace(decision, after=state_after.read(sql))
    shapes = [(k, v) for k, v in cache._entries.items() if len(k) > 6 and k[-2] == "shape" and isinstance(v, Template)]
    return decision, (shapes[0] if shapes else None)


def _rss() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def child_main() -> int:
    """Answer decision requests on stdin until it closes."""
    import signal

    from .rewrite import Context
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the worker decides
    os.nice(CHILD_NICENESS)  # on a busy machine, the event loops of the workers come first
    read, write = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing printed may corrupt the frames
    snapshot_key, rules, catalog, templates = None, None, None, {}
    while True:
        header = read.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return 0
        key, blob, sql, tier, search_path, user, access = pickle.loads(read.read(_HEADER.unpack(header)[0]))
        write.write(TAKEN)  # the worker now knows that a failure from here on is this statement's
        write.flush()
        if blob is not None:
            rules, catalog = pickle.loads(blob)
            snapshot_key, templates = key, {}
        try:
            if key != snapshot_key:
                raise LookupError("the child has another rules and catalog snapshot")
            decision, shape = decide_cold(sql, Context(tier, rules, catalog, search_path, user), templates, access)
        except Exception as exc:  # noqa: BLE001 - the statement is refused (or relayed), the child goes on
            decision, shape = failed_analysis(sql, tier, exc), None
        if decision.sql is sql:  # an all-clear tier's text goes as it is: not sent back
            decision = replace(decision, sql=SAME_TEXT)
        answer = pickle.dumps((decision, shape, _rss() > RETIRE_RSS), protocol=pickle.HIGHEST_PROTOCOL)
        write.write(_HEADER.pack(len(answer)) + answer)
        write.flush()


# ----------------------------------------------------------------------------- the worker's side
class _Child:
    """One child process and the snapshot it holds."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.snapshot = None
        self.taken = False  # the child has read the request being asked (see TAKEN)

    async def ask(self, frame: bytes) -> tuple:
        self.taken = False
        self.proc.stdin.write(frame)
        await self.proc.stdin.drain()
        self.taken = await self.proc.stdout.readexactly(len(TAKEN)) == TAKEN
        size = _HEADER.unpack(await self.proc.stdout.readexactly(_HEADER.size))[0]
        return pickle.loads(await self.proc.stdout.readexactly(size))

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass


class Analyst:
    """The worker's child processes for cold decisions of large statements."""

    def __init__(self, children: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self._slots = asyncio.Semaphore(children)
        self._idle: list[_Child] = []
        self._all: set[_Child] = set()
        self._snapshot: tuple | None = None  # (key, pickled rules and catalog)
        self._closed = False
        self.decided = 0
        self.failed = 0

    async def _start(self) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", _CHILD.format(root=str(ROOT)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, close_fds=True)
        child = _Child(proc)
        self._all.add(child)
        return child

    async def prestart(self) -> None:
        """Start one child ahead of the first large statement (its imports take a while)."""
        async with self._slots:
            if not self._idle and not self._closed:
                self._idle.append(await self._start())

    def _frame(self, engine, child: _Child, sql: str, tier, search_path: tuple, user: str, access) -> bytes:
        key = (engine.rules.version, engine.catalog.version if engine.catalog is not None else None)
        if self._snapshot is None or self._snapshot[0] != key:
            self._snapshot = (key, pickle.dumps((engine.rules, engine.catalog), protocol=pickle.HIGHEST_PROTOCOL))
        blob = self._snapshot[1] if child.snapshot != key else None
        child.snapshot = key
        body = pickle.dumps((key, blob, sql, tier, search_path, user, access), protocol=pickle.HIGHEST_PROTOCOL)
        return _HEADER.pack(len(body)) + body

    async def decide(self, engine, sql: str, tier, search_path: tuple, user: str, access=None) -> Decision:
        """The decision of ``sql`` for ``tier`` (and the session's effective ``access``), taken in a
        child process."""
        async with self._slots:
            for attempt in (1, 2):
                if self._closed:
                    return failed_analysis(sql, tier, "pgveil is shutting down")
                reused = bool(self._idle)
                child = self._idle.pop() if reused else await self._start()
                started = time.monotonic()
                try:
                    decision, shape, retire = await asyncio.wait_for(
                        child.ask(self._frame(engine, child, sql, tier, search_path, user, access)), self.timeout)
                except asyncio.CancelledError:
                    self._discard(child)  # mid-request: its answer would reach the next statement
                    raise
                except asyncio.TimeoutError:
                    self._discard(child)
                    return self._failed(sql, tier, f"the analysis took longer than {self.timeout:g} s", started)
                except (OSError, EOFError, asyncio.IncompleteReadError, pickle.PickleError):
                    self._discard(child)
                    if reused and attempt == 1 and not child.taken:
                        continue  # an idle child that had died meanwhile: a fresh one is asked
                    return self._failed(sql, tier, "the analysing process ended", started)
                self.decided += 1
                if shape is not None:  # the next statements of this shape are decided in the worker
                    engine.cache.adopt(*shape)
                if decision.sql == SAME_TEXT:
                    decision = replace(decision, sql=sql)
                if retire or self._closed:
                    self._discard(child)
                else:
                    self._idle.append(child)
                return decision

    def _discard(self, child: _Child) -> None:
        child.kill()
        self._all.discard(child)

    def _failed(self, sql: str, tier, why: str, started: float) -> Decision:
        self.failed += 1
        log.warning("analysis_failed", error=why, seconds=round(time.monotonic() - started, 3), size=len(sql),
                    tier=tier.name)
        return failed_analysis(sql, tier, why)

    def close(self) -> None:
        """Kill every child now (a statement waiting for one gets a failed analysis)."""
        self._closed = True
        for child in list(self._all):
            child.kill()
        self._all.clear()
        self._idle.clear()
