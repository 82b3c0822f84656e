"""The local append-only journal: JSON lines, hash-chained, rotated by size and age.

Each record carries ``seq`` (consecutive within a stream), ``prev`` (the previous record's
hash) and ``hash`` = sha256(prev + canonical JSON of the record without ``hash``).  An edited,
inserted, removed or reordered record breaks the chain, and :func:`verify` names the first
such record.  Each worker process writes its own stream (``audit-<stream>-<first seq>.jsonl``)
so that no two writers share a chain.

With ``prealloc`` (``--audit-preallocate``) the file being written is preallocated: zeros are
written ``PREALLOC`` bytes ahead and records overwrite them, so an fdatasync writes the records
and flushes the disk's cache, without a filesystem journal commit for the file's new size (on
this machine's ext4, 150 against 240 us at the median, and without waiting behind the commits
of other processes' metadata under load).  Records never contain a NUL byte (JSON escapes it),
so the first NUL ends a file's data; the readers here stop there, and a file is cut to its data
when the journal moves on or closes.  A file tailer (Vector, Filebeat) cannot follow such a
file: its size does not grow as records are written.

After a crash the newest file may end in a partial line (and zeros).  :meth:`Journal.open`
cuts it off and writes a ``journal`` record saying how many bytes were cut and their hash, so
the cut is itself on the record.

Plain file I/O, no asyncio: the writer thread in :mod:`proxy.audit.writer` calls it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .executions import Repeats
from .records import base

GENESIS = "0" * 64
PREALLOC = 1 << 20  # bytes of zeros written ahead of the records
ZEROS = memoryview(bytes(1 << 20))
FILE_RE = re.compile(r"^audit-(?P<stream>[A-Za-z0-9_]+)-(?P<seq>\d{12})\.jsonl$")


def canonical(record: dict) -> bytes:
    """Keys sorted, no spaces, UTF-8 as is: what ``json.dumps(record, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)`` gives for records without floats."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_hash(prev: str, record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(prev.encode() + canonical(body)).hexdigest()


def data_end(f, size: int | None = None) -> int:
    """Where a journal file's data end: its first NUL byte (the preallocated rest, or what a
    crash left unwritten), else its size.  ``f``: the file, open for reading in binary."""
    size = f.seek(0, os.SEEK_END) if size is None else size
    at = 0
    while at < size:
        f.seek(at)
        chunk = f.read(min(1 << 20, size - at))
        if not chunk:
            break
        nul = chunk.find(b"\0")
        if nul >= 0:
            return at + nul
        at += len(chunk)
    return size


def stream_files(directory: Path, stream: str | None = None) -> dict[str, list[Path]]:
    """Journal files by stream, oldest first."""
    streams: dict[str, list[tuple[int, Path]]] = {}
    if not directory.is_dir():
        return {}
    for path in directory.iterdir():
        m = FILE_RE.match(path.name)
        if m and (stream is None or m["stream"] == stream):
            streams.setdefault(m["stream"], []).append((int(m["seq"]), path))
    return {s: [p for _, p in sorted(files)] for s, files in sorted(streams.items())}


