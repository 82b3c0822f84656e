"""The rules' model: what a validated rule file compiles to (:class:`RuleSet` and its
:class:`Tier`, :class:`IdentityRule`, :class:`Grant`, :class:`Mask`, :class:`ClassAction`), and
:class:`RuleError`, the ``file:line: message`` of every problem.  :mod:`proxy.rules` builds it
from a file's text.  Pure.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime

STATEMENT_KINDS = ("read", "write", "ddl", "copy", "session", "admin", "console")  # console: pgveil's own
MASK_FUNCTIONS = ("partial", "redact", "null", "hash")
ACTIONS = ("clear", "mask", "block")


class RuleError(Exception):
    """A rule file problem: ``file:line: message``."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source, self.line, self.message = source, line, message


@dataclass(frozen=True)
class Mask:
    """How a masked value is shown.  ``fn``: partial, redact, null or hash."""
    fn: str
    keep_first: int = 0
    keep_last: int = 0
    with_: str = "***"

    def describe(self) -> str:
        if self.fn == "partial":
            return f"partial({self.keep_first},{self.keep_last})"
        if self.fn == "redact":
            return f"redact({self.with_!r})"
        return self.fn


@dataclass(frozen=True)
class ClassAction:
    action: str  # clear | mask | block
    mask: Mask | None = None
    purpose: bool = False  # clear only once the session has declared a purpose

    def describe(self) -> str:
        return f"mask {self.mask.describe()}" if self.action == "mask" and self.mask else self.action


BLOCK = ClassAction("block")
CLEAR = ClassAction("clear")


@dataclass(frozen=True)
class Tier:
    name: str
    see: dict  # class name or "*" -> ClassAction
    statements: frozenset
    tables: tuple | None = None  # globs of relations this tier may reach, None: any
    rows: dict = field(default_factory=dict)  # "schema.table" -> SQL predicate
    write: frozenset = frozenset()  # classes this tier may write although not clear
    functions: tuple = ()  # globs of non-built-in functions this tier may call
    class_masks: dict = field(default_factory=dict)  # each class's default mask, for "*": mask
    max_rows: dict = field(default_factory=dict)  # class (or "*") -> most rows a statement may return
    settings: tuple = ()  # globs of settings this tier may change beyond proxy.settings.ALLOWED

    def row_limit(self, classes) -> int | None:
        """The most rows a statement reaching these sensitive classes may return (None: no limit)."""
        limits = [self.max_rows[c] for c in classes if c in self.max_rows]
        if classes and "*" in self.max_rows:
            limits.append(self.max_rows["*"])
        return min(limits) if limits else None

    def action(self, cls: str | None) -> ClassAction:
        """What this tier sees of a column of class ``cls`` (None: not sensitive)."""
        if cls is None:
            return CLEAR
        found = self.see.get(cls) or self.see.get("*") or BLOCK
        if found.action == "mask" and found.mask is None:
            return ClassAction("mask", self.class_masks.get(cls))
        if found.purpose:
            return ClassAction("clear", purpose=True)  # a tier with a declared purpose sees it in clear
        return found

    @property
    def all_clear(self) -> bool:
        """Sees every class in clear, everywhere, with no row filter: nothing to rewrite."""
        return self.see.get("*") == CLEAR and all(a == CLEAR for a in self.see.values()) \
            and self.tables is None and not self.rows

    @property
    def needs_purpose(self) -> bool:
        return any(a.purpose for a in self.see.values())

    def without_purpose(self) -> "Tier":
        """What the tier sees until a purpose is declared: purpose-bound classes masked."""
        see = {cls: ClassAction("mask", a.mask) if a.purpose else a for cls, a in self.see.items()}
        return Tier(self.name + "-nopurpose", see, self.statements, self.tables, self.rows, self.write,
                    self.functions, self.class_masks, self.max_rows, self.settings)

    def may_reach(self, schema: str, name: str) -> bool:
        if self.tables is None:
            return True
        return any(fnmatch.fnmatchcase(f"{schema}.{name}", pattern) for pattern in self.tables)


@dataclass(frozen=True)
class IdentityRule:
    tier: str
    user: str | None = None  # glob on the database user name
    member_of: str | None = None  # a database role the user is a member of
    networks: tuple = ()

    def matches(self, user: str, roles: frozenset, address: str | None = None) -> bool:
        if self.user is not None and not fnmatch.fnmatchcase(user, self.user):
            return False
        if self.member_of is not None and self.member_of not in roles:
            return False
        if self.networks:
            try:
                ip = ipaddress.ip_address(address or "")
            except ValueError:
                return False  # no address (a Unix socket) or an odd one: not from these networks
            return any(ip in ipaddress.ip_network(net) for net in self.networks)
        return True


@dataclass(frozen=True)
class Grant:
    """An approved, time-limited access request: extra classes in clear, or another tier."""
    number: int  # its place in the file, 1-based: how audit records name it
    user: str
    until: datetime
    reason: str
    approved_by: tuple
    since: datetime | None = None
    see: dict = field(default_factory=dict)  # class -> ClassAction, laid over the user's tier
    tier: str | None = None  # or: the user works as this tier meanwhile

    def active(self, now: datetime) -> bool:
        return (self.since is None or self.since <= now) and now < self.until

    def label(self) -> str:
        return f"grant #{self.number} ({self.reason}; approved by {', '.join(self.approved_by)}; until {self.until.isoformat()})"


@dataclass(frozen=True)
class RuleSet:
    version: str
    source: str
    classes: dict  # name -> Mask
    columns: tuple  # ((pattern, class), ...) in file order
    tiers: dict  # name -> Tier
    identities: tuple
    default: str  # "deny" or a tier name
    grants: tuple = ()

    def tier(self, name: str) -> Tier:
        return self.tiers[name]

    def granted(self, user: str, now: datetime) -> tuple:
        """The grants in force for a user at ``now``."""
        return tuple(g for g in self.grants if g.user == user and g.active(now))

    def effective_tier(self, user: str, roles: frozenset = frozenset(), address: str | None = None,
                       now: datetime | None = None) -> tuple[Tier | None, tuple]:
        """The tier an identity works as at ``now``, with the grants that shaped it."""
        base = self.tier_for(user, roles, address)
        grants = self.granted(user, now) if now is not None and self.grants else ()
        if not grants:
            return base, ()
        for grant in grants:
            if grant.tier is not None:
                base = self.tiers[grant.tier]
        if base is None:
            return None, ()
        see = dict(base.see)
        for grant in grants:
            see.update(grant.see)
        name = base.name + "+" + "+".join(f"grant{g.number}" for g in grants)
        return Tier(name, see, base.statements, base.tables, base.rows, base.write, base.functions,
                    base.class_masks, base.max_rows, base.settings), grants

    def tier_for(self, user: str, roles: frozenset = frozenset(), address: str | None = None) -> Tier | None:
        """The tier of an identity connecting from ``address`` (first matching rule wins); None: refused."""
        for rule in self.identities:
            if rule.matches(user, roles, address):
                return self.tiers[rule.tier]
        return None if self.default == "deny" else self.tiers[self.default]

    def class_of(self, schema: str, table: str, column: str) -> str | None:
        """The class of a column: exact names first, then globs in file order."""
        name = f"{schema}.{table}.{column}"
        for pattern, cls in self.columns:
            if pattern == name:
                return cls
        for pattern, cls in self.columns:
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
                return cls
        return None
