"""Rules v1: YAML -> a validated, compiled :class:`RuleSet` with a version.

Pure: :func:`load_rules` takes the file's text (the caller reads the file).  Every problem is
a :class:`RuleError` naming file, line and what is wrong; warnings (a glob that matches
nothing in the catalog) are returned, not raised.

>>> rules = load_rules(EXAMPLE, "example.yaml")
>>> rules.tier("sales").action("id_number").action, rules.tier("sales").action("bank_card").action
('mask', 'block')
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import re
from datetime import datetime, timedelta

import yaml

from .ruleset import (  # noqa: F401  (the model, re-exported: proxy.rules is its front door)
    ACTIONS, BLOCK, CLEAR, MASK_FUNCTIONS, STATEMENT_KINDS, ClassAction, Grant, IdentityRule, Mask, RuleError,
    RuleSet, Tier,
)


EXAMPLE = """
version: 1
classes:
  id_number: {mask: {fn: partial, keep_first: 3, keep_last: 4}}
  bank_card: {mask: {fn: partial, keep_first: 6, keep_last: 4}}
  phone:     {mask: {fn: partial, keep_first: 3, keep_last: 4}}
  address:   {mask: {fn: redact, with: "***"}}
columns:
  public.customers.id_number: id_number
  public.customers.bank_card: bank_card
  public.customers.address: address
  "*.*.phone": phone
tiers:
  customer_service:
    see: {id_number: mask, bank_card: mask, phone: clear, address: clear}
    statements: [read, write]
  sales:
    see: {id_number: mask, phone: mask, address: clear}
    statements: [read]
  production:
    tables: [public.orders, public.products]
    statements: [read]
  auditor:
    see: {"*": mask}
    statements: [read]
    rows: {public.customers: "grade <> 'top_secret'"}
  dba:
    see: {"*": clear}
    statements: [read, write, ddl, copy, session, admin]
identities:
  - {user: crm_app, tier: customer_service}
  - {user: "sales_*", tier: sales}
  - {member_of: prod_staff, tier: production}
default: deny
"""


# ----------------------------------------------------------------------------- loading
class _Doc:
    """YAML values with the line of every mapping key, for messages."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        try:
            self.node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise RuleError(source, mark.line + 1 if mark else 1,
                            f"invalid YAML: {getattr(exc, 'problem', None) or exc}") from None

    def error(self, node, message: str) -> RuleError:
        return RuleError(self.source, node.start_mark.line + 1 if node is not None else 1, message)

    def mapping(self, node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        items = []
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.error(key, f"{what}: keys must be plain names")
            items.append((key.value, key, value))
        return items

    def sequence(self, node, what: str) -> list:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what} must be a list")
        return node.value

    def scalar(self, node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what} must be a single value")
        return node.value

    def integer(self, node, what: str) -> int:
        text = self.scalar(node, what)
        if not text.isdigit():
            raise self.error(node, f"{what} must be a non-negative integer, got {text!r}")
        return int(text)

    def known_keys(self, items, allowed: tuple, what: str) -> dict:
        result = {}
        for name, key, value in items:
            if name not in allowed:
                raise self.error(key, f"unknown key {name!r} in {what} (expected one of: {', '.join(allowed)})")
            result[name] = (key, value)
        return result


def load_rules(text: str, source: str = "<rules>", now: datetime | None = None) -> RuleSet:
    """Validate and compile a rule file's text.  With ``now``, a grant without ``from`` (it runs
    from the moment it is loaded) is also checked against the longest grant allowed."""
    doc = _Doc(source, text)
    if doc.node is None:
        raise RuleError(source, 1, "the rule file is empty")
    top = doc.known_keys(doc.mapping(doc.node, "the rule file"),
                         ("version", "classes", "columns", "tiers", "identities", "default", "grants", "max_grant_days",
                          "$schema"),
                         "the rule file")
    if "version" not in top:
        raise doc.error(doc.node, "missing key 'version' (this is rules version 1)")
    if doc.scalar(top["version"][1], "version") != "1":
        raise doc.error(top["version"][1], "unsupported rules version (expected 1)")
    classes = _classes(doc, top.get("classes"))
    columns = _columns(doc, top.get("columns"), classes)
    tiers = _tiers(doc, top.get("tiers"), classes)
    identities = _identities(doc, top.get("identities"), tiers)
    default = "deny"
    if "default" in top:
        default = doc.scalar(top["default"][1], "default")
        if default != "deny" and default not in tiers:
            raise doc.error(top["default"][1], f"default must be 'deny' or a tier, got unknown tier {default!r}")
    max_days = 3
    if "max_grant_days" in top:
        max_days = doc.integer(top["max_grant_days"][1], "max_grant_days")
    grants = _grants(doc, top.get("grants"), classes, tiers, max_days, now)
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return RuleSet(version, source, classes, columns, tiers, identities, default, grants)


