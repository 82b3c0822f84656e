"""Ship the journal onward: at least once, from a saved position, so that neither a restart
nor a sink outage loses a record.  Duplicates (a crash between delivery and saving the
position) are recognisable by record ``id``; the PostgreSQL sink drops them itself.

Each process ships its own stream, reading the journal files (not memory), so a sink that
was down catches up from where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

from .. import logs
from .journal import stream_files

log = logs.get("pgveil.audit")

TABLE_SQL = """
CREATE TABLE IF NOT EXISTS pgveil_audit (
    id text PRIMARY KEY,
    stream text NOT NULL,
    seq bigint NOT NULL,
    ts timestamptz NOT NULL,
    type text NOT NULL,
    "user" text,
    tier text,
    decision text,
    record jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS pgveil_audit_ts ON pgveil_audit (ts);
"""
COLUMNS = ("id", "stream", "seq", "ts", "type", "user", "tier", "decision", "record")


class StdoutSink:
    """JSON lines on stdout, for log shippers (Vector, Fluent Bit, Filebeat)."""

    key = "stdout"
    name = "stdout"

    async def deliver(self, lines: list[bytes]) -> None:
        sys.stdout.buffer.write(b"".join(lines))
        sys.stdout.buffer.flush()

    async def close(self) -> None:
        pass


class PostgresSink:
    """A ``pgveil_audit`` table, filled by COPY into a staging table and an insert that skips ids
    already there."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.key = "pg-" + hashlib.sha256(dsn.encode()).hexdigest()[:10]
        self.name = "postgresql"
        self._conn = None

    async def _connect(self):
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, timeout=10)
            await self._conn.execute(TABLE_SQL)
            await self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS pgveil_audit_stage "
                                     "(LIKE pgveil_audit INCLUDING DEFAULTS)")
        return self._conn

    async def deliver(self, lines: list[bytes]) -> None:
        from datetime import datetime

        rows = []
        for line in lines:
            r = json.loads(line)
            ts = datetime.fromisoformat(r["ts"].replace("Z", "+00:00"))
            rows.append((r["id"], r["stream"], r["seq"], ts, r["type"], r.get("user"), r.get("tier"),
                         r.get("decision"), line.decode().rstrip("\n")))
        try:
            conn = await self._connect()
            async with conn.transaction():
                await conn.execute("TRUNCATE pgveil_audit_stage")
                await conn.copy_records_to_table("pgveil_audit_stage", records=rows, columns=COLUMNS)
                await conn.execute("INSERT INTO pgveil_audit SELECT * FROM pgveil_audit_stage "
                                   "ON CONFLICT (id) DO NOTHING")
        except Exception:
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


def make_sink(spec: str):
    return StdoutSink() if spec == "stdout" else PostgresSink(spec)


class Shipper:
    """Follows one stream of the journal and delivers it to one sink."""

    def __init__(self, directory: str, stream: str, sink, batch: int = 1000, interval: float = 0.25) -> None:
        self.directory = Path(directory)
        self.stream = stream
        self.sink = sink
        self.batch = batch
        self.interval = interval
        self.position_path = self.directory / f".sink-{sink.key}-{stream}.pos"
        self.shipped = 0
        self.errors = 0
        self.last_seq = 0
        self._file, self._offset = self._load_position()

    def _load_position(self) -> tuple[str | None, int]:
        try:
            saved = json.loads(self.position_path.read_text())
            return saved["file"], int(saved["offset"])
        except (OSError, ValueError, KeyError):
            return None, 0

    def _save_position(self) -> None:
        tmp = self.position_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"file": self._file, "offset": self._offset, "seq": self.last_seq}))
        os.replace(tmp, self.position_path)

    def _read_batch(self) -> tuple[list[bytes], str | None, int]:
        """Up to ``batch`` complete lines after the saved position, and the position after them."""
        files = [p.name for p in stream_files(self.directory, self.stream).get(self.stream, [])]
        if not files:
            return [], self._file, self._offset
        name, offset = self._file, self._offset
        if name not in files:
            name, offset = files[0], 0
        lines: list[bytes] = []
        chunk = 1 << 20
        while True:
            with open(self.directory / name, "rb") as f:
                f.seek(offset)
                data = f.read(chunk)
            written = len(data) == chunk
            if b"\0" in data:  # the file's data end there (the journal writes zeros ahead of them)
                data, written = data[:data.index(b"\0")], False
            complete = data[:data.rfind(b"\n") + 1]
            for line in complete.splitlines(keepends=True):
                lines.append(line)
                offset += len(line)
                if len(lines) >= self.batch:
                    return lines, name, offset
            if written:
                continue  # more of this file
            later = files.index(name) + 1
            if len(complete) == len(data) and later < len(files):
                name, offset = files[later], 0  # this file is finished: the writer moved on
                continue
            return lines, name, offset

    async def run(self) -> None:
        backoff = 0.5
        while True:
            lines, name, offset = self._read_batch()
            if not lines:
                if name != self._file:
                    self._file, self._offset = name, offset
                await asyncio.sleep(self.interval)
                continue
            try:
                await self.sink.deliver(lines)
            except Exception as exc:
                self.errors += 1
                log.warning("audit_sink_failed", sink=self.sink.name, error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            self.shipped += len(lines)
            self.last_seq = json.loads(lines[-1]).get("seq", self.last_seq)
            self._file, self._offset = name, offset
            self._save_position()
