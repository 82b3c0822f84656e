"""The policy engine against the fixture file (no database), in the style of sqlglot's
optimizer fixtures: SQL, tier, expected SQL sent upstream or refusal."""

import pytest

from policy_fixture import HERE, fixture_catalog, fixture_rules, outcome, parse_cases
from proxy.policy import Context, DecisionCache, decide
from proxy.rewrite import Rewriter

CASES = parse_cases((HERE / "policy_cases.txt").read_text())
RULES = fixture_rules()
CATALOG = fixture_catalog()


def test_fixture_has_hundreds_of_cases_across_tiers():
    assert len(CASES) >= 300
    assert {tier for _, _, tier, _ in CASES} == set(RULES.tiers)


@pytest.mark.parametrize("line, sql, tier, expected", CASES, ids=[f"L{c[0]}-{c[2]}" for c in CASES])
def test_policy_case(line, sql, tier, expected):
    assert outcome(sql, tier, RULES, CATALOG) == expected


SALES_CUSTOMERS = (
    'SELECT "id", "name", CAST(CASE WHEN "phone" IS NULL THEN NULL WHEN pg_catalog.length(CAST("phone" AS TEXT)) <= 7 '
    "THEN pg_catalog.repeat('*', pg_catalog.length(CAST(\"phone\" AS TEXT))) ELSE pg_catalog.left(CAST(\"phone\" AS TEXT), 3)"
    " || pg_catalog.repeat('*', pg_catalog.length(CAST(\"phone\" AS TEXT)) - 7) || pg_catalog.right(CAST(\"phone\" AS TEXT), 4)"
    ' END AS TEXT) AS "phone", CAST(CASE WHEN "id_number" IS NULL THEN NULL WHEN pg_catalog.length(CAST("id_number" AS TEXT))'
    " <= 7 THEN pg_catalog.repeat('*', pg_catalog.length(CAST(\"id_number\" AS TEXT))) ELSE pg_catalog.left(CAST(\"id_number\""
    " AS TEXT), 3) || pg_catalog.repeat('*', pg_catalog.length(CAST(\"id_number\" AS TEXT)) - 7) || pg_catalog.right(CAST("
    '"id_number" AS TEXT), 4) END AS CHAR(18)) AS "id_number", CAST(NULL AS TEXT) AS "bank_card", "address", "grade", '
    'CAST(NULL AS DECIMAL(12, 2)) AS "credit_limit", "created_at" FROM "public"."customers"')
AUDITOR_CUSTOMERS_TAIL = ('CAST(CASE WHEN "address" IS NULL THEN NULL ELSE \'***\' END AS TEXT) AS "address", "grade", '
                          'CAST(NULL AS DECIMAL(12, 2)) AS "credit_limit", "created_at" FROM "public"."customers" '
                          "WHERE (grade <> 'top_secret') OFFSET 0")


def template_text(tier: str, relation: str) -> str:
    rw = Rewriter(Context(RULES.tier(tier), RULES, CATALOG))
    rel = CATALOG.by_name[tuple(relation.split("."))]
    return rw.template_sql(rw.source_for_relation(rel), False)


def test_masking_subquery_keeps_names_order_and_types():
    """Blocked text is NULL of its type, masked char(18) stays char(18), a masked number is NULL."""
    assert template_text("sales", "public.customers") == SALES_CUSTOMERS


def test_masking_subquery_carries_the_row_filter_and_redaction():
    assert template_text("auditor", "public.customers").endswith(AUDITOR_CUSTOMERS_TAIL)


def test_children_and_views_get_the_parent_and_base_classes():
    child = template_text("sales", "public.customers_2024")
    assert 'CAST(NULL AS TEXT) AS "bank_card"' in child and "left(CAST(\"id_number\"" in child
    view = template_text("sales", "public.customer_contacts")
    assert 'CAST(NULL AS TEXT) AS "card_tail"' in view and "left(CAST(\"phone\"" in view


