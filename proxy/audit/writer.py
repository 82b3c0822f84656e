"""Writes audit records to the journal from one thread, with group commit.

``strict`` (the default): a record submitted with ``durable=True`` resolves its future only
once it is fsynced; every record waiting at that moment shares the fsync, so throughput holds
with many sessions.  ``batched``: records are written at once and fsynced every ``interval``.

When the journal cannot be written, :attr:`healthy` turns False and the error is kept;
records stay queued and are retried, and the sessions refuse new statements meanwhile (fail
closed).  Nothing is dropped: :attr:`dropped` exists to prove it stays 0.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

from .. import logs
from . import records
from .journal import Journal

log = logs.get("pgveil.audit")


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
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

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
        self._thread = threading.Thread(target=self._run, name="pgveil-audit", daemon=True)
        self._thread.start()

    def submit(self, record: dict, durable: bool = False) -> asyncio.Future | None:
        """Queue a record; with ``durable`` the future resolves once it is on disk."""
        future = self._loop.create_future() if durable and self._loop else None
        with self._cond:
            self._queue.append((record, future))
            self._cond.notify()
        return future

    async def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
        try:
            self.journal.close()
        except OSError:
            pass

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        last_sync = time.monotonic()
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait(self.interval)
                    if self.mode == "batched" and time.monotonic() - last_sync >= self.interval:
                        break
                batch = list(self._queue)
                stop = self._stop
            if batch:
                if self._write(batch):
                    with self._cond:
                        for _ in batch:
                            self._queue.popleft()
                else:
                    # fail closed: whoever waits is told now; the records stay queued and are retried
                    self._resolve(batch, OSError(self.error))
                    with self._cond:
                        for i, (record, _) in enumerate(list(self._queue)[:len(batch)]):
                            self._queue[i] = (record, None)
                    if not stop:
                        time.sleep(0.5)
                        continue
                    return
            if batch or self.mode == "batched":
                need_sync = any(f is not None for _, f in batch) or self.mode == "strict" or \
                    time.monotonic() - last_sync >= self.interval
                if need_sync:
                    synced = self._sync()
                    last_sync = time.monotonic()
                    self._resolve(batch, None if synced else OSError(self.error))
                elif batch:
                    self._resolve(batch, None)
            if stop and not self._queue:
                return

    def _write(self, batch: list) -> bool:
        try:
            self.journal.append([record for record, _ in batch])
        except OSError as exc:
            self._fail(exc)
            return False
        self.written += len(batch)
        return True

    def _sync(self) -> bool:
        started = time.perf_counter()
        try:
            self.journal.sync()
        except OSError as exc:
            self._fail(exc)
            return False
        self.last_fsync_seconds = time.perf_counter() - started
        self.fsyncs += 1
        if not self.healthy:
            self.healthy, self.error = True, ""
            log.warning("audit_journal_recovered")
        return True

    def _resolve(self, batch: list, error: Exception | None) -> None:
        loop = self._loop
        for _, future in batch:
            if future is not None:
                loop.call_soon_threadsafe(_set_done, future, error)

    def _fail(self, exc: OSError) -> None:
        if self.healthy:
            log.error("audit_journal_failed", error=str(exc), directory=str(self.journal.directory))
        self.healthy = False
        self.error = f"{exc.strerror or exc}"


def _set_done(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
