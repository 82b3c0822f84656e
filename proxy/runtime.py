"""The control plane: the only loader of the rule file and of the database catalog.

What is in force is one immutable :class:`Snapshot` (rules, catalog, the rule file's hash and
a generation number).  :class:`Runtime` publishes a new one in a single assignment, as PgDog
swaps its configuration (``ArcSwap::store``): whoever took ``runtime.current`` keeps a
consistent set, and the next reader sees the new one whole.  The sessions' shared
:class:`~proxy.engine.Engine` reads the snapshot at each use.

- :meth:`Runtime.reload_rules` (SIGHUP, a changed file, the console): a file that fails to
  load keeps the snapshot in force and reports the file, line and problem.
- :meth:`Runtime.refresh_catalog` (at start, periodically, after DDL): a catalog that cannot
  be read keeps the one in force.
- :func:`read_rules`, :func:`read_catalog` and :func:`catalog_from_file` serve the
  command-line tools, which load without a server.

No sockets here beyond the catalog account's queries; the server spawns the coroutines.
Metrics are imported late: the command line reads rules before the metrics' environment is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from . import logs
from .audit import records as audit_records
from .catalog import Catalog, load_catalog
from .config import ConfigError
from .engine import Engine, carry_classes
from .rules import RuleError, RuleSet, load_rules

log = logs.get("pgveil.runtime")


def utc_now() -> datetime:
    """The clock grants are decided by (sessions are given it; they read none themselves)."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The rules and catalog in force, published whole."""
    rules: RuleSet | None = None  # None: no rule file, pgveil relays
    catalog: Catalog | None = None  # None: not read yet
    sha256: str = ""  # of the rule file's text
    generation: int = 0  # one more for each snapshot published

    @property
    def version(self) -> tuple:
        """(rules version, catalog version): what a decision depends on."""
        return (self.rules.version if self.rules else None, self.catalog.version if self.catalog else None)


def read_rules(path: str, now: datetime | None = None) -> tuple[RuleSet, str]:
    """The rule file compiled, and the SHA-256 of its text.  Raises :class:`RuleError`
    (``file:line: problem``) or OSError."""
    text, sha256 = _read_text(path)
    return load_rules(text, path, now or utc_now()), sha256


