"""Who can see what: the entitlements a rule set gives, for review and for comparing two
rule sets.  Pure: rules and an optional catalog in, rows out.

Without a catalog the rows are per class; with one, per sensitive column (children,
partitions and views included, as the engine resolves them).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime

from .catalog import Catalog
from .policy import Context
from .rewrite import SYSTEM_SCHEMAS, Rewriter
from .rules import RuleSet, Tier


def describe(tier: Tier, cls: str) -> str:
    action = tier.action(cls)
    if action.action == "clear":
        return "clear once a purpose is declared" if tier.see.get(cls, tier.see.get("*")) and \
            (tier.see.get(cls) or tier.see.get("*")).purpose else "clear"
    return action.describe()


def rows(rules: RuleSet, catalog: Catalog | None = None) -> list[tuple[str, str, str]]:
    """(tier, class or schema.table.column, what the tier sees of it)."""
    out = []
    for name, tier in rules.tiers.items():
        if catalog is None:
            for cls in sorted(rules.classes):
                out.append((name, cls, describe(tier, cls)))
            continue
        rw = Rewriter(Context(tier, rules, catalog))
        for rel in sorted(catalog.by_oid.values(), key=lambda r: (r.schema, r.name)):
            if rel.schema in SYSTEM_SCHEMAS:
                continue
            for col in rel.columns:
                cls, act = rw.class_action(rel, col.name)
                if cls is None:
                    continue
                what = describe(tier, cls) if cls in rules.classes else act.describe()
                if not tier.may_reach(rel.schema, rel.name):
                    what = "not reachable (tables)"
                filter_ = rw.row_filter(rel)
                if filter_ and not what.startswith("not reachable"):
                    what += f"; rows where {filter_}"
                out.append((name, f"{rel.qualified}.{col.name} ({cls})", what))
    return out


def diff(old: RuleSet, new: RuleSet, catalog: Catalog | None = None) -> list[tuple[str, str, str, str]]:
    """(tier, column, before, after) for everything that changes."""
    before = {(t, c): w for t, c, w in rows(old, catalog)}
    after = {(t, c): w for t, c, w in rows(new, catalog)}
    changes = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key, "(no such tier)"), after.get(key, "(no such tier)")
        if b != a:
            changes.append((key[0], key[1], b, a))
    old_ids = {_identity(r) for r in old.identities}
    new_ids = {_identity(r) for r in new.identities}
    for identity in sorted(old_ids - new_ids):
        changes.append(("(identities)", identity, "present", "removed"))
    for identity in sorted(new_ids - old_ids):
        changes.append(("(identities)", identity, "absent", "added"))
    old_grants = {g.label() for g in old.grants}
    new_grants = {g.label() for g in new.grants}
    for grant in sorted(old_grants - new_grants):
        changes.append(("(grants)", grant, "present", "removed"))
    for grant in sorted(new_grants - old_grants):
        changes.append(("(grants)", grant, "absent", "added"))
    return changes


def _identity(rule) -> str:
    who = f"user {rule.user}" if rule.user else f"member of {rule.member_of}"
    nets = f" from {', '.join(rule.networks)}" if rule.networks else ""
    return f"{who}{nets} -> {rule.tier}"


def table(headers: tuple, body: list[tuple], fmt: str = "markdown") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(headers)
        writer.writerows(body)
        return buf.getvalue()
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def report(rules: RuleSet, catalog: Catalog | None, now: datetime, fmt: str = "markdown") -> str:
    """The periodic review: identities, what each tier sees, and the grants with their expiry."""
    identities = table(("identity", "tier"), [tuple(_identity(r).split(" -> ")) for r in rules.identities]
                       + [("(anyone else)", rules.default)], fmt)
    tiers = table(("tier", "statements", "column" if catalog else "class", "sees"),
                  [(t, ", ".join(sorted(rules.tiers[t].statements)), c, w) for t, c, w in rows(rules, catalog)], fmt)
    grants = table(("grant", "user", "gives", "from", "until", "in force now", "reason", "approved by"),
                   [(f"#{g.number}", g.user, g.tier or ", ".join(f"{k}: {v.describe()}" for k, v in g.see.items()),
                     g.since.isoformat() if g.since else "when loaded", g.until.isoformat(),
                     "yes" if g.active(now) else "no", g.reason, ", ".join(g.approved_by)) for g in rules.grants], fmt)
    if fmt == "csv":
        return identities + "\n" + tiers + "\n" + grants
    return (f"# Entitlements, rules version {rules.version} ({rules.source}), {now.isoformat()}\n\n"
            f"## Identities\n\n{identities}\n## What each tier sees\n\n{tiers}\n## Grants\n\n{grants}")
