"""Writes audit records to the journal, with group commit.

Records submitted during one turn of the event loop are chained and written together, in the
loop's own thread (page-cache writes are quick, and a thread per record would cost more in
hand-offs than the writing itself).  In strict mode ``fdatasync`` runs in a helper process
(:mod:`proxy.audit.syncer`): each loop turn that wrote records someone waits for sends it a
request, and a free thread of the helper syncs once for all the requests received so far, so
a record waits for one sync, started as soon as a thread is free.  In batched mode, or while no helper runs,
in an executor thread, where it releases the GIL.

``strict`` (the default): a record submitted with ``on_durable`` has it called once an fsync that
started after it was written has finished; everything written while one fsync runs
shares the next one, so throughput holds with many sessions.  Records nobody waits for
(outcomes, connections) ride along with those fsyncs, or the next interval's.  ``batched``:
fsync every ``interval`` seconds, and nobody waits.

When the journal cannot be written, :attr:`healthy` turns False and the error is kept; the
records stay queued and are retried, whoever waits is told at once, and the sessions refuse
new statements meanwhile (fail closed).  :attr:`dropped` exists to show that it stays 0.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from .. import logs
from ..tasks import Tasks
from . import records
from .journal import Journal
from .syncer import Syncer

log = logs.get("pgveil.audit")

HELPER_RETRY = 5.0  # seconds before a helper that went away is started again


class AuditWriter:
    def __init__(self, directory: str, mode: str = "strict", stream: str = "0", interval: float = 0.2,
                 max_bytes: int = 64 << 20, max_age: float = 24 * 3600) -> None:
        self.journal = Journal(directory, stream, max_bytes, max_age)
        self.mode = mode
        self.interval = interval
        self.healthy = True
        self.error = ""
        self.written = 0
        self.dropped = 0
        self.fsyncs = 0
        self.last_fsync_seconds = 0.0
        self._queue: list[dict] = []  # submitted, not yet written
        self._waiting: list = []  # callbacks of durable records still queued
        self._unsynced: list = []  # callbacks of records written, waiting for the next fsync
        self._syncing = False  # an executor thread's fsync is running
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks = Tasks()
        self._syncer: Syncer | None = None
        self._syncer_groups: deque = deque()  # (callbacks, started) per request the helper holds
        self._syncer_lost_at: float | None = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            notes = self.journal.open()
        except OSError as exc:
            self._fail(exc)
            notes = [dict(records.base("journal", {}), event="opened")]
        for note in notes:
            self.submit(note)
        if self.mode == "strict":
            self._start_syncer()
        self._tasks.spawn(self._sync_periodically())

    def _start_syncer(self) -> None:
        syncer = Syncer(self._loop, self._syncer_answered, self._syncer_lost)
        if syncer.start():
            self._syncer = syncer
            if self._syncer_lost_at is not None:
                log.warning("audit_syncer_back", pid=syncer.pid)
            self._syncer_lost_at = None
        else:  # tried again HELPER_RETRY seconds from now; said once
            if self._syncer_lost_at is None:
                log.warning("audit_syncer_unavailable", detail="fdatasync runs in an executor thread")
            self._syncer_lost_at = time.monotonic()

    def submit(self, record: dict, on_durable=None) -> None:
        """Queue a record; ``on_durable(error)`` is called once it is on disk (error None), or at
        once with the error if it cannot be written."""
        self._queue.append(record)
        if on_durable is not None:
            self._waiting.append(on_durable)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        batch = self._queue
        try:
            self.journal.append(batch)
        except OSError as exc:
            self._fail(exc)
            waiting, self._waiting = self._waiting, []
            for callback in waiting:  # fail closed: whoever waits is told now
                callback(OSError(self.error))
            self._loop.call_later(0.5, self._retry)
            return
        self._queue = []
        self.written += len(batch)
        self._unsynced += self._waiting
        self._waiting = []
        if self._unsynced:  # someone waits; the others' records are synced with them or on the interval
            self._start_sync()

    def _retry(self) -> None:
        if self._queue and not self._scheduled:
            self._scheduled = True
            self._flush()

    def _start_sync(self) -> None:
        """Sync what is written so far; the callbacks waiting for it are called after."""
        syncer, file = self._syncer, self.journal.file
        if syncer is not None and file is not None:
            group, self._unsynced = self._unsynced, []  # (the helper syncs it with the others waiting)
            self._syncer_groups.append((group, time.perf_counter()))
            if not syncer.request(file):  # it joins the last request, not yet read by the helper
                self._syncer_groups.pop()
                self._syncer_groups[-1][0].extend(group)
            return
        if self._syncing:
            return  # the records written meanwhile share the next fsync
        self._syncing = True
        group, self._unsynced = self._unsynced, []
        self._tasks.spawn(self._sync(group))

    async def _sync(self, group: list) -> None:
        started = time.perf_counter()
        error = None
        try:
            await self._loop.run_in_executor(None, self.journal.sync)
        except OSError as exc:
            error = exc
        self._synced(group, started, error)
        self._syncing = False
        if self._unsynced:
            self._start_sync()

    def _syncer_answered(self, count: int, error: str | None) -> None:
        """An fdatasync of the helper covered the ``count`` oldest requests (0: a later one
        answered first)."""
        groups = self._syncer_groups
        if not count:
            if error is not None:
                self._fail(OSError(error))
            return
        group, started = groups.popleft()
        for _ in range(count - 1):
            group += groups.popleft()[0]
        self._synced(group, started, None if error is None else OSError(error))

    def _syncer_lost(self) -> None:
        """The helper went away: what it was asked is asked again, of the thread, until it is back."""
        log.warning("audit_syncer_lost", detail="fdatasync runs in an executor thread meanwhile")
        self._syncer = None
        self._syncer_lost_at = time.monotonic()
        asked = [callback for group, _ in self._syncer_groups for callback in group]
        self._syncer_groups.clear()
        self._unsynced = asked + self._unsynced
        if self._unsynced:
            self._start_sync()

    def _synced(self, group: list, started: float, error: OSError | None) -> None:
        if error is not None:
            self._fail(error)
        else:
            self.last_fsync_seconds = time.perf_counter() - started
            self.fsyncs += 1
            if not self.healthy:
                self.healthy, self.error = True, ""
                log.warning("audit_journal_recovered")
        for callback in group:
            callback(None if error is None else OSError(self.error))

    @property
    def _syncs_running(self) -> bool:
        return self._syncing or bool(self._syncer_groups)

    async def _sync_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._syncer is None and self._syncer_lost_at is not None and \
                    time.monotonic() - self._syncer_lost_at > HELPER_RETRY:
                self._start_syncer()
            if not self._syncs_running:
                self._start_sync()

    async def close(self, timeout: float = 0.2) -> None:
        """Write what is queued, and sync it: the syncs running get ``timeout`` seconds (a helper
        stopped or stuck on a slow disk must not hold a shutdown), then the journal syncs itself."""
        self._flush()
        deadline = time.monotonic() + timeout
        while self._syncs_running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._syncer is not None:
            self._syncer.close(wait=0.05)
            self._syncer = None
        self._tasks.cancel()
        try:
            self.journal.close()
        except OSError:
            pass

    def _fail(self, exc: OSError) -> None:
        if self.healthy:
            log.error("audit_journal_failed", error=str(exc), directory=str(self.journal.directory))
        self.healthy = False
        self.error = f"{exc.strerror or exc}"
