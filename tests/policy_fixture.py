"""The policy fixture suite's catalog, and its file format.

Each case is ``sql:`` followed by indented ``tier: expectation`` lines.  An expectation is
``! reason`` (refused with that message), ``=`` (forwarded exactly as written) or the SQL that
goes upstream, where the masking subquery of a relation for that tier is written
``<schema.table>`` (its own text is checked by the template cases and, against a real server,
by the leak tests).
"""

from __future__ import annotations

from pathlib import Path

from proxy.catalog import Catalog
from proxy.policy import Context, decide
from proxy.rewrite import Rewriter
from proxy.rules import load_rules

HERE = Path(__file__).parent / "fixtures"
CUSTOMER_COLUMNS = {"id": "integer", "name": "text", "phone": "text", "id_number": "character(18)",
                    "bank_card": "text", "address": "text", "grade": "text", "credit_limit": "numeric(12,2)",
                    "created_at": "date"}


def fixture_catalog() -> Catalog:
    spec = {
        "public.customers": CUSTOMER_COLUMNS,
        "public.customers_2024": CUSTOMER_COLUMNS,
        "public.orders": {"id": "integer", "customer_id": "integer", "product_id": "integer", "quantity": "integer",
                          "delivery_date": "date"},
        "public.products": {"id": "integer", "name": "text", "unit_price": "numeric(10,2)"},
        "public.customer_contacts": {"id": "integer", "name": "text", "phone": "text", "card_tail": "text"},
        "crm.leads": {"id": "integer", "phone": "text", "note": "text"},
        "public.notes": {"id": "integer", "body": "text"},
    }
    views = {"public.customer_contacts": {"id": ["public.customers.id"], "name": ["public.customers.name"],
                                          "phone": ["public.customers.phone"],
                                          "card_tail": ["public.customers.bank_card"]}}
    parents = {"public.customers_2024": ["public.customers"]}
    functions = frozenset({"upper", "lower", "length", "count", "sum", "now", "row_to_json", "to_json", "coalesce",
                           "concat", "substr", "left", "right", "repeat", "md5", "format", "string_agg", "json_agg",
                           "generate_series", "pg_sleep", "current_setting", "array_agg", "max", "min", "avg",
                           "lower", "pg_backend_pid", "query_to_xml", "pg_read_file", "lo_get", "dblink",
                           "set_config", "ts_stat", "pg_stat_get_activity", "current_query"})
    return Catalog.from_spec(spec, views=views, parents=parents, functions=functions)


def fixture_rules():
    return load_rules((HERE / "policy_rules.yaml").read_text(), "policy_rules.yaml")


_SUBQUERIES: dict = {}


def subqueries(tier, rules, catalog) -> list[tuple[str, str]]:
    """(masking subquery text, placeholder) for every protected relation, for a tier."""
    key = (rules.version, catalog.version, tier.name)
    if key not in _SUBQUERIES:
        rw = Rewriter(Context(tier, rules, catalog))
        pairs = []
        for rel in catalog.by_oid.values():
            source = rw.source_for_relation(rel)
            if rel.schema == "pg_catalog" or not source.protected:
                continue
            for only in (True, False):
                text = "(" + rw.template_sql(source, only) + ")"
                pairs.append((text, f"<{'ONLY ' if only else ''}{rel.qualified}>"))
        _SUBQUERIES[key] = pairs
    return _SUBQUERIES[key]


def placeholders(sql: str, tier, rules, catalog) -> str:
    """Write each masking subquery as <schema.table>; a fenced one (row filter) with the
    leakproof conditions pgveil copied into it as <schema.table AND "id" = CAST(1 AS INT)>."""
    for text, placeholder in subqueries(tier, rules, catalog):
        fence = " OFFSET 0)"
        if not text.endswith(fence):
            sql = sql.replace(text, placeholder)
            continue
        head = text[:-len(fence)]
        while head in sql:
            start = sql.index(head)
            end = sql.index(fence, start + len(head))
            sql = sql[:start] + placeholder[:-1] + sql[start + len(head):end] + ">" + sql[end + len(fence):]
    return sql


def parse_cases(text: str) -> list[tuple[int, str, str, str]]:
    cases, sql = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("sql:"):
            sql = line[4:].strip()
        elif line.startswith("  ") and sql is not None:
            tier, _, expectation = line.strip().partition(":")
            cases.append((number, sql, tier.strip(), expectation.strip()))
        else:
            raise ValueError(f"line {number}: expected 'sql:' or an indented 'tier: expectation'")
    return cases


def outcome(sql: str, tier_name: str, rules, catalog) -> str:
    tier = rules.tier(tier_name)
    decision = decide(sql, Context(tier, rules, catalog))
    if decision.refused:
        return f"! {decision.reason}"
    if decision.sql == sql:
        return "="
    return placeholders(decision.sql, tier, rules, catalog)
