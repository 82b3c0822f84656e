"""Bad input gets a FATAL 08P01 and a clean close; other sessions never notice.  The upstream
going away gives the client an error, not a hang."""

import asyncio
import os
import signal
import struct

import asyncpg
import pytest

from conftest import APP_USER, hba_lines, setup_database, start_proxy
from proxy import codec
from proxy.pgcluster import Cluster, embedded_bin_dir


async def exchange(port: int, payload: bytes, timeout: float = 10) -> list:
    """Send raw bytes, read until the proxy closes; the backend messages received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    messages, pos = [], 0
    while pos < len(data):
        if data[pos:pos + 1] in (b"N", b"S") and pos == 0 and len(data) == 1:
            return [data]
        length = struct.unpack_from("!i", data, pos + 1)[0]
        messages.append(codec.decode_message(codec.BACKEND, data[pos:pos + 1 + length]))
        pos += 1 + length
    return messages


def startup(user=APP_USER, database="crm", version=codec.PROTOCOL_3_0) -> bytes:
    return codec.encode_startup(codec.StartupMessage(version, (("user", user), ("database", database))))


def fatal_08p01(messages) -> str:
    assert messages and isinstance(messages[-1], codec.ErrorResponse), messages
    error = messages[-1]
    assert error.get(b"S") == "FATAL" and error.get(b"C") == "08P01", error
    return error.get(b"M")


@pytest.fixture
async def bystander(proxy):
    """A session that must not notice anything, checked after the bad input."""
    conn = await asyncpg.connect(proxy.dsn())
    await conn.execute("BEGIN")
    yield conn
    assert await conn.fetchval("SELECT count(*) FROM products") == 6
    await conn.execute("COMMIT")
    await conn.close()


@pytest.mark.parametrize("payload", [b"\x00\x00\x00\x03garbage", b"\x7f\xff\xff\xff" + b"x" * 100,
                                     codec.encode(codec.Terminate())])
async def test_bad_startup_length_closes_without_answer(pg, proxy, bystander, payload):
    """As PostgreSQL does: it logs an invalid start-up length and closes without a word (node-postgres'
    quick-disconnect test sends Terminate first and fails on an answer)."""
    for port in (pg.port, proxy.port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        assert await asyncio.wait_for(reader.read(), 5) == b"", port
        writer.close()


@pytest.mark.parametrize("payload, words", [
    (struct.pack("!ii", 12, 2 << 16) + b"\0\0\0\0", "unsupported frontend protocol 2.0"),
    (struct.pack("!ii", 9, 3 << 16) + b"x", "not NUL-terminated"),
    (struct.pack("!ii", 14, 3 << 16) + b"user\0\0", "name without a value"),
    (codec.encode_startup(codec.SSLRequest()) + b"Q\0\0\0\x05x", "unencrypted data after SSL request"),
])
async def test_bad_startup_is_fatal_08p01(proxy, bystander, payload, words):
    messages = await exchange(proxy.port, payload)
    assert words in fatal_08p01(messages)


async def test_startup_without_user_is_28000_as_postgresql(pg, proxy, bystander):
    payload = struct.pack("!ii", 9, 3 << 16) + b"\0"
    for port in (pg.port, proxy.port):
        error = (await exchange(port, payload))[-1]
        assert isinstance(error, codec.ErrorResponse) and error.get(b"S") == "FATAL", port
        assert error.get(b"C") == "28000" and error.get(b"M") == "no PostgreSQL user name specified in startup packet"


async def test_garbage_after_authentication(proxy, bystander):
    """Authenticate for real (trust user), then send an absurd length and an unknown type."""
    for bad, words in ((b"Q\x7f\xff\xff\xff", "invalid message length"),
                       (b"\x01\0\0\0\x04", "invalid frontend message type"),
                       (codec.encode(codec.AuthResponse(b"pw\0")), "invalid frontend message type")):
        messages = await exchange(proxy.port, startup(user="trust_user") + bad)
        assert words in fatal_08p01(messages)
        if "type" in words:  # held until authenticated, like PostgreSQL, then refused
            assert isinstance(messages[0], codec.Authentication) and messages[0].code == 0
            assert any(isinstance(m, codec.ReadyForQuery) for m in messages)


async def test_wrong_state_message_during_auth(proxy, bystander):
    messages = await exchange(proxy.port, startup() + codec.encode(codec.Query("SELECT 1")))
    assert isinstance(messages[0], codec.Authentication) and messages[0].code == 10  # SASL
    assert "expected an authentication response" in fatal_08p01(messages)


async def test_ssl_and_gss_refused_without_certificate(proxy):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(codec.encode_startup(codec.GSSENCRequest()))
    assert await reader.readexactly(1) == b"N"
    writer.write(codec.encode_startup(codec.SSLRequest()))
    assert await reader.readexactly(1) == b"N"
    writer.write(startup(user="trust_user") + codec.encode(codec.Query("SELECT 7")))
    data = await asyncio.wait_for(reader.readuntil(b"Z\0\0\0\x05I"), 5)  # after auth
    data = await asyncio.wait_for(reader.readuntil(b"Z\0\0\0\x05I"), 5)  # after the query
    assert b"\x00\x00\x00\x017" in data
    writer.close()


def test_server_terminating_backend_relays_its_error(pg, proxy):
    """The server's own FATAL (57P01 from pg_terminate_backend) reaches the client unchanged."""
    import psycopg

    import threading

    # terminated while its statement runs, so the client is reading when the FATAL comes (an idle
    # client that writes after the FATAL races the closed socket, through pgveil as directly:
    # psycopg may then report "connection socket closed" before it reads the FATAL)
    with psycopg.connect(proxy.dsn(application_name="to_be_terminated"), autocommit=True) as conn:
        killer = threading.Timer(0.5, pg.psql, ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                                "WHERE application_name = 'to_be_terminated'",))
        killer.start()
        try:
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("SELECT pg_sleep(30)")
        finally:
            killer.join()
        assert "terminating connection due to administrator command" in str(info.value)


