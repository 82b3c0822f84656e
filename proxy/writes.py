"""Doors the table-source rewrite alone does not close: writes and COPY.

A write's target cannot be replaced by a masking subquery, so what the statement reads of its
target is checked instead: SET, WHERE, RETURNING, FROM, ON CONFLICT and MERGE conditions that
touch a column the tier may not see in clear are refused, as are writes into such columns
(unless the tier lists the class under ``write``).  ``RETURNING *`` is expanded into the
masked column list.  UPDATE and DELETE carry the tier's row filter, so graded rows cannot be
changed by a tier that cannot read them.  Every other relation in the statement goes through
the ordinary table-source rewrite.
"""

from __future__ import annotations

from .sql import exp, parse_one, to_sql

from .barrier import guard_write
from .masks import mask_sql, null_of
from .rewrite import SYSTEM_SCHEMAS, Rewriter, Source, name_of, qualify, quote
from .verdicts import NotUnderstood, Reason, Refusal


def _target_table(node) -> tuple[exp.Table, list[str] | None]:
    if isinstance(node, exp.Schema):
        return node.this, [name_of(c) for c in node.expressions]
    if isinstance(node, exp.Table):
        return node, None
    raise NotUnderstood(f"write target {to_sql(node)}")


def check_written(rw: Rewriter, target: Source, columns: list[str]) -> None:
    tier = rw.ctx.tier
    for column in columns:
        found = target.action(column)
        if found is None:
            continue  # PostgreSQL will report the unknown column itself
        cls, act = found
        if act.action != "clear" and cls not in tier.write and "*" not in tier.write:
            raise Refusal(f"writing column {target.relation.name}.{column} ({cls}) is not allowed for tier {tier.name}",
                          Reason.WRITE)
        rw.analysis.use(target, column, cls, act)


def _other_names(tree: exp.Expression, target_table: exp.Table) -> set:
    """Names that refer to a relation other than the write's target anywhere in the statement:
    other tables, subqueries, CTEs, functions in FROM, VALUES lists."""
    names = set()
    for node in tree.find_all(exp.Table, exp.TableAlias):
        if node is target_table or node.parent is target_table:
            continue
        if isinstance(node, exp.TableAlias):
            if node.this is not None:
                names.add(name_of(node.this))
        elif node.args.get("alias") is None and isinstance(node.this, exp.Identifier):
            names.add(name_of(node.this))
    return names


def check_reads_of_target(rw: Rewriter, target: Source, parts: list, tree: exp.Expression,
                          target_table: exp.Table) -> None:
    """Refuse any reference to a protected column of the target, or to its whole row (``c``,
    ``c.*``, ``ROW(c.*)``, ``(c).col``, PostgreSQL 18's ``old`` and ``new``).  A qualifier that
    names no other relation of the statement is taken to be the target (fail closed)."""
    tier = rw.ctx.tier
    names = {target.alias, target.relation.name, "old", "new"}
    others = _other_names(tree, target_table) - {target.alias}
    hidden = any(act.action != "clear" for _, _, act in target.actions)
    whole_row = f"the whole row of {target.relation.name} is not visible to tier {tier.name}"
    for part in parts:
        if part is None:
            continue
        for col in part.find_all(exp.Column):
            qualifier = name_of(col.args.get("table")) if col.args.get("table") is not None else None
            if qualifier == "excluded" and isinstance(tree, exp.Insert):
                continue  # the row being proposed, which the client wrote itself
            if qualifier is not None and qualifier not in names and qualifier in others:
                continue
            if isinstance(col.this, exp.Star):
                if isinstance(col.parent, exp.Returning) and qualifier in (target.alias, target.relation.name):
                    continue  # RETURNING c.*: expanded into the masked column list below
                if hidden:
                    raise Refusal(whole_row, Reason.NOT_VISIBLE)
                continue
            column = name_of(col.this) if isinstance(col.this, exp.Identifier) else None
            if column is None:
                raise NotUnderstood(f"column reference {to_sql(col)}")
            if qualifier is None and column in names and target.action(column) is None:
                if hidden:
                    raise Refusal(whole_row, Reason.NOT_VISIBLE)
                continue
            found = target.action(column)
            if found is None:
                continue
            cls, act = found
            if act.action != "clear":
                raise Refusal(f"column {target.relation.name}.{column} is {'masked' if act.action == 'mask' else 'not visible'}"
                              f" for tier {tier.name} and cannot be used in a write statement", Reason.WRITE)
            rw.analysis.use(target, column, cls, act)


def set_columns(sets: list) -> list[str]:
    """The columns an UPDATE's SET (or ON CONFLICT/MERGE's) writes, ``(a, b) = (...)`` too."""
    names = []
    for eq in sets:
        left = eq.this if isinstance(eq, exp.EQ) else None
        items = left.expressions if isinstance(left, exp.Tuple) else [left]
        for item in items:
            if not isinstance(item, exp.Column) or not isinstance(item.this, exp.Identifier):
                raise NotUnderstood(f"SET {to_sql(eq)}")
            names.append(name_of(item.this))
    return names


def expand_returning(target: Source, returning, has_other_sources: bool):
    """``RETURNING *`` of a protected target becomes its masked column list."""
    if returning is None or not target.protected:
        return
    for star in list(returning.find_all(exp.Star)):
        if has_other_sources:
            raise Refusal("RETURNING * with other relations is not supported for this tier; list the columns",
                          Reason.NOT_VISIBLE)
        items, target_uses = [], []
        alias = quote(target.alias)
        for col, cls, act in target.actions:
            ref = f"{alias}.{quote(col.name)}"
            if cls is not None:
                target_uses.append((col.name, cls, act))
            if act.action == "clear":
                items.append(ref)
            elif act.action == "mask":
                items.append(f"{mask_sql(ref, col.type, act.mask)} AS {quote(col.name)}")
            else:
                items.append(f"{null_of(col.type)} AS {quote(col.name)}")
        parsed = parse_one(f"SELECT {', '.join(items)}").expressions
        star_parent = star.parent
        if isinstance(star_parent, exp.Column):
            star = star_parent
        index = returning.expressions.index(star)
        returning.set("expressions", returning.expressions[:index] + parsed + returning.expressions[index + 1:])
        yield from target_uses


