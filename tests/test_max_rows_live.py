"""max_rows counts the rows that reach the client however they travel, through a real pgveil.

sales may read 5 rows with ID numbers per statement; admin_office (which has COPY) 5 rows with
any sensitive column.  Every route below tries to get more: a portal resumed after
PortalSuspended (named and unnamed statements), a cursor fetched in pieces (SQL and driver),
SQL PREPARE/EXECUTE, COPY TO STDOUT, a column renamed by an alias list, and aggregates that
pack rows into one value.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD as PASSWORD, TRUST_USER, start_with_rules
from proxy import codec

SALES = "see: {person_name: clear, phone: clear, address: clear, id_number: mask, bank_card: mask}\n" \
        "    statements: [read]\n"


@pytest.fixture(scope="module")
def limited(pg, tier_users, tmp_path_factory):
    text = RULES.read_text()
    text = text.replace(SALES, SALES.replace("[read]", "[read, session]") + "    max_rows: {id_number: 5}\n", 1)
    text = text.replace("    statements: [read, copy]\n", "    statements: [read, copy]\n    max_rows: 5\n", 1)
    text = text.replace("identities:                               # first match wins\n",
                        f"identities:\n  - {{user: {TRUST_USER}, tier: sales}}\n", 1)
    assert "max_rows: {id_number: 5}" in text and "max_rows: 5\n" in text and TRUST_USER in text
    proxy = start_with_rules(pg, tmp_path_factory.mktemp("rules") / "rules.yaml", text)
    yield proxy
    proxy.stop()


async def raw(port: int, messages: list) -> list:
    """Start up as the trust user (tier sales), send ``messages`` then Sync, return what came back
    up to ReadyForQuery."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(codec.encode_startup(codec.StartupMessage(codec.PROTOCOL_3_0, (("user", TRUST_USER),
                                                                                 ("database", "crm")))))
    splitter = codec.Splitter(b"".join(bytes([k]) for k in range(256)))
    got: list = []

    async def until_ready() -> None:
        count = sum(isinstance(m, codec.ReadyForQuery) for m in got)
        while sum(isinstance(m, codec.ReadyForQuery) for m in got) == count:
            data = await asyncio.wait_for(reader.read(65536), 20)
            assert data, got
            out, marks = splitter.feed(data)
            got.extend(codec.decode_message(codec.BACKEND, bytes(out[s:e])) for _, s, e in marks)

    await until_ready()
    got.clear()
    writer.write(b"".join(codec.encode(m) for m in messages) + codec.encode(codec.Sync()))
    await until_ready()
    writer.write(codec.encode(codec.Terminate()))
    writer.close()
    return got


SQL = "SELECT id, id_number FROM customers ORDER BY id"


@pytest.mark.parametrize("statement", ["", "named"])
@pytest.mark.parametrize("portal", ["", "p1"])
def test_portal_resumed_after_suspension_is_one_result(limited, statement, portal):
    got = asyncio.run(raw(limited.port, [
        codec.Parse(statement, SQL, ()), codec.Bind(portal, statement, (), (), ()),
        codec.Execute(portal, 3), codec.Execute(portal, 0)]))
    rows = [m for m in got if isinstance(m, codec.DataRow)]
    errors = [m.get(b"C") for m in got if isinstance(m, codec.ErrorResponse)]
    assert len(rows) == 5 and errors == ["54000"], (len(rows), errors)


def test_unnamed_statement_bound_again_keeps_its_limit(limited):
    got = asyncio.run(raw(limited.port, [
        codec.Parse("", SQL, ()), codec.Bind("", "", (), (), ()), codec.Execute("", 2),
        codec.Bind("", "", (), (), ()), codec.Execute("", 0)]))
    rows = [m for m in got if isinstance(m, codec.DataRow)]
    assert len(rows) == 7 and [m.get(b"C") for m in got if isinstance(m, codec.ErrorResponse)] == ["54000"]


