"""Real drivers through the proxy: asyncpg, psycopg 3 and SQLAlchemy on both.

The extended protocol (Parse/Bind/Describe/Execute, named and unnamed statements, pipelining,
portals with row limits, errors until Sync) is where proxies break, so it is tested hardest.
"""

import datetime
import decimal

import asyncpg
import psycopg
import pytest
from psycopg import sql as psql

from proxy import sampledata


# ----------------------------------------------------------------------------- asyncpg
async def test_asyncpg_types_and_prepared(proxy):
    conn = await asyncpg.connect(proxy.dsn())
    try:
        row = await conn.fetchrow("SELECT id, name, id_number, created_at FROM customers WHERE id = $1", 1)
        expected = sampledata.customers(1)[0]
        assert (row["id"], row["name"], row["id_number"]) == expected[:2] + (expected[3],)
        assert row["created_at"] == datetime.date.fromisoformat(expected[7])
        stmt = await conn.prepare("SELECT unit_price FROM products WHERE id = $1")
        prices = [await stmt.fetchval(i) for i in range(1, 7)]
        assert prices[0] == decimal.Decimal("50.00") and len(set(prices)) == 6
        # binary arrays, json, NULL round trip
        value = await conn.fetchval("SELECT $1::int[]", [1, None, 3])
        assert value == [1, None, 3]
        assert await conn.fetchval("SELECT $1::jsonb ->> 'a'", '{"a": "x"}') == "x"
    finally:
        await conn.close()


async def test_asyncpg_errors_recover(proxy):
    conn = await asyncpg.connect(proxy.dsn())
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.fetch("SELECT * FROM nope")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("SELECT 1 / $1::int", 0)
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE t (a int PRIMARY KEY)")
            await conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1)")
        assert await conn.fetchval("SELECT count(*) FROM t") == 1
    finally:
        await conn.close()


async def test_asyncpg_executemany_cursor_copy(proxy):
    conn = await asyncpg.connect(proxy.dsn())
    try:
        await conn.execute("CREATE TEMP TABLE items (id int, label text)")
        await conn.executemany("INSERT INTO items VALUES ($1, $2)", [(i, f"item {i}") for i in range(1000)])
        assert await conn.fetchval("SELECT count(*) FROM items") == 1000
        async with conn.transaction():
            seen = [r["id"] async for r in conn.cursor("SELECT id FROM items ORDER BY id", prefetch=37)]
        assert seen == list(range(1000))
        async with conn.transaction():
            cursor = await conn.cursor("SELECT id FROM items ORDER BY id")
            assert [r["id"] for r in await cursor.fetch(5)] == [0, 1, 2, 3, 4]
            await cursor.forward(10)
            assert (await cursor.fetchrow())["id"] == 15
        records = [(i, f"copied {i}") for i in range(2000, 2500)]
        await conn.copy_records_to_table("items", records=records)
        assert await conn.fetchval("SELECT count(*) FROM items WHERE id >= 2000") == 500
        import io
        buf = io.BytesIO()
        await conn.copy_from_query("SELECT * FROM items WHERE id < 10 ORDER BY id", output=buf, format="csv")
        assert buf.getvalue().decode().splitlines()[3] == "3,item 3"
    finally:
        await conn.close()


async def test_asyncpg_listen_notify(proxy):
    listener = await asyncpg.connect(proxy.dsn())
    sender = await asyncpg.connect(proxy.dsn())
    try:
        import asyncio
        received = asyncio.get_running_loop().create_future()
        await listener.add_listener("events", lambda *args: received.set_result(args[3]))
        await sender.execute("NOTIFY events, 'hello'")
        assert await asyncio.wait_for(received, 5) == "hello"
        notices = []
        listener.add_log_listener(lambda conn, msg: notices.append(msg.message))
        await listener.execute("DO $$ BEGIN RAISE NOTICE 'note %', 42; END $$")
        assert notices == ["note 42"]
    finally:
        await listener.close()
        await sender.close()