def add_row_filter(tree: exp.Expression, target: Source, unqualified: bool = True) -> None:
    """The row filter, evaluated before the client's own conditions (see proxy/barrier.py)."""
    if target.row_filter:
        guard_write(tree, target, target.alias, unqualified)


def rewrite_write(rw: Rewriter, tree: exp.Expression) -> exp.Expression:
    """INSERT, UPDATE, DELETE and MERGE."""
    table, listed = _target_table(tree.this)
    target = rw.source(table)
    if target.relation.schema in SYSTEM_SCHEMAS:  # UPDATE pg_settings is SET; the catalogs are the server's
        raise Refusal(f"writing {target.relation.qualified} is not allowed for tier {rw.ctx.tier.name}: "
                      f"it is a system catalog", Reason.WRITE)
    all_columns = [col.name for col, _, _ in target.actions]
    if isinstance(tree, exp.Insert):
        check_written(rw, target, listed or all_columns)
        conflict = tree.args.get("conflict")
        parts = [tree.args.get("returning")]
        if conflict is not None:
            sets = conflict.expressions or []
            if sets and target.row_filter:  # DO UPDATE must not reach rows the tier cannot see
                add_row_filter(conflict, target)
            check_written(rw, target, set_columns(sets))
            parts += [eq.expression for eq in sets] + [conflict.args.get("where")]
        others = False
    elif isinstance(tree, exp.Update):
        sets = tree.expressions
        check_written(rw, target, set_columns(sets))
        parts = [eq.expression for eq in sets] + [tree.args.get("where"), tree.args.get("from_"),
                                                  tree.args.get("returning")]
        others = tree.args.get("from_") is not None
        add_row_filter(tree, target, not others)
    elif isinstance(tree, exp.Delete):
        parts = [tree.args.get("where"), tree.args.get("returning"), *(tree.args.get("using") or [])]
        others = bool(tree.args.get("using"))
        add_row_filter(tree, target, not others)
    elif isinstance(tree, exp.Merge):
        if target.row_filter:
            raise Refusal(f"MERGE into {target.relation.name} is not allowed for tier {rw.ctx.tier.name}: "
                          f"it has a row filter", Reason.WRITE)
        parts = [tree.args.get("on"), tree.args.get("returning")]
        for when in tree.args["whens"].expressions:
            parts.append(when.args.get("condition"))
            then = when.args.get("then")
            if isinstance(then, exp.Update):
                check_written(rw, target, set_columns(then.expressions))
                parts += [eq.expression for eq in then.expressions]
            elif isinstance(then, exp.Insert):
                cols = then.this.expressions if isinstance(then.this, exp.Tuple) else None
                check_written(rw, target, [name_of(c.this) for c in cols] if cols else all_columns)
                parts.append(then.expression)
        others = True
    else:
        raise NotUnderstood(type(tree).__name__)
    check_reads_of_target(rw, target, parts, tree, table)
    for column, cls, act in expand_returning(target, tree.args.get("returning"), others):
        rw.analysis.use(target, column, cls, act)
    rw.rewrite(tree, skip={id(table)})
    qualify(table, target.relation)
    return tree


def rewrite_copy(rw: Rewriter, tree: exp.Copy) -> exp.Expression:
    tier = rw.ctx.tier
    files = tree.args.get("files") or []
    to_client = len(files) == 1 and isinstance(files[0], exp.Identifier) and not files[0].quoted \
        and files[0].name.upper() in ("STDIN", "STDOUT")  # a quoted "stdout" is a name, not the keyword
    if not to_client or tree.args.get("params") and any(
            name_of(p.this).upper() == "PROGRAM" for p in tree.args["params"] if isinstance(p.this, exp.Var)):
        raise Refusal(f"COPY to or from a file or program is not allowed for tier {tier.name}", Reason.COPY)
    node = tree.this
    if tree.args.get("kind"):  # COPY ... FROM STDIN: a write
        if "write" not in tier.statements:
            raise Refusal(f"write statements (COPY FROM) are not allowed for tier {tier.name}", Reason.STATEMENT_KIND)
        table, listed = _target_table(node)
        target = rw.source(table)
        check_written(rw, target, listed or [c.name for c, _, _ in target.actions])
        qualify(table, target.relation)
        return tree
    if isinstance(node, (exp.Subquery, exp.Query)):
        rw.rewrite(node)
        return tree
    table, listed = _target_table(node)
    source = rw.source(table)
    for column in listed or []:
        found = source.action(column)
        if found and found[1].action == "block":
            raise Refusal(f"column {source.relation.name}.{column} is not visible to tier {tier.name}", Reason.NOT_VISIBLE)
        if found:
            rw.analysis.use(source, column, *found)
    if not source.protected:
        qualify(table, source.relation)
        return tree
    for col, cls, act in source.actions:
        if listed is None or col.name in listed:
            rw.analysis.use(source, col.name, cls, act)
    columns = ", ".join(quote(c) for c in listed) if listed else "*"
    select = parse_one(f"SELECT {columns} FROM {to_sql(table)}")
    rw.rewrite(select)
    tree.set("this", exp.Subquery(this=select))
    return tree
