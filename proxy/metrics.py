"""Prometheus metrics, and /healthz and /readyz, on ``--metrics HOST:PORT``.

Label values are tiers, kinds, decisions, reasons and classes only: never user names or SQL
(cardinality, and the audit is the place for who did what).
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, PlatformCollector, GCCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

CONNECTIONS_ACTIVE = Gauge("pgveil_connections_active", "Client connections open now", registry=REGISTRY)
CONNECTIONS = Counter("pgveil_connections_total", "Connection attempts by result and tier",
                      ["result", "tier"], registry=REGISTRY)
STATEMENTS = Counter("pgveil_statements_total", "Statements by tier, kind and decision",
                     ["tier", "kind", "decision"], registry=REGISTRY)
REFUSALS = Counter("pgveil_refusals_total", "Refused statements by tier and reason",
                   ["tier", "reason"], registry=REGISTRY)
SENSITIVE = Counter("pgveil_sensitive_columns_total", "Sensitive columns reached, by tier, class and action",
                    ["tier", "class", "action"], registry=REGISTRY)
SECOND_LAYER = Counter("pgveil_second_layer_stops_total", "Results stopped by the RowDescription check",
                       ["tier"], registry=REGISTRY)
DECISION_CACHE = Counter("pgveil_decision_cache_total", "Decision cache lookups", ["result"], registry=REGISTRY)
BYTES = Counter("pgveil_bytes_total", "Bytes relayed", ["direction"], registry=REGISTRY)
UPSTREAM_ERRORS = Counter("pgveil_upstream_connect_errors_total", "Failed upstream connections",
                          registry=REGISTRY)
AUDIT_WRITTEN = Gauge("pgveil_audit_records_written", "Audit records written to the journal by this process",
                      registry=REGISTRY)
AUDIT_DROPPED = Gauge("pgveil_audit_records_dropped", "Audit records lost (must stay 0)", registry=REGISTRY)
AUDIT_PENDING = Gauge("pgveil_audit_queue_depth", "Audit records waiting to be written", registry=REGISTRY)
AUDIT_HEALTHY = Gauge("pgveil_audit_journal_healthy", "1 while the journal can be written", registry=REGISTRY)
AUDIT_FSYNC = Gauge("pgveil_audit_fsync_seconds", "Duration of the last journal fsync", registry=REGISTRY)
AUDIT_SHIPPED = Gauge("pgveil_audit_records_shipped", "Audit records delivered, by sink", ["sink"],
                      registry=REGISTRY)
AUDIT_SINK_ERRORS = Gauge("pgveil_audit_sink_errors", "Failed deliveries, by sink", ["sink"], registry=REGISTRY)
CATALOG_LOADED = Gauge("pgveil_catalog_loaded", "1 once the catalog is loaded", registry=REGISTRY)
RULES_INFO = Gauge("pgveil_rules_info", "The rules in force", ["version"], registry=REGISTRY)


def observe(record: dict) -> None:
    """Count what an audit record says happened: every count here has its record in the audit."""
    kind = record.get("type")
    tier = record.get("tier") or "none"
    if kind == "statement":
        decision = record.get("decision", "allow")
        STATEMENTS.labels(tier, (record.get("kinds") or ["unknown"])[0], decision).inc()
        if decision == "refuse":
            REFUSALS.labels(tier, reason_class(record.get("reason", ""))).inc()
        for use in record.get("columns", ()):
            SENSITIVE.labels(tier, use["class"], use["action"]).inc()
    elif kind == "connection":
        CONNECTIONS.labels(record.get("result", "unknown"), tier).inc()
    elif kind == "session_end":
        BYTES.labels("from_client").inc(record.get("bytes_in", 0))
        BYTES.labels("from_server").inc(record.get("bytes_out", 0))


def reason_class(reason: str) -> str:
    """A short, bounded label for a refusal's reason."""
    for words, label in (("is not visible", "not_visible"), ("could not analyze", "not_understood"),
                         ("statements (", "statement_kind"), ("function", "function"), ("writing column", "write"),
                         ("audit journal", "audit"), ("catalog", "catalog"), ("changing", "setting"),
                         ("COPY", "copy"), ("DO blocks", "do"), ("CREATE", "create")):
        if words in reason:
            return label
    return "other"


def snapshot(proxy) -> None:
    """Copy the gauges that live elsewhere into the registry, just before a scrape."""
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
    if proxy.engine is not None:
        CATALOG_LOADED.set(1 if proxy.engine.catalog is not None else 0)
        RULES_INFO.clear()
        RULES_INFO.labels(proxy.engine.rules.version).set(1)
        DECISION_CACHE.labels("hit")._value.set(proxy.engine.cache.hits)
        DECISION_CACHE.labels("miss")._value.set(proxy.engine.cache.misses)


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
                snapshot(proxy)
                status, body, kind = 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST
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