class Journal:
    def __init__(self, directory: str | Path, stream: str = "0", max_bytes: int = 64 << 20,
                 max_age: float = 24 * 3600, prealloc: int = 0) -> None:
        self.directory = Path(directory)
        self.stream = stream
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.prealloc = prealloc
        self.seq = 0
        self.head = GENESIS
        self._file = None
        self._size = 0  # where the records written end
        self._end = 0  # the file's size: the records, then zeros
        self._ahead = prealloc  # zeros to write ahead in this file (0: plain appends)
        self._opened_at = 0.0
        self._lock = None
        self._unsynced_error: OSError | None = None

    # -- opening and recovery --------------------------------------------------------------
    def _claim_stream(self) -> None:
        """Hold this stream's lock for the life of the process; a stream another live process
        holds is left alone and the next free name is used (``0``, ``0_1``, ``0_2`` ...)."""
        base, n = self.stream, 0
        while True:
            handle = open(self.directory / f".audit-{self.stream}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                n += 1
                self.stream = f"{base}_{n}"
                continue
            self._lock = handle
            return

    def open(self) -> list[dict]:
        """Find where this stream's chain ends; return the records that say what recovery did."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._claim_stream()
        notes = []
        files = stream_files(self.directory, self.stream).get(self.stream, [])
        if files:
            last = files[-1]
            cut, cut_hash = self._cut_partial_line(last)
            tail = self._last_record(last) or (self._last_record(files[-2]) if len(files) > 1 else None)
            if tail is not None:
                self.seq, self.head = tail["seq"], tail["hash"]
            if cut:
                notes.append(dict(base("journal", {}), event="recovered", file=last.name, cut_bytes=cut,
                                  cut_sha256=cut_hash))
        notes.append(dict(base("journal", {}), event="opened", pid=os.getpid()))
        return notes

    @staticmethod
    def _cut_partial_line(path: Path) -> tuple[int, str]:
        """Cut off what follows the last newline before the data's end (a record half-written
        by a crash); the zeros after it go too, unnoted."""
        with open(path, "rb+") as f:
            total = f.seek(0, os.SEEK_END)
            size = data_end(f, total)
            keep, step = size, 65536
            while keep > 0:
                start = max(0, keep - step)
                f.seek(start)
                chunk = f.read(keep - start)
                at = chunk.rfind(b"\n")
                if at >= 0:
                    keep = start + at + 1
                    break
                keep = start
            if keep == total:
                return 0, ""
            f.seek(keep)
            dropped = f.read(total - keep).rstrip(b"\0")  # (a crash may leave zeros inside too)
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
            if not dropped:
                return 0, ""
            return len(dropped), hashlib.sha256(dropped).hexdigest()

    @staticmethod
    def _last_record(path: Path) -> dict | None:
        with open(path, "rb") as f:
            size = data_end(f)
            f.seek(max(0, size - 65536))
            lines = f.read(size - max(0, size - 65536)).splitlines()
        for line in reversed(lines):
            try:
                return json.loads(line)
            except ValueError:
                continue
        return None

    # -- writing ---------------------------------------------------------------------------------
    def _roll(self) -> None:
        if self._file is not None:
            self._finish()
        path = self.directory / f"audit-{self.stream}-{self.seq + 1:012d}.jsonl"
        # "r+b", created if missing; not O_APPEND: records overwrite the zeros ahead of them
        self._file = open(path, "r+b", opener=lambda name, flags: os.open(name, flags | os.O_CREAT, 0o666))
        self._size = self._end = data_end(self._file)
        self._file.seek(self._size)
        self._ahead = self.prealloc
        self._opened_at = time.monotonic()
        fd = os.open(self.directory, os.O_RDONLY)  # the new file's name must survive a crash too
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, records: list[dict]) -> None:
        """Chain and write records (not yet durable: call :meth:`sync`).

        All or nothing: if the write fails, the file is cut back to where it was and the
        chain's head is restored, so that the batch can be retried as it is.
        """
        seq, head = self.seq, self.head
        path, size = None, 0
        try:
            if self._file is None or self._size >= self.max_bytes or \
                    time.monotonic() - self._opened_at > self.max_age:
                self._roll()
            path, size = self._file.name, self._size
            data = self._chain(records)
            if self._size + len(data) > self._end:
                self._extend(len(data))
            self._file.write(data)
            self._file.flush()
            self._size += len(data)
        except OSError:
            self.seq, self.head = seq, head
            for record in records:
                for key in ("seq", "stream", "prev", "hash"):
                    record.pop(key, None)
            self._abandon(path, size)
            raise

    def _chain(self, records: list[dict]) -> bytes:
        """Number, link and serialise a batch: each record's canonical JSON is made once, its
        hash is of those bytes, and the line written is them with the hash put in."""
        stream, seq, head = self.stream, self.seq, self.head
        dumps, sort, sha256 = orjson.dumps, orjson.OPT_SORT_KEYS, hashlib.sha256
        out = []
        for record in records:
            seq += 1
            record["seq"] = seq
            record["stream"] = stream
            record["prev"] = head
            body = dumps(record, option=sort)  # canonical(record)
            prev = head.encode()
            head = sha256(prev + body).hexdigest()
            record["hash"] = head
            out += (body[:-1], b',"hash":"', head.encode(), b'"}\n')
            self.seq, self.head = seq, head
        return b"".join(out)

    def _extend(self, need: int) -> None:
        """Write zeros past the records, room for ``need`` bytes and ``PREALLOC`` more; the next
        fdatasync makes the new size durable, and those after it only overwrite.  If the zeros
        cannot be written (a full disk), this file is written by plain appends from now on."""
        if not self._ahead:
            return
        end, fd = self._size + need + self._ahead, self._file.fileno()
        try:
            at = self._end
            while at < end:
                at += os.pwrite(fd, ZEROS[:min(len(ZEROS), end - at)], at)
        except OSError:
            os.ftruncate(fd, self._end)  # (the size before; the records' end is at most that)
            self._ahead = 0
            return
        self._end = end

    def _finish(self) -> None:
        """The file is done: cut to its records (the zeros after them go), and synced."""
        self._file.flush()
        if self._end > self._size:
            os.ftruncate(self._file.fileno(), self._size)
            self._end = self._size
        os.fsync(self._file.fileno())
        self._file.close()

    def _abandon(self, path: str | None, size: int) -> None:
        """Drop the open file after a failed write, cutting off what the write left behind."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if path is not None:
            try:
                os.truncate(path, size)
                # the records written before the failed batch may still wait for a sync
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self._unsynced_error = exc

    @property
    def file(self):
        """The open file records are written to: None before the first write, and after a failed one."""
        return self._file

    def sync(self) -> None:
        # fdatasync is enough: the file only grows, and a new size is flushed with the data (it is
        # needed to read them back); only timestamps are left out.  Cheaper under load than fsync.
        error, self._unsynced_error = self._unsynced_error, None
        if error is not None:  # records of an abandoned file could not be synced: their waiters hear it
            raise error
        if self._file is not None:
            os.fdatasync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._finish()
            self._file = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


