"""The policy engine on the wire, against a real server, with rules/crm.yaml.

The leak check: what a tier gets through pgveil must equal what the same statement returns
directly from a copy of the data in which that tier's protected columns already hold masked
values (computed here in Python, independently of pgveil's SQL) and its row filter is applied.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import psycopg
import pytest

from conftest import RULES, ROOT, TIER_PASSWORD as PASSWORD, TIER_USERS, run_psql, start_proxy
from proxy import sampledata


def partial(value, first, last):
    if value is None:
        return None
    if len(value) <= first + last:
        return "*" * len(value)
    return value[:first] + "*" * (len(value) - first - last) + value[len(value) - last:]


# What each tier must see of a customer row (id, name, phone, id_number, bank_card, address, grade),
# written from rules/crm.yaml by hand, and which grades it may see.
EXPECTED = {
    "customer_service": (lambda r: (r[0], r[1], r[2], partial(r[3], 6, 4), partial(r[4], 6, 4), r[5], r[6]),
                         lambda grade: grade != "top_secret"),
    "sales": (lambda r: (r[0], r[1], r[2], partial(r[3], 6, 4), partial(r[4], 6, 4), r[5], r[6]),
              lambda grade: grade == "ordinary"),
    "admin_office": (lambda r: (r[0], partial(r[1], 1, 0), partial(r[2], 3, 4), partial(r[3], 6, 4),
                                partial(r[4], 6, 4), "***", r[6]), lambda grade: True),
    "it": (lambda r: (r[0], None, None, None, None, None, r[6]), lambda grade: True),
    "dba": (lambda r: r, lambda grade: True),
}


@pytest.fixture(scope="module")
def crm(pg, tier_users):
    """A masked copy of the customers per tier, and pgveil enforcing rules/crm.yaml."""
    rows = [tuple(r[:7]) for r in sampledata.customers(500)]
    for tier, (mask, visible) in EXPECTED.items():
        values = []
        for row in rows:
            if visible(row[6]):
                masked = mask(row)
                values.append("(" + ", ".join(sampledata._quote(v) for v in masked) + ")")
        pg.psql(f"""
            CREATE SCHEMA masked_{tier};
            CREATE TABLE masked_{tier}.customers (LIKE public.customers);
            ALTER TABLE masked_{tier}.customers ALTER COLUMN created_at DROP NOT NULL, ALTER COLUMN name DROP NOT NULL;
            INSERT INTO masked_{tier}.customers (id, name, phone, id_number, bank_card, address, grade)
            VALUES {", ".join(values)};
            UPDATE masked_{tier}.customers m SET created_at = c.created_at FROM public.customers c WHERE c.id = m.id;
            CREATE TABLE masked_{tier}.orders AS SELECT * FROM public.orders;
            CREATE TABLE masked_{tier}.products AS SELECT * FROM public.products;
        """, "crm")
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(RULES),
                        "--catalog-dsn", pg.dsn(database="crm"))
    yield proxy
    proxy.stop()


def through(proxy, user, sql, params=None):
    with psycopg.connect(proxy.dsn(user, PASSWORD)) as conn:
        return conn.execute(sql, params).fetchall()


def direct(pg, tier, sql, params=None):
    with psycopg.connect(pg.dsn(database="crm")) as conn:
        conn.execute(f"SET search_path TO masked_{tier}")
        return conn.execute(sql, params).fetchall()


LEAK_STATEMENTS = [
    "SELECT * FROM customers ORDER BY id",
    "SELECT id, upper(id_number), id_number || '', length(bank_card) FROM customers ORDER BY id",
    "SELECT id FROM customers WHERE id_number LIKE '4201%' OR bank_card LIKE '622202%5%' ORDER BY id",
    "SELECT row_to_json(c)::text FROM customers c ORDER BY c.id",
    "SELECT c::text FROM customers c ORDER BY c.id",
    "SELECT count(*), count(DISTINCT phone), min(id_number), max(bank_card) FROM customers",
    "SELECT grade, string_agg(address, '|' ORDER BY id) FROM customers GROUP BY grade ORDER BY grade",
    "WITH x AS (SELECT * FROM customers WHERE id < 50) SELECT x.id_number, x.name FROM x ORDER BY x.id",
    "SELECT o.id, c.phone, c.id_number FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id LIMIT 200",
    "SELECT o.id, p.bank_card FROM orders o, LATERAL (SELECT bank_card FROM customers c WHERE c.id = o.customer_id) p "
    "ORDER BY o.id LIMIT 100",
    "SELECT phone FROM customers UNION SELECT id_number FROM customers ORDER BY 1",
    "SELECT (SELECT max(id_number) FROM customers), (SELECT count(*) FROM customers WHERE name LIKE '王%')",
    "SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE bank_card > '6222') ORDER BY id",
    "SELECT * FROM customers ORDER BY id_number, id LIMIT 20",
]


@pytest.mark.parametrize("user", ["crm_app", "sales_li", "admin_chen", "dba_sun"])
@pytest.mark.parametrize("sql", LEAK_STATEMENTS)
def test_leak_check_equals_masked_copy(pg, crm, user, sql):
    tier = TIER_USERS[user]
    assert through(crm, user, sql) == direct(pg, tier, sql)


def test_leak_check_it_tier_sees_structure_only(pg, crm):
    sql = "SELECT * FROM customers ORDER BY id"
    got = through(crm, "it_zhou", sql)
    assert got == direct(pg, "it", sql)
    assert all(row[3] is None and row[4] is None for row in got)


def test_leak_check_extended_protocol_and_binary(pg, crm):
    sql = "SELECT id, id_number, bank_card FROM customers WHERE id = ANY(%s) ORDER BY id"
    with psycopg.connect(crm.dsn("sales_li", PASSWORD)) as conn:
        got = conn.cursor(binary=True).execute(sql, ([1, 2, 3, 4, 5, 6, 7, 8],)).fetchall()
    assert got == direct(pg, "sales", sql, ([1, 2, 3, 4, 5, 6, 7, 8],))
    assert got and all("*" in row[1] for row in got)


async def test_leak_check_asyncpg_prepared(pg, crm):
    conn = await asyncpg.connect(crm.dsn("admin_chen", PASSWORD))
    try:
        stmt = await conn.prepare("SELECT id, name, id_number, address FROM customers WHERE id <= $1 ORDER BY id")
        got = [tuple(r) for r in await stmt.fetch(30)]
    finally:
        await conn.close()
    want = direct(pg, "admin_office", "SELECT id, name, id_number, address FROM customers WHERE id <= 30 ORDER BY id")
    assert got == [tuple(r) for r in want]


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("user, sql, words", [
    ("it_zhou", "SELECT id_number FROM customers", "column customers.id_number is not visible to tier it"),
    ("prod_wang", "SELECT * FROM customers", "relation public.customers is not visible to tier production"),
    ("partner_acme", "SELECT name FROM customers", "relation public.customers is not visible to tier third_party"),
    ("sales_li", "UPDATE customers SET phone = '1'", "write statements (UPDATE) are not allowed for tier sales"),
    ("sales_li", "SELECT query_to_xml('select * from customers', true, true, '')", "reaches data by other doors"),
    ("sales_li", "SELECT * FROM pg_stats", "relation pg_catalog.pg_stats is not visible"),
    ("sales_li", "SELECT pg_read_file('/etc/hostname')", "function pg_read_file is not allowed"),
    ("sales_li", "SELECT lo_import('/etc/hostname')", "function lo_import is not allowed"),
    ("sales_li", "SELECT query FROM pg_stat_activity", "relation pg_catalog.pg_stat_activity is not visible"),
    ("sales_li", "DO $$ BEGIN RAISE NOTICE 'x'; END $$", "DO blocks are not allowed"),
    ("crm_app", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", "CREATE FUNCTION is not allowed"),
    ("sales_li", "SET ROLE dba_sun", "changing role is not allowed"),
    ("sales_li", "SET SESSION AUTHORIZATION dba_sun", "changing session_authorization is not allowed"),
    ("sales_li", "SET standard_conforming_strings = off", "changing standard_conforming_strings is not allowed"),
    ("admin_chen", "COPY customers TO '/tmp/leak.csv'", "COPY to or from a file or program is not allowed"),
    ("sales_li", "PREPARE p AS SELECT id_number FROM customers", "session statements (PREPARE) are not allowed"),
    ("crm_app", "UPDATE customers SET name = 'x' WHERE id_number LIKE '11%'", "is masked for tier customer_service"),
    ("crm_app", "UPDATE customers SET id_number = '1' WHERE id = 1", "writing column customers.id_number"),
    ("crm_app", "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d", "data-modifying"),
    ("sales_li", "SELECT 1 FROM customers TABLESAMPLE SYSTEM (50)", "pgveil could not analyze this statement"),
])
def test_refusal_is_42501_with_reason(crm, user, sql, words):
    with psycopg.connect(crm.dsn(user, PASSWORD), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert info.value.sqlstate == "42501"
        assert words in str(info.value)
        assert conn.execute("SELECT 1").fetchone()[0] == 1  # the session is healthy


def test_unknown_identity_is_refused_at_connect(pg, crm):
    pg.psql("CREATE ROLE stranger LOGIN PASSWORD 'demo'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO stranger",
            "crm")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(crm.dsn("stranger", PASSWORD))
    assert 'no access rule matches user "stranger"' in str(info.value)


def test_restricted_tier_cannot_use_another_database(crm):
    with pytest.raises(psycopg.OperationalError, match='may only use database "crm"'):
        psycopg.connect(crm.dsn("sales_li", PASSWORD, database="postgres"))


def test_refusal_inside_transaction_aborts_it_like_postgres(crm, psql_bin):
    script = "BEGIN;\nSELECT 1;\nSELECT id_number FROM customers LIMIT 1;\nSELECT 2;\nROLLBACK;\nSELECT 'after';\n"
    result = run_psql(psql_bin, crm, "-Atq", user="it_zhou", password=PASSWORD, input=script)
    assert "column customers.id_number is not visible to tier it" in result.stderr
    assert "current transaction is aborted" in result.stderr
    assert result.stdout.split() == ["1", "after"]


def test_refusal_in_psycopg_pipeline_then_healthy(crm):
    with psycopg.connect(crm.dsn("sales_li", PASSWORD), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("SELECT * FROM pg_stats")
                conn.execute("SELECT 3")
        assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 6


async def test_refusal_in_asyncpg_prepared_then_healthy(crm):
    conn = await asyncpg.connect(crm.dsn("it_zhou", PASSWORD))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="not visible to tier it"):
            await conn.fetch("SELECT bank_card FROM customers WHERE id = $1", 1)
        async with conn.transaction():
            assert await conn.fetchval("SELECT count(*) FROM customers WHERE id < $1", 10) == 9
    finally:
        await conn.close()


def test_multi_statement_query_is_refused_whole(pg, crm):
    with psycopg.connect(crm.dsn("crm_app", PASSWORD), autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="writing column"):
            conn.execute("UPDATE orders SET quantity = quantity WHERE id = 1; UPDATE customers SET bank_card = 'x'")
    assert pg.psql("SELECT count(*) FROM customers WHERE bank_card = 'x'", "crm").strip() == "0"


def test_function_call_message_is_refused(crm):
    """The protocol's FunctionCall (libpq's PQfn) reaches functions without SQL: refused."""
    async def call():
        conn = await asyncpg.connect(crm.dsn("sales_li", PASSWORD))
        try:
            from proxy import codec
            transport = conn._transport
            reply = asyncio.get_running_loop().create_future()
            protocol = conn._protocol
            original = protocol.data_received

            def capture(data):
                if not reply.done():
                    reply.set_result(data)
            protocol.data_received = capture
            transport.write(codec.encode(codec.FunctionCall(1, (), (), 0)))
            data = await asyncio.wait_for(reply, 5)
            protocol.data_received = original
            return data
        finally:
            conn.terminate()
    data = asyncio.run(call())
    assert b"C42501" in data and b"FunctionCall message is not allowed" in data


# ----------------------------------------------------------------------------- writes
def test_writes_keep_masks_filters_and_details(pg, crm):
    top_secret = pg.psql("SELECT min(id) FROM customers WHERE grade = 'top_secret'", "crm").strip()
    with psycopg.connect(crm.dsn("crm_app", PASSWORD)) as conn:
        row = conn.execute("UPDATE customers SET phone = phone WHERE id = 1 RETURNING *").fetchone()
        assert "*" in row[3] and "*" in row[4]  # RETURNING * is masked
        cur = conn.execute(f"UPDATE customers SET phone = '0' WHERE id = {top_secret}")
        assert cur.rowcount == 0  # the row filter applies to writes
        with pytest.raises(psycopg.errors.UniqueViolation) as info:
            conn.execute("INSERT INTO customers (id, name, grade, created_at) VALUES (1, 'x', 'ordinary', now())")
        assert info.value.diag.message_detail is None  # "Key (id)=(1) already exists." stripped
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation) as info:
            conn.execute("UPDATE customers SET grade = 'bogus' WHERE id = 1")
        assert info.value.diag.message_detail is None  # "Failing row contains (...)" stripped
        conn.rollback()
    with psycopg.connect(crm.dsn("dba_sun", PASSWORD)) as conn:  # all-clear: details kept
        with pytest.raises(psycopg.errors.CheckViolation) as info:
            conn.execute("UPDATE customers SET grade = 'bogus' WHERE id = 1")
        assert "Failing row contains" in info.value.diag.message_detail


# ----------------------------------------------------------------------------- statements in statements
def test_server_side_cursor_explain_and_copy(pg, crm):
    with psycopg.connect(crm.dsn("sales_li", PASSWORD)) as conn:
        with conn.cursor(name="c") as cur:
            cur.execute("SELECT id, id_number FROM customers ORDER BY id")
            rows = cur.fetchmany(5)
        assert rows and all("*" in r[1] for r in rows)
        plan = conn.execute("EXPLAIN ANALYZE SELECT * FROM customers WHERE id_number LIKE '11%'").fetchall()
        assert any("customers" in line[0] for line in plan)
        conn.rollback()
    with psycopg.connect(crm.dsn("admin_chen", PASSWORD)) as conn:
        with conn.cursor().copy("COPY customers (id, bank_card, address) TO STDOUT") as copy:
            rows = list(copy.rows())
    want = direct(pg, "admin_office", "SELECT id::text, bank_card, address FROM customers ORDER BY customers.id")
    assert sorted(rows, key=lambda r: int(r[0])) == [tuple(r) for r in want]


def test_misparse_tricks_still_masked(pg, crm):
    for sql in ["SELECT 1 /* /* nested */ */ , id_number FROM customers WHERE id = 1",
                "SELECT $$x$$ || id_number FROM customers WHERE id = 1",
                "SELECT E'\\'' || id_number FROM customers WHERE id = 1",
                'SELECT "id_number" FROM "customers" WHERE id = 1',
                "select ID_NUMBER from CUSTOMERS where ID = 1"]:
        value = through(crm, "sales_li", sql)[0][-1]
        assert "********" in value, sql


def test_psql_describe_and_query_for_restricted_tier(crm, psql_bin):
    result = run_psql(psql_bin, crm, "-At", "-c", r"\d customers", "-c", "SELECT id_number FROM customers ORDER BY id "
                      "LIMIT 1", user="sales_li", password=PASSWORD)
    assert result.returncode == 0, result.stderr
    assert "id_number" in result.stdout and result.stdout.strip().splitlines()[-1].count("*") == 8


def test_cli_check_and_explain(pg):
    pgveil = [str(ROOT / ".venv" / "bin" / "pgveil")] if (ROOT / ".venv" / "bin" / "pgveil").exists() else \
        [sys.executable, "-m", "proxy"]
    result = subprocess.run([*pgveil, "check", str(RULES), "--catalog-dsn", pg.dsn(database="crm")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "customer_service" in result.stdout and "rules version" in result.stdout
    result = subprocess.run([*pgveil, "explain", "--rules", str(RULES), "--tier", "sales", "--catalog-dsn",
                             pg.dsn(database="crm"), "SELECT bank_card FROM customers"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "decision: rewrite" in result.stdout
    assert 'FROM "public"."customers" WHERE (grade = \'ordinary\') OFFSET 0) AS' in result.stdout
    result = subprocess.run([*pgveil, "explain", "--rules", str(RULES), "--tier", "it", "--catalog-dsn",
                             pg.dsn(database="crm"), "SELECT bank_card FROM customers"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "not visible to tier it" in result.stdout
