"""What the database holds: relations, their columns and types, inheritance, which base
columns each view column derives from, built-in functions and role memberships.

:class:`Catalog` is plain data (the policy engine reads it without I/O);
:func:`load_catalog` fills one from a live server with asyncpg.

>>> cat = Catalog.from_spec({"public.customers": {"id": "integer", "phone": "text"}})
>>> cat.resolve(None, "customers", ("$user", "public")).columns[1]
Column(name='phone', type='text', attnum=2)
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(): 'character(18)', 'integer', ...
    attnum: int


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # r table, p partitioned, v view, m materialized view, f foreign table
    columns: tuple
    parents: tuple = ()  # inheritance / partition parents (oids)
    sources: dict = field(default_factory=dict)  # view column name -> ((base oid, attnum), ...)
    row_security: bool = False  # row-level security enabled: its policies' expressions run on every read

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None


class Catalog:
    def __init__(self, relations: list[Relation], functions: frozenset = frozenset(),
                 memberships: dict | None = None, database: str | None = None, users: tuple = (),
                 casts: dict | None = None, checked_types: frozenset = frozenset()) -> None:
        self.database = database  # the database this catalog describes (None: any, for tests)
        # names of functions, operators and types outside pg_catalog, and of those functions callable
        # with one argument, which attribute notation reaches (``o.f`` is ``f(o)``): proxy/shadowing.py
        self.user_functions, self.user_operators, self.user_types, self.user_row_functions = \
            (tuple(users) + (frozenset(),) * 4)[:4]
        # type name -> the user's functions its casts run (a type cast by one, and the domains, arrays
        # and row types holding it; "*": a user's cast between built-in types): proxy/shadowing.py
        self.user_casts = casts or {}
        # oids of the types whose input runs a user's code (a domain's CHECK, and the arrays, row types,
        # ranges and domains holding one): a Parse naming one as a parameter's type runs it at Bind
        self.checked_types = checked_types
        self.by_oid = {r.oid: r for r in relations}
        self.by_name = {(r.schema, r.name): r for r in relations}
        self.functions = functions  # names of functions in pg_catalog
        self.memberships = memberships or {}  # role -> roles it is a member of, transitively
        self.pinned: dict = {}  # (oid, attnum) -> class of a column renamed since the rules named it
        self.children: dict[int, list[int]] = {}  # inheritance / partition children (oids)
        for r in relations:
            for parent in r.parents:
                self.children.setdefault(parent, []).append(r.oid)
        digest = hashlib.sha256()
        for r in sorted(relations, key=lambda r: r.oid):
            digest.update(repr((r.oid, r.schema, r.name, r.kind, r.columns, r.parents,
                                sorted(r.sources.items()), r.row_security)).encode())
        digest.update(repr([sorted(names) for names in (self.user_functions, self.user_operators,
                                                         self.user_types, self.user_row_functions)]).encode())
        digest.update(repr(sorted((k, sorted(v)) for k, v in self.user_casts.items())).encode())
        digest.update(repr(sorted(self.checked_types)).encode())
        self.version = digest.hexdigest()[:12]

    def resolve(self, schema: str | None, name: str, search_path: tuple, user: str = "") -> Relation | None:
        """Find a relation as PostgreSQL would: qualified, or through pg_catalog and search_path."""
        if schema:
            return self.by_name.get((schema, name))
        path = [user if s == "$user" else s for s in search_path]
        if "pg_catalog" not in path:
            path.insert(0, "pg_catalog")
        for s in path:
            rel = self.by_name.get((s, name))
            if rel is not None:
                return rel
        return None

    def roles_of(self, user: str) -> frozenset:
        return self.memberships.get(user, frozenset())

    def ancestors(self, rel: Relation) -> list[Relation]:
        """Parents, grandparents, ... of an inheritance child or partition."""
        return self._reach(rel, lambda r: r.parents)

    def descendants(self, rel: Relation) -> list[Relation]:
        """Children, grandchildren, ... of an inheritance parent or partitioned table: a read of
        the parent reads them too."""
        return self._reach(rel, lambda r: self.children.get(r.oid, ()))

    def _reach(self, rel: Relation, step) -> list[Relation]:
        """The relations ``step`` leads to from ``rel``, nearest first, each once."""
        seen, out, todo = set(), [], deque(step(rel))
        while todo:
            oid = todo.popleft()
            if oid in seen or oid not in self.by_oid:
                continue
            seen.add(oid)
            found = self.by_oid[oid]
            out.append(found)
            todo.extend(step(found))
        return out

    def column_names(self) -> list[str]:
        return [f"{r.schema}.{r.name}.{c.name}" for r in self.by_oid.values() for c in r.columns]

    @classmethod
    def from_spec(cls, spec: dict, *, views: dict | None = None, parents: dict | None = None,
                  functions: frozenset = frozenset({"upper", "lower", "length", "count", "sum", "now",
                                                    "row_to_json", "to_json", "coalesce", "concat",
                                                    "substr", "left", "right", "repeat", "md5"}),
                  memberships: dict | None = None) -> "Catalog":
        """A catalog from ``{"schema.table": {"column": "type", ...}}`` (for tests and explain).

        ``views`` maps "schema.view" to {column: ["schema.table.column", ...]}.
        """
        relations = []
        names = {}
        for oid, (qualified, columns) in enumerate(spec.items(), start=1000):
            names[qualified] = oid
        for qualified, columns in spec.items():
            schema, name = qualified.split(".")
            cols = tuple(Column(c, t, i) for i, (c, t) in enumerate(columns.items(), start=1))
            kind = "v" if views and qualified in views else "r"
            sources = {}
            if views and qualified in views:
                for col, bases in views[qualified].items():
                    refs = []
                    for base in bases:
                        bschema, btable, bcol = base.split(".")
                        boid = names[f"{bschema}.{btable}"]
                        battnum = list(spec[f"{bschema}.{btable}"]).index(bcol) + 1
                        refs.append((boid, battnum))
                    sources[col] = tuple(refs)
            parent_oids = tuple(names[p] for p in (parents or {}).get(qualified, ()))
            relations.append(Relation(names[qualified], schema, name, kind, cols, parent_oids, sources))
        for i, rel in enumerate(("pg_stats", "pg_statistic", "pg_stat_activity", "pg_class", "pg_largeobject",
                                 "pg_authid", "pg_user_mappings", "pg_stat_statements")):
            relations.append(Relation(10 + i, "pg_catalog", rel, "v", (Column("x", "text", 1),)))
        return cls(relations, functions, memberships)


# ----------------------------------------------------------------------------- loading
RELATIONS_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relrowsecurity,
       coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum > 0), '{}') AS names,
       coalesce(array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
                FILTER (WHERE a.attnum > 0), '{}') AS types,
       coalesce(array_agg(a.attnum::int ORDER BY a.attnum) FILTER (WHERE a.attnum > 0), '{}') AS nums
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
GROUP BY c.oid, n.nspname, c.relname, c.relkind, c.relrowsecurity
"""
INHERITS_SQL = "SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits"
VIEW_DEPS_SQL = """
SELECT DISTINCT r.ev_class AS view, d.refobjid AS base, d.refobjsubid::int AS attnum
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjsubid > 0 AND d.refobjid <> r.ev_class
"""
VIEW_DEFS_SQL = """
SELECT c.oid, pg_catalog.pg_get_viewdef(c.oid) AS def
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
FUNCTIONS_SQL = "SELECT DISTINCT proname::text FROM pg_catalog.pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace"
# a user's functions, operators and types (extensions' members aside): see proxy/shadowing.py
USERS_OBJECTS_SQL = """
SELECT 'f', p.proname::text FROM pg_catalog.pg_proc p
WHERE p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                  AND d.objid = p.oid AND d.deptype = 'e')
UNION SELECT 'o', o.oprname::text FROM pg_catalog.pg_operator o
WHERE o.oprnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_operator'::regclass
                  AND d.objid = o.oid AND d.deptype = 'e')