# ----------------------------------------------------------------------------- reading
def read_records(directory: str | Path):
    """Every record of every stream: (path, line number, record or None if unreadable, raw line).
    A short statement record (``same_as``: a Query decided as one before it in its session)
    comes with that decision's fields back (:class:`~proxy.audit.executions.Repeats`); the raw
    line is as written, and the chain is of it (:func:`verify` reads the lines)."""
    repeats = Repeats()
    for files in stream_files(Path(directory)).values():
        for path in files:
            with open(path, "rb") as f:
                for number, line in enumerate(f, start=1):
                    if b"\0" in line:  # the data end here (see data_end)
                        line = line[:line.index(b"\0")]
                        if not line:
                            break
                    try:
                        record = orjson.loads(line)
                    except ValueError:  # orjson.JSONDecodeError is one
                        record = None
                    if record is not None and record.get("type") == "statement":
                        record = repeats.fill(record)
                    elif record is not None and record.get("type") == "session_end":
                        repeats.ended(record.get("session"))
                    yield path, number, record, line


@dataclass
class Verification:
    ok: bool = True
    records: int = 0
    files: int = 0
    streams: dict = field(default_factory=dict)  # stream -> last seq
    problem: str = ""


def verify(directory: str | Path) -> Verification:
    """Check every stream's chain across its files; stop at the first broken record."""
    result = Verification()
    for stream, files in stream_files(Path(directory)).items():
        prev, seq = None, None
        for path in files:
            result.files += 1
            with open(path, "rb") as f:
                data = f.read()
            end = data.find(b"\0")
            if end >= 0:  # the zeros ahead of the records (see data_end)
                if data[end:].strip(b"\0"):
                    return _broken(result, f"{path.name}: records after zeros at byte {end} (a crash not yet "
                                           f"recovered: the next start cuts them)")
                data = data[:end]
            if data and not data.endswith(b"\n"):
                return _broken(result, f"{path.name}: the file ends in a partial record (truncated)")
            for number, line in enumerate(data.splitlines(), start=1):
                where = f"{path.name}:{number}"
                try:
                    record = json.loads(line)
                except ValueError:
                    return _broken(result, f"{where}: not a JSON record")
                if not isinstance(record, dict) or "hash" not in record:
                    return _broken(result, f"{where}: not a journal record")
                if prev is None:
                    prev = record.get("prev")  # the oldest kept file may start mid-chain
                    seq = record.get("seq", 1) - 1
                if record.get("prev") != prev:
                    return _broken(result, f"{where}: seq {record.get('seq')} does not follow the record before it "
                                           f"(a record was removed, inserted or reordered)")
                if record.get("seq") != seq + 1:
                    return _broken(result, f"{where}: seq {record.get('seq')} where {seq + 1} was expected")
                if record_hash(prev, record) != record["hash"]:
                    return _broken(result, f"{where}: seq {record.get('seq')} was edited (its hash does not match)")
                prev, seq = record["hash"], record["seq"]
                result.records += 1
        result.streams[stream] = seq
    return result


def _broken(result: Verification, problem: str) -> Verification:
    result.ok = False
    result.problem = problem
    return result
