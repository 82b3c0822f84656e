"""The engine a process shares between its sessions: rules, catalog and the decision cache.

Pure: no I/O (the server swaps ``rules`` and ``catalog`` in when it has loaded them).
"""

from __future__ import annotations

from .decision_cache import SHAPE_READ_LIMIT, DecisionCache, Template
from . import lexer
from .limits import decided_apart
from .pipeline import failed_analysis
from .rewrite import Rewriter
from .verdicts import Context, Decision, Refusal


class Engine:
    """Rules, catalog and decision cache, shared by every session of a process.

    The rules and catalog in force are read from ``source.current`` at each use.  In the
    server the source is :class:`proxy.runtime.Runtime`, which publishes both together as one
    immutable snapshot, swapped in one assignment; sessions only read them.  Without a source
    (the command-line tools, tests) the engine holds its own, and they can be set.
    """

    def __init__(self, rules, catalog=None, source=None) -> None:
        self.source = source if source is not None else _Held(rules)
        self.cache = DecisionCache()
        self._hidden: dict = {}
        if source is None:
            self.catalog = catalog

    @property
    def rules(self):
        return self.source.current.rules

    @rules.setter
    def rules(self, new) -> None:
        self.source.current.rules = new  # a runtime's snapshot is frozen: it publishes a new one

    @property
    def rules_sha256(self) -> str:
        return getattr(self.source.current, "sha256", "")

    @property
    def catalog(self):
        return self.source.current.catalog

    @catalog.setter
    def catalog(self, new) -> None:
        """A newly read catalog: columns renamed since the last one keep their class (pinned by
        relation and attnum, for as long as this process runs)."""
        carry_classes(self.rules, self.catalog, new)
        self.source.current.catalog = new

    def tier_for(self, user: str, address: str | None = None, now=None):
        return self.identity(user, address, now)[0]

    def identity(self, user: str, address: str | None = None, now=None) -> tuple:
        """(tier, grants in force) of an identity at ``now``."""
        roles = self.catalog.roles_of(user) if self.catalog is not None else frozenset()
        return self.rules.effective_tier(user, roles, address, now)

    def resolve(self, user: str, address: str | None, now, purpose: str | None):
        """The identity's effective access at ``now`` (:func:`proxy.access.resolve`)."""
        from .access import resolve
        roles = self.catalog.roles_of(user) if self.catalog is not None else frozenset()
        return resolve(self.rules, user, roles, address, now, purpose)

    def decide(self, sql: str, tier, search_path: tuple, user: str, access=None,
               ready: tuple | None = None, block_ends: tuple = ()) -> Decision:
        """The decision for one statement.  ``ready``: (key, decision) taken in a child process
        (see :meth:`apart`), used when the key is still this statement's.  ``block_ends``: the
        path each ROLLBACK/ABORT/COMMIT/END of the text leaves (:attr:`Context.block_ends`).  Any failure
        of the analysis (a RecursionError on deep nesting, a parser bug) is a refusal for a
        restricted tier and a relay for an all-clear tier, never an exception."""
        if self.catalog is None and not tier.all_clear:
            return Refusal.catalog_not_loaded().decision()
        ctx = Context(tier, self.rules, self.catalog, search_path, user, block_ends)
        if ready is not None and ready[0] == self.cache.key(sql, ctx, access):
            return ready[1]
        try:
            return self.cache.decide(sql, ctx, access)
        except Exception as exc:  # noqa: BLE001 - whatever the analysis raises, the session goes on
            return failed_analysis(sql, tier, exc)

    def apart(self, sql: str, tier, search_path: tuple, user: str, access=None) -> tuple | None:
        """The cache key of a statement to decide in a child process (a large or deeply nested
        text not decided before: see :mod:`proxy.limits`), or None to decide it here."""
        if not decided_apart(sql) or (self.catalog is None and not tier.all_clear):
            return None
        key = self.cache.key(sql, Context(tier, self.rules, self.catalog, search_path, user), access)
        if self.cache.cached(key) is not None:
            return None
        if len(sql) <= SHAPE_READ_LIMIT:  # a shape decided before is reused here, cheaply
            read = lexer.quick(sql)
            if read is not None and isinstance(self.cache.cached(key[:-1] + ("shape", read[0])), Template):
                return None
        return key

    def hidden_columns(self, tier) -> frozenset:
        """(table oid, attnum) of every column this tier may not see in clear: the second,
        independent check on RowDescription uses it."""
        if self.catalog is None or tier.all_clear:
            return frozenset()
        key = (self.rules.version, self.catalog.version, tier.name)
        found = self._hidden.get(key)
        if found is None:
            rw = Rewriter(Context(tier, self.rules, self.catalog))
            found = frozenset((rel.oid, col.attnum) for rel in self.catalog.by_oid.values()
                              if rel.schema not in ("pg_catalog", "information_schema")
                              for col in rel.columns if rw.class_action(rel, col.name)[1].action != "clear")
            self._hidden = {key: found}
        return found


class _Held:
    """The rules and catalog of an engine with no runtime behind it."""

    __slots__ = ("current",)

    def __init__(self, rules) -> None:
        self.current = _Pair(rules)


class _Pair:
    __slots__ = ("rules", "catalog")

    def __init__(self, rules) -> None:
        self.rules, self.catalog = rules, None


def carry_classes(rules, old, new) -> None:
    """``new`` replaces the catalog ``old``: pin the classes its renamed columns had."""
    if new is not None and old is not None and new is not old:
        new.pinned = carried_classes(rules, old, new)


def carried_classes(rules, old, new) -> dict:
    """(oid, attnum) -> class for the columns of ``new`` that had a class in ``old`` (by name or
    pinned) and have none by their name now: renamed columns, or columns of renamed relations."""
    pinned = {}
    for oid, rel in new.by_oid.items():
        before = old.by_oid.get(oid)
        if before is None or rel.schema in ("pg_catalog", "information_schema"):
            continue
        for col in rel.columns:
            prior = next((c for c in before.columns if c.attnum == col.attnum), None)
            if prior is None:
                continue
            cls = rules.class_of(before.schema, before.name, prior.name) or old.pinned.get((oid, col.attnum))
            if cls is not None and rules.class_of(rel.schema, rel.name, col.name) is None:
                pinned[(oid, col.attnum)] = cls
    return pinned
