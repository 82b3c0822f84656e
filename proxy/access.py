"""A session's *effective access*: everything that decides what it may see, as one value.

A statement's decision depends on the rule set, the tier the identity resolves to (which identity
rule matched, its networks included), the grants in force at that moment and the declared purpose.
:class:`Access` holds exactly those; the decision cache is keyed by it, prepared statements,
portals and cursors remember the one they were decided or opened under, and a difference means
"decide again" (or, for what already runs, "stop if it narrowed").

Grants begin and end by the clock: the caller passes ``now`` in; nothing here reads a clock.

Pure.

>>> from proxy.rules import load_rules, EXAMPLE
>>> rules = load_rules(EXAMPLE)
>>> a = resolve(rules, "sales_li", frozenset(), "10.0.0.1", None, None)
>>> a.access.tier, a.access.grants, a.tier.name
('sales', (), 'sales')
>>> a.access.narrowed_to(a.access.with_purpose("CS-1")), a.access.with_purpose("CS-1").narrowed_to(a.access)
(False, True)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Access:
    """What a session may see at one moment (see the module docstring)."""
    rules_version: str | None
    tier: str | None  # the tier the identity works as (a grant's tier included), before class grants
    grants: tuple = ()  # numbers of the grants in force, ascending
    purpose: str | None = None  # declared with SET pgveil.purpose
    rule: int | None = None  # the identity rule that matched (networks included); None: the default tier

    def with_purpose(self, purpose: str | None) -> "Access":
        return self if purpose == self.purpose else replace(self, purpose=purpose)

    def narrowed_to(self, new: "Access") -> bool:
        """Does going from this access to ``new`` take anything away?  Only adding grants or
        declaring a purpose where there was none widens; any other change counts as narrowing."""
        if new == self:
            return False
        if (new.rules_version, new.tier, new.rule) != (self.rules_version, self.tier, self.rule):
            return True
        if not set(self.grants) <= set(new.grants):
            return True
        return self.purpose is not None and new.purpose != self.purpose

    def describe(self) -> str:
        """For messages: ``tier sales, grants #1, purpose 'CS-1'``."""
        grants = ", ".join(f"#{n}" for n in self.grants) or "none"
        purpose = repr(self.purpose) if self.purpose is not None else "none"
        return f"tier {self.tier}, grants {grants}, purpose {purpose}"


@dataclass(frozen=True, slots=True)
class Resolved:
    """An identity resolved at one moment: its access, the tier to decide with (grants laid
    over, purpose-bound classes masked while no purpose is declared), the grants themselves and
    the time until which this holds (the next grant beginning or ending; None: no such time)."""
    access: Access
    tier: object  # proxy.rules.Tier, or None: the identity is denied
    grants: tuple
    valid_until: datetime | None


def matched_rule(rules, user: str, roles: frozenset, address: str | None) -> int | None:
    """The index of the first identity rule that matches (None: the default applies)."""
    for index, rule in enumerate(rules.identities):
        if rule.matches(user, roles, address):
            return index
    return None


def next_boundary(rules, user: str, now: datetime | None) -> datetime | None:
    """The next moment one of this user's grants begins or ends (None: none ahead)."""
    if now is None:
        return None
    times = [t for g in rules.grants if g.user == user for t in (g.since, g.until) if t is not None and t > now]
    return min(times) if times else None


def resolve(rules, user: str, roles: frozenset, address: str | None, now: datetime | None,
            purpose: str | None) -> Resolved:
    """The identity's access at ``now`` with the declared ``purpose``."""
    tier, grants = rules.effective_tier(user, roles, address, now)
    base = tier.name.split("+", 1)[0] if tier is not None else None
    access = Access(rules.version, base, tuple(sorted(g.number for g in grants)), purpose,
                    matched_rule(rules, user, roles, address))
    return Resolved(access, tier, grants, next_boundary(rules, user, now))


def deciding_tier(tier, purpose: str | None):
    """The tier statements are decided with: purpose-bound classes stay masked until a purpose
    is declared."""
    if tier is None or purpose is not None or not tier.needs_purpose:
        return tier
    return tier.without_purpose()