def test_sql_cursor_fetched_in_pieces(limited):
    with psycopg.connect(limited.dsn("sales_li", PASSWORD)) as conn:
        conn.execute(f"DECLARE c CURSOR FOR {SQL}")
        got = conn.execute("FETCH 3 FROM c").fetchall()
        with pytest.raises(psycopg.Error) as info:
            got += conn.execute("FETCH 3 FROM c").fetchall()
        assert info.value.sqlstate == "54000" and len(got) == 3
        conn.rollback()
        with conn.cursor(name="named") as cur:  # psycopg's server-side cursor: DECLARE, FETCH FORWARD n
            cur.execute(SQL)
            fetched = []
            with pytest.raises(psycopg.Error) as info:
                for _ in range(4):
                    fetched += cur.fetchmany(2)
            assert info.value.sqlstate == "54000" and len(fetched) <= 5


def test_sql_prepare_execute(limited):
    with psycopg.connect(limited.dsn("sales_li", PASSWORD), autocommit=True) as conn:
        conn.execute(f"PREPARE q AS {SQL}")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("EXECUTE q").fetchall()
        assert info.value.sqlstate == "54000"
        conn.execute("DEALLOCATE q")
        conn.execute("PREPARE q AS SELECT id, name FROM customers ORDER BY id")
        assert len(conn.execute("EXECUTE q").fetchall()) > 5  # no ID numbers: no limit


def test_copy_to_stdout_is_counted(limited):
    with psycopg.connect(limited.dsn("admin_chen", PASSWORD)) as conn:
        rows = []
        with pytest.raises(psycopg.Error) as info:
            with conn.cursor().copy("COPY customers (id, id_number) TO STDOUT") as copy:
                for row in copy.rows():
                    rows.append(row)
        assert info.value.sqlstate == "54000" and len(rows) <= 5


def test_alias_list_keeps_the_column_and_its_limit(limited):
    with psycopg.connect(limited.dsn("sales_li", PASSWORD), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT x FROM customers AS c(a, b, p, x) ORDER BY a").fetchall()
        assert info.value.sqlstate == "54000"
    with psycopg.connect(limited.dsn("it_zhou", PASSWORD), autocommit=True) as conn:  # every class blocked
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="customers.id_number is not visible"):
            conn.execute("SELECT x FROM customers AS c(a, b, p, x)").fetchall()


@pytest.mark.parametrize("sql", [
    "SELECT string_agg(id_number, ',') FROM customers",
    "SELECT array_agg(id_number) FROM customers",
    "SELECT json_agg(c) FROM customers c",
    "SELECT jsonb_agg(id_number) FROM customers",
    "SELECT ARRAY(SELECT id_number FROM customers)",
    "SELECT (SELECT string_agg(x, '') FROM customers AS c(a, b, p, x))",
    "WITH RECURSIVE r(n, s) AS (SELECT 1, ''::text UNION ALL SELECT n + 1, s || (SELECT id_number FROM customers "
    "WHERE id = n) FROM r WHERE n < 50) SELECT max(s) FROM r",
])
def test_row_packing_over_limited_columns_is_refused(limited, sql):
    with psycopg.connect(limited.dsn("sales_li", PASSWORD), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="packs many rows into one value"):
            conn.execute(sql).fetchall()
        assert conn.execute("SELECT string_agg(name, ',') FROM customers WHERE id < 10").fetchone()[0]


async def test_asyncpg_cursor_on_unnamed_statements(limited):
    conn = await asyncpg.connect(limited.dsn("sales_li", PASSWORD), statement_cache_size=0)
    try:
        got = []
        async with conn.transaction():
            cursor = await conn.cursor(SQL)
            with pytest.raises(asyncpg.PostgresError) as info:
                got += await cursor.fetch(3)
                got += await cursor.fetch(100)
            assert info.value.sqlstate == "54000"
        assert len(got) == 3
    finally:
        await conn.close()
