"""pgveil reads every statement as PostgreSQL will (issue 12), live, per restricted tier.

The proxy enforces rules/crm.yaml, with one change: the sales tier may also run session
statements, so that PREPARE/EXECUTE are analysed for a tier without ``admin`` too (``it`` has
both).  A statement of a restricted tier either is refused or gives no clear ID number.
"""

from __future__ import annotations

import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD as PASSWORD, start_with_rules
from proxy import sampledata

RESTRICTED = ["crm_app", "sales_li", "prod_wang", "admin_chen", "it_zhou", "partner_acme"]
CLEAR_IDS = [row[3] for row in sampledata.customers(500)]


@pytest.fixture(scope="module")
def veil(pg, tier_users, tmp_path_factory):
    text = RULES.read_text().replace("    statements: [read]\n    rows: {public.customers: \"grade = 'ordinary'\"}",
                                     "    statements: [read, session]\n    rows: {public.customers: \"grade = 'ordinary'\"}")
    assert "[read, session]" in text
    proxy = start_with_rules(pg, tmp_path_factory.mktemp("rules") / "crm.yaml", text)
    yield proxy
    proxy.stop()


def leaked(rows) -> list[str]:
    """The clear ID numbers found anywhere in ``rows``."""
    text = repr(rows)
    return [value for value in CLEAR_IDS if value in text]


def attempt(proxy, user: str, *statements: str):
    """Run the statements in one transaction; the last one's rows, or the refusal (42501)."""
    with psycopg.connect(proxy.dsn(user, PASSWORD)) as conn:
        try:
            for sql in statements[:-1]:
                conn.execute(sql)
            return conn.execute(statements[-1]).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:
            return exc


# ----------------------------------------------------------------------------- quoted keywords
@pytest.mark.parametrize("user", RESTRICTED)
def test_quoted_for_in_declare_gives_no_clear_data(veil, user):
    got = attempt(veil, user, 'DECLARE "for" CURSOR FOR SELECT (c.*)::text FROM customers c',
                  'FETCH ALL FROM "for"')
    assert not isinstance(got, list) or not leaked(got), got
    if user in ("sales_li", "crm_app", "admin_chen", "it_zhou"):  # tiers that may read customers: masked rows
        assert isinstance(got, list) and got, got


@pytest.mark.parametrize("user", RESTRICTED)
def test_quoted_as_in_prepare_gives_no_clear_data(veil, user):
    got = attempt(veil, user, 'PREPARE "as" AS SELECT (c.*)::text FROM customers c', 'EXECUTE "as"')
    assert not isinstance(got, list) or not leaked(got), got
    if user in ("sales_li", "it_zhou"):  # tiers with session statements: analysed, masked
        assert isinstance(got, list) and got, got


@pytest.mark.parametrize("user", ["sales_li", "it_zhou"])
def test_execute_parameters_are_analysed(veil, user):
    got = attempt(veil, user, "PREPARE p(text) AS SELECT $1",
                  "EXECUTE p(query_to_xml('SELECT id_number FROM customers', true, true, ''))")
    assert isinstance(got, psycopg.errors.InsufficientPrivilege), got
    assert "query_to_xml" in str(got)


@pytest.mark.parametrize("user", ["sales_li", "it_zhou"])
def test_fetch_and_execute_of_names_pgveil_did_not_see_are_refused(veil, user):
    for sql, words in (("FETCH ALL FROM nosuch", 'cursor "nosuch" was not declared through pgveil'),
                       ('EXECUTE "Nosuch"', 'prepared statement "Nosuch" was not prepared through pgveil')):
        got = attempt(veil, user, sql)
        assert isinstance(got, psycopg.errors.InsufficientPrivilege) and words in str(got), got


def test_cursor_and_prepared_statement_work_with_masks(veil):
    rows = attempt(veil, "sales_li", "DECLARE Cur NO SCROLL CURSOR WITHOUT HOLD FOR "
                   "SELECT id, id_number FROM customers ORDER BY id", "FETCH FORWARD 3 FROM cur")
    assert len(rows) == 3 and all("*" in r[1] for r in rows)
    rows = attempt(veil, "sales_li", "PREPARE q (int) AS SELECT id_number FROM customers WHERE id = $1",
                   "EXECUTE q(1)")
    assert rows and "*" in rows[0][0]
