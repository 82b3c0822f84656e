"""Cancel requests carry the server's own key, so the proxy forwards them as they are."""

import asyncio
import threading
import time

import asyncpg
import psycopg
import pytest


async def test_asyncpg_timeout_cancels(proxy):
    conn = await asyncpg.connect(proxy.dsn())
    try:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await conn.execute("SELECT pg_sleep(30)", timeout=0.5)
        # the statement was cancelled upstream: the connection is usable at once
        assert await conn.fetchval("SELECT 1", timeout=5) == 1
        assert time.monotonic() - started < 10
    finally:
        await conn.close()


@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
def test_psycopg_cancel(proxy, protocol):
    with psycopg.connect(proxy.dsn(max_protocol_version=protocol, min_protocol_version=protocol)) as conn:
        assert conn.info.pgconn.full_protocol_version == (30000 if protocol == "3.0" else 30002)
        timer = threading.Timer(0.5, conn.cancel_safe)
        started = time.monotonic()
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone()[0] == 2


async def test_client_gone_mid_query_cancels_upstream(pg, proxy):
    """A client that disappears during a long statement leaves no backend running it."""
    conn = await asyncpg.connect(proxy.dsn(application_name="vanishing_client"))
    task = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.5)
    conn.terminate()  # close the socket without Terminate, mid-query
    task.cancel()
    monitor = await asyncpg.connect(pg.dsn())
    try:
        deadline = time.monotonic() + 10
        remaining = None
        while time.monotonic() < deadline:
            remaining = await monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'vanishing_client'")
            if remaining == 0:
                break
            await asyncio.sleep(0.1)
        assert remaining == 0
    finally:
        await monitor.close()
