"""deploy/: alert rules and Prometheus config pass promtool, every metric the alerts and the
dashboard use is one the proxy exports, a real Prometheus scrapes the real proxy, workers'
metrics add up, and the manifests hold what they need."""

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, RULES, TIER_PASSWORD, free_port, start_proxy, wait_port
from proxy.pgcluster import ensure_debian_package

DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bpgveil_[a-z0-9_]+")


@pytest.fixture(scope="module")
def promtool():
    found = ensure_debian_package("prometheus", "promtool")
    if not found:
        pytest.fail("promtool (Debian's prometheus package) is needed and could not be installed")
    return found


def exported(port: int) -> set[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update({f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"})
    return names


@pytest.fixture(scope="module")
def metrics_proxy(pg, tier_users):
    port = free_port()
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(RULES),
                        "--catalog-dsn", pg.dsn(database="crm"), "--metrics", f"127.0.0.1:{port}")
    proxy.metrics_port = port
    yield proxy
    proxy.stop()


def test_promtool_checks_rules_and_config(promtool, tmp_path):
    result = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout
    config = tmp_path / "prometheus.yml"
    config.write_text((DEPLOY / "prometheus" / "prometheus.yml").read_text()
                      .replace("/etc/prometheus/alerts.yml", str(DEPLOY / "prometheus" / "alerts.yml")))
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_and_dashboard_use_only_exported_metrics(metrics_proxy):
    names = exported(metrics_proxy.metrics_port)
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    used = {m for group in alerts["groups"] for rule in group["rules"] for m in METRIC.findall(rule["expr"])}
    dashboard = json.loads((DEPLOY / "grafana" / "pgveil.json").read_text())
    used |= {m for panel in dashboard["panels"] for target in panel["targets"] for m in METRIC.findall(target["expr"])}
    assert len(used) >= 15
    assert used <= names, f"not exported: {sorted(used - names)}"
    wanted = {"PgveilDown", "PgveilAuditJournalFailing", "PgveilAuditRecordsDropped", "PgveilAuditSinkFailing",
              "PgveilRefusalSpike", "PgveilBulkSensitiveRead", "PgveilRuleReloadRejected", "PgveilUpstreamDown"}
    assert wanted <= {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("statements", "latency", "refusals", "sensitive", "audit", "rules"):
        assert topic in titles


def test_prometheus_scrapes_the_proxy(metrics_proxy, promtool, tmp_path):
    prometheus = ensure_debian_package("prometheus", "prometheus")
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "pgveil", "static_configs": [{"targets": [f"127.0.0.1:{metrics_proxy.metrics_port}"]}]}]}))
    proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(web, proc=proc)
        with psycopg.connect(metrics_proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            for i in range(7):
                conn.execute("SELECT count(*) FROM orders").fetchall()
        direct = sum(v for (n, _), v in _scrape(metrics_proxy.metrics_port).items() if n == "pgveil_statements_total")
        deadline = time.monotonic() + 30
        value = None
        while time.monotonic() < deadline:
            value = _query(web, "sum(pgveil_statements_total)")
            if value == direct:
                break
            time.sleep(0.5)
        assert value == direct and direct >= 7  # Prometheus holds what the proxy counted
        assert _query(web, 'sum(pgveil_statements_total{tier="sales",kind="read"})') >= 7
    finally:
        proc.terminate()
        proc.wait(10)


def _query(web: int, expr: str) -> float | None:
    url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        data = json.loads(urllib.request.urlopen(url, timeout=5).read())
    except OSError:
        return None
    result = data["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_workers_metrics_add_up(pg, tier_users):
    port = free_port()
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--workers", "2", "--metrics", f"127.0.0.1:{port}")
    try:
        for _ in range(12):  # new connections spread over both workers by SO_REUSEPORT
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                conn.execute("SELECT 1").fetchall()
        time.sleep(2.5)  # every worker copies its gauges into the shared files every 2 s
        samples = _scrape(port)
        total = sum(v for (n, labels), v in samples.items() if n == "pgveil_statements_total")
        assert total == 12
        assert samples[("pgveil_connections_total", (("result", "accepted"), ("tier", "none")))] == 12
    finally:
        proxy.stop()


def test_manifests_hold_what_they_need(tmp_path):
    docs = {p.name: list(yaml.safe_load_all(p.read_text())) for p in (DEPLOY / "kubernetes").glob("*.yaml")}
    kinds = {d["kind"]: d for ds in docs.values() for d in ds}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "ConfigMap"} <= set(kinds)
    deployment = kinds["Deployment"]["spec"]
    assert deployment["replicas"] >= 2
    container = deployment["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]["cpu"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert deployment["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["pgveil.yaml"])
    for key in ("tls_cert", "tls_key", "upstream_ca", "rules"):  # mounted from secrets in the cluster
        stand_in = tmp_path / key
        stand_in.write_text("x")
        config[key] = str(stand_in)
    from proxy.config import build_settings
    assert container["args"][0] == "--catalog-dsn"  # from a Secret, as a flag over the file
    settings = build_settings(config, {"catalog_dsn": "postgresql://catalog@db/crm"})  # as pgveil serve validates
    assert settings.audit_mode == "strict" and settings.metrics
    from proxy.rules import load_rules
    load_rules(kinds["ConfigMap"]["data"]["rules.yaml"], "configmap")  # the shipped rules are valid
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"postgres", "pgveil", "prometheus", "grafana"} <= set(compose["services"])
    for volume in compose["services"]["pgveil"]["volumes"][:2] + compose["services"]["prometheus"]["volumes"]:
        assert (ROOT / volume.split(":")[0]).exists(), volume
    assert compose["services"]["pgveil"]["build"]["dockerfile"] == "deploy/Dockerfile"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "ENTRYPOINT" in dockerfile
    assert "User=pgveil" in (DEPLOY / "systemd" / "pgveil.service").read_text()


def test_compose_init_sql_is_what_the_demo_generates():
    from proxy.demo import compose_init_sql
    assert (DEPLOY / "compose" / "init.sql").read_text(encoding="utf-8") == compose_init_sql(), \
        "deploy/compose/init.sql is out of date: write it again with `python -m proxy.demo`"
