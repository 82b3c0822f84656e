"""Attacks of the second review (after issues 12, 14 and 15 were filed), as users of the ordinary
restricted tiers of rules/crm.yaml, against a real PostgreSQL through a real pgveil process.

Each test shows one hole: while it is open the test fails, and is marked
``xfail(strict=True)`` with the hole as its reason; the fix removes the mark."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD, start_with_rules


@pytest.fixture(scope="module")
def guarded(pg, tier_users, tmp_path_factory):
    process = start_with_rules(pg, tmp_path_factory.mktemp("attacks") / "crm.yaml", RULES.read_text())
    yield process
    process.stop()


async def _connect(proxy, user):
    return await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=user, password=TIER_PASSWORD,
                                 database="crm", ssl=False, timeout=30)


def test_short_nested_array_constructor_does_not_hold_the_worker(guarded):
    """sqlglot parses nested ``ARRAY[`` constructors in time exponential in their depth (depth 14:
    ~1-4 s, 16: ~15 s, 20: ~4 min) although the text is ~125 bytes with no parenthesis, so
    proxy.limits.decided_apart keeps its cold decision on the worker's event loop: every other
    session of the worker waits.  As partner_acme (third_party): another session's SELECT 1 must
    still answer promptly."""
    depth = 16
    sql = "SELECT " + "ARRAY[" * depth + "1" + "]" * depth

    async def scenario():
        costly, other = await _connect(guarded, "partner_acme"), await _connect(guarded, "sales_li")
        try:
            assert await other.fetchval("SELECT 1") == 1
            task = asyncio.create_task(costly.execute(sql))
            await asyncio.sleep(0.5)  # the statement has reached the proxy
            started = time.monotonic()
            try:
                assert await asyncio.wait_for(other.fetchval("SELECT 1"), 8) == 1
            finally:
                waited = time.monotonic() - started
                task.cancel()
            return waited
        finally:
            costly.terminate()
            await other.close()

    waited = asyncio.run(scenario())
    assert waited < 3.0, f"SELECT 1 of another session waited {waited:.1f} s behind a 125-byte statement"
