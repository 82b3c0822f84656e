"""Row filters as security barriers: no client expression ever sees a row the tier may not read.

A masking subquery that carries a row filter is a *fence* the planner cannot cross:

    FROM customers c
      -> FROM (SELECT ... FROM "public"."customers" WHERE (<row filter>) OFFSET 0) AS c

``OFFSET`` stops PostgreSQL from pulling the subquery up into the outer query
(``is_simple_subquery``) and from pushing the outer query's conditions down into it
(``subquery_is_pushdown_safe``), whatever the costs say: the client's predicates, casts and
functions only ever run on rows the filter let through.  This is what a ``security_barrier``
view does, with one difference: PostgreSQL still pushes *leakproof* conditions into a barrier
view so that indexes keep working; here pgveil does that push itself, for the one shape it can
prove harmless (:func:`index_copies`): an equality between a clear column of a type whose ``=``
is leakproof and a literal or parameter, from the WHERE of the query that reads the source.
The copy goes inside the fence (``AND "id" = CAST($1 AS integer)``), the client's own
condition stays outside, so the result is the same and the index is used.

A write's target cannot be a subquery.  Its row filter guards everything the client wrote by
construction instead (:func:`guard_write`): ``WHERE CASE WHEN (<filter>) THEN (<client's
condition>) ELSE FALSE END``, since CASE evaluates its branches in order, only for rows whose
filter holds.  SET and RETURNING are computed only for rows that passed WHERE.  Equalities
that could use an index are copied out of the CASE, as above.

Pure: sqlglot trees in, SQL text out.
"""

from __future__ import annotations

from .sql import exp, parse_one, to_sql

FENCE = " OFFSET 0"
# Column types whose ``=`` PostgreSQL marks leakproof, and the type the other side is cast to
# (so that no implicit cast ever applies to the column's own value).
LEAKPROOF_EQUALITY = {
    "smallint": "smallint", "integer": "integer", "bigint": "bigint", "text": "text",
    "character varying": "text", "character": "bpchar", "bpchar": "bpchar", "name": "name", "date": "date",
    "timestamp without time zone": "timestamp", "timestamp with time zone": "timestamptz", "uuid": "uuid",
    "boolean": "boolean", "oid": "oid", "double precision": "double precision",
}


def fenced(template: str, copies: list[str]) -> str:
    """The fenced masking subquery's text with ``copies`` added to its row filter.

    >>> fenced('SELECT "id" FROM "t" WHERE (a = 1) OFFSET 0', ['"id" = CAST(5 AS INT)'])
    'SELECT "id" FROM "t" WHERE (a = 1) AND "id" = CAST(5 AS INT) OFFSET 0'
    """
    if not copies:
        return template
    if not template.endswith(FENCE):
        raise ValueError("a fenced masking subquery must end with its fence")
    return template[: -len(FENCE)] + "".join(f" AND {c}" for c in copies) + FENCE


def _conjuncts(condition: exp.Expression | None) -> list[exp.Expression]:
    out, stack = [], [condition] if condition is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, exp.And):
            stack += [node.expression, node.this]
        elif isinstance(node, exp.Paren):
            stack.append(node.this)
        else:
            out.append(node)
    return out


def _constant(node: exp.Expression) -> bool:
    """A literal, a ``$n`` parameter, or a sum or difference of them: a value from the client,
    never from a row."""
    if isinstance(node, exp.Literal):
        return True
    if isinstance(node, (exp.Add, exp.Sub)):  # $1 + 100
        return _constant(node.this) and _constant(node.expression)
    if isinstance(node, (exp.Paren, exp.Neg)):
        return _constant(node.this)
    return isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal) and not node.this.is_string


def _cast_type(column_type: str) -> str | None:
    base = column_type.split("(")[0].strip()
    if base.endswith("[]"):
        return None
    return LEAKPROOF_EQUALITY.get(base)


def _other_column(node: exp.Expression, qualifiers: set) -> bool:
    """A qualified column of another relation of the statement (whose values the tier reads
    anyway, through its own masking subquery when it is protected)."""
    if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier) \
            or node.args.get("db") is not None or node.args.get("table") is None:
        return False
    table = node.args["table"]
    return (table.this if table.quoted else table.this.lower()) not in qualifiers


INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
FLIPPED = {exp.EQ: exp.EQ, exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE}
SYMBOL = {exp.EQ: "=", exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<="}


def _comparisons(condition):
    """(operator class, left, right) of every comparison conjunct; BETWEEN gives two."""
    for node in _conjuncts(condition):
        if type(node) in SYMBOL:
            yield type(node), node.this, node.expression
        elif isinstance(node, exp.Between) and not node.args.get("symmetric"):
            yield exp.GTE, node.this, node.args["low"]
            yield exp.LTE, node.this, node.args["high"]


def _bound(op, value: exp.Expression, col_type: str, other: bool) -> str | None:
    """The right-hand side of a copy of ``column op value`` that holds for every row the
    original holds for, with no implicit cast on the column's side; None when there is none."""
    text = to_sql(value)  # (a literal is written like a parameter: a shape's decision serves both)
    base = col_type.split("(")[0].strip()
    cast_type = _cast_type(col_type)
    if cast_type is None:
        return None
    if op is exp.EQ or other:
        return None if other and op is not exp.EQ else f"CAST({text} AS {cast_type})"
    if base in INTEGER_TYPES or cast_type == "text":
        # CAST rounds to the nearest integer: ``id >= CAST(x AS integer)`` holds wherever
        # ``id > x`` or ``id >= x`` does (and ``<=`` for ``<``, ``<=``), so the copy is inclusive
        return f"CAST({text} AS {cast_type})"
    return None


def equalities(condition, source, qualifiers: set, unqualified: bool, qualify: str | None = None) -> list[str]:
    """Leakproof copies of the ``column <op> constant`` conjuncts of ``condition`` (=, <, <=, >,
    >=, BETWEEN) that name a clear column of ``source``, or qualified by ``qualify``.  A copy
    holds for every row the conjunct holds for, and compares the column's own value with a
    value of its own type (an operator PostgreSQL marks leakproof).

    ``qualifiers``: the names that refer to the source; ``unqualified``: whether a bare column
    name refers to it (the source is the only relation where the condition stands).  With
    ``qualify`` (a write's target, in the statement itself) the other side of ``=`` may also be
    a column of another relation, so that a join keeps its hash or merge join."""
    copies = []
    for op, left, right in _comparisons(condition):
        for column, value, kind in ((left, right, op), (right, left, FLIPPED[op])):
            other = bool(qualify) and _other_column(value, qualifiers)
            if not isinstance(column, exp.Column) or not isinstance(column.this, exp.Identifier) \
                    or column.args.get("db") is not None or not (_constant(value) or other):
                continue
            table = column.args.get("table")
            name = column.this.this if column.this.quoted else column.this.this.lower()
            if table is None and not unqualified:
                continue
            if table is not None and (table.this if table.quoted else table.this.lower()) not in qualifiers:
                continue
            found = source.action(name)
            if found is None or found[1].action != "clear":
                continue
            col = next(c for c, _, _ in source.actions if c.name == name)
            bound = _bound(kind, value, col.type, other)
            if bound is None:
                continue
            if kind in (exp.GT, exp.LT) and not other:
                kind = exp.GTE if kind is exp.GT else exp.LTE  # the rounded bound is inclusive
            target = to_sql(exp.column(name, table=qualify, quoted=True) if qualify else exp.column(name, quoted=True))
            copies.append(to_sql(parse_one(f"SELECT 1 WHERE {target} {SYMBOL[kind]} {bound}").args["where"].this))
            break
    return copies


def _alias_name(table: exp.Table) -> str:
    alias = table.args.get("alias")
    name = alias.this if alias is not None and alias.this is not None else table.this
    return name.this if name.quoted else name.this.lower()


def index_copies(table: exp.Table, source, others: list | None = None) -> list[str]:
    """Copies for the fenced subquery that stands where ``table`` stood, from the WHERE of the
    SELECT whose FROM or JOIN names it directly; and, through an inner join with a relation the
    tier sees whole, a semi-join on that relation's own copies (:func:`join_copies`)."""
    holder = table.parent
    if not isinstance(holder, (exp.From, exp.Join)) or not isinstance(holder.parent, exp.Select):
        return []
    select = holder.parent
    alias = table.args.get("alias")
    if alias is not None and alias.args.get("columns"):
        return []  # an alias list renames the columns; not worth following here
    where = select.args.get("where")
    qualifiers = {_alias_name(table)}
    single = isinstance(select.args.get("from_"), exp.From) and not select.args.get("joins") \
        and select.args["from_"].this is table
    copies = equalities(where.this, source, qualifiers, single) if where is not None else []
    return copies + join_copies(select, table, source, others or [])


def join_copies(select: exp.Select, table: exp.Table, source, others: list) -> list[str]:
    """``FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = $1``: the fence
    around c gets ``"id" IN (SELECT CAST("customer_id" AS integer) FROM "public"."orders"
    WHERE "id" = CAST($1 AS integer))``.  Every row of c the statement can return joins such a
    row of o, so the copy holds for all of them; it reads only o, which the tier sees whole, and
    compares c's clear column with a leakproof ``=``.  Only when every join of the SELECT is an
    inner one, and o has a copy of its own (else the semi-join would read o whole)."""
    joins = select.args.get("joins") or []
    if any(j.args.get("side") or (j.args.get("kind") or "").upper() not in ("", "INNER", "CROSS") for j in joins):
        return []
    conditions = [select.args["where"].this] if select.args.get("where") is not None else []
    conditions += [j.args["on"] for j in joins if j.args.get("on") is not None]
    mine = _alias_name(table)
    copies = []
    for other_table, other in others:
        holder = other_table.parent
        if other.protected or other_table is table or not isinstance(holder, (exp.From, exp.Join)) \
                or holder.parent is not select or other_table.args.get("alias") is not None \
                and other_table.args["alias"].args.get("columns") or not isinstance(other_table.this, exp.Identifier):
            continue
        theirs = _alias_name(other_table)
        own = [c for cond in conditions for c in equalities(cond, other, {theirs}, False)]
        if not own:
            continue
        for cond in conditions:
            for node in _conjuncts(cond):
                pair = _join_pair(node, mine, theirs)
                if pair is None:
                    continue
                column, other_column = pair
                found = source.action(column)
                col = source.relation.column(column)
                if found is None or found[1].action != "clear" or col is None or _cast_type(col.type) is None \
                        or other.relation.column(other_column) is None:
                    continue
                relation = f"{_quote(other.relation.schema)}.{_quote(other.relation.name)}"
                copies.append(to_sql(parse_one(
                    f"SELECT 1 WHERE {_quote(column)} IN (SELECT CAST({_quote(other_column)} AS "
                    f"{_cast_type(col.type)}) FROM {relation} WHERE {' AND '.join(own)})").args["where"].this))
    return copies


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _join_pair(node, mine: str, theirs: str) -> tuple[str, str] | None:
    """(my column, their column) of ``mine.a = theirs.b`` (either way round)."""
    if not isinstance(node, exp.EQ):
        return None
    sides = []
    for side in (node.this, node.expression):
        if not isinstance(side, exp.Column) or not isinstance(side.this, exp.Identifier) \
                or side.args.get("table") is None or side.args.get("db") is not None:
            return None
        table, name = side.args["table"], side.this
        sides.append((table.this if table.quoted else table.this.lower(), name.this if name.quoted else name.this.lower()))
    (qa, ca), (qb, cb) = sides
    if qa == mine and qb == theirs:
        return ca, cb
    if qa == theirs and qb == mine:
        return cb, ca
    return None


def guard_write(tree: exp.Expression, target, alias: str, unqualified: bool) -> None:
    """Put a write's row filter before every condition the client wrote on its target (the
    WHERE of UPDATE and DELETE, and of ON CONFLICT DO UPDATE).  ``unqualified``: whether a bare
    column name refers to the target (no other relation in the statement)."""
    condition = parse_one(f"SELECT 1 WHERE {target.row_filter}").args["where"].this
    for col in condition.find_all(exp.Column):
        if col.args.get("table") is None:
            col.set("table", exp.to_identifier(alias, quoted=True))
    where = tree.args.get("where")
    if where is None:
        tree.set("where", exp.Where(this=condition))
        return
    guarded = exp.Case(ifs=[exp.If(this=exp.paren(condition), true=exp.paren(where.this))], default=exp.false())
    copies = equalities(where.this, target, {alias}, unqualified, qualify=alias)
    combined = guarded
    for copy in copies:
        combined = exp.and_(combined, parse_one(f"SELECT 1 WHERE {copy}").args["where"].this)
    tree.set("where", exp.Where(this=combined))