UNION SELECT 't', t.typname::text FROM pg_catalog.pg_type t
WHERE t.typnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
  AND t.typtype IN ('b', 'd', 'r', 'm')
UNION SELECT 'a', p.proname::text FROM pg_catalog.pg_proc p
WHERE p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
  AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 AND p.prokind <> 'p'
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                  AND d.objid = p.oid AND d.deptype = 'e')
"""
# the types a user's function converts (a cast) or compares (a default operator class's support
# function or operator: ORDER BY, DISTINCT, GROUP BY run it), and those holding them (domains over
# them, arrays of them, row types with a column of one); "*" for a user's cast between built-in types
CASTS_SQL = """
WITH RECURSIVE users AS (
  SELECT p.oid, p.proname::text AS fn FROM pg_catalog.pg_proc p
  WHERE p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
    AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                    AND d.objid = p.oid AND d.deptype = 'e')
), seeds AS (
  SELECT t.oid, u.fn, t.typnamespace = 'pg_catalog'::regnamespace AS builtin, 'c' || c.oid AS id
  FROM pg_catalog.pg_cast c JOIN users u ON u.oid = c.castfunc
  JOIN pg_catalog.pg_type t ON t.oid IN (c.castsource, c.casttarget)
  UNION ALL
  SELECT t.oid, u.fn, t.typnamespace = 'pg_catalog'::regnamespace, 'o' || oc.oid
  FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_type t ON t.oid = oc.opcintype
  JOIN users u ON u.oid IN (SELECT ap.amproc FROM pg_catalog.pg_amproc ap WHERE ap.amprocfamily = oc.opcfamily
                            UNION SELECT o.oprcode FROM pg_catalog.pg_amop ao
                            JOIN pg_catalog.pg_operator o ON o.oid = ao.amopopr WHERE ao.amopfamily = oc.opcfamily)
  WHERE oc.opcdefault
), reach(oid, fn) AS (
  SELECT oid, fn FROM seeds WHERE NOT builtin
  UNION
  SELECT ty.oid, r.fn FROM reach r JOIN pg_catalog.pg_type ty ON ty.typbasetype = r.oid OR ty.typelem = r.oid
      OR ty.typrelid IN (SELECT a.attrelid FROM pg_catalog.pg_attribute a WHERE a.atttypid = r.oid AND NOT a.attisdropped)
)
SELECT t.typname::text, r.fn FROM reach r JOIN pg_catalog.pg_type t ON t.oid = r.oid
UNION SELECT '*', fn FROM seeds GROUP BY id, fn HAVING bool_and(builtin)
"""
# the types whose input runs a user's code: domains with a CHECK (users', not an extension's), types
# with a user's input or receive function, and the domains, arrays, row types and ranges holding them
CHECKED_TYPES_SQL = """
WITH RECURSIVE seeds AS (
  SELECT t.oid FROM pg_catalog.pg_type t
  WHERE t.typtype = 'd' AND EXISTS (SELECT FROM pg_catalog.pg_constraint c WHERE c.contypid = t.oid AND c.contype = 'c')
    AND t.typnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
    AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_type'::regclass
                    AND d.objid = t.oid AND d.deptype = 'e')
  UNION
  SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_proc p ON p.oid IN (t.typinput, t.typreceive)
  WHERE p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
    AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                    AND d.objid = p.oid AND d.deptype = 'e')
), reach(oid) AS (
  SELECT oid FROM seeds
  UNION
  SELECT ty.oid FROM reach r JOIN pg_catalog.pg_type ty ON ty.typbasetype = r.oid OR ty.typelem = r.oid
      OR ty.typrelid IN (SELECT a.attrelid FROM pg_catalog.pg_attribute a WHERE a.atttypid = r.oid AND NOT a.attisdropped)
      OR ty.oid IN (SELECT g.rngtypid FROM pg_catalog.pg_range g WHERE g.rngsubtype = r.oid)
)
SELECT oid::int FROM reach
"""
GENERATED_DEPS_SQL = """
SELECT d.adrelid AS rel, d.adnum::int AS attnum, dep.refobjsubid::int AS source
FROM pg_catalog.pg_attrdef d
JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_attrdef'::regclass AND dep.objid = d.oid
WHERE dep.refclassid = 'pg_catalog.pg_class'::regclass AND dep.refobjid = d.adrelid AND dep.refobjsubid > 0
"""
MEMBERS_SQL = """
SELECT m.rolname AS member, r.rolname AS role
FROM pg_catalog.pg_auth_members am
JOIN pg_catalog.pg_roles m ON m.oid = am.member JOIN pg_catalog.pg_roles r ON r.oid = am.roleid
"""


def view_column_sources(definition: str, relations_by_name: dict, dependencies: list[tuple[int, int]],
                        output_columns: tuple) -> dict:
    """Which base columns each view column derives from.

    Lineage for a plain SELECT view: every column a projection mentions, resolved through the
    FROM list.  Anything the resolver cannot follow gets every column the view depends on
    (conservative: a column of unknown origin is treated as derived from all of them).
    """
    from .sql import exp, parse_one

    fallback = {c.name: tuple(dependencies) for c in output_columns}
    try:
        tree = parse_one(definition)
    except Exception:
        return fallback
    if not isinstance(tree, exp.Select) or tree.args.get("with_") or len(tree.expressions) != len(output_columns):
        return fallback
    aliases = {}
    for table in tree.find_all(exp.Table):
        rel = relations_by_name.get((table.db or "public", table.name))
        if rel is None or table.find_ancestor(exp.Subquery) is not None:
            return fallback
        aliases[table.alias_or_name] = rel
    sources = {}
    for out_col, projection in zip(output_columns, tree.expressions):
        refs = set()
        for col in projection.find_all(exp.Column):
            candidates = [aliases[col.table]] if col.table in aliases else list(aliases.values())
            if col.table and col.table not in aliases:
                return fallback
            for rel in candidates:
                base = rel.column(col.name)
                if base is not None:
                    refs.add((rel.oid, base.attnum))
        if projection.find(exp.Star) is not None:
            return fallback
        sources[out_col.name] = tuple(sorted(refs))
    return sources


async def load_catalog(conn) -> Catalog:
    """Read the catalog through an asyncpg connection."""
    rows = await conn.fetch(RELATIONS_SQL)
    parents: dict[int, list[int]] = {}
    for child, parent in await conn.fetch(INHERITS_SQL):
        parents.setdefault(child, []).append(parent)
    deps: dict[int, list[tuple[int, int]]] = {}
    for view, base, attnum in await conn.fetch(VIEW_DEPS_SQL):
        deps.setdefault(view, []).append((base, attnum))
    defs = {oid: definition for oid, definition in await conn.fetch(VIEW_DEFS_SQL)}
    generated: dict[int, dict[int, list]] = {}  # a generated column reads other columns of its table
    for rel, attnum, source in await conn.fetch(GENERATED_DEPS_SQL):
        generated.setdefault(rel, {}).setdefault(attnum, []).append((rel, source))
    relations = []
    for oid, schema, name, kind, row_security, names, types, nums in rows:
        columns = tuple(Column(n, t, a) for n, t, a in zip(names, types, nums))
        derived = {c.name: tuple(generated[oid][c.attnum]) for c in columns if c.attnum in generated.get(oid, {})}
        relations.append(Relation(oid, schema, name, kind, columns, tuple(parents.get(oid, ())), derived,
                                  row_security))
    by_name = {(r.schema, r.name): r for r in relations}
    for i, rel in enumerate(relations):
        if rel.oid in defs:
            sources = view_column_sources(defs[rel.oid], by_name, deps.get(rel.oid, []), rel.columns)
            relations[i] = replace(rel, sources=sources)
    functions = frozenset(r[0] for r in await conn.fetch(FUNCTIONS_SQL))
    direct: dict[str, set[str]] = {}
    for member, role in await conn.fetch(MEMBERS_SQL):
        direct.setdefault(member, set()).add(role)
    memberships = {}
    for member in direct:
        seen, todo = set(), list(direct[member])
        while todo:
            role = todo.pop()
            if role not in seen:
                seen.add(role)
                todo.extend(direct.get(role, ()))
        memberships[member] = frozenset(seen)
    database = await conn.fetchval("SELECT current_database()")
    users = {"f": set(), "o": set(), "t": set(), "a": set()}
    for kind, name in await conn.fetch(USERS_OBJECTS_SQL):
        users[kind].add(name)
    functions = functions - users["f"]  # a name a user's function shares is no longer plainly built-in
    casts: dict[str, set[str]] = {}
    for type_name, function in await conn.fetch(CASTS_SQL):
        casts.setdefault(type_name, set()).add(function)
    checked = frozenset(row[0] for row in await conn.fetch(CHECKED_TYPES_SQL))
    return Catalog(relations, functions, memberships, database,
                   tuple(frozenset(users[kind]) for kind in "fota"),
                   {name: frozenset(functions) for name, functions in casts.items()}, checked)
