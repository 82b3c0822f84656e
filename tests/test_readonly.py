"""Strict audit's question, proven read-only or not (proxy/session/readonly.py), on the policy's own
decisions: anything in doubt is not, so it waits for its record before it is sent."""

import pytest

from proxy.catalog import Catalog
from proxy.policy import Engine
from proxy.rules import load_rules
from proxy.session.readonly import proven_read_only

RULES = """
version: 1
classes:
  id_number: {mask: {fn: partial, keep_first: 3, keep_last: 4}}
columns:
  public.customers.id_number: id_number
tiers:
  sales:
    see: {id_number: mask}
  dba:
    see: {id_number: clear}
    statements: [read, write, ddl, copy, session, admin]
identities:
  - {user: a, tier: sales}
default: deny
"""
CATALOG = Catalog.from_spec({"public.customers": {"id": "integer", "id_number": "text"}, "public.v": {"id": "integer"}},
                            views={"public.v": {"id": ["public.customers.id"]}})
ENGINE = Engine(load_rules(RULES), CATALOG)

READ_ONLY = [
    "SELECT id_number FROM customers WHERE id = 1",
    "select count(*), max(id) from customers where id_number like 'x%'",
    "SELECT lower(id_number) FROM customers",
    "SELECT pg_catalog.lower(id_number) FROM customers",
    "SELECT 1",
    "SELECT 1::text",
    "SELECT \"delete\" FROM customers",  # a quoted name is a name
    "select id from customers where id in (1,2,3) and id_number = 'delete from x; nextval(1)'",
    "SHOW search_path",
]
NOT_PROVEN = [
    "SELECT id FROM v",  # a view may call any function
    "SELECT id FROM customers FOR UPDATE",
    "SELECT id FROM customers FOR SHARE",
    "SELECT 1 +++ 2",  # an operator of the user's
    "SELECT 1::mytype",  # a cast to a type of the user's
    "SELECT 1; SELECT 2",
    "EXPLAIN SELECT 1",
    "EXPLAIN ANALYZE DELETE FROM customers",
    "WITH d AS (DELETE FROM customers RETURNING id) SELECT * FROM d",
    "SELECT * INTO t2 FROM customers",
    "UPDATE customers SET id = 1",
    "BEGIN",
    "SET search_path = public",
]


@pytest.mark.parametrize("tier", ["sales", "dba"])
@pytest.mark.parametrize("sql", READ_ONLY)
def test_proven_read_only(tier, sql):
    decision = ENGINE.decide(sql, ENGINE.rules.tier(tier), ("public",), "a", None)
    assert proven_read_only(decision.normalized or sql, decision, CATALOG, None)


@pytest.mark.parametrize("tier", ["sales", "dba"])
@pytest.mark.parametrize("sql", NOT_PROVEN)
def test_not_proven_read_only(tier, sql):
    decision = ENGINE.decide(sql, ENGINE.rules.tier(tier), ("public",), "a", None)
    assert not proven_read_only(decision.normalized or sql, decision, CATALOG, None)


def test_functions_that_write_and_a_path_that_puts_pg_catalog_later_are_not_proven():
    dba = ENGINE.rules.tier("dba")
    decision = ENGINE.decide("SELECT lower(id_number) FROM customers", dba, ("public",), "a", None)
    assert proven_read_only(decision.normalized, decision, CATALOG, "public")
    assert proven_read_only(decision.normalized, decision, CATALOG, "pg_catalog, public")
    assert not proven_read_only(decision.normalized, decision, CATALOG, "public, pg_catalog")  # public.lower first
    assert not proven_read_only(decision.normalized, decision, None, None)  # no catalog: relations unknown
    for sql in ("SELECT nextval(?)", "SELECT set_config(?, ?, false)", "SELECT pg_advisory_lock(?)",
                "SELECT myschema.count(id) FROM customers", "SELECT my_function()"):
        assert not proven_read_only(sql, decision, CATALOG, None), sql  # (the decision's kinds are read)
