"""A relation whose protected columns the statement cannot reach is sent as itself (issue 17).

The masking subquery cost PostgreSQL a quarter of pgbench -S's throughput (parsing and
planning the mask expressions of a column the statement never read).  It is left out only
where the generated text plainly cannot reach a masked or blocked column: no row filter, no
such name anywhere, no star, no whole-row reference, no NATURAL join, no alias list.  Every
other form keeps it; these cases guard each door.  Pure (the fixture catalog); the live
results are the leak tests' (tests/test_attacks_review.py, tests/test_policy_live.py).
"""

from __future__ import annotations

import pytest

from policy_fixture import fixture_catalog
from proxy.policy import Context, decide
from proxy.rules import load_rules
from conftest import RULES

CRM = load_rules(RULES.read_text(), "crm.yaml")
CATALOG = fixture_catalog()
SUBQUERY = "pg_catalog.repeat"  # in every masking subquery of customers for admin_office (partial masks)


def sent(sql: str, tier: str = "admin_office") -> str:
    decision = decide(sql, Context(CRM.tier(tier), CRM, CATALOG))
    assert not decision.refused, decision.reason
    return decision.sql


@pytest.mark.parametrize("sql", [
    "SELECT id FROM customers WHERE id = 1",
    "SELECT id, grade\n  FROM customers -- who\n WHERE id = $1",
    "SELECT count(*) FROM customers",
    "SELECT c.id FROM customers c JOIN orders o ON o.customer_id = c.id",
    "SELECT id FROM public.customers WHERE grade = 'ordinary' ORDER BY created_at",
])
def test_a_statement_that_reaches_no_protected_column_reads_the_relation_itself(sql):
    text = sent(sql)
    assert SUBQUERY not in text and "public.customers" in text, text


@pytest.mark.parametrize("sql", [
    "SELECT phone FROM customers",
    "SELECT id FROM customers ORDER BY PHONE",
    'SELECT id FROM customers WHERE "phone" IS NOT NULL',
    "SELECT id FROM customers c WHERE c.name LIKE 'A%'",
    "SELECT * FROM customers",
    "SELECT c.* FROM customers c",
    "SELECT count(c.*) FROM customers c",
    "SELECT c FROM customers c",
    "SELECT row_to_json(customers) FROM customers",
    "SELECT id FROM customers WHERE customers IS NOT NULL",
    "SELECT to_json(c) FROM customers c",
    "SELECT id FROM customers c(i, n, p)",
    "SELECT id FROM customers NATURAL JOIN customer_contacts",
    "SELECT id FROM customers WHERE 'address' <> ''",
    "SELECT o.id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id "
    "AND c.bank_card IS NOT NULL)",
])
def test_every_way_to_reach_a_protected_column_keeps_the_masking_subquery(sql):
    assert SUBQUERY in sent(sql)


def test_a_row_filter_keeps_its_fenced_subquery_even_when_no_protected_column_is_named():
    text = sent("SELECT id FROM customers WHERE id = 1", tier="sales")
    assert "grade = 'ordinary'" in text and "OFFSET 0" in text, text


def test_only_the_relation_that_is_reached_keeps_its_subquery():
    text = sent("SELECT c.address FROM customers c JOIN customer_contacts cc ON cc.id = c.id")
    assert "JOIN public.customer_contacts AS cc" in text, "nothing protected of the contacts is named"
    assert "'***'" in text, "the address of customers is read, masked"


@pytest.mark.parametrize("sql", [
    "SELECT tel FROM customers WHERE id = 1",  # phone renamed to tel since the catalog was read
    "SELECT id FROM customers WHERE tel IS NOT NULL",
    "SELECT id AS n FROM customers ORDER BY n",  # an output alias: not worth telling apart
])
def test_a_column_the_catalog_does_not_know_keeps_the_subquery_that_makes_postgresql_refuse_it(sql):
    text = sent(sql)
    assert SUBQUERY in text, text
