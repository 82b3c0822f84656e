"""Many sessions at once, each with its own work, all correct."""

import asyncio

import asyncpg


async def test_200_concurrent_sessions(proxy):
    async def worker(n: int) -> tuple[int, int]:
        conn = await asyncpg.connect(proxy.dsn(), timeout=30)
        try:
            total = 0
            for i in range(5):
                total += await conn.fetchval("SELECT $1::int + count(*) FROM orders WHERE customer_id = $2",
                                             n, (n * 5 + i) % 500 + 1)
            async with conn.transaction():
                got = await conn.fetchval("SELECT sum(x) FROM generate_series(1, $1) x", n)
            return total, got
        finally:
            await conn.close()

    counts = {}
    direct = await asyncpg.connect(proxy.dsn())
    try:
        for row in await direct.fetch("SELECT customer_id, count(*) AS n FROM orders GROUP BY 1"):
            counts[row["customer_id"]] = row["n"]
    finally:
        await direct.close()
    results = await asyncio.gather(*(worker(n) for n in range(1, 201)))
    for n, (total, got) in enumerate(results, start=1):
        assert total == 5 * n + sum(counts.get((n * 5 + i) % 500 + 1, 0) for i in range(5))
        assert got == n * (n + 1) // 2
