"""Prometheus metrics, and /healthz and /readyz, on ``--metrics HOST:PORT``.

Label values are tiers, kinds, decisions, reasons and classes only: never user names or SQL
(cardinality, and the audit is the place for who did what).

With ``--workers N`` the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported,
so every worker's values land in shared files and the first worker's endpoint reports the sum
(prometheus-client's multiprocess mode; the per-process collectors are not available there).
"""

from __future__ import annotations

import asyncio
import os

from bisect import bisect_left

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector, multiprocess

from .verdicts import Reason

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
REGISTRY = CollectorRegistry()
if not MULTIPROCESS:
    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)
    GCCollector(registry=REGISTRY)

CONNECTIONS_ACTIVE = Gauge("pgveil_connections_active", "Client connections open now", registry=REGISTRY,
                           multiprocess_mode="livesum")
CONNECTIONS = Counter("pgveil_connections_total", "Connection attempts by result and tier",
                      ["result", "tier"], registry=REGISTRY)
STATEMENTS = Counter("pgveil_statements_total", "Statements executed (or refused), by tier, kind and decision",
                     ["tier", "kind", "decision"], registry=REGISTRY)
REFUSALS = Counter("pgveil_refusals_total", "Refused statements by tier and reason (a proxy.verdicts.Reason code)",
                   ["tier", "reason"], registry=REGISTRY)
SENSITIVE = Counter("pgveil_sensitive_columns_total", "Sensitive columns reached, by tier, class and action",
                    ["tier", "class", "action"], registry=REGISTRY)
ROW_LIMIT_STOPS = Counter("pgveil_max_rows_stops_total", "Results stopped at a tier's max_rows", ["tier"],
                          registry=REGISTRY)
SECOND_LAYER = Counter("pgveil_second_layer_stops_total", "Results stopped by the RowDescription check",
                       ["tier"], registry=REGISTRY)
PRIVILEGE_WARNINGS = Counter("pgveil_privilege_warnings_total", "Sessions whose database role can read a column "
                             "its tier has blocked (see pgveil privileges)", ["tier"], registry=REGISTRY)
DECISION_CACHE = Counter("pgveil_decision_cache_total", "Decision cache lookups", ["result"], registry=REGISTRY)
BYTES = Counter("pgveil_bytes_total", "Bytes relayed", ["direction"], registry=REGISTRY)
UPSTREAM_ERRORS = Counter("pgveil_upstream_connect_errors_total", "Failed upstream connections",
                          registry=REGISTRY)
AUDIT_WRITTEN = Gauge("pgveil_audit_records_written", "Audit records written to the journal",
                      registry=REGISTRY, multiprocess_mode="livesum")
AUDIT_DROPPED = Gauge("pgveil_audit_records_dropped", "Audit records lost (must stay 0)", registry=REGISTRY,
                      multiprocess_mode="livesum")
AUDIT_PENDING = Gauge("pgveil_audit_queue_depth", "Audit records waiting to be written", registry=REGISTRY,
                      multiprocess_mode="livesum")
AUDIT_HEALTHY = Gauge("pgveil_audit_journal_healthy", "1 while the journal can be written", registry=REGISTRY,
                      multiprocess_mode="livemin")
AUDIT_FSYNC = Gauge("pgveil_audit_fsync_seconds", "Duration of the last journal fsync", registry=REGISTRY,
                    multiprocess_mode="livemax")
AUDIT_SHIPPED = Gauge("pgveil_audit_records_shipped", "Audit records delivered, by sink", ["sink"],
                      registry=REGISTRY, multiprocess_mode="livesum")
AUDIT_SINK_ERRORS = Gauge("pgveil_audit_sink_errors", "Failed deliveries, by sink", ["sink"], registry=REGISTRY,
                          multiprocess_mode="livesum")
CACHE_BYTES = Gauge("pgveil_cache_bytes", "Client text held by a cache: decisions (texts, rewritten texts, "
                    "shapes) and prepared (statement texts kept per session)", ["cache"], registry=REGISTRY,
                    multiprocess_mode="livesum")
CACHE_ENTRIES = Gauge("pgveil_cache_entries", "Entries of a cache (normalized: audit texts of short statements)",
                      ["cache"], registry=REGISTRY, multiprocess_mode="livesum")
DECIDED_APART = Gauge("pgveil_decisions_apart", "Cold decisions of large statements taken in a child process, "
                      "by result (decided; failed: refused, or relayed for an all-clear tier)", ["result"],
                      registry=REGISTRY, multiprocess_mode="livesum")
