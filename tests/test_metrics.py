"""The metrics endpoint after a known workload shows the right counts."""

import time
import urllib.error
import urllib.request

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import RULES, TIER_PASSWORD, free_port, start_proxy


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_a_known_workload(pg, tier_users):
    port = free_port()
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(RULES),
                        "--catalog-dsn", pg.dsn(database="crm"), "--metrics", f"127.0.0.1:{port}")
    try:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        deadline = time.monotonic() + 15  # ready once the catalog is loaded, as a readiness probe sees it
        while True:
            try:
                assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
                break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and time.monotonic() < deadline
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            for _ in range(3):
                conn.execute("SELECT name, id_number FROM customers WHERE id = 1").fetchall()
            with pytest.raises(psycopg.Error):
                conn.execute("SELECT * FROM pg_stats")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn("sales_li", "wrong"))
        samples = scrape(port)
        read = ("pgveil_statements_total", (("decision", "rewrite"), ("kind", "read"), ("tier", "sales")))
        assert samples[read] == 3
        refused = ("pgveil_refusals_total", (("reason", "not_visible"), ("tier", "sales")))
        assert samples[refused] == 1
        masked = ("pgveil_sensitive_columns_total", (("action", "mask"), ("class", "id_number"), ("tier", "sales")))
        assert samples[masked] == 3
        assert samples[("pgveil_connections_total", (("result", "accepted"), ("tier", "sales")))] == 1
        assert samples[("pgveil_connections_total", (("result", "auth_failed"), ("tier", "none")))] == 1
        assert samples[("pgveil_audit_records_dropped", ())] == 0
        assert samples[("pgveil_audit_journal_healthy", ())] == 1
        assert samples[("pgveil_catalog_loaded", ())] == 1
        assert samples[("pgveil_decision_seconds_count", (("tier", "sales"),))] == 4  # 3 reads and the refusal
        assert samples[("pgveil_audit_records_written", ())] >= 8
        assert any(name == "process_resident_memory_bytes" for name, _ in samples)
        assert not any("sales_li" in str(labels) for _, labels in samples)  # no user names in labels
    finally:
        proxy.stop()
