"""What a statement can reach of the relations it names: the checks of the masking rewrite
(proxy/rewrite.py) that read the statement's tree without changing it.

- :func:`check_functions`: functions that reach data by other doors, or that the tier is not
  given, are refused; ``set_config`` is held to the settings' allow list;
- :func:`check_columns`: explicit references to blocked columns are refused and the sensitive
  columns used are noted for the audit (a star or a whole-row reference uses every column);
- :func:`untouched_sources`: the relations whose protected columns the statement cannot reach
  at all, which need no masking subquery (issue 17).

Pure: sqlglot trees in, refusals and sets out.
"""

from __future__ import annotations

import fnmatch

from . import settings
from .sql import exp
from .verdicts import Reason, Refusal

# Functions that run SQL given as data, read files or large objects, or show other sessions.
DENIED_FUNCTIONS = frozenset({
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema",
    "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema", "schema_to_xml", "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema", "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_file_write",
    "pg_stat_get_activity", "pg_stat_get_backend_activity", "current_query", "ts_stat", "ts_rewrite",
    "pg_logical_slot_get_changes", "pg_logical_slot_peek_changes",
    "pg_logical_slot_get_binary_changes", "pg_logical_slot_peek_binary_changes", "pg_logical_emit_message",
    "pg_export_snapshot", "pg_import_system_collations",
})
DENIED_PREFIXES = ("dblink", "lo_", "pg_read_", "pg_ls_", "xpath_table")


def name_of(identifier) -> str:
    """An identifier as PostgreSQL folds it: unquoted names are lower-cased."""
    if identifier is None:
        return ""
    if isinstance(identifier, exp.Identifier):
        return identifier.this if identifier.quoted else identifier.this.lower()
    return str(identifier).lower()


def check_functions(ctx, tree: exp.Expression) -> None:
    """Refuse functions that reach data by other doors, and those the tier is not given."""
    tier, functions = ctx.tier, ctx.catalog.functions
    for call in tree.find_all(exp.Anonymous):
        name = call.name.lower() if isinstance(call.this, str) else name_of(call.this)
        schema = None
        if isinstance(call.parent, exp.Dot) and call.parent.expression is call:
            schema = name_of(call.parent.this)
        if name == "set_config" and schema in (None, "pg_catalog"):
            check_set_config(ctx, call)
            continue
        if name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES):
            raise Refusal(f"function {name} is not allowed for tier {tier.name}: it reaches data by other doors",
                          Reason.FUNCTION)
        qualified = f"{schema}.{name}" if schema else name
        if schema in (None, "pg_catalog") and name in functions:
            continue
        # an unqualified call resolves through the search path, like PostgreSQL resolves it
        candidates = [qualified] if schema else [f"{s}.{name}" for s in ctx.search_path] + [name]
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in tier.functions):
            continue
        raise Refusal(f"function {qualified} is not allowed for tier {tier.name} "
                      f"(only built-in functions, or those listed in the tier's 'functions')", Reason.FUNCTION)

def check_set_config(ctx, call: exp.Anonymous) -> None:
    """set_config() is what SET is, as a function: the same allow list of settings holds, and
    the setting (and a checked setting's value) must be literals the engine can read."""
    args = call.expressions
    if not args or not isinstance(args[0], exp.Literal) or not args[0].is_string:
        raise Refusal(f"set_config with a computed setting name is not allowed for tier {ctx.tier.name}",
                      Reason.SETTING)
    setting = args[0].this.lower()
    value = args[1] if len(args) > 1 else None
    if isinstance(value, exp.Literal) and value.is_string:
        values = settings.split_identifiers(value.this) if setting == "search_path" else [value.this]
        values = values if values is not None else [None]
    else:
        values = [None]
    problem = settings.check(setting, values, ctx.tier.settings)
    if problem:
        raise Refusal(problem.replace("this tier", f"tier {ctx.tier.name}"), Reason.SETTING)