async def test_asyncpg_pool_and_statement_cache(proxy):
    pool = await asyncpg.create_pool(proxy.dsn(), min_size=2, max_size=4)
    try:
        import asyncio
        results = await asyncio.gather(*(pool.fetchval("SELECT count(*) FROM orders WHERE customer_id = $1", i)
                                         for i in range(1, 101)))
        expected = {}
        for _, customer, *_ in sampledata.orders(1500, 500):
            expected[customer] = expected.get(customer, 0) + 1
        assert results == [expected.get(i, 0) for i in range(1, 101)]
    finally:
        await pool.close()


# ----------------------------------------------------------------------------- psycopg 3
def test_psycopg_text_and_binary(proxy):
    with psycopg.connect(proxy.dsn()) as conn:
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute("SELECT id, bank_card, created_at FROM customers WHERE id = ANY(%s) ORDER BY id", ([1, 2],))
                rows = cur.fetchall()
            expected = sampledata.customers(2)
            assert [(r[0], r[1]) for r in rows] == [(c[0], c[4]) for c in expected]
            assert rows[0][2] == datetime.date.fromisoformat(expected[0][7])


def test_psycopg_pipeline_with_error(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with conn.pipeline():
            c1 = conn.execute("SELECT 1")
            c2 = conn.execute("SELECT %s::text", ["two"])
            c3 = conn.execute("SELECT count(*) FROM products")
        assert (c1.fetchone()[0], c2.fetchone()[0], c3.fetchone()[0]) == (1, "two", 6)
        with pytest.raises(psycopg.errors.UndefinedTable):
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("SELECT * FROM nope")
                conn.execute("SELECT 3")
        assert conn.execute("SELECT 'after'").fetchone()[0] == "after"


def test_psycopg_server_side_cursor_and_executemany(proxy):
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE nums (n int)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO nums VALUES (%s)", [(i,) for i in range(300)])
        with conn.cursor(name="server_side") as cur:
            cur.itersize = 17
            cur.execute("SELECT n FROM nums ORDER BY n")
            assert [r[0] for r in cur] == list(range(300))
        conn.rollback()


def test_psycopg_copy(proxy):
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE c (id int, v text)")
        with conn.cursor() as cur:
            with cur.copy("COPY c FROM STDIN") as copy:
                for i in range(5000):
                    copy.write_row((i, f"v{i}"))
            with cur.copy("COPY (SELECT * FROM c ORDER BY id) TO STDOUT") as copy:
                rows = list(copy.rows())
        assert len(rows) == 5000 and rows[42] == ("42", "v42")
        with pytest.raises(psycopg.errors.QueryCanceled):
            with conn.cursor() as cur, cur.copy("COPY c FROM STDIN") as copy:
                copy.write_row((1, "x"))
                raise psycopg.errors.QueryCanceled("client aborted COPY")
        conn.rollback()
        assert conn.execute(psql.SQL("SELECT {}").format(psql.Literal("ok"))).fetchone()[0] == "ok"


def test_psycopg_protocol_3_2(proxy):
    """libpq 18 can ask for protocol 3.2, where the cancel key is longer; it must still work."""
    with psycopg.connect(proxy.dsn(max_protocol_version="3.2")) as conn:
        assert conn.info.pgconn.full_protocol_version == 30002
        assert conn.execute("SELECT 42").fetchone()[0] == 42


# ----------------------------------------------------------------------------- SQLAlchemy
def test_sqlalchemy_psycopg(proxy):
    import sqlalchemy as sa

    engine = sa.create_engine(proxy.dsn().replace("postgresql://", "postgresql+psycopg://"))
    try:
        meta = sa.MetaData()
        customers = sa.Table("customers", meta, autoload_with=engine)
        with engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(customers)
                                 .where(customers.c.grade == "ordinary")).scalar_one()
        expected = sum(1 for c in sampledata.customers(500) if c[6] == "ordinary")
        assert count == expected
    finally:
        engine.dispose()


async def test_sqlalchemy_asyncpg(proxy):
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(proxy.dsn().replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with engine.begin() as conn:
            rows = (await conn.execute(sa.text("SELECT id, name FROM products ORDER BY id"))).all()
        assert [r.name for r in rows] == sampledata.PRODUCTS
    finally:
        await engine.dispose()
