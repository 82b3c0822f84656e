"""Masking at the table source, for one parsed statement.

Every reference to a relation the tier may not see whole becomes a subquery with the same
name, columns, order and types, whose masked columns are masking expressions and whose rows
pass the tier's row filter::

    FROM customers c
      -> FROM (SELECT "id", ..., CAST(<mask>("phone") AS text) AS "phone", ...
               FROM "public"."customers" WHERE <row filter>) AS c

Everything downstream (predicates, functions, aggregates, ORDER BY, whole-row references,
error messages) only ever sees masked values.  What the rewrite alone cannot close is refused
here with :class:`Refusal`: explicit references to blocked columns, relations outside the
tier's ``tables``, catalog relations and functions that reach data by other doors, and writes
that would read or set protected columns of their target.

Pure: sqlglot trees in, sqlglot trees out.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from .sql import exp, parse_one, to_sql

from .barrier import FENCE, fenced, index_copies
from .reach import (DENIED_FUNCTIONS, DENIED_PREFIXES, check_columns, check_functions,  # noqa: F401 (re-exported)
                    name_of, select_of as _select_of, untouched_sources)
from .catalog import Catalog, Relation
from .masks import MaskError, mask_sql, null_of
from .rowlimits import packs_rows
from .rules import BLOCK, CLEAR, ClassAction, RuleSet, Tier
from .verdicts import ColumnUse, Context, NotUnderstood, Reason, Refusal  # noqa: F401 (re-exported)

# Relations that expose other sessions' statements, column statistics (sampled values) or
# large objects and credentials: refused for every tier that is not all-clear.
DENIED_RELATIONS = frozenset({
    "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data",
    "pg_stat_activity", "pg_stat_statements", "pg_stat_statements_info", "pg_largeobject",
    "pg_largeobject_metadata", "pg_authid", "pg_shadow", "pg_user_mappings", "pg_prepared_statements",
})
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
STRICTNESS = {"clear": 0, "mask": 1, "block": 2}
# Names no client can guess: they stand for masking subqueries until the text is generated.
PLACEHOLDER = f"pgveil_{os.urandom(8).hex()}_"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Source:
    """A relation reference in the statement, and what the tier sees of it."""
    relation: Relation
    actions: list  # [(Column, class or None, ClassAction)]
    row_filter: str | None
    alias: str
    renames: dict = field(default_factory=dict)  # FROM t AS c(i, n, p): p -> phone

    @property
    def protected(self) -> bool:
        return self.row_filter is not None or any(a.action != "clear" for _, _, a in self.actions)

    def action(self, column: str) -> tuple[str | None, ClassAction] | None:
        column = self.renames.get(column, column)
        for col, cls, act in self.actions:
            if col.name == column:
                return cls, act
        return None


@dataclass
class Analysis:
    """What one statement reaches; filled while it is rewritten."""
    relations: list = field(default_factory=list)
    columns: dict = field(default_factory=dict)  # (relation, column) -> ColumnUse
    packs: str | None = None  # a construct that packs rows into one value (proxy/rowlimits.py)

    def use(self, source: Source, column: str, cls: str | None, act: ClassAction) -> None:
        if cls is not None:
            column = source.renames.get(column, column)
            key = (source.relation.qualified, column)
            self.columns[key] = ColumnUse(source.relation.qualified, column, cls, act.action)


class Rewriter:
    def __init__(self, ctx: Context, template_cache: dict | None = None) -> None:
        self.ctx = ctx
        self.analysis = Analysis()
        self.substitutions: dict[str, str] = {}  # placeholder -> masking subquery text
        self._templates = template_cache if template_cache is not None else {}

    # ------------------------------------------------------------------ classes
    def class_action(self, rel: Relation, column: str, depth: int = 0) -> tuple[str | None, ClassAction]:
        """Class of a column and what the tier sees of it, through inheritance and views."""
        rules, tier = self.ctx.rules, self.ctx.tier
        cls = rules.class_of(rel.schema, rel.name, column)
        if cls is None and self.ctx.catalog.pinned:  # renamed since the rules named it: by attnum
            col = rel.column(column)
            cls = self.ctx.catalog.pinned.get((rel.oid, col.attnum)) if col is not None else None
        if cls is None:
            for parent in self.ctx.catalog.ancestors(rel):
                cls = rules.class_of(parent.schema, parent.name, column)
                if cls is not None:
                    break
        if cls is not None:
            return cls, tier.action(cls)
        if rel.sources and depth < 8:
            strictest: tuple[str | None, ClassAction] = (None, CLEAR)
            for oid, attnum in rel.sources.get(column, ()):
                base = self.ctx.catalog.by_oid.get(oid)
                if base is None:
                    return "unknown", BLOCK
                base_col = next((c for c in base.columns if c.attnum == attnum), None)
                if base_col is None:
                    continue
                found = self.class_action(base, base_col.name, depth + 1)
                if STRICTNESS[found[1].action] > STRICTNESS[strictest[1].action]:
                    strictest = found
            return strictest
        return None, CLEAR

    def row_filter(self, rel: Relation) -> str | None:
        rows = self.ctx.tier.rows
        for candidate in [rel, *self.ctx.catalog.ancestors(rel)]:
            for pattern, predicate in rows.items():
                if fnmatch.fnmatchcase(candidate.qualified, pattern):
                    return predicate
        return None

    # ------------------------------------------------------------------ relations
    def resolve(self, table: exp.Table) -> Relation:
        name = name_of(table.this)
        schema = name_of(table.args.get("db")) or None
        if table.args.get("catalog") is not None:
            raise NotUnderstood(f"cross-database reference {to_sql(table)}")
        rel = self.ctx.catalog.resolve(schema, name, self.ctx.search_path, self.ctx.user)
        if rel is None:
            shown = f"{schema}.{name}" if schema else name
            raise NotUnderstood(f"relation {shown} could not be resolved in the catalog")
        return rel

    def gate_relation(self, rel: Relation) -> None:
        tier = self.ctx.tier
        if rel.schema in SYSTEM_SCHEMAS:
            if rel.name in DENIED_RELATIONS:
                raise Refusal(f"relation {rel.qualified} is not visible to tier {tier.name}", Reason.NOT_VISIBLE)
            return
        if not tier.may_reach(rel.schema, rel.name):
            raise Refusal(f"relation {rel.qualified} is not visible to tier {tier.name}", Reason.NOT_VISIBLE)
        if rel.qualified not in self.analysis.relations:
            self.analysis.relations.append(rel.qualified)

    def source_for_relation(self, rel: Relation, alias: str | None = None) -> Source:
        actions = [(col, *self.class_action(rel, col.name)) for col in rel.columns]
        return Source(rel, actions, self.row_filter(rel), alias or rel.name)

    def ddl_protected(self, rel: Relation) -> set | None:
        """Columns of ``rel`` a DDL expression may not name (see proxy/ddl.py): every column of a
        row-filtered relation, else those the tier may not see in clear; None when it sees all."""
        if rel.schema in SYSTEM_SCHEMAS:
            return None
        source = self.source_for_relation(rel)
        if source.row_filter:
            return {col.name for col in rel.columns}
        hidden = {col.name for col, _, act in source.actions if act.action != "clear"}
        return hidden or None

    def source(self, table: exp.Table) -> Source:
        rel = self.resolve(table)
        self.gate_relation(rel)
        if rel.sources and self.ctx.tier.rows:
            self.check_view_rows(rel)
        alias = name_of(table.args["alias"].this) if table.args.get("alias") and table.args["alias"].this \
            else name_of(table.this)
        source = self.source_for_relation(rel, alias)
        listed = table.args["alias"].args.get("columns") if table.args.get("alias") else None
        for new, col in zip(listed or (), rel.columns):  # an alias list renames the first columns
            source.renames[name_of(new.this if isinstance(new, exp.ColumnDef) else new)] = col.name
        return source

    def check_view_rows(self, view: Relation, depth: int = 0) -> None:
        """A view shows rows of its base tables; where the tier may see only some of a base
        table's rows, the view cannot be filtered the same way, so it is refused."""
        for base_oid in {oid for refs in view.sources.values() for oid, _ in refs} - {view.oid}:
            base = self.ctx.catalog.by_oid.get(base_oid)
            if base is None:
                continue
            if self.row_filter(base):
                raise Refusal(f"view {view.qualified} reads {base.qualified}, of which tier {self.ctx.tier.name} may "
                              f"see only some rows; query {base.qualified} itself", Reason.NOT_VISIBLE)
            if base.sources and depth < 8:
                self.check_view_rows(base, depth + 1)

    # ------------------------------------------------------------------ queries
    def relation_tables(self, tree: exp.Expression, skip: set) -> list[exp.Table]:
        """Table nodes that name relations (not CTEs, not functions in FROM, not ``skip``)."""
        found = []
        # a name no WITH of the statement defines is no CTE: is_cte walks up to the root, which
        # for every branch of a long UNION is quadratic, so it is asked only about those names
        cte_names = {name_of(cte.args["alias"].this) for cte in tree.root().find_all(exp.CTE)
                     if cte.args.get("alias") is not None}
        for table in tree.find_all(exp.Table):
            if id(table) in skip:
                continue
            if not isinstance(table.this, exp.Identifier):
                if table.this is not None and not isinstance(table.this, exp.Func):
                    raise NotUnderstood(f"table expression {to_sql(table)}")
                continue
            if table.args.get("db") is None and name_of(table.this) in cte_names and self.is_cte(table):
                continue
            for unsupported in ("sample", "pivots", "version", "when", "changes", "partition"):
                if table.args.get(unsupported):
                    raise NotUnderstood(f"{unsupported} on {to_sql(table)}")
            found.append(table)
        return found

    @staticmethod
    def is_cte(table: exp.Table) -> bool:
        """Does this unqualified name refer to a CTE visible where it stands?"""
        name = name_of(table.this)
        node = table
        while node is not None:
            parent = node.parent
            if isinstance(parent, exp.With):
                ctes = parent.expressions
                index = next((i for i, cte in enumerate(ctes) if cte is node), None)
                if index is not None:
                    visible = ctes if parent.args.get("recursive") else ctes[:index]
                    if any(name_of(c.args["alias"].this) == name for c in visible):
                        return True
            elif parent is not None and parent.args.get("with_") is not None and node is not parent.args["with_"]:
                if any(name_of(c.args["alias"].this) == name for c in parent.args["with_"].expressions):
                    return True
            node = parent
        return False

    def rewrite(self, tree: exp.Expression, skip: set | None = None) -> exp.Expression:
        """Replace every protected relation reference in ``tree`` (except ``skip``)."""
        tables = self.relation_tables(tree, skip or set())
        sources = [(table, self.source(table)) for table in tables]
        if self.ctx.tier.max_rows and self.analysis.packs is None:
            self.analysis.packs = packs_rows(tree)
        self.check_functions(tree)
        self.check_columns(tree, [s for _, s in sources])
        root = tree.root()
        by_select: dict[int, list] = {}  # the sources named in one SELECT's FROM and JOINs (barrier.join_copies)
        for table, source in sources:
            by_select.setdefault(_select_of(table), []).append((table, source))
        stripped: set[str] = set()
        untouched = untouched_sources(root, sources)
        for table, source in sources:
            if source.protected and id(source) not in untouched:
                if self.replace(table, source, by_select[_select_of(table)]):
                    stripped.add(source.alias)
            else:
                qualify(table, source.relation)
        if stripped:
            self._strip_schema(root, stripped)
        return tree

    def replace(self, table: exp.Table, source: Source, others: list | None = None) -> bool:
        """Put the masking subquery where the relation was; True when the reference had no alias,
        so that columns qualified by schema and name must lose the schema (:meth:`_strip_schema`).

        The subquery's text is spliced in after generation (see :meth:`substitute`): the tree
        gets a placeholder name made of a per-process random token, so that the large masking
        expressions are parsed and checked once per relation, not once per statement.
        """
        only = bool(table.args.get("only"))
        token = f"{PLACEHOLDER}{len(self.substitutions)}"
        self.substitutions[token] = fenced(self.template_sql(source, only), index_copies(table, source, others)) \
            if source.row_filter else self.template_sql(source, only)
        alias = table.args.get("alias")
        unaliased = alias is None or alias.this is None
        if unaliased:
            alias_node = exp.TableAlias(this=exp.to_identifier(source.alias, quoted=True),
                                        columns=alias.args.get("columns") if alias else None)
        else:
            alias_node = alias.copy()
        table.replace(exp.Table(this=exp.to_identifier(token, quoted=True), alias=alias_node))
        return unaliased

    def substitute(self, text: str) -> str:
        """The generated SQL with every placeholder replaced by its masking subquery: one pass
        over the text (a replace per placeholder was quadratic in UNION branches)."""
        if not self.substitutions:
            return text
        parts = text.split(f'"{PLACEHOLDER}')
        out, seen = [parts[0]], set()
        for part in parts[1:]:
            number, quote_mark, rest = part.partition('"')
            token = PLACEHOLDER + number
            if not quote_mark or token in seen or token not in self.substitutions:
                raise NotUnderstood("a masking placeholder was lost in generation")
            seen.add(token)
            out += ("(", self.substitutions[token], ")", rest)
        if len(seen) != len(self.substitutions):
            raise NotUnderstood("a masking placeholder was lost in generation")
        return "".join(out)

    @staticmethod
    def _strip_schema(root: exp.Expression, aliases: set) -> None:
        """``public.customers.id`` must now say ``customers.id``: the subquery has no schema.
        One walk for every relation replaced (a walk per relation was quadratic in UNION branches)."""
        for col in root.find_all(exp.Column):
            if col.args.get("db") is not None and name_of(col.args.get("table")) in aliases:
                col.set("db", None)
                col.set("catalog", None)

    def template(self, source: Source, only: bool) -> exp.Select:
        """The masking subquery of a relation for this tier, as a tree."""
        columns = []
        for col, cls, act in source.actions:
            q = quote(col.name)
            if act.action == "clear":
                columns.append(q)
            elif act.action == "mask":
                try:
                    columns.append(f"{mask_sql(q, col.type, act.mask)} AS {q}")
                except MaskError as exc:
                    raise Refusal(str(exc), Reason.MASK) from None
            else:
                columns.append(f"{null_of(col.type)} AS {q}")
        rel = source.relation
        sql = f"SELECT {', '.join(columns)} FROM {'ONLY ' if only else ''}{quote(rel.schema)}.{quote(rel.name)}"
        if source.row_filter:  # a fence the planner cannot cross: see proxy/barrier.py
            sql += f" WHERE ({source.row_filter}){FENCE}"
        return parse_one(sql)

    def template_sql(self, source: Source, only: bool) -> str:
        """The masking subquery's text, generated and round-trip checked once per relation."""
        key = (self.ctx.rules.version, self.ctx.catalog.version, self.ctx.tier.name, source.relation.oid, only)
        cached = self._templates.get(key)
        if cached is None:
            text = to_sql(self.template(source, only))
            if to_sql(parse_one(text)) != text:
                raise NotUnderstood(f"the masking subquery of {source.relation.qualified} does not round-trip")
            cached = self._templates[key] = text
        return cached


    # ------------------------------------------------------------------ checks (proxy/reach.py)
    def check_functions(self, tree: exp.Expression) -> None:
        check_functions(self.ctx, tree)

    def check_columns(self, tree: exp.Expression, sources: list[Source]) -> None:
        check_columns(self.ctx, self.analysis, tree, sources)


def qualify(table: exp.Table, rel: Relation) -> None:
    """Name the relation's schema (catalog relations included): the server must reach exactly the
    relation analysed, whatever its search_path or a temporary object of the same name."""
    if table.args.get("db") is None:
        schema = rel.schema
        table.set("db", exp.to_identifier(schema, quoted=schema != schema.lower() or not schema.isidentifier()))

