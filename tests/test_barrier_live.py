"""Row filters as security barriers, against a real server through a real pgveil (rules/crm.yaml).

Every attack here asks the server to evaluate a client expression (a cast that fails and
quotes its input) on rows or values the tier may not read, and checks that nothing of them
comes back, whatever order the planner picks, with costs the client sets itself.
"""

from __future__ import annotations

import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD as PASSWORD, start_proxy


COSTS = "    settings: [cpu_operator_cost, cpu_tuple_cost, random_page_cost, enable_seqscan]\n"


@pytest.fixture(scope="module")
def crm(pg, tier_users, tmp_path_factory):
    """rules/crm.yaml, with a tier rule that lets sales and customer_service change the planner's
    costs (the allow list refuses them otherwise): the barrier must hold whatever they are."""
    text = RULES.read_text()
    for statements in ("    statements: [read, write]\n    rows: {public.customers: \"grade <> 'top_secret'\"}\n",
                       "    statements: [read]\n    rows: {public.customers: \"grade = 'ordinary'\"}\n"):
        assert statements in text
        text = text.replace(statements, statements + COSTS, 1)
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(text)
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(path),
                        "--catalog-dsn", pg.dsn(database="crm"))
    yield proxy
    proxy.stop()


def hidden_values(pg, visible_grades: tuple, masked: tuple = ("id_number", "bank_card")) -> set:
    """Every value a tier must never see: all columns of rows outside its grades, and the clear
    values of its masked columns in every row."""
    grades = ", ".join(f"'{g}'" for g in visible_grades)
    with psycopg.connect(pg.dsn(database="crm")) as conn:
        rows = conn.execute(f"SELECT phone, address, name, id_number, bank_card FROM customers "
                            f"WHERE grade NOT IN ({grades})").fetchall()
        values = {v.strip() for row in rows for v in row if v}
        for column in masked:
            values |= {r[0].strip() for r in conn.execute(f"SELECT {column} FROM customers") if r[0]}
    assert len(values) > 50
    return {v for v in values if len(v) >= 6}


def outcome(conn, sql: str) -> str:
    """The statement's rows or error message, as text, in a transaction rolled back after it."""
    try:
        with conn.transaction(force_rollback=True):
            cur = conn.execute(sql)
            return repr(cur.fetchall() if cur.description else [])
    except psycopg.Error as exc:
        diag = exc.diag
        return " | ".join(str(x) for x in (exc, diag.message_detail, diag.context, diag.message_hint,
                                            diag.internal_query) if x)


def assert_nothing_of(hidden: set, text: str) -> None:
    leaked = [v for v in hidden if v in text]
    assert not leaked, f"leaked {leaked[:3]} in: {text[:300]}"


SETTINGS = ["RESET ALL", "SET cpu_operator_cost = 0", "SET enable_seqscan = off",
            "SET cpu_operator_cost = 1000; SET cpu_tuple_cost = 0; SET random_page_cost = 0.001"]

SALES_READS = [
    "SELECT id FROM customers WHERE grade <> 'ordinary' AND phone::regclass IS NULL",
    "SELECT id FROM customers WHERE phone::regclass IS NULL AND grade <> 'ordinary'",
    "SELECT id FROM customers WHERE grade = 'top_secret' AND (address || 'x')::int > 0",
    "SELECT id FROM customers WHERE id = 3 AND phone::regclass IS NULL",
    "SELECT id FROM customers c WHERE c.grade <> 'ordinary' AND c.name::regclass IS NULL",
    "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.phone::regclass IS NULL",
    "SELECT 1 FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id "
    "AND c.grade <> 'ordinary' AND c.phone::regclass IS NULL)",
    "SELECT (SELECT max(phone::int) FROM customers WHERE grade = 'confidential')",
    "SELECT x.id FROM (SELECT * FROM customers) x WHERE x.grade <> 'ordinary' AND x.address::regclass IS NULL",
    "SELECT id FROM customers WHERE grade <> 'ordinary' AND id_number::regclass IS NULL",
    "SELECT id FROM customers WHERE bank_card::numeric > 0",
    "SELECT count(*) FROM customers GROUP BY grade HAVING max(phone)::regclass IS NULL",
]


@pytest.mark.parametrize("setting", SETTINGS)
def test_sales_reads_never_see_filtered_rows_or_clear_masked_values(pg, crm, setting):
    hidden = hidden_values(pg, ("ordinary",))
    with psycopg.connect(crm.dsn("sales_li", PASSWORD), autocommit=True) as conn:
        for statement in setting.split("; "):
            conn.execute(statement)
        for sql in SALES_READS:
            assert_nothing_of(hidden, outcome(conn, sql))