def _mask(doc: _Doc, node, what: str) -> Mask:
    spec = doc.known_keys(doc.mapping(node, what), ("fn", "keep_first", "keep_last", "with"), what)
    if "fn" not in spec:
        raise doc.error(node, f"{what}: missing 'fn' (one of: {', '.join(MASK_FUNCTIONS)})")
    fn = doc.scalar(spec["fn"][1], f"{what}.fn")
    if fn not in MASK_FUNCTIONS:
        raise doc.error(spec["fn"][1], f"{what}: unknown mask function {fn!r} (one of: {', '.join(MASK_FUNCTIONS)})")
    keep_first = doc.integer(spec["keep_first"][1], "keep_first") if "keep_first" in spec else 0
    keep_last = doc.integer(spec["keep_last"][1], "keep_last") if "keep_last" in spec else 0
    if fn != "partial" and ("keep_first" in spec or "keep_last" in spec):
        raise doc.error(node, f"{what}: keep_first/keep_last only apply to fn: partial")
    with_ = doc.scalar(spec["with"][1], "with") if "with" in spec else "***"
    if "with" in spec and fn != "redact":
        raise doc.error(spec["with"][0], f"{what}: 'with' only applies to fn: redact")
    return Mask(fn, keep_first, keep_last, with_)


def _classes(doc: _Doc, entry) -> dict:
    if entry is None:
        return {}
    classes = {}
    for name, key, value in doc.mapping(entry[1], "classes"):
        spec = doc.known_keys(doc.mapping(value, f"class {name}"), ("mask",), f"class {name}")
        classes[name] = _mask(doc, spec["mask"][1], f"class {name}.mask") if "mask" in spec else Mask("null")
    return classes


def _columns(doc: _Doc, entry, classes: dict) -> tuple:
    if entry is None:
        return ()
    columns = []
    for pattern, key, value in doc.mapping(entry[1], "columns"):
        if pattern.count(".") != 2:
            raise doc.error(key, f"column {pattern!r} must be schema.table.column (globs allowed)")
        cls = doc.scalar(value, f"columns.{pattern}")
        if cls not in classes:
            raise doc.error(value, f"column {pattern!r} names unknown class {cls!r}")
        columns.append((pattern, cls))
    return tuple(columns)


def _action(doc: _Doc, node, classes: dict, cls: str, where: str) -> ClassAction:
    default_mask = classes.get(cls) if cls != "*" else None
    if isinstance(node, yaml.ScalarNode):
        action = node.value
        if action not in ACTIONS:
            raise doc.error(node, f"{where}: unknown action {action!r} (one of: {', '.join(ACTIONS)})")
        return ClassAction(action, default_mask if action == "mask" else None)
    spec = doc.known_keys(doc.mapping(node, where), ACTIONS, where)
    if len(spec) != 1:
        raise doc.error(node, f"{where}: give exactly one action")
    (action, (key, value)), = spec.items()
    if action == "clear" and isinstance(value, yaml.MappingNode):
        options = doc.known_keys(doc.mapping(value, f"{where}.clear"), ("purpose",), f"{where}.clear")
        if "purpose" in options:
            if doc.scalar(options["purpose"][1], "purpose") != "required":
                raise doc.error(options["purpose"][1], f"{where}.clear.purpose: the only value is 'required'")
            return ClassAction("clear", default_mask, purpose=True)
        return ClassAction("clear")
    if action == "mask":
        if isinstance(value, yaml.ScalarNode) and value.value in ("", "null", "~"):
            return ClassAction("mask", default_mask)
        return ClassAction("mask", _mask(doc, value, f"{where}.mask"))
    return ClassAction(action)


