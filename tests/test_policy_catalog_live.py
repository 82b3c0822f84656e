"""Names resolved as PostgreSQL resolves them, read from a real catalog: partitions and
inheritance children carry their parent's classes, and view columns those of their base
columns (lineage from pg_get_viewdef and pg_depend)."""

import psycopg
import pytest

from conftest import TIER_PASSWORD, start_proxy

RULES = """
version: 1
classes:
  id_number: {mask: {fn: partial, keep_first: 2, keep_last: 2}}
  bank_card: {mask: {fn: partial, keep_first: 4, keep_last: 2}}
columns:
  public.calls.caller_id: id_number
  public.customers.bank_card: bank_card
  public.customers.id_number: id_number
tiers:
  sales: {see: {id_number: mask}, statements: [read]}
  admin: {see: {"*": clear}, statements: [read, write, ddl, copy, session, admin]}
identities:
  - {user: sales_li, tier: sales}
  - {user: dba_sun, tier: admin}
"""


@pytest.fixture
def catalog_proxy(pg, tier_users, tmp_path):
    pg.psql("""
        CREATE TABLE calls (id int, caller_id text, at date) PARTITION BY RANGE (at);
        CREATE TABLE calls_2025 PARTITION OF calls FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        INSERT INTO calls VALUES (1, '110105194912310021', '2025-03-01');
        CREATE TABLE customers_vip (vip_since date) INHERITS (customers);
        INSERT INTO customers_vip (id, name, id_number, bank_card, grade, created_at)
            VALUES (900001, 'VIP', '110105194912310021', '6222020200112233445', 'ordinary', '2025-01-01');
        CREATE VIEW customer_cards AS SELECT c.id, c.name AS holder, c.bank_card AS card, upper(c.id_number) AS ident
            FROM customers c;
        GRANT SELECT ON calls, calls_2025, customers_vip, customer_cards TO sales_li, dba_sun;
    """, "crm")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(rules),
                        "--catalog-dsn", pg.dsn(database="crm"))
    yield proxy
    proxy.stop()
    pg.psql("DROP VIEW customer_cards; DROP TABLE customers_vip; DROP TABLE calls;", "crm")


def one(proxy, sql):
    with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD)) as conn:
        return conn.execute(sql).fetchone()


def test_partition_queried_directly_is_masked(catalog_proxy):
    assert one(catalog_proxy, "SELECT caller_id FROM calls_2025") == ("11**************21",)
    assert one(catalog_proxy, "SELECT caller_id FROM calls") == ("11**************21",)


def test_inheritance_child_and_parent_rows(catalog_proxy):
    assert one(catalog_proxy, "SELECT id_number FROM customers_vip") == ("11**************21",)
    (count,) = one(catalog_proxy, "SELECT count(*) FROM customers WHERE id_number = '110105194912310021'")
    assert count == 0  # the child's row is reached through the parent too, masked
    with psycopg.connect(catalog_proxy.dsn("sales_li", TIER_PASSWORD)) as conn:
        with pytest.raises(psycopg.Error, match="customers_vip.bank_card is not visible"):
            conn.execute("SELECT bank_card FROM customers_vip")


def test_view_columns_take_their_base_columns_classes(catalog_proxy):
    with psycopg.connect(catalog_proxy.dsn("sales_li", TIER_PASSWORD)) as conn:
        holder, ident = conn.execute("SELECT holder, ident FROM customer_cards WHERE id = 900001").fetchone()
        assert holder == "VIP" and ident == "11**************21"  # derived from id_number: masked
        with pytest.raises(psycopg.Error, match="customer_cards.card is not visible"):
            conn.execute("SELECT card FROM customer_cards")  # derived from bank_card, blocked for sales
        conn.rollback()
        row = conn.execute("SELECT v.* FROM (SELECT * FROM customer_cards WHERE id = 900001) v").fetchone()
        assert row == (900001, "VIP", None, "11**************21")  # a star reaches it as NULL
    with psycopg.connect(catalog_proxy.dsn("dba_sun", TIER_PASSWORD)) as conn:
        assert conn.execute("SELECT card FROM customer_cards WHERE id = 900001").fetchone() == ("6222020200112233445",)


def test_view_over_a_row_filtered_table_is_refused(catalog_proxy, tmp_path, pg):
    """Row grades: a view cannot carry the base table's row filter, so a tier with one is refused."""
    rules = tmp_path / "graded.yaml"
    rules.write_text(RULES.replace("sales: {see: {id_number: mask}, statements: [read]}",
                                   "sales: {see: {id_number: mask}, statements: [read], "
                                   "rows: {public.customers: \"grade = 'ordinary'\"}}"))
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(rules),
                        "--catalog-dsn", pg.dsn(database="crm"))
    try:
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            with pytest.raises(psycopg.Error, match="view public.customer_cards reads public.customers"):
                conn.execute("SELECT holder FROM customer_cards")
            # the table itself, and its partitions and children, carry the filter
            grades = {g for (g,) in conn.execute("SELECT DISTINCT grade FROM customers").fetchall()}
            assert grades == {"ordinary"}
    finally:
        proxy.stop()