def test_upstream_gone_gives_08006():
    """A backend killed outright (no goodbye from the server) must surface as 08006 to the client."""
    import threading

    import psycopg

    cluster = Cluster(embedded_bin_dir(), hba=hba_lines(), settings={"restart_after_crash": "off"})
    cluster.start()
    proxy = None
    try:
        setup_database(cluster, customers=5)
        proxy = start_proxy(cluster.port, "--upstream-sslmode", "disable")
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            # killed mid-statement: the client is waiting for an answer
            threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("SELECT pg_sleep(5)")
            assert info.value.sqlstate == "08006"
            assert "server closed the connection unexpectedly" in str(info.value)
        # the proxy itself is fine: a refused upstream is a clean error too
        cluster.stop("immediate")
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(proxy.dsn(), connect_timeout=10)
        assert "pgveil could not connect to the database server" in str(info.value)
        assert proxy.proc.poll() is None
    finally:
        if proxy:
            proxy.stop()
        cluster.destroy()


async def test_many_bad_clients_do_not_disturb_good_ones(proxy):
    good = await asyncpg.connect(proxy.dsn())
    try:
        bad = [exchange(proxy.port, os.urandom(n)) for n in range(4, 64)]
        results = await asyncio.gather(*bad, return_exceptions=True)
        for result in results:
            assert not isinstance(result, asyncio.TimeoutError)
        assert await good.fetchval("SELECT count(*) FROM customers") == 500
    finally:
        await good.close()


def test_silent_client_is_dropped_after_startup_timeout(pg):
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--startup-timeout", "1")
    try:
        async def silent():
            return await exchange(proxy.port, b"\x00\x00", timeout=10)
        messages = asyncio.run(silent())
        assert "timeout" in fatal_08p01(messages)
    finally:
        proxy.stop()