def check_columns(ctx, analysis, tree: exp.Expression, sources: list) -> None:
    """Refuse explicit references to blocked columns; note the sensitive ones used.

    Sources of the same relation with the same renames see alike, so one stands for all of
    them (500 UNION branches over one table are one candidate, not 500 per column)."""
    alike: dict = {}
    by_alias: dict[str, dict] = {}
    for s in sources:
        key = (s.relation.oid, s.relation.qualified, tuple(s.renames.items()))
        alike.setdefault(key, s)
        by_alias.setdefault(s.alias, {}).setdefault(key, s)
    distinct = list(alike.values())
    whole_rows: set[tuple] = set()  # keys of the sources a whole-row reference reaches
    for col in tree.find_all(exp.Column):
        column = name_of(col.this) if isinstance(col.this, exp.Identifier) else None
        if column is None:
            continue
        qualifier = name_of(col.args.get("table")) if col.args.get("table") is not None else None
        candidates = by_alias.get(qualifier, {}).values() if qualifier else distinct
        if qualifier is None and column in by_alias and not any(s.action(column) for s in distinct):
            whole_rows.update(by_alias[column])  # row_to_json(c), SELECT c: every column
        for s in candidates:
            found = s.action(column)
            if found is None:
                continue
            cls, act = found
            if act.action == "block":
                raise Refusal(f"column {s.relation.name}.{s.renames.get(column, column)} is not visible to tier "
                              f"{ctx.tier.name}", Reason.NOT_VISIBLE)
            analysis.use(s, column, cls, act)
    star = tree.find(exp.Star) is not None
    for key, s in alike.items():  # a star or a whole row reaches every column, masked or nulled
        if not star and key not in whole_rows:
            continue
        for col, cls, act in s.actions:
            if cls is not None and (s.relation.qualified, col.name) not in analysis.columns:
                analysis.use(s, col.name, cls, act)


def untouched_sources(root: exp.Expression, sources: list) -> set[int]:
    """The sources (their ids) whose protected columns the statement cannot reach: they need no
    masking subquery, and PostgreSQL is sent the relation itself (issue 17: the subquery cost
    the planner a quarter of pgbench -S's throughput, for a column it never read).

    Only when that is plain from the text PostgreSQL will be sent (the tree, as generated): no
    row filter, no name of a masked or blocked column anywhere in it (as a column, a function,
    a literal, whatever its case or quoting), no ``*`` (but ``count(*)``), no whole-row reference
    to the source, no NATURAL join, no alias list renaming its columns, and no column name the
    catalog does not know for the statement's relations (a column renamed or added since the
    catalog was read: the subquery, which lists the columns known, makes PostgreSQL refuse it,
    where the relation itself would answer it).  Anything else keeps the subquery."""
    if not any(source.protected and source.row_filter is None for _, source in sources):
        return set()
    known = {col.name.lower() for _, source in sources for col, _, _ in source.actions}
    names, whole = set(), set()
    for node in root.walk():
        if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            return set()
        if isinstance(node, exp.Join) and str(node.args.get("method") or "").upper() == "NATURAL":
            return set()
        if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier):
            name = node.this.this.lower()
            if name not in known:  # an output alias, a subquery's column, or the catalog is stale
                return set()
            whole.add(name)  # c, t.c: a whole row when c names a source
        for value in node.args.values():
            if isinstance(value, str):
                names.add(value.lower())
    untouched = set()
    for table, source in sources:
        alias = table.args.get("alias")
        if source.row_filter is not None or (alias is not None and alias.args.get("columns")) \
                or source.alias.lower() in whole or source.relation.name.lower() in whole:
            continue
        if all(col.name.lower() not in names for col, _, act in source.actions if act.action != "clear"):
            untouched.add(id(source))
    return untouched


def select_of(table: exp.Table) -> int:
    """The SELECT whose FROM or JOIN names ``table`` directly (its id), or 0."""
    holder = table.parent
    if isinstance(holder, (exp.From, exp.Join)) and isinstance(holder.parent, exp.Select):
        return id(holder.parent)
    return 0