STATEMENT_SECONDS = Histogram("pgveil_statement_duration_seconds", "Statement duration, first message to end",
                              ["tier"], registry=REGISTRY,
                              buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
DECISION_SECONDS = Histogram("pgveil_decision_seconds", "Time to decide a statement (cache hits included)",
                             ["tier"], registry=REGISTRY,
                             buckets=(2e-6, 1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2))
PARSE_FAILURES = Counter("pgveil_parse_failures_total",
                         "Statements the engine could not analyse (refused for restricted tiers, forwarded "
                         "and marked for all-clear ones)", ["tier"], registry=REGISTRY)
ROWS = Counter("pgveil_rows_total", "Rows returned or affected, by tier", ["tier"], registry=REGISTRY)
SENSITIVE_ROWS = Counter("pgveil_sensitive_rows_total",
                         "Rows of statements that reached sensitive columns, by tier and whether any was in clear",
                         ["tier", "clear"], registry=REGISTRY)
UPSTREAM_CONNECT_SECONDS = Histogram("pgveil_upstream_connect_seconds", "Time to open an upstream connection",
                                     registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
RULES_RELOADS = Counter("pgveil_rules_reloads_total", "Rule file reloads by result (accepted, rejected)",
                        ["result"], registry=REGISTRY)
GRANTS_ACTIVE = Gauge("pgveil_grants_active", "Time-limited grants in force now", registry=REGISTRY,
                      multiprocess_mode="livemax")
CATALOG_LOADED = Gauge("pgveil_catalog_loaded", "1 once the catalog is loaded", registry=REGISTRY,
                       multiprocess_mode="livemin")
RULES_INFO = Gauge("pgveil_rules_info", "The rules in force, by version (1 per worker using it)", ["version"],
                   registry=REGISTRY, multiprocess_mode="livesum")


# statement id -> ((tier, kind, decision), reaches sensitive columns, any in clear); a prepared
# statement has one decision and an outcome per execution, so entries stay until pushed out (the
# oldest half at a time: a plain dict, cheaper per statement than an OrderedDict)
_DECIDED: dict = {}
# refusals that count as parse failures too: the statement could not be analysed
UNANALYSED = frozenset((Reason.NOT_UNDERSTOOD.value, Reason.ANALYSIS_FAILED.value))
_DECIDED_KEEP = 10_000


# Counts taken from audit records wait here and reach the metrics in one go (:func:`flush`, from
# :func:`update`): per record, a dictionary update costs a tenth of a labelled increment, which in
# multiprocess mode also takes a lock and writes a shared file.
_counts: dict = {}  # (metric, label values) -> amount
_histograms: dict = {}  # (histogram, label values) -> [child, its bounds, count per bucket..., sum]


def _count(metric, labels: tuple, amount: float = 1) -> None:
    key = (metric, labels)
    _counts[key] = _counts.get(key, 0) + amount


def _observe(histogram, labels: tuple, value: float) -> None:
    key = (histogram, labels)
    slots = _histograms.get(key)
    if slots is None:  # the labelled child, its bounds, a count per bucket, the sum
        child = histogram.labels(*labels)
        slots = _histograms[key] = [child, child._upper_bounds] + [0] * (len(child._upper_bounds) + 1)
    slots[2 + bisect_left(slots[1], value)] += 1  # the first bucket whose bound is >= value, as observe()
    slots[-1] += value


def flush() -> None:
    """Push the waiting counts into the metrics."""
    global _counts, _histograms
    counts, histograms = _counts, _histograms
    _counts, _histograms = {}, {}
    for (metric, labels), amount in counts.items():
        metric.labels(*labels).inc(amount)
    for child, _, *slots in histograms.values():
        for bucket, n in zip(child._buckets, slots[:-1]):  # prometheus-client's per-bucket counts
            if n:
                bucket.inc(n)
        child._sum.inc(slots[-1])


def observe(record: dict) -> None:
    """Count what an audit record says happened: every count here has its record in the audit.
    Statements are counted per execution (at their outcome), columns per decision."""
    global _DECIDED
    kind = record.get("type")
    tier = record.get("tier") or "none"
    if kind == "outcome":
        if record.get("status") == "skipped":
            return
        decided = _DECIDED.get(record.get("statement")) or ((tier, "unknown", "allow"), False, False)
        _count(STATEMENTS, decided[0])
        _observe(STATEMENT_SECONDS, (tier,), record.get("duration_us", 0) / 1e6)
        rows = record.get("rows") or 0
        if rows:
            _count(ROWS, (tier,), rows)
            if decided[1]:
                _count(SENSITIVE_ROWS, (tier, "yes" if decided[2] else "no"), rows)
    elif kind == "statement":
        same_as = record.get("same_as")
        if same_as is not None:  # a Query decided as one before it (proxy/audit/records.py repeated)
            _repeated(record, same_as, tier)
            return
        decision = record.get("decision", "allow")
        code = record.get("reason_code")  # proxy.verdicts.Reason: refused statements only
        if decision == "refuse":
            _count(REFUSALS, (tier, code or "other"))
        if record.get("unparsed") or code in UNANALYSED:
            _count(PARSE_FAILURES, (tier,))
        if record.get("decision_us"):
            _observe(DECISION_SECONDS, (tier,), record["decision_us"] / 1e6)
        columns = record.get("columns", ())
        for use in columns:
            _count(SENSITIVE, (tier, use["class"], use["action"]))
        kinds = record.get("kinds")
        _DECIDED[record["id"]] = ((tier, kinds[0] if kinds else "unknown", decision), bool(columns),
                                  any(c["action"] == "clear" for c in columns),
                                  tuple((c["class"], c["action"]) for c in columns), bool(record.get("unparsed")))
        if len(_DECIDED) > 2 * _DECIDED_KEEP:
            _DECIDED = dict(list(_DECIDED.items())[-_DECIDED_KEEP:])
    elif kind == "connection":
        _count(CONNECTIONS, (record.get("result", "unknown"), tier))
    elif kind == "session_end":
        _count(BYTES, ("from_client",), record.get("bytes_in", 0))
        _count(BYTES, ("from_server",), record.get("bytes_out", 0))


def _repeated(record: dict, same_as: str, tier: str) -> None:
    """A statement recorded as the same decision as ``same_as``: counted as that one was."""
    global _DECIDED
    if record.get("decision_us"):
        _observe(DECISION_SECONDS, (tier,), record["decision_us"] / 1e6)
    decided = _DECIDED.pop(same_as, None)
    if decided is None:  # pushed out (10,000 decisions later, and not repeated since): counted as unknown
        return
    _DECIDED[same_as] = decided  # among the newest again, while it repeats
    for use in decided[3]:
        _count(SENSITIVE, (tier, *use))
    if decided[4]:
        _count(PARSE_FAILURES, (tier,))
    _DECIDED[record["id"]] = decided
    if len(_DECIDED) > 2 * _DECIDED_KEEP:
        _DECIDED = dict(list(_DECIDED.items())[-_DECIDED_KEEP:])


def update(proxy) -> None:
    """Copy the values that live elsewhere into the metrics: periodically in every worker, and
    just before a scrape."""
    flush()
    audit = proxy.audit
    AUDIT_WRITTEN.set(audit.written)
    AUDIT_DROPPED.set(audit.dropped)
    AUDIT_PENDING.set(audit.pending)
    AUDIT_HEALTHY.set(1 if audit.healthy else 0)
    AUDIT_FSYNC.set(audit.last_fsync_seconds)
    CONNECTIONS_ACTIVE.set(len(proxy.links))
    for shipper in getattr(proxy, "shippers", []):
        AUDIT_SHIPPED.labels(shipper.sink.name).set(shipper.shipped)
        AUDIT_SINK_ERRORS.labels(shipper.sink.name).set(shipper.errors)
    from .normalize import normalize
    CACHE_ENTRIES.labels("normalized").set(normalize.cache_info().currsize)
    CACHE_BYTES.labels("prepared").set(sum(link.session._prepared.bytes for link in proxy.links
                                           if link.session is not None))
    DECIDED_APART.labels("decided").set(proxy.analyst.decided)
    DECIDED_APART.labels("failed").set(proxy.analyst.failed)
    if proxy.engine is not None:
        CACHE_BYTES.labels("decisions").set(proxy.engine.cache.bytes)
        CACHE_ENTRIES.labels("decisions").set(len(proxy.engine.cache))
        CATALOG_LOADED.set(1 if proxy.engine.catalog is not None else 0)
        RULES_INFO.clear()
        RULES_INFO.labels(proxy.engine.rules.version).set(1)
        from datetime import datetime, timezone
        now = datetime.now(timezone.utc)
        GRANTS_ACTIVE.set(sum(1 for g in proxy.engine.rules.grants if g.active(now)))
        cache, seen = proxy.engine.cache, proxy.metrics_seen
        DECISION_CACHE.labels("hit").inc(cache.hits - seen.get("hits", 0))
        DECISION_CACHE.labels("miss").inc(cache.misses - seen.get("misses", 0))
        seen.update(hits=cache.hits, misses=cache.misses)


def exposition() -> bytes:
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def process_exit() -> None:
    """A worker ends: its live gauges leave the sums."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())


def ready(proxy) -> tuple[bool, str]:
    if not proxy.audit.healthy:
        return False, f"audit journal: {proxy.audit.error}"
    if proxy.engine is not None and proxy.engine.catalog is None:
        return False, "catalog not loaded"
    return True, "ready"


async def serve_metrics(proxy, host: str, port: int) -> asyncio.AbstractServer:
    """A small HTTP server: GET /metrics, /healthz, /readyz."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1].decode("ascii", "replace") if request.count(b" ") >= 2 else "/"
            status, body, kind = 404, b"not found\n", "text/plain"
            if path.startswith("/metrics"):
                update(proxy)
                status, body, kind = 200, exposition(), CONTENT_TYPE_LATEST
            elif path.startswith("/healthz"):
                status, body = 200, b"ok\n"
            elif path.startswith("/readyz"):
                ok, text = ready(proxy)
                status, body = (200 if ok else 503), (text + "\n").encode()
            head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
