"""How a console client's password is checked: by PostgreSQL, never by pgveil alone.

pgveil opens an upstream connection in the client's name (to the catalog's database) and
relays the authentication exchange (cleartext, md5 or SCRAM); once the database says
AuthenticationOk, that connection is closed and the console answers the client itself.

With TLS on both legs and a server that offers SCRAM-SHA-256-PLUS, a relayed exchange cannot
succeed (see :mod:`proxy.scram`): the console then verifies the client with the role's
verifier and authenticates upstream itself (the same :class:`~proxy.scram.ScramBridge` the
proxy uses, so it needs ``--auth-dsn``); without ``--auth-dsn`` the client gets 28000 and a
hint.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from . import codec
from .scram import ScramError, tls_server_end_point
from .session import LookupVerifier, SendToServer
from .session.scram_bridge import ScramBridge

AUTH = codec.Authentication
_OK = codec.encode(AUTH(AUTH.OK, b""))


async def read_message(reader, limit: int = 1 << 20) -> tuple[int, bytes]:
    head = await reader.readexactly(5)
    length = int.from_bytes(head[1:5], "big")
    if length < 4 or length > limit:
        raise codec.ProtocolViolation(f"invalid message length {length}")
    return head[0], head + await reader.readexactly(length - 4)


async def relay_authentication(conn) -> bytes | None:
    """The server's ParameterStatus messages once it accepted the client's password, or None
    (the client has been told why).  ``conn`` is the :class:`~proxy.console_server.ConsoleConnection`."""
    proxy, settings = conn.proxy, conn.proxy.settings
    dsn = settings.catalog_dsn or settings.auth_dsn or ""
    database = (urlsplit(dsn).path or "/").lstrip("/") or "postgres"
    sock, tls = await proxy._open_socket()
    host = settings.upstream_address[0]
    reader, writer = await asyncio.open_connection(sock=sock, ssl=proxy.upstream_tls if tls else None,
                                                   server_hostname=host if tls else None)
    conn.upstream_tls = tls
    try:
        writer.write(codec.encode_startup(codec.StartupMessage(
            196608, (("user", conn.user), ("database", database), ("application_name", "pgveil console")))))
        return await _exchange(conn, reader, writer)
    except ScramError as exc:
        conn._connection_record("auth_failed", str(exc), exc.sqlstate)
        conn._fatal(exc.sqlstate, str(exc))
        return None
    finally:
        writer.close()


async def _exchange(conn, reader, writer) -> bytes | None:
    timeout = conn.proxy.settings.startup_timeout
    params = []
    bridge: ScramBridge | None = None
    while True:
        kind, message = await asyncio.wait_for(read_message(reader), timeout)
        if kind == codec.BE.ERROR:
            error = codec.decode_message(codec.BACKEND, message)
            conn._connection_record("auth_failed", error.message or "", error.sqlstate)
            conn.writer.write(message)
            return None
        if kind == codec.BE.PARAMETER_STATUS:
            params.append(message)
        elif kind == codec.BE.READY_FOR_QUERY:
            writer.write(codec.encode(codec.Terminate()))
            return b"".join(params)
        elif kind == codec.BE.AUTHENTICATION:
            auth = codec.decode_message(codec.BACKEND, message)
            if bridge is None and auth.code == AUTH.SASL and conn.tls and conn.upstream_tls \
                    and "SCRAM-SHA-256-PLUS" in auth.mechanisms():
                bridge = _bridge(conn, writer)
                if bridge is None:
                    return None
                await _steps(conn, bridge, writer, bridge.start())
            elif bridge is not None:
                await _steps(conn, bridge, writer, bridge.server_message(auth))
            elif auth.code in (AUTH.OK, AUTH.SASL_FINAL):
                if auth.code == AUTH.SASL_FINAL:
                    conn.writer.write(message)
            else:
                if auth.code == AUTH.SASL and not conn.tls:  # no TLS to bind to: hide -PLUS, as libpq demands
                    message = codec.encode(AUTH.sasl(tuple(m for m in auth.mechanisms() if not m.endswith("-PLUS"))))
                conn.writer.write(message)  # the server asks for the password: the client answers
                writer.write(await _client_answer(conn, timeout))


def _bridge(conn, upstream_writer) -> ScramBridge | None:
    config = conn.proxy.session_config
    if not config.scram_bridge_possible:
        reason = "pgveil cannot relay SCRAM authentication when both legs use TLS"
        conn._connection_record("auth_failed", reason, "28000")
        conn.writer.write(codec.error_response(
            "28000", reason, severity="FATAL",
            hint="Configure --auth-dsn so that pgveil can verify SCRAM itself, or connect to the console "
                 "without TLS (sslmode=disable) on a private address."))
        return None
    der = upstream_writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return ScramBridge(conn.user or "", client_tls=True, client_cert_hash=config.client_cert_hash,
                       server_cert_hash=tls_server_end_point(der) if der else None)


async def _steps(conn, bridge: ScramBridge, upstream_writer, steps: list) -> None:
    """Carry out the bridge's steps: to the client (then read its answer), to the server, a
    verifier lookup.  The final AuthenticationOk is the console's own, sent after the tier check."""
    timeout = conn.proxy.settings.startup_timeout
    while steps:
        step = steps.pop(0)  # the bridge's commands (proxy.session.commands)
        if type(step) is SendToServer:
            upstream_writer.write(step.data)
        elif type(step) is LookupVerifier:
            try:
                verifier = await conn.proxy.lookup_verifier(step.user)
            except Exception as exc:  # the auth account's connection or query failed
                raise ScramError(f"pgveil could not look up the role's credentials: {exc}", "28000") from None
            steps += bridge.verifier_found(verifier)
        elif step.data != _OK:  # SendToClient
            payload = step.data
            conn.writer.write(payload)
            if payload[5:9] in (AUTH.SASL.to_bytes(4, "big"), AUTH.SASL_CONTINUE.to_bytes(4, "big")):
                answer = await _client_answer(conn, timeout)
                steps += bridge.client_message(answer[5:])


async def _client_answer(conn, timeout: float) -> bytes:
    kind, answer = await asyncio.wait_for(read_message(conn.reader), timeout)
    if kind != codec.FE.AUTH_RESPONSE:
        raise codec.ProtocolViolation(f"expected a password message, got {chr(kind)!r}")
    return answer