def test_costs_from_connect_options_change_nothing(pg, crm):
    hidden = hidden_values(pg, ("ordinary",))
    dsn = crm.dsn("sales_li", PASSWORD) + "?options=-c%20cpu_operator_cost%3D0"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW cpu_operator_cost").fetchone()[0] == "0"
        for sql in SALES_READS:
            assert_nothing_of(hidden, outcome(conn, sql))


WRITES = [
    "UPDATE customers SET name = name WHERE grade = 'top_secret' AND phone::regclass IS NULL",
    "UPDATE customers SET name = name WHERE phone::regclass IS NULL",
    "UPDATE customers c SET name = c.name WHERE c.id > 0 AND c.address::regclass IS NULL",
    "DELETE FROM customers WHERE grade = 'top_secret' AND name::regclass IS NULL",
    "UPDATE customers c SET name = c.name FROM orders o WHERE o.customer_id = c.id AND c.phone::regclass IS NULL",
    "UPDATE customers SET phone = phone::regclass::text WHERE grade = 'top_secret'",
    "UPDATE customers SET name = 'x' WHERE grade = 'top_secret' RETURNING phone::regclass",
]


@pytest.mark.parametrize("setting", SETTINGS[:2])
def test_writes_apply_the_row_filter_before_the_client(pg, crm, setting):
    hidden = hidden_values(pg, ("ordinary", "confidential"))
    top_secret = pg.psql("SELECT min(id) FROM customers WHERE grade = 'top_secret'", "crm").strip()
    conflicts = [f"INSERT INTO customers (id, name, grade, created_at) VALUES ({top_secret}, 'x', 'ordinary', now()) "
                 f"ON CONFLICT (id) DO UPDATE SET name = excluded.name WHERE customers.phone::regclass IS NULL",
                 f"INSERT INTO customers AS c (id, name, grade, created_at) VALUES ({top_secret}, 'x', 'ordinary', "
                 f"now()) ON CONFLICT (id) DO UPDATE SET name = c.address::regclass::text"]
    with psycopg.connect(crm.dsn("crm_app", PASSWORD)) as conn:
        conn.execute(setting)
        conn.commit()
        for sql in WRITES + conflicts:
            assert_nothing_of(hidden, outcome(conn, sql))
    assert pg.psql(f"SELECT name <> 'x' FROM customers WHERE id = {top_secret}", "crm").strip() == "t"


def test_filtered_writes_still_change_visible_rows(pg, crm):
    with psycopg.connect(crm.dsn("crm_app", PASSWORD)) as conn:
        cur = conn.execute("UPDATE customers c SET name = c.name FROM orders o "
                           "WHERE o.customer_id = c.id AND o.id = 1 RETURNING c.id")
        assert len(cur.fetchall()) == 1
        assert conn.execute("DELETE FROM orders WHERE id = -1").rowcount == 0
        conn.rollback()


def test_point_lookup_through_the_fence_uses_the_index(crm):
    """The leakproof copy of ``id = $1`` goes inside the fence: an index scan, not a full scan."""
    with psycopg.connect(crm.dsn("sales_li", PASSWORD)) as conn:
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT name FROM customers WHERE id = %s", (7,)))
        assert "Index Scan using customers_pkey" in plan, plan
        assert conn.execute("SELECT id FROM customers WHERE id = %s", (1,)).fetchall() in ([(1,)], [])


def test_join_into_the_fence_uses_the_index_and_keeps_the_rows(pg, crm):
    """The semi-join copy (o's own copies, through c.id = o.customer_id) goes inside the fence."""
    sql = ("SELECT o.id, c.name, c.phone FROM orders o JOIN customers c ON c.id = o.customer_id "
           "WHERE o.id = %s ORDER BY o.id")
    with psycopg.connect(crm.dsn("sales_li", PASSWORD)) as conn:
        conn.execute("SET enable_seqscan = off")  # (500 customers: a scan would be cheaper; can it use the index?)
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, (3,)))
        assert "Index Scan using customers_pkey" in plan and "Seq Scan on customers" not in plan, plan
        got = [conn.execute(sql, (i,)).fetchall() for i in range(1, 60)]
    with psycopg.connect(pg.dsn(database="crm")) as conn:
        want = [conn.execute(sql.replace("JOIN customers c", "JOIN (SELECT * FROM customers "
                                         "WHERE grade = 'ordinary') c"), (i,)).fetchall() for i in range(1, 60)]
    assert got == want and sum(map(len, got)) > 10
