"""Belt and braces: the database refuses what pgveil refuses, for blocked columns.

``pgveil privileges RULES --catalog-dsn DSN`` prints, for every login role an identity rule
gives a tier to, the GRANT/REVOKE statements that leave it no SELECT on a column its tier has
blocked, nor on a relation outside its ``tables``: table-level SELECT is revoked and given back
column by column.  A masked column keeps its privilege (pgveil reads it to mask it), and a row
filter has no GRANT form (row-level security would be the database's own answer): both are
noted in comments.  :func:`readable_blocked` is the check behind pgveil's warning at connect.

Pure: rules, catalog and role names in, SQL text out.
"""

from __future__ import annotations

import fnmatch

from .catalog import Catalog
from .policy import Context
from .rewrite import SYSTEM_SCHEMAS, Rewriter, quote
from .rules import RuleSet, Tier


def tiers_of(rules: RuleSet, user: str, roles: frozenset) -> list[Tier]:
    """Every tier ``user`` can work as, whatever network it comes from (first match wins for each)."""
    found = []
    for rule in rules.identities:
        if rule.user is not None and not fnmatch.fnmatchcase(user, rule.user):
            continue
        if rule.member_of is not None and rule.member_of not in roles:
            continue
        found.append(rules.tiers[rule.tier])
        if not rule.networks:
            return found
    if rules.default != "deny":
        found.append(rules.tiers[rules.default])
    return found


def blocked(rules: RuleSet, catalog: Catalog, tier: Tier) -> dict:
    """relation oid -> the names of its blocked columns, or None when the whole relation is out
    of reach; only relations with something blocked."""
    rw = Rewriter(Context(tier, rules, catalog))
    out = {}
    for rel in sorted(catalog.by_oid.values(), key=lambda r: (r.schema, r.name)):
        if rel.schema in SYSTEM_SCHEMAS:
            continue
        if not tier.may_reach(rel.schema, rel.name):
            out[rel.oid] = None
            continue
        names = {col.name for col in rel.columns if rw.class_action(rel, col.name)[1].action == "block"}
        if names:
            out[rel.oid] = names
    return out


def statements(rules: RuleSet, catalog: Catalog, roles: list[str]) -> list[str]:
    """The GRANT/REVOKE statements (and comments) for these login roles."""
    lines = [f"-- pgveil privileges for rules version {rules.version}: what the database should refuse as pgveil does"]
    for role in sorted(roles):
        tiers = [t for t in tiers_of(rules, role, catalog.roles_of(role)) if not t.all_clear]
        if not tiers:
            continue
        lines.append(f"-- role {role}: tier {', '.join(t.name for t in tiers)}")
        merged: dict = {}
        for tier in tiers:
            for oid, names in blocked(rules, catalog, tier).items():
                if oid in merged and (merged[oid] is None or names is None) or names is None:
                    merged[oid] = None
                else:
                    merged[oid] = (merged.get(oid) or set()) | names
        for oid, names in merged.items():
            rel = catalog.by_oid[oid]
            target = f"{quote(rel.schema)}.{quote(rel.name)}"
            if names is None:
                lines.append(f"REVOKE ALL ON {target} FROM {quote(role)};")
                continue
            lines.append(f"REVOKE SELECT ON {target} FROM {quote(role)};")
            kept = [quote(c.name) for c in rel.columns if c.name not in names]
            if kept:
                lines.append(f"GRANT SELECT ({', '.join(kept)}) ON {target} TO {quote(role)};")
        for tier in tiers:
            for pattern, predicate in tier.rows.items():
                lines.append(f"-- {pattern}: tier {tier.name} reads only rows where {predicate} "
                             f"(no GRANT says that; row-level security would)")
    lines.append("-- and from PUBLIC, if it has SELECT on these relations: REVOKE SELECT ON ... FROM PUBLIC;")
    return lines


def readable_blocked(catalog: Catalog, blocked_columns: dict, readable) -> list[str]:
    """``schema.table.column`` of blocked columns (:func:`blocked`) that ``readable(relation,
    column)`` says the role can read (for the warning at connect)."""
    found = []
    for oid, names in blocked_columns.items():
        rel = catalog.by_oid[oid]
        for col in rel.columns:
            if (names is None or col.name in names) and readable(rel, col.name):
                found.append(f"{rel.qualified}.{col.name}")
    return found
