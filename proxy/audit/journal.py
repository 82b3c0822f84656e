"""The local append-only journal: JSON lines, hash-chained, rotated by size and age.

Each record carries ``seq`` (consecutive within a stream), ``prev`` (the previous record's
hash) and ``hash`` = sha256(prev + canonical JSON of the record without ``hash``).  An edited,
inserted, removed or reordered record breaks the chain, and :func:`verify` names the first
such record.  Each worker process writes its own stream (``audit-<stream>-<first seq>.jsonl``)
so that no two writers share a chain.

After a crash the newest file may end in a partial line.  :meth:`Journal.open` cuts it off
and writes a ``journal`` record saying how many bytes were cut and their hash, so the cut is
itself on the record.

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

from .records import base

GENESIS = "0" * 64
FILE_RE = re.compile(r"^audit-(?P<stream>[A-Za-z0-9_]+)-(?P<seq>\d{12})\.jsonl$")


def canonical(record: dict) -> bytes:
    """Keys sorted, no spaces, UTF-8 as is: what ``json.dumps(record, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)`` gives for records without floats."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_hash(prev: str, record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(prev.encode() + canonical(body)).hexdigest()


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
                 max_age: float = 24 * 3600) -> None:
        self.directory = Path(directory)
        self.stream = stream
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.seq = 0
        self.head = GENESIS
        self._file = None
        self._size = 0
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
        """Cut off what follows the last newline (a record half-written by a crash)."""
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
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
            if keep == size:
                return 0, ""
            f.seek(keep)
            dropped = f.read(size - keep)
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
            return len(dropped), hashlib.sha256(dropped).hexdigest()

    @staticmethod
    def _last_record(path: Path) -> dict | None:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            lines = f.read().splitlines()
        for line in reversed(lines):
            try:
                return json.loads(line)
            except ValueError:
                continue
        return None

    # -- writing ---------------------------------------------------------------------------------
    def _roll(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        path = self.directory / f"audit-{self.stream}-{self.seq + 1:012d}.jsonl"
        self._file = open(path, "ab")
        self._size = self._file.tell()
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
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


# ----------------------------------------------------------------------------- reading
def read_records(directory: str | Path):
    """Every record of every stream: (path, line number, record or None if unreadable, raw line)."""
    for files in stream_files(Path(directory)).values():
        for path in files:
            with open(path, "rb") as f:
                for number, line in enumerate(f, start=1):
                    try:
                        record = orjson.loads(line)
                    except ValueError:  # orjson.JSONDecodeError is one
                        record = None
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