def _setting_name(doc: _Doc, item, where: str) -> str:
    """A setting (or glob of settings) a tier may change besides the harmless ones."""
    from .settings import NEVER
    name = doc.scalar(item, "setting").lower()
    if not re.fullmatch(r"[a-z_*?][a-z0-9_.*?\[\]]*", name):
        raise doc.error(item, f"{where}: {name!r} is not a setting name")
    if name in NEVER:
        raise doc.error(item, f"{where}: {name} cannot be allowed: {NEVER[name]}")
    return name


def _tiers(doc: _Doc, entry, classes: dict) -> dict:
    if entry is None:
        raise RuleError(doc.source, 1, "missing key 'tiers'")
    tiers = {}
    allowed = ("see", "statements", "tables", "rows", "write", "functions", "description", "max_rows", "settings")
    for name, key, value in doc.mapping(entry[1], "tiers"):
        spec = doc.known_keys(doc.mapping(value, f"tier {name}"), allowed, f"tier {name}")
        see = {}
        if "see" in spec:
            for cls, ckey, cvalue in doc.mapping(spec["see"][1], f"tier {name}.see"):
                if cls != "*" and cls not in classes:
                    raise doc.error(ckey, f"tier {name}: unknown class {cls!r}")
                see[cls] = _action(doc, cvalue, classes, cls, f"tier {name}.see.{cls}")
        statements = frozenset(["read"])
        if "statements" in spec:
            statements = frozenset()
            for item in doc.sequence(spec["statements"][1], f"tier {name}.statements"):
                kind = doc.scalar(item, "statement kind")
                if kind not in STATEMENT_KINDS:
                    raise doc.error(item, f"tier {name}: unknown statement kind {kind!r} "
                                          f"(one of: {', '.join(STATEMENT_KINDS)})")
                statements |= {kind}
        tables = None
        if "tables" in spec:
            tables = tuple(_relation_name(doc, item, f"tier {name}.tables")
                           for item in doc.sequence(spec["tables"][1], f"tier {name}.tables"))
        rows = {}
        if "rows" in spec:
            for relation, rkey, rvalue in doc.mapping(spec["rows"][1], f"tier {name}.rows"):
                _relation_name(doc, rkey, f"tier {name}.rows")
                rows[relation] = _row_filter(doc, rvalue, f"tier {name}.rows.{relation}")
        write = frozenset()
        if "write" in spec:
            for item in doc.sequence(spec["write"][1], f"tier {name}.write"):
                cls = doc.scalar(item, "class")
                if cls != "*" and cls not in classes:
                    raise doc.error(item, f"tier {name}.write: unknown class {cls!r}")
                write |= {cls}
        functions = ()
        if "functions" in spec:
            functions = tuple(doc.scalar(item, "function").lower()
                              for item in doc.sequence(spec["functions"][1], f"tier {name}.functions"))
        max_rows = {}
        if "max_rows" in spec:
            node = spec["max_rows"][1]
            if isinstance(node, yaml.ScalarNode):
                max_rows["*"] = doc.integer(node, f"tier {name}.max_rows")
            else:
                for cls, ckey, cvalue in doc.mapping(node, f"tier {name}.max_rows"):
                    if cls != "*" and cls not in classes:
                        raise doc.error(ckey, f"tier {name}.max_rows: unknown class {cls!r}")
                    max_rows[cls] = doc.integer(cvalue, f"tier {name}.max_rows.{cls}")
        settings = ()
        if "settings" in spec:
            settings = tuple(_setting_name(doc, item, f"tier {name}.settings")
                             for item in doc.sequence(spec["settings"][1], f"tier {name}.settings"))
        tiers[name] = Tier(name, see, statements, tables, rows, write, functions, classes, max_rows, settings)
    return tiers


def _relation_name(doc: _Doc, node, where: str) -> str:
    text = doc.scalar(node, where)
    if text.count(".") != 1:
        raise doc.error(node, f"{where}: relation {text!r} must be schema.table (globs allowed)")
    return text


def _row_filter(doc: _Doc, node, where: str) -> str:
    text = doc.scalar(node, where)
    from .sql import SqlglotError, parse_one, to_sql

    try:
        parsed = parse_one(f"SELECT 1 WHERE {text}")
    except SqlglotError as exc:
        raise doc.error(node, f"{where}: row filter does not parse: {str(exc).splitlines()[0]}") from None
    where_clause = parsed.args.get("where")
    if where_clause is None or parsed.args.get("from_") is not None or parsed.args.get("limit") is not None:
        raise doc.error(node, f"{where}: row filter must be a single boolean expression")
    return to_sql(where_clause.this)


