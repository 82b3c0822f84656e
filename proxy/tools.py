"""The rule tools of the command line (``pgveil check``, ``explain``, ``diff``, ``report
entitlements``, ``privileges``): the rule file and the engine without a proxy.  Loading is
:mod:`proxy.runtime`'s; the server's start-up is :mod:`proxy.startup`'s."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timezone

from .catalog import Catalog
from .policy import Context, decide, parse_search_path
from .rules import RuleError, RuleSet, unmatched_globs
from .runtime import catalog_from_file, read_catalog as fetch_catalog, read_rules as _read_rules


def read_rules(path: str) -> RuleSet:
    """The rule file (:func:`proxy.runtime.read_rules`); RuleError or OSError when it fails."""
    return _read_rules(path)[0]


def catalog_from_rules(rules: RuleSet) -> Catalog:
    """The relations the rules name, with only the columns they name (a rough stand-in)."""
    spec: dict = {}
    for pattern, _ in rules.columns:
        if not any(ch in pattern for ch in "*?["):
            schema, table, column = pattern.split(".")
            spec.setdefault(f"{schema}.{table}", {"id": "integer"})[column] = "text"
    for tier in rules.tiers.values():
        for relation in list(tier.rows) + list(tier.tables or ()):
            if not any(ch in relation for ch in "*?["):
                spec.setdefault(relation, {"id": "integer"})
    return Catalog.from_spec(spec)


def cmd_check(args) -> int:
    try:
        rules = read_rules(args.rules)
    except RuleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.rules}: {exc.strerror}", file=sys.stderr)
        return 1
    warnings = []
    if args.catalog_dsn:
        catalog = fetch_catalog(args.catalog_dsn)
        for pattern in unmatched_globs(rules, catalog.column_names()):
            warnings.append(f"warning: {args.rules}: column pattern {pattern!r} matches no column in the catalog")
    classes = sorted(rules.classes)
    print(f"{args.rules}: OK, rules version {rules.version}: {len(rules.tiers)} tiers, {len(classes)} classes, "
          f"{len(rules.identities)} identity rules, default {rules.default}")
    width = max([len(t) for t in rules.tiers] + [4])
    header = f"{'tier':{width}}  " + "  ".join(f"{c:14}" for c in classes) + "  statements"
    print(header)
    for name, tier in rules.tiers.items():
        cells = "  ".join(f"{tier.action(c).action:14}" for c in classes)
        extra = f"; tables {', '.join(tier.tables)}" if tier.tables is not None else ""
        extra += f"; rows {', '.join(f'{k}: {v}' for k, v in tier.rows.items())}" if tier.rows else ""
        print(f"{name:{width}}  {cells}  {','.join(sorted(tier.statements))}{extra}")
    for line in warnings:
        print(line, file=sys.stderr)
    return 0


def cmd_explain(args) -> int:
    loaded = _rules_or_none(args.rules)
    if loaded is None:
        return 1
    rules, = loaded
    if args.tier not in rules.tiers:
        print(f"error: unknown tier {args.tier!r} (tiers: {', '.join(rules.tiers)})", file=sys.stderr)
        return 1
    if args.catalog_dsn:
        catalog = fetch_catalog(args.catalog_dsn)
    elif args.schema:
        catalog = catalog_from_file(args.schema)
    else:
        print("note: no --catalog-dsn or --schema: using only the columns the rules name", file=sys.stderr)
        catalog = catalog_from_rules(rules)
    ctx = Context(rules.tier(args.tier), rules, catalog, parse_search_path(args.search_path), args.user or "")
    decision = decide(args.sql, ctx)
    print(f"decision: {decision.verdict}")
    if decision.refused:
        print(f"reason:   {decision.reason} (SQLSTATE {decision.sqlstate})")
    else:
        print(f"kinds:    {', '.join(decision.kinds) or '-'}")
        print(f"relations: {', '.join(decision.relations) or '-'}")
        for use in decision.columns:
            print(f"column:   {use.relation}.{use.column} ({use.cls}): {use.action}")
        print("sql:")
        print(decision.sql)
    return 2 if decision.refused else 0


def _catalog(args):
    return fetch_catalog(args.catalog_dsn) if getattr(args, "catalog_dsn", None) else None


def _rules_or_none(*paths: str) -> list | None:
    """The rule files, or None after saying on stderr which one is wrong and where."""
    try:
        return [read_rules(path) for path in paths]
    except (RuleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_diff(args) -> int:
    from .entitlements import diff, table
    loaded = _rules_or_none(args.old, args.new)
    if loaded is None:
        return 1
    old, new = loaded
    changes = diff(old, new, _catalog(args))
    if not changes:
        print(f"no change in what anyone sees ({old.version} -> {new.version})")
        return 0
    print(table(("tier", "column" if args.catalog_dsn else "class", "before", "after"), changes, args.format), end="")
    return 0


def cmd_report(args) -> int:
    from .entitlements import report
    loaded = _rules_or_none(args.rules)
    if loaded is None:
        return 1
    rules, = loaded
    print(report(rules, _catalog(args), datetime.now(timezone.utc), args.format), end="")
    return 0


def cmd_privileges(args) -> int:
    """GRANT/REVOKE statements that make the database refuse what pgveil refuses (blocked columns)."""
    from .privileges import statements
    loaded = _rules_or_none(args.rules)
    if loaded is None:
        return 1
    rules, = loaded
    catalog = fetch_catalog(args.catalog_dsn)

    async def login_roles() -> list[str]:
        import asyncpg
        conn = await asyncpg.connect(args.catalog_dsn)
        try:
            return [r[0] for r in await conn.fetch("SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin")]
        finally:
            await conn.close()
    print("\n".join(statements(rules, catalog, asyncio.run(login_roles()))))
    return 0
