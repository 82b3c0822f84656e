"""The analysis of a long UNION does work linear in its branches (issues 13 and 17).

500 UNION ALL branches over a protected table took 7-60 s in the analysing child: each replaced
relation walked the whole tree again (the schema strip), each unqualified column was checked
against every source of every branch, each fenced source looked at every other source for a
join, and each placeholder was replaced by a pass over the whole text.  A work count (calls
made, tests/workcount.py) must at most double when the branches double; no timing, the machines
are shared and noisy.
"""

from __future__ import annotations

import pytest

from policy_fixture import fixture_catalog
from proxy.analyst import decide_cold
from proxy.rewrite import Context
from proxy.rules import load_rules
from conftest import RULES
from workcount import grows_linearly

CRM = load_rules(RULES.read_text(), "crm.yaml")
CATALOG = fixture_catalog()


def union(n: int) -> str:
    """n branches as a client formats them, each reading the protected customers table."""
    return "\nUNION ALL\n".join(f"SELECT id, name, phone\n  FROM customers\n WHERE id = {i}" for i in range(n))


def aliased_union(n: int) -> str:
    """n branches with aliases, schema-qualified columns and a join to a relation seen whole."""
    return "\nUNION ALL\n".join(
        f"SELECT c.id, c.phone FROM public.customers c JOIN orders o ON o.customer_id = c.id WHERE o.id = {i}"
        for i in range(n))


@pytest.mark.parametrize("tier", ["sales", "it", "dba"])
def test_a_long_union_is_decided_with_linear_work(tier):
    ctx = Context(CRM.tier(tier), CRM, CATALOG, ("$user", "public"), "u")
    counts = grows_linearly(lambda sql: decide_cold(sql, ctx, {}), union, sizes=(50, 100, 200), slack=2000)
    assert counts[0] > 1000, "the analysis ran"


def test_a_long_union_with_joins_and_qualified_columns_is_decided_with_linear_work():
    ctx = Context(CRM.tier("sales"), CRM, CATALOG, ("$user", "public"), "u")
    grows_linearly(lambda sql: decide_cold(sql, ctx, {}), aliased_union, sizes=(40, 80, 160), slack=2000)


def test_the_long_union_is_still_masked_and_filtered_in_every_branch():
    ctx = Context(CRM.tier("sales"), CRM, CATALOG, ("$user", "public"), "u")
    decision, _ = decide_cold(union(60), ctx, {})
    assert decision.verdict == "rewrite", decision.reason
    assert decision.sql.count("OFFSET 0") == 60, "every branch reads the customers through its fence"
    assert decision.sql.count("pgveil_") == 0, "every placeholder was substituted"
    blocked = Context(CRM.tier("it"), CRM, CATALOG, ("$user", "public"), "u")
    assert decide_cold(union(60), blocked, {})[0].refused