def _identities(doc: _Doc, entry, tiers: dict) -> tuple:
    if entry is None:
        return ()
    rules = []
    for item in doc.sequence(entry[1], "identities"):
        spec = doc.known_keys(doc.mapping(item, "identity"), ("user", "member_of", "tier", "networks"), "identity")
        if "tier" not in spec:
            raise doc.error(item, "identity rule without 'tier'")
        tier = doc.scalar(spec["tier"][1], "tier")
        if tier not in tiers:
            raise doc.error(spec["tier"][1], f"identity rule names unknown tier {tier!r}")
        if "user" not in spec and "member_of" not in spec:
            raise doc.error(item, "identity rule needs 'user' or 'member_of'")
        user = doc.scalar(spec["user"][1], "user") if "user" in spec else None
        member_of = doc.scalar(spec["member_of"][1], "member_of") if "member_of" in spec else None
        networks = []
        for node in (doc.sequence(spec["networks"][1], "networks") if "networks" in spec else []):
            text = doc.scalar(node, "network")
            try:
                networks.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise doc.error(node, f"identity rule: {text!r} is not a network (CIDR, e.g. 10.1.0.0/16)") from None
        networks = tuple(networks)
        rules.append(IdentityRule(tier, user, member_of, networks))
    return tuple(rules)


def _timestamp(doc: _Doc, node, what: str) -> datetime:
    text = doc.scalar(node, what)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise doc.error(node, f"{what}: {text!r} is not a time (ISO 8601, e.g. 2026-12-01T18:00:00+08:00)") from None
    if value.tzinfo is None:
        raise doc.error(node, f"{what}: {text!r} needs a time zone (e.g. +08:00)")
    return value


def _grants(doc: _Doc, entry, classes: dict, tiers: dict, max_days: int, now: datetime | None) -> tuple:
    if entry is None:
        return ()
    grants = []
    allowed = ("user", "see", "tier", "from", "until", "reason", "approved_by")
    for number, item in enumerate(doc.sequence(entry[1], "grants"), start=1):
        spec = doc.known_keys(doc.mapping(item, "grant"), allowed, "grant")
        for key in ("user", "until", "reason", "approved_by"):
            if key not in spec:
                raise doc.error(item, f"grant #{number}: missing {key!r} (a grant needs user, until, reason and "
                                      f"approved_by)")
        if ("see" in spec) == ("tier" in spec):
            raise doc.error(item, f"grant #{number}: give either 'see' or 'tier'")
        reason = doc.scalar(spec["reason"][1], "reason").strip()
        approvers = tuple(doc.scalar(a, "approver") for a in doc.sequence(spec["approved_by"][1], "approved_by"))
        if not reason or not approvers:
            raise doc.error(item, f"grant #{number}: reason and approved_by must not be empty")
        until = _timestamp(doc, spec["until"][1], "until")
        since = _timestamp(doc, spec["from"][1], "from") if "from" in spec else None
        if since is not None and since >= until:
            raise doc.error(spec["from"][1], f"grant #{number}: 'from' must come before 'until'")
        start = since or now
        if start is not None and until - start > timedelta(days=max_days):
            raise doc.error(spec["until"][1], f"grant #{number}: longer than {max_days} days (max_grant_days)")
        see, tier = {}, None
        if "see" in spec:
            for cls, ckey, cvalue in doc.mapping(spec["see"][1], f"grant #{number}.see"):
                if cls != "*" and cls not in classes:
                    raise doc.error(ckey, f"grant #{number}: unknown class {cls!r}")
                see[cls] = _action(doc, cvalue, classes, cls, f"grant #{number}.see.{cls}")
        else:
            tier = doc.scalar(spec["tier"][1], "tier")
            if tier not in tiers:
                raise doc.error(spec["tier"][1], f"grant #{number}: unknown tier {tier!r}")
        grants.append(Grant(number, doc.scalar(spec["user"][1], "user"), until, reason, approvers, since, see, tier))
    return tuple(grants)


def unmatched_globs(rules: RuleSet, column_names: list[str]) -> list[str]:
    """Column patterns that match no column of the catalog (for warnings)."""
    return [pattern for pattern, _ in rules.columns
            if not any(fnmatch.fnmatchcase(name, pattern) for name in column_names)]
