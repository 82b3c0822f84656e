"""Statement heads read by token types, never by a token's text alone (issue 12), without a network."""

from __future__ import annotations

import doctest

import pytest

from policy_fixture import HERE, fixture_catalog
from proxy import heads, sqlnames
from proxy.policy import Context, decide
from proxy.rules import load_rules

RULES = load_rules((HERE / "policy_rules.yaml").read_text().replace(
    "    statements: [read]\n  production:", "    statements: [read, session, admin]\n  production:"))
CATALOG = fixture_catalog()


def run(sql: str, tier: str = "sales"):
    return decide(sql, Context(RULES.tier(tier), RULES, CATALOG))


def test_doctests():
    for module in (heads, sqlnames):
        assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("sql", [
    'DECLARE "for" CURSOR FOR SELECT (c.*)::text FROM customers c',
    'DECLARE "cursor" SCROLL CURSOR WITH HOLD FOR SELECT id_number FROM customers',
    'PREPARE "as" AS SELECT (c.*)::text FROM customers c',
    'PREPARE "as" ("as") AS SELECT id_number FROM customers',
    'EXPLAIN ANALYZE DECLARE "for" CURSOR FOR SELECT id_number FROM customers',
])
def test_quoted_keywords_do_not_end_a_head(sql):
    decision = run(sql)
    assert decision.verdict == "rewrite", decision.reason
    assert "public.customers" in decision.relations and decision.columns
    assert "pg_catalog." in decision.sql  # the inner statement was rewritten (masking expressions)


@pytest.mark.parametrize("sql, reason", [
    ('DECLARE c "cursor" FOR SELECT 1', "DECLARE: expected CURSOR"),
    ('DECLARE c CURSOR "for" SELECT 1', "DECLARE: expected FOR"),
    ("DECLARE c CURSOR FOR DELETE FROM customers", "DECLARE cannot carry DELETE"),
    ('PREPARE p "as" SELECT 1', "PREPARE: expected AS"),
    ("PREPARE p ('x') AS SELECT 1", "PREPARE's parameter types hold a literal"),
    ("PREPARE p AS SET search_path = public", "PREPARE cannot carry SET"),
    ("FETCH ALL FROM c d", "unexpected 'c' in FETCH"),
    ("EXECUTE p(1) x", "EXECUTE's parameters must be one parenthesised list"),
    ("EXECUTE p(query_to_xml('SELECT 1', true, true, ''))", "function query_to_xml is not allowed"),
    ('"select" 1', "admin statements"),
    ('COPY customers TO "stdout"', "COPY to or from a file or program is not allowed"),
])
def test_heads_pgveil_cannot_read_are_refused(sql, reason):
    decision = run(sql, "customer_service" if "admin" in reason else "auditor" if sql.startswith("COPY") else "sales")
    assert decision.refused and reason in decision.reason, decision.reason


def test_names_are_folded_like_postgres():
    assert run('FETCH 2 FROM "For"').names == (("use", "cursor", "For"),)
    assert run("MOVE -1 IN Cur").names == (("use", "cursor", "cur"),)
    assert run("EXECUTE P(1, 'a')").names == (("use", "statement", "p"),)
    assert run("EXECUTE P(1, 'a')").sql == "EXECUTE P(1, 'a')"
    assert run('PREPARE "as" AS SELECT 1').names == (("declare", "statement", "as"),)


def test_use_must_name_what_pgveil_saw_declared():
    names = sqlnames.SqlNames()
    assert names.apply((("declare", "cursor", "c"), ("use", "cursor", "c")), {}, "a") is None
    assert names.apply((("use", "cursor", "c"),), {}, "a") is None
    assert "not declared" in names.apply((("use", "cursor", "d"),), {}, "a")
    # a refused decision declares nothing
    assert names.apply((("declare", "cursor", "e"), ("use", "cursor", "x")), {}, "a") is not None
    assert "not declared" in names.apply((("use", "cursor", "e"),), {}, "a")
    # statements prepared with the Parse message: usable under the access they were decided for
    assert names.apply((("use", "statement", "s"),), {"s": ("SELECT 1", (), "a")}, "a") is None
    assert "other access" in names.apply((("use", "statement", "s"),), {"s": ("SELECT 1", (), "b")}, "a")


def test_quoted_all_does_not_forget_what_was_opened():
    """CLOSE "ALL" closes a cursor named ALL, DEALLOCATE "all" a statement named all: neither may
    make pgveil forget the cursors and statements opened under other access."""
    from proxy.access import Access
    from proxy.opened import Opened, segments
    opened = Opened()
    wide, narrow = Access("v", "sales", (1,)), Access("v", "sales", ())
    assert opened.query(segments("DECLARE c CURSOR WITH HOLD FOR SELECT 1; PREPARE p AS SELECT 1"), wide, True) is None
    assert opened.query(segments('CLOSE "ALL"; DEALLOCATE "ALL"; DISCARD "all"'), narrow, True) is None
    assert "access changed" in opened.query(segments("FETCH 1 FROM c"), narrow, True)
    assert "prepared under other access" in opened.query(segments("EXECUTE p"), narrow, True)
    assert opened.query(segments("CLOSE ALL; DEALLOCATE ALL"), narrow, True) is None
    assert opened.query(segments("FETCH 1 FROM c"), narrow, True) is None  # forgotten: PostgreSQL closed it
