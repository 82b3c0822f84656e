"""The admin console's I/O: ``--console HOST:PORT``, a virtual database ``pgveil`` never forwarded.

A console connection is checked as any other: the password goes to PostgreSQL, which stays the
authority on it (see :mod:`proxy.console_auth`).  With ``--tls-cert`` the console port offers
TLS as the proxy's port does.  Only an identity whose tier has the ``console`` statement kind
gets this far; any other gets 28000.  Every connection and every command is audited (statement
records of kind ``console``).  A connection idle for ``console_idle_timeout`` seconds is ended
with FATAL 57P05.

With ``--workers N`` each worker has its own console listener on the same port
(SO_REUSEPORT); the worker a console connection lands on answers every command for all
workers, asking the others through their control sockets (see :mod:`proxy.console_peers`).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from datetime import datetime, timezone

from . import __version__, codec, console_peers, logs
from .audit import records
from .console import COLUMNS, ConsoleError, ConsoleProtocol, Table
from .console_auth import relay_authentication
from .policy import Decision

log = logs.get("pgveil.console")
DATABASE = "pgveil"


class ConsoleService:
    """The console's listener and, with ``--workers N``, this worker's control socket."""

    def __init__(self, server, peers) -> None:
        self.server, self.peers = server, peers

    def close(self) -> None:
        self.server.close()
        if self.peers is not None:
            self.peers.close()


async def start_console(proxy, host: str, port: int, sock=None) -> ConsoleService:
    directory = getattr(proxy.settings, "console_peers", None)  # set by serve() with --workers N
    peers = console_peers.Peers(proxy, directory, proxy.settings.workers) if directory else None
    if peers is not None:
        await peers.start()

    async def accept(reader, writer):
        await ConsoleConnection(proxy, reader, writer, peers).run()
    if sock is not None:
        server = await asyncio.start_server(accept, sock=sock)
    else:
        server = await asyncio.start_server(accept, host, port, reuse_port=proxy.settings.workers > 1)
    return ConsoleService(server, peers)


class ConsoleConnection:
    def __init__(self, proxy, reader, writer, peers=None) -> None:
        self.proxy = proxy
        self.peers = peers  # the other workers, or None
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1]) if isinstance(peer, tuple) else ("local", 0)
        self.id = "console-" + os.urandom(6).hex()
        self.user = None
        self.tier = None
        self.application_name = None
        self.commands = 0
        self.end_reason = "console closed"
        self.tls = False  # the client's leg
        self.upstream_tls = False  # the leg that checked the password

    def who(self) -> dict:
        return {"session": self.id, "user": self.user, "tier": self.tier.name if self.tier else None,
                "client_addr": self.peer[0], "client_port": self.peer[1], "database": DATABASE,
                "application_name": self.application_name}

    # -- the connection -----------------------------------------------------------------
    async def run(self) -> None:
        started = time.monotonic()
        accepted = False
        try:
            async with asyncio.timeout(self.proxy.settings.startup_timeout):  # the whole log-in, as PostgreSQL
                startup = await self._startup()
                accepted = startup is not None and await self._authenticate(startup)
            if accepted:
                await self._serve()
        except (asyncio.IncompleteReadError, OSError, codec.ProtocolError, asyncio.TimeoutError) as exc:
            log.info("console_closed", session=self.id, reason=str(exc) or type(exc).__name__)
            if not accepted and isinstance(exc, asyncio.TimeoutError):
                self._fatal("08P01", "pgveil: timeout expired before the client authenticated")
            elif not accepted and isinstance(exc, OSError) and not isinstance(exc, (asyncio.IncompleteReadError,
                                                                                   ssl.SSLError)):
                self._fatal("08006", f"pgveil could not reach the database to check the password: {exc}")
        finally:
            if accepted:
                record = records.base("session_end", self.who())
                record.update(reason=self.end_reason, duration_ms=int((time.monotonic() - started) * 1000),
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
            if self.tls and isinstance(message, (codec.SSLRequest, codec.GSSENCRequest)):
                raise codec.ProtocolViolation("a second encryption request after TLS started")
            if isinstance(message, codec.SSLRequest) and self.proxy.client_tls is not None and not self.tls:
                self.writer.write(b"S")  # the console offers TLS with --tls-cert, as the proxy's port does
                await self.writer.start_tls(self.proxy.client_tls,
                                            ssl_handshake_timeout=self.proxy.settings.startup_timeout)
                self.tls = True
                continue
            if isinstance(message, (codec.SSLRequest, codec.GSSENCRequest)):
                self.writer.write(b"N")
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
        params = await relay_authentication(self)
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

    def _connection_record(self, result: str, reason: str, sqlstate: str | None = None) -> None:
        record = records.base("connection", self.who())
        record.update(result=result, reason=reason, sqlstate=sqlstate, tls=self.tls, upstream_tls=self.upstream_tls)
        self.proxy.audit.submit(record)

    async def _serve(self) -> None:
        """Answer the client until it leaves, or stays idle (or does not read its answers) for
        ``console_idle_timeout`` seconds: then FATAL 57P05, as PostgreSQL's idle_session_timeout."""
        protocol = ConsoleProtocol(self._run)
        idle = self.proxy.settings.console_idle_timeout or None
        while not protocol.closed:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), idle)
            except asyncio.TimeoutError:
                self.end_reason = "idle timeout"
                self._fatal("57P05", f"terminating connection due to idle-session timeout (the pgveil console's "
                                     f"console_idle_timeout, {idle:g} s)")
                return
            if not data:
                return
            self.writer.write(await protocol.feed(data))
            try:
                await asyncio.wait_for(self.writer.drain(), idle)
            except asyncio.TimeoutError:
                self.end_reason = "the client did not read its answer"
                return

    # -- commands -------------------------------------------------------------------------
    async def _run(self, command: str, argument: str, protocol: str) -> Table:
        """Carry out one command, audited: a statement record (kind console) and its outcome."""
        self.commands += 1
        statement_id = f"{self.id}-{self.commands}"
        text = f"KILL {argument}" if command == "KILL" else command
        record = records.statement(self.who(), statement_id, text, protocol,
                                   Decision("allow", text, kinds=("console",)),
                                   self.proxy.engine.rules.version if self.proxy.engine else None)
        record["sql"] = text  # a session id is not a customer's value: kept, so the record says whom
        durable = self._durable(record)
        started = time.monotonic()
        status, rows, sqlstate = "ok", None, None
        try:
            if durable is not None and await durable is not None:  # strict: nothing seen or changed before it
                raise ConsoleError("58030", "pgveil cannot write its audit journal; the command was not carried out")
            table = await getattr(self, "_" + command.lower().replace(" ", "_"))(argument)
            rows = len(table.rows)
            return table
        except ConsoleError as exc:
            status, sqlstate = "error", exc.sqlstate
            raise
        finally:
            self.proxy.audit.submit(records.outcome(self.who(), statement_id, status, rows,
                                                    time.monotonic() - started, sqlstate))

    def _durable(self, record: dict):
        """Submit the command's record; under strict audit, a future of its durability (None once on
        disk, else the error), which the command waits for before it shows or changes anything."""
        if getattr(self.proxy.audit, "mode", None) != "strict":
            self.proxy.audit.submit(record)
            return None
        done = asyncio.get_running_loop().create_future()

        def on_durable(error) -> None:
            if not done.done():
                done.set_result(error)
        self.proxy.audit.submit(record, on_durable)
        return done

    async def _gather(self, op: str, arg: str = "", by: str = "") -> tuple[list, list[str]]:
        """This worker's answer to ``op`` and every other worker's: ``[(pid, answer)]``, warnings."""
        mine = [(os.getpid(), console_peers.local(self.proxy, op, arg, by))]
        if self.peers is None:
            return mine, []
        answers, missing = await self.peers.ask(op, arg, by)
        return mine + answers, missing

    async def _rows_of_all(self, command: str, op: str) -> Table:
        """One row per worker (SHOW RULES, SHOW AUDIT), or every worker's rows (SHOW SESSIONS)."""
        answers, missing = await self._gather(op)
        rows = []
        for _, answer in answers:
            rows.extend(answer if op == "sessions" else [answer])
        return Table(COLUMNS[command], [tuple(r) for r in rows], f"SHOW {len(rows)}", missing)

    async def _show_sessions(self, _: str) -> Table:
        return await self._rows_of_all("SHOW SESSIONS", "sessions")

    async def _show_rules(self, _: str) -> Table:
        return await self._rows_of_all("SHOW RULES", "rules")

    async def _show_audit(self, _: str) -> Table:
        return await self._rows_of_all("SHOW AUDIT", "audit")

    async def _show_grants(self, _: str) -> Table:
        now = datetime.now(timezone.utc)
        rows = []
        for g in self.proxy.engine.rules.grants:
            rows.append((g.user, g.tier, ", ".join(f"{c}:{a.action}" for c, a in g.see.items()) or None,
                         g.since.isoformat() if g.since else None, g.until.isoformat(),
                         max(0, int((g.until - now).total_seconds())), g.reason, "yes" if g.active(now) else "no"))
        return Table(COLUMNS["SHOW GRANTS"], rows, f"SHOW {len(rows)}")

    async def _show_tiers(self, _: str) -> Table:
        answers, missing = await self._gather("tiers")
        rows = []
        for name, tier in self.proxy.engine.rules.tiers.items():
            count = sum(answer.get(name, 0) for _, answer in answers)
            rows.append((name, ",".join(sorted(tier.statements)),
                         ", ".join(f"{c}:{a.action}" for c, a in tier.see.items()) or None,
                         ", ".join(tier.tables) if tier.tables is not None else None,
                         ", ".join(f"{c}:{n}" for c, n in tier.max_rows.items()) or None, count))
        return Table(COLUMNS["SHOW TIERS"], rows, f"SHOW {len(rows)}", missing)

    async def _show_stats(self, _: str) -> Table:
        answers, missing = await self._gather("stats")
        totals: dict[str, list] = {}
        for _, answer in answers:
            for tier, values in answer.items():
                into = totals.setdefault(tier, [0] * len(values))
                for at, value in enumerate(values):
                    into[at] += value
        rows = [(tier, *values) for tier, values in sorted(totals.items())]
        return Table(COLUMNS["SHOW STATS"], rows, f"SHOW {len(rows)}", missing)

    async def _show_version(self, _: str) -> Table:
        return Table(COLUMNS["SHOW VERSION"], [(f"pgveil {__version__}",)], "SHOW 1")

    async def _reload(self, _: str) -> Table:
        """RELOAD in every worker (as SIGHUP); an error when the file was rejected."""
        answers, missing = await self._gather("reload", by=f"console, by {self.user} (session {self.id})")
        rejected = [pid for pid, answer in answers if not answer["ok"]]
        if rejected:
            version = self.proxy.engine.rules.version
            raise ConsoleError("F0000", f"the rule file was rejected (its error is in the log and the audit); "
                                        f"version {version} stays in force")
        return Table((), [], "RELOAD", missing)

    async def _kill(self, session_id: str) -> Table:
        """KILL the session on whichever worker holds it: FATAL 57P01 naming who asked."""
        by = f"pgveil console, by user {self.user}, session {self.id}"
        if console_peers.kill(self.proxy, session_id, by):
            return Table((), [], "KILL")
        answers, missing = (await self.peers.ask("kill", session_id, by)) if self.peers else ([], [])
        if any(answer for _, answer in answers):
            return Table((), [], "KILL", missing)
        unsure = f" ({'; '.join(missing)})" if missing else ""
        raise ConsoleError("42704", f'no session "{session_id}" on any pgveil worker that answered (SHOW SESSIONS '
                                    f'lists them){unsure}')
