"""Errors carry nothing, through a real pgveil in front of a real server (rules/crm.yaml).

Each error class PostgreSQL fills with the input it failed on is provoked from a masked column
(customer_service's id_number) and from a column of a row-filtered table (sales' phone): the
client gets the SQLSTATE and severity, a message without the value, and no DETAIL, CONTEXT,
HINT or internal query.  An all-clear tier still gets the server's own text.
"""

from __future__ import annotations

import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD as PASSWORD, start_proxy


@pytest.fixture(scope="module")
def crm(pg, tier_users):
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(RULES),
                        "--catalog-dsn", pg.dsn(database="crm"))
    yield proxy
    proxy.stop()


# (SQLSTATE, an expression over {col} that fails on its value and quotes it)
CLASSES = [
    ("22P02", "('x' || {col})::int"),
    ("22003", "left({col}, 6)::smallint"),
    ("22007", "('x' || {col})::date"),
    ("22008", "make_date(left({col}, 4)::int, 13, 1)"),
    ("22023", "convert_to('a', left({col}, 6))"),
    ("22P02", "({col} || '*')::json"),  # and CONTEXT: JSON data, line 1: ...
    ("2203A", "jsonb_path_query('{{}}', ('strict $.a' || left({col}, 6))::jsonpath)"),
    ("42P01", "('x' || left({col}, 6))::regclass"),
    ("42883", "('x' || left({col}, 6))::regproc"),
    ("42704", "('x' || left({col}, 6))::regtype"),
    ("3F000", "('x' || left({col}, 6))::regnamespace"),
    ("42601", "to_tsquery({col} || ' ** x')"),
]
TIERS = [("crm_app", "id_number", "id = 1"), ("sales_li", "phone", "id = (SELECT min(id) FROM customers)")]


@pytest.mark.parametrize("user, column, where", TIERS, ids=["masked", "row-filtered"])
@pytest.mark.parametrize("sqlstate, expression", CLASSES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CLASSES)])
def test_error_classes_keep_code_and_lose_values(crm, user, column, where, sqlstate, expression):
    with psycopg.connect(crm.dsn(user, PASSWORD), autocommit=True) as conn:
        value = conn.execute(f"SELECT {column} FROM customers WHERE {where}").fetchone()[0]
        assert value and len(value) >= 11
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"SELECT {expression.format(col=column)} FROM customers WHERE {where}")
        diag = info.value.diag
        assert diag.sqlstate == sqlstate and diag.severity == "ERROR"
        for field in (diag.message_detail, diag.context, diag.message_hint, diag.internal_query):
            assert field is None
        assert value[:4] not in diag.message_primary and value[-4:] not in diag.message_primary, \
            diag.message_primary
        assert f"SQLSTATE {sqlstate}" in diag.message_primary
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_integrity_errors_keep_their_message_without_the_row(pg, crm):
    """A filtered row's key, through a unique violation: the message names the constraint only."""
    top_secret = pg.psql("SELECT min(id) FROM customers WHERE grade = 'top_secret'", "crm").strip()
    with psycopg.connect(crm.dsn("crm_app", PASSWORD)) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation) as info:
            conn.execute(f"INSERT INTO customers (id, name, grade, created_at) VALUES ({top_secret}, 'x', 'ordinary', "
                         f"now())")
        diag = info.value.diag
        assert diag.message_primary == 'duplicate key value violates unique constraint "customers_pkey"'
        assert diag.message_detail is None and diag.constraint_name == "customers_pkey"


def test_notices_lose_their_text_for_restricted_tiers(crm):
    """Notices go through the same filter: the server's (here class 00000 from DROP ... IF EXISTS)
    quote names and values from the statement, and a function's RAISE NOTICE can say anything."""
    notices = []
    with psycopg.connect(crm.dsn("it_zhou", PASSWORD), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append((diag.sqlstate, diag.message_primary)))
        conn.execute("DROP TABLE IF EXISTS no_such_table_4201")
    assert notices and all("4201" not in text for _, text in notices), notices


def test_all_clear_tier_keeps_the_servers_text(crm):
    with psycopg.connect(crm.dsn("dba_sun", PASSWORD), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT '420102x'::int")
        assert info.value.diag.message_primary == 'invalid input syntax for type integer: "420102x"'