def test_decision_cache_hits_and_keys_on_search_path():
    cache = DecisionCache()
    tier = RULES.tier("sales")
    first = cache.decide("SELECT * FROM leads", Context(tier, RULES, CATALOG, ("crm",)))
    again = cache.decide("SELECT * FROM leads", Context(tier, RULES, CATALOG, ("crm",)))
    other = cache.decide("SELECT * FROM leads", Context(tier, RULES, CATALOG, ("public",)))
    assert first is again and cache.hits == 1
    assert first.verdict == "rewrite" and other.refused  # leads only resolves through crm


def test_all_clear_unparsable_is_forwarded_and_marked():
    decision = decide("SELECT 'unterminated", Context(RULES.tier("dba"), RULES, CATALOG))
    assert decision.verdict == "allow" and decision.unparsed


def test_restricted_unparsable_is_refused():
    decision = decide("SELECT 'unterminated", Context(RULES.tier("sales"), RULES, CATALOG))
    assert decision.refused and "could not analyze" in decision.reason and decision.sqlstate == "42501"


def test_decision_reports_relations_and_column_actions():
    decision = decide("SELECT id_number, phone, name FROM customers", Context(RULES.tier("sales"), RULES, CATALOG))
    actions = {(c.column, c.action) for c in decision.columns}
    assert decision.relations == ("public.customers",)
    assert ("id_number", "mask") in actions and ("phone", "mask") in actions


def _vary(sql: str) -> str:
    """The same statement with other literals: numbers changed, strings given a quote and a backslash."""
    import re
    sql = re.sub(r"(?<![$\w.])(\d+)(?![\w.])", lambda m: str(int(m.group(1)) * 7 + 3), sql)
    return re.sub(r"(?<![eE\w$])'([^']*)'", lambda m: "'" + m.group(1)[::-1] + "o''k\\x'", sql)


@pytest.mark.parametrize("tier", sorted(RULES.tiers))
def test_statements_differing_in_literals_share_a_decision_safely(tier):
    """The cache's shapes never change an answer: every variant decided through a cached shape
    equals a full decision of that variant."""
    cache = DecisionCache()
    ctx = Context(RULES.tier(tier), RULES, CATALOG)
    shared = 0
    for sql in sorted({case[1] for case in CASES}):
        cache.decide(sql, ctx)
        variant = _vary(sql)
        if variant == sql:
            continue
        hits_before = len([v for v in cache._entries.values() if v is not None])
        got, want = cache.decide(variant, ctx), decide(variant, ctx)
        assert (got.verdict, got.sql, got.reason, got.columns, got.relations, got.kinds) == \
            (want.verdict, want.sql, want.reason, want.columns, want.relations, want.kinds), variant
        shared += len([v for v in cache._entries.values() if v is not None]) == hits_before + 1
    assert shared >= 20  # most statements with literals were served from their shape


def test_shape_cache_serves_a_trailing_semicolon_and_not_two_statements():
    cache = DecisionCache()
    ctx = Context(RULES.tier("sales"), RULES, CATALOG)
    cache.decide("SELECT id FROM customers WHERE id = 1;", ctx)
    entries = len(cache._entries)
    second = cache.decide("SELECT id FROM customers WHERE id = 2;", ctx)
    assert len(cache._entries) == entries + 1  # the text only: its shape was already there
    assert second.sql == decide("SELECT id FROM customers WHERE id = 2;", ctx).sql
    cache.decide("SELECT 1; SELECT id FROM customers WHERE id = 3", ctx)
    assert not any(isinstance(k[-1], str) and k[-2:-1] == ("shape",) and "SELECT $80000;" in k[-1]
                   for k in cache._entries)


@pytest.mark.parametrize("sql", ["SELECT row_to_json(c) FROM customers c", "SELECT c FROM customers c",
                                 "SELECT to_json(customers) FROM customers", "SELECT * FROM customers"])
def test_whole_rows_report_every_sensitive_column_they_reach(sql):
    """The audit says what a whole-row reference reached, as it does for a star."""
    decision = decide(sql, Context(RULES.tier("sales"), RULES, CATALOG))
    assert {(c.column, c.action) for c in decision.columns} >= {("id_number", "mask"), ("phone", "mask"),
                                                                  ("bank_card", "block")}