def _read_text(path: str) -> tuple[str, str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text, hashlib.sha256(text.encode()).hexdigest()


def check_rules(path: str) -> RuleSet:
    """:func:`read_rules` for start-up: any failure is a ConfigError naming the file (and line)."""
    try:
        return read_rules(path)[0]
    except RuleError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def rules_error(path: str, exc: Exception) -> str:
    """What is wrong with a rule file, for a person: ``file:line: problem``."""
    return str(exc) if isinstance(exc, RuleError) else f"{path}: {getattr(exc, 'strerror', None) or exc}"


async def fetch_catalog(dsn: str) -> Catalog:
    """The catalog of the database at ``dsn`` (one short connection)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await load_catalog(conn)
    finally:
        await conn.close()


def read_catalog(dsn: str) -> Catalog:
    """:func:`fetch_catalog` outside an event loop (the command-line tools)."""
    return asyncio.run(fetch_catalog(dsn))


def catalog_from_file(path: str) -> Catalog:
    """A catalog from YAML: ``{schema.table: {column: type}}``, for explain without a database."""
    import yaml

    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f) or {}
    return Catalog.from_spec(spec)


def file_stamp(path: str) -> tuple:
    """What tells a changed file: modification time, size and inode (a renamed-in file)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Runtime:
    """One process's rules and catalog in force, and the engine that reads them."""

    def __init__(self, settings, submit=None, clock=utc_now) -> None:
        """Loads ``settings.rules`` (a broken file is a ConfigError: the command line checked it
        already).  ``submit``: where the rules' audit records go."""
        self.settings, self.path, self.clock = settings, settings.rules, clock
        self.submit = submit or (lambda record: None)
        self.engine: Engine | None = None
        self.current = Snapshot()
        self._catalog_refresh_pending = False
        self._privileges_checked: set = set()  # (user, tier, rules version, catalog version)
        if self.path:
            # stamped before reading: a change in between is seen by the first poll
            self.stamp = file_stamp(self.path)
            try:
                rules, sha256 = read_rules(self.path, clock())
            except (RuleError, OSError) as exc:
                raise ConfigError(rules_error(self.path, exc)) from None
            self.current = Snapshot(rules, None, sha256)
            self.engine = Engine(None, source=self)

    def publish(self, **changes) -> Snapshot:
        """Swap in a new snapshot: the current one with ``changes``.  The only writer."""
        snapshot = replace(self.current, generation=self.current.generation + 1, **changes)
        self.current = snapshot
        return snapshot

    @property
    def catalog_dsn(self) -> str | None:
        return self.settings.catalog_dsn or self.settings.auth_dsn

    # -- rules ----------------------------------------------------------------------
    def announce(self) -> None:
        """The audit record of the rules this process starts with."""
        if self.engine is not None:
            self.submit(dict(audit_records.base("rules", {}), event="loaded", file=self.path,
                             rules_version=self.current.rules.version, sha256=self.current.sha256))

    def reload_rules(self, why: str = "SIGHUP") -> str:
        """Load, validate and compile the rule file, then publish it whole: "reloaded",
        "unchanged" (same rules version), or "rejected" (the rules in force stay; the log and
        the audit journal say which file, line and problem)."""
        from . import metrics

        record = dict(audit_records.base("rules", {}), file=self.path, reason=why)
        kept = self.current.rules.version
        try:
            text, record["sha256"] = _read_text(self.path)
            rules = load_rules(text, self.path, self.clock())
        except (RuleError, OSError) as exc:
            message = rules_error(self.path, exc)
            log.error("rules_reload_rejected", error=message, kept_version=kept)
            metrics.RULES_RELOADS.labels("rejected").inc()
            self.submit(dict(record, event="rejected", error=message, rules_version=kept))
            return "rejected"
        if rules.version == kept:
            return "unchanged"
        self.publish(rules=rules, sha256=record["sha256"])
        log.info("rules_reloaded", version=rules.version, previous=kept, reason=why)
        metrics.RULES_RELOADS.labels("accepted").inc()
        self.submit(dict(record, event="reloaded", rules_version=rules.version, previous_version=kept))
        return "reloaded"

    def rules_file_changed(self) -> bool:
        """Has the rule file changed since the last look?  (Polled: works for edits, renames and
        the symlink swaps a Kubernetes ConfigMap volume does.)"""
        stamp = file_stamp(self.path)
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        return True

    # -- catalog --------------------------------------------------------------------
    async def refresh_catalog(self) -> bool:
        """Read the catalog and publish it (renamed columns keep their class); False when it
        cannot be read (the one in force stays)."""
        try:
            catalog = await fetch_catalog(self.catalog_dsn)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the catalog in force
            log.error("catalog_load_failed", error=str(exc))
            return False
        current = self.current
        if current.catalog is None or catalog.version != current.catalog.version:
            log.info("catalog_loaded", relations=len(catalog.by_oid), version=catalog.version)
        carry_classes(current.rules, current.catalog, catalog)
        self.publish(catalog=catalog)
        return True

    async def refresh_periodically(self) -> None:
        """Every ``--catalog-refresh`` seconds (every 2 s until a first catalog is read)."""
        while True:
            await asyncio.sleep(self.settings.catalog_refresh if self.current.catalog is not None else 2)
            await self.refresh_catalog()

    def after_ddl(self):
        """DDL went through a session: the refresh to run once it has had time to commit, or
        None when one is on its way already."""
        if self._catalog_refresh_pending:
            return None
        self._catalog_refresh_pending = True

        async def later():
            for delay in (0.2, 1.0):
                await asyncio.sleep(delay)
                await self.refresh_catalog()
            self._catalog_refresh_pending = False
        return later()

    # -- the database's own privileges ----------------------------------------------------
    def privilege_check(self, user: str, tier):
        """The check that warns (log line and metric) when the session's database role can read
        a column its tier has blocked: the database would not refuse what pgveil refuses
        (``pgveil privileges`` prints the fix).  None: nothing to check, or checked already
        for this role, tier, rules and catalog version."""
        snapshot = self.current
        if snapshot.rules is None or snapshot.catalog is None or not self.catalog_dsn:
            return None
        key = (user, tier.name, *snapshot.version)
        if key in self._privileges_checked:
            return None
        if len(self._privileges_checked) > 10_000:
            self._privileges_checked.clear()
        self._privileges_checked.add(key)
        return _check_privileges(self.catalog_dsn, snapshot, user, tier)


async def _check_privileges(dsn: str, snapshot: Snapshot, user: str, tier) -> None:
    import asyncpg

    from . import metrics
    from .privileges import blocked, readable_blocked
    catalog = snapshot.catalog
    columns = blocked(snapshot.rules, catalog, tier)
    if not columns:
        return
    pairs = [(oid, col.name) for oid, names in columns.items() for col in catalog.by_oid[oid].columns
             if names is None or col.name in names]
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT t.oid, t.attname FROM unnest($2::oid[], $3::text[]) AS t(oid, attname) "
                "WHERE pg_catalog.has_column_privilege($1, t.oid, t.attname, 'SELECT')",
                user, [p[0] for p in pairs], [p[1] for p in pairs])
        finally:
            await conn.close()
    except Exception as exc:  # noqa: BLE001 - a warning that cannot be checked is logged, not fatal
        log.warning("privilege_check_failed", user=user, error=str(exc))
        return
    readable = {(r[0], r[1]) for r in rows}
    found = readable_blocked(catalog, columns, lambda rel, name: (rel.oid, name) in readable)
    if found:
        metrics.PRIVILEGE_WARNINGS.labels(tier.name).inc()
        log.warning("role_can_read_blocked_columns", user=user, tier=tier.name, columns=found[:20],
                    count=len(found), fix="pgveil privileges RULES --catalog-dsn DSN")
