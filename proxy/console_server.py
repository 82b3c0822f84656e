"""The admin console's I/O: ``--console HOST:PORT``, a virtual database ``pgveil`` never forwarded.

A console connection is checked as any other: the password goes to PostgreSQL, which stays the
authority on it.  pgveil opens an upstream connection with the client's user name (to the
catalog's database) and relays the authentication exchange (cleartext, md5 or SCRAM; the
console takes no TLS, so SCRAM is never channel-bound); once the database says
AuthenticationOk, that connection is closed and pgveil answers the client itself.  Only an
identity whose tier has the ``console`` statement kind gets this far; any other gets 28000.
Every connection and every command is audited (statement records of kind ``console``).

With ``--workers N`` each worker has its own console listener on the same port
(SO_REUSEPORT), and a console connection sees and acts on the sessions of the worker it
landed on only.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

from . import __version__, codec, logs
from .audit import records
from .console import COLUMNS, ConsoleError, ConsoleProtocol, Table
from .policy import Decision

log = logs.get("pgveil.console")
DATABASE = "pgveil"
STATES = {b"I": "idle", b"T": "idle in transaction", b"E": "idle in failed transaction"}


async def start_console(proxy, host: str, port: int, sock=None) -> asyncio.base_events.AbstractServer:
    async def accept(reader, writer):
        await ConsoleConnection(proxy, reader, writer).run()
    if sock is not None:
        return await asyncio.start_server(accept, sock=sock)
    return await asyncio.start_server(accept, host, port, reuse_port=proxy.settings.workers > 1)


async def _read_message(reader, limit: int = 1 << 20) -> tuple[int, bytes]:
    head = await reader.readexactly(5)
    length = int.from_bytes(head[1:5], "big")
    if length < 4 or length > limit:
        raise codec.ProtocolViolation(f"invalid message length {length}")
    return head[0], head + await reader.readexactly(length - 4)


class ConsoleConnection:
    def __init__(self, proxy, reader, writer) -> None:
        self.proxy = proxy
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1]) if isinstance(peer, tuple) else ("local", 0)
        self.id = "console-" + os.urandom(6).hex()
        self.user = None
        self.tier = None
        self.application_name = None
        self.commands = 0

    def who(self) -> dict:
        return {"session": self.id, "user": self.user, "tier": self.tier.name if self.tier else None,
                "client_addr": self.peer[0], "client_port": self.peer[1], "database": DATABASE,
                "application_name": self.application_name}

    # -- the connection -----------------------------------------------------------------
    async def run(self) -> None:
        started = time.monotonic()
        accepted = False
        try:
            startup = await self._startup()
            if startup is not None and await self._authenticate(startup):
                accepted = True
                await self._serve()
        except (asyncio.IncompleteReadError, OSError, codec.ProtocolError, asyncio.TimeoutError) as exc:
            log.info("console_closed", session=self.id, reason=str(exc) or type(exc).__name__)
            if not accepted and isinstance(exc, OSError) and not isinstance(exc, asyncio.IncompleteReadError):
                self._fatal("08006", f"pgveil could not reach the database to check the password: {exc}")
        finally:
            if accepted:
                record = records.base("session_end", self.who())
                record.update(reason="console closed", duration_ms=int((time.monotonic() - started) * 1000),
                              statements=self.commands, bytes_in=0, bytes_out=0)
                self.proxy.audit.submit(record)
            self.writer.close()

    async def _startup(self) -> codec.StartupMessage | None:
        while True:
            head = await asyncio.wait_for(self.reader.readexactly(4), self.proxy.settings.startup_timeout)
            length = int.from_bytes(head, "big")
            if length < 8 or length > 10000:
                raise codec.ProtocolViolation(f"invalid startup packet length {length}")
            message = codec.decode_startup(head + await self.reader.readexactly(length - 4))
            if isinstance(message, (codec.SSLRequest, codec.GSSENCRequest)):
                self.writer.write(b"N")  # the console takes no TLS: keep it on a local or private address
                continue
            if isinstance(message, codec.CancelRequest):
                return None
            self.user = message.param("user")
            self.application_name = message.param("application_name")
            database = message.param("database") or self.user
            if database != DATABASE:
                self._fatal("3D000", f'database "{database}" does not exist: the pgveil console\'s database is '
                                     f'"{DATABASE}"')
                return None
            return message

    def _fatal(self, sqlstate: str, message: str) -> None:
        self.writer.write(codec.error_response(sqlstate, message, severity="FATAL"))

    async def _authenticate(self, startup: codec.StartupMessage) -> bool:
        """Relay the password exchange to the database; then the tier must have ``console``."""
        params = await self._relay_authentication(startup)
        if params is None:
            return False
        engine = self.proxy.engine
        now = datetime.now(timezone.utc)
        self.tier = engine.tier_for(self.user, self.peer[0], now) if engine is not None else None
        if self.tier is None or "console" not in self.tier.statements:
            reason = (f'pgveil: user "{self.user}" may not use the console (its tier has no "console" statement '
                      f'kind)')
            self._connection_record("refused", reason)
            self._fatal("28000", reason)
            return False
        self._connection_record("accepted", "")
        key = codec.BackendKeyData(int.from_bytes(os.urandom(3), "big"), os.urandom(4))
        self.writer.write(codec.encode(codec.Authentication(codec.Authentication.OK, b"")) + params +
                          codec.encode(key) + codec.encode(codec.ReadyForQuery(b"I")))
        return True

    async def _relay_authentication(self, startup: codec.StartupMessage) -> bytes | None:
        """The server's ParameterStatus messages once it accepted the password, or None."""
        settings = self.proxy.settings
        dsn = settings.catalog_dsn or settings.auth_dsn or ""
        database = (urlsplit(dsn).path or "/").lstrip("/") or "postgres"
        sock, tls = await self.proxy._open_socket()
        host = settings.upstream_address[0]
        reader, writer = await asyncio.open_connection(sock=sock, ssl=self.proxy.upstream_tls if tls else None,
                                                       server_hostname=host if tls else None)
        try:
            writer.write(codec.encode_startup(codec.StartupMessage(
                196608, (("user", self.user), ("database", database), ("application_name", "pgveil console")))))
            params = []
            while True:
                kind, message = await asyncio.wait_for(_read_message(reader), settings.startup_timeout)
                if kind == codec.BE.ERROR:
                    error = codec.decode_message(codec.BACKEND, message)
                    self._connection_record("auth_failed", error.message or "", error.sqlstate)
                    self.writer.write(message)
                    return None
                if kind == codec.BE.PARAMETER_STATUS:
                    params.append(message)
                elif kind == codec.BE.READY_FOR_QUERY:
                    writer.write(codec.encode(codec.Terminate()))
                    return b"".join(params)
                elif kind == codec.BE.AUTHENTICATION:
                    auth = codec.decode_message(codec.BACKEND, message)
                    if auth.code in (codec.Authentication.OK, codec.Authentication.SASL_FINAL):
                        if auth.code == codec.Authentication.SASL_FINAL:
                            self.writer.write(message)
                        continue
                    self.writer.write(message)  # the server asks for the password: the client answers
                    answer_kind, answer = await asyncio.wait_for(_read_message(self.reader),
                                                                 settings.startup_timeout)
                    if answer_kind != codec.FE.AUTH_RESPONSE:
                        raise codec.ProtocolViolation(f"expected a password message, got {chr(answer_kind)!r}")
                    writer.write(answer)
        finally:
            writer.close()

    def _connection_record(self, result: str, reason: str, sqlstate: str | None = None) -> None:
        record = records.base("connection", self.who())
        record.update(result=result, reason=reason, sqlstate=sqlstate, tls=False, upstream_tls=False)
        self.proxy.audit.submit(record)

    async def _serve(self) -> None:
        protocol = ConsoleProtocol(self._run)
        while not protocol.closed:
            data = await self.reader.read(65536)
            if not data:
                return
            self.writer.write(protocol.feed(data))
            await self.writer.drain()

    # -- commands -------------------------------------------------------------------------
    def _run(self, command: str, argument: str, protocol: str) -> Table:
        """Carry out one command, audited: a statement record (kind console) and its outcome."""
        self.commands += 1
        statement_id = f"{self.id}-{self.commands}"
        text = f"KILL {argument}" if command == "KILL" else command
        record = records.statement(self.who(), statement_id, text, protocol,
                                   Decision("allow", text, kinds=("console",)),
                                   self.proxy.engine.rules.version if self.proxy.engine else None)
        record["sql"] = text  # a session id is not a customer's value: kept, so the record says whom
        self.proxy.audit.submit(record)
        started = time.monotonic()
        status, rows, sqlstate = "ok", None, None
        try:
            table = getattr(self, "_" + command.lower().replace(" ", "_"))(argument)
            rows = len(table.rows)
            return table
        except ConsoleError as exc:
            status, sqlstate = "error", exc.sqlstate
            raise
        finally:
            self.proxy.audit.submit(records.outcome(self.who(), statement_id, status, rows,
                                                    time.monotonic() - started, sqlstate))

    def _sessions(self):
        return [link.session for link in list(self.proxy.links) if link.session is not None]

    def _show_sessions(self, _: str) -> Table:
        now = time.monotonic()
        rows = []
        for s in self._sessions():
            last = getattr(s, "last_statement", None)
            state = s.phase.value
            if state == "active":
                state = "active" if s.outstanding else STATES.get(s.transaction_status, "idle")
            rows.append((s.id, s.user, s.tier.name if s.tier else None,
                         "; ".join(g.label() for g in getattr(s, "_grants", ())) or None,
                         f"{s.peer[0]}:{s.peer[1]}", s.startup.param("application_name") if s.startup else None,
                         s.database, "on" if s.client_tls else "off", s.purpose, state,
                         last[0] if last else None, f"{now - last[1]:.3f}" if last else None,
                         f"{now - s.started:.3f}", s.stats.bytes_from_client, s.stats.bytes_from_server))
        return Table(COLUMNS["SHOW SESSIONS"], rows, f"SHOW {len(rows)}")

    def _show_rules(self, _: str) -> Table:
        engine = self.proxy.engine
        rules = engine.rules
        row = (rules.version, self.proxy.settings.rules, engine.rules_sha256, len(rules.tiers), len(rules.classes),
               len(rules.columns), len(rules.identities), len(rules.grants))
        return Table(COLUMNS["SHOW RULES"], [row], "SHOW 1")

    def _show_grants(self, _: str) -> Table:
        now = datetime.now(timezone.utc)
        rows = []
        for g in self.proxy.engine.rules.grants:
            rows.append((g.user, g.tier, ", ".join(f"{c}:{a.action}" for c, a in g.see.items()) or None,
                         g.since.isoformat() if g.since else None, g.until.isoformat(),
                         max(0, int((g.until - now).total_seconds())), g.reason, "yes" if g.active(now) else "no"))
        return Table(COLUMNS["SHOW GRANTS"], rows, f"SHOW {len(rows)}")

    def _show_tiers(self, _: str) -> Table:
        sessions = self._sessions()
        rows = []
        for name, tier in self.proxy.engine.rules.tiers.items():
            count = sum(1 for s in sessions if s.tier is not None and s.tier.name.split("+")[0] == name)
            rows.append((name, ",".join(sorted(tier.statements)),
                         ", ".join(f"{c}:{a.action}" for c, a in tier.see.items()) or None,
                         ", ".join(tier.tables) if tier.tables is not None else None,
                         ", ".join(f"{c}:{n}" for c, n in tier.max_rows.items()) or None, count))
        return Table(COLUMNS["SHOW TIERS"], rows, f"SHOW {len(rows)}")

    def _show_stats(self, _: str) -> Table:
        from . import metrics
        totals: dict[str, list] = {}

        def add(tier, at, value):
            totals.setdefault(tier, [0, 0, 0, 0, 0, 0])[at] += value
        metrics.flush()  # the counts waiting to be pushed into the metrics
        for metric, at in ((metrics.STATEMENTS, 1), (metrics.REFUSALS, 2), (metrics.ROWS, 3)):
            for family in metric.collect():
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        add(sample.labels.get("tier", "none"), at, int(sample.value))
        for s in self._sessions():
            tier = s.tier.name.split("+")[0] if s.tier else "none"
            add(tier, 0, 1)
            add(tier, 4, s.stats.bytes_from_client)
            add(tier, 5, s.stats.bytes_from_server)
        rows = [(tier, *values) for tier, values in sorted(totals.items())]
        return Table(COLUMNS["SHOW STATS"], rows, f"SHOW {len(rows)}")

    def _show_audit(self, _: str) -> Table:
        writer = self.proxy.audit
        journal = writer.journal
        uptime = max(time.monotonic() - self.proxy.started, 1e-6)
        shippers = getattr(self.proxy, "shippers", [])
        lag = ", ".join(f"{s.sink.name}:{journal.seq - s.last_seq}" for s in shippers) or None
        row = (journal.stream, journal.seq, journal.head[:16], journal.file.name if journal.file else None,
               "yes" if writer.healthy else "no", writer.error or None, writer.mode, writer.written, writer.pending,
               writer.fsyncs, f"{writer.fsyncs / uptime:.2f}", f"{writer.last_fsync_seconds * 1000:.3f}",
               ", ".join(s.sink.name for s in shippers) or None, lag)
        return Table(COLUMNS["SHOW AUDIT"], [row], "SHOW 1")

    def _show_version(self, _: str) -> Table:
        return Table(COLUMNS["SHOW VERSION"], [(f"pgveil {__version__}",)], "SHOW 1")

    def _reload(self, _: str) -> Table:
        if not self.proxy.reload_rules(f"console, by {self.user} (session {self.id})"):
            raise ConsoleError("F0000", f"the rule file was rejected (its error is in the log and the audit); "
                                        f"version {self.proxy.engine.rules.version} stays in force")
        return Table((), [], "RELOAD")

    def _kill(self, session_id: str) -> Table:
        for link in list(self.proxy.links):
            if link.session is not None and link.session.id == session_id:
                from .session import KillRequested
                link.dispatch(KillRequested(f"pgveil console, by user {self.user}, session {self.id}"))
                log.warning("console_kill", session=session_id, by=self.user, console=self.id)
                return Table((), [], "KILL")
        raise ConsoleError("42704", f'no session "{session_id}" on this worker (SHOW SESSIONS lists them)')
