"""The control plane without a network: the rule file and the catalog are loaded by
proxy.runtime only, and published as one immutable snapshot that a reader keeps whole."""

import ast
import asyncio
import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from proxy import runtime
from proxy.catalog import Catalog
from proxy.config import ConfigError
from proxy.runtime import Runtime, Snapshot

ROOT = Path(__file__).resolve().parent.parent
CRM = (ROOT / "rules" / "crm.yaml").read_text()
SALES_CLEAR = CRM.replace(
    "sales:                                  # basic information; ID and bank card numbers masked\n"
    "    see: {person_name: clear, phone: clear, address: clear, id_number: mask, bank_card: mask}",
    "sales:\n    see: {person_name: clear, phone: clear, address: clear, id_number: clear, bank_card: mask}")
BROKEN = CRM.replace("statements: [read]", "statements: [read, fly]", 1)
SPEC = {"public.customers": {"id": "integer", "name": "text", "id_number": "text"}}


def settings(path) -> SimpleNamespace:
    return SimpleNamespace(rules=str(path), catalog_dsn="postgresql://catalog@nowhere/crm", auth_dsn=None,
                           catalog_refresh=60)


def replace_file(path: Path, text: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def live(tmp_path, monkeypatch):
    """A runtime over a rule file; its catalog "read" from a spec that a test may change."""
    path = tmp_path / "rules.yaml"
    path.write_text(CRM)
    records = []
    source = {"spec": SPEC}

    async def fetch(dsn):
        return Catalog.from_spec(source["spec"])
    monkeypatch.setattr(runtime, "fetch_catalog", fetch)
    rt = Runtime(settings(path), submit=records.append)
    return SimpleNamespace(rt=rt, path=path, records=records, source=source)


def sales_sees(engine, sql="SELECT id_number FROM customers") -> str:
    decision = engine.decide(sql, engine.rules.tier("sales"), ("public",), "sales_li")
    return decision.sql


def test_a_reader_keeps_a_consistent_snapshot_across_swaps(live):
    rt = live.rt
    asyncio.run(rt.refresh_catalog())
    held = rt.current
    assert held.rules is rt.engine.rules and held.catalog is rt.engine.catalog
    masked = sales_sees(rt.engine)
    assert "id_number" in masked and masked != "SELECT id_number FROM customers"

    replace_file(live.path, SALES_CLEAR)
    assert rt.reload_rules("test") == "reloaded"
    live.source["spec"] = {"public.customers": {**SPEC["public.customers"], "grade": "text"}}
    assert asyncio.run(rt.refresh_catalog())

    # the reader that took the snapshot before still has the pair it took, whole
    assert held.version[0] != rt.current.version[0] and held.version[1] != rt.current.version[1]
    assert held.version == (held.rules.version, held.catalog.version)
    assert held.rules.tier("sales").action("id_number").action == "mask"
    assert held.catalog.resolve("public", "customers", ("public",)).column("grade") is None
    # and the engine, which reads the current one, decides under the new pair
    now = rt.current
    assert (now.rules, now.catalog) == (rt.engine.rules, rt.engine.catalog)
    assert now.rules.tier("sales").action("id_number").action == "clear"
    assert now.generation == held.generation + 2 and now.sha256 != held.sha256
    assert sales_sees(rt.engine) != masked
    reloaded = [r for r in live.records if r.get("event") == "reloaded"]
    assert reloaded and reloaded[0]["rules_version"] == now.rules.version
    assert reloaded[0]["previous_version"] == held.rules.version


def test_a_snapshot_cannot_be_changed_in_place(live):
    snapshot = live.rt.current
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.rules = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        live.rt.engine.rules = None  # the runtime's engine changes only by a published snapshot
    assert live.rt.current is snapshot


def test_a_bad_rule_file_keeps_the_snapshot_and_names_file_and_line(live):
    rt = live.rt
    before = rt.current
    replace_file(live.path, BROKEN)
    assert rt.reload_rules("test") == "rejected"
    assert rt.current is before and rt.engine.rules is before.rules
    (rejected,) = [r for r in live.records if r.get("event") == "rejected"]
    line = BROKEN.splitlines().index(next(s for s in BROKEN.splitlines() if "fly" in s)) + 1
    assert rejected["error"].startswith(f"{live.path}:{line}: tier sales: unknown statement kind 'fly'")
    assert rejected["rules_version"] == before.rules.version and rejected["file"] == str(live.path)

    live.path.unlink()
    assert rt.reload_rules("test") == "rejected" and rt.current is before
    assert live.records[-1]["error"].startswith(f"{live.path}: ")


def test_an_unchanged_rule_version_publishes_nothing(live):
    before = live.rt.current
    replace_file(live.path, CRM)  # a new file, the same rules (a ConfigMap swap of the same text)
    assert live.rt.rules_file_changed()
    assert not live.rt.rules_file_changed()
    assert live.rt.reload_rules("test") == "unchanged"
    assert live.rt.current is before


def test_a_broken_file_at_start_is_a_config_error_with_file_and_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: tier sales: unknown statement kind 'fly'"):
        Runtime(settings(path))
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: tier sales: unknown statement kind 'fly'"):
        runtime.check_rules(str(path))


def test_a_catalog_that_cannot_be_read_keeps_the_one_in_force(live, monkeypatch):
    rt = live.rt
    asyncio.run(rt.refresh_catalog())
    before = rt.current

    async def fails(dsn):
        raise OSError("connection refused")
    monkeypatch.setattr(runtime, "fetch_catalog", fails)
    assert asyncio.run(rt.refresh_catalog()) is False
    assert rt.current is before


def test_a_renamed_column_keeps_its_class_in_the_new_snapshot(live):
    rt = live.rt
    asyncio.run(rt.refresh_catalog())
    live.source["spec"] = {"public.customers": {"id": "integer", "name": "text", "idno": "text"}}
    asyncio.run(rt.refresh_catalog())
    assert rt.current.catalog.pinned == {(1000, 3): "id_number"}
    assert "idno" in sales_sees(rt.engine, "SELECT idno FROM customers")
    assert sales_sees(rt.engine, "SELECT idno FROM customers") != "SELECT idno FROM customers"


def test_ddl_asks_for_one_refresh_at_a_time(live):
    first = live.rt.after_ddl()
    assert first is not None and live.rt.after_ddl() is None
    first.close()


def test_no_rule_file_means_an_empty_snapshot_and_no_engine():
    rt = Runtime(SimpleNamespace(rules=None, catalog_dsn=None, auth_dsn=None))
    assert rt.engine is None and rt.current == Snapshot()


LOADERS = {"load_rules", "load_catalog"}


def calls_to_loaders(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in LOADERS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return found


def test_runtime_is_the_only_loader_of_rules_and_catalog():
    calls = [c for path in sorted((ROOT / "proxy").rglob("*.py")) for c in calls_to_loaders(path)]
    assert calls and all(c.startswith("proxy/runtime.py:") for c in calls), calls
    assert {c.rsplit(": ", 1)[1] for c in calls} == LOADERS


def test_checking_the_rules_leaves_the_metrics_unimported():
    """``pgveil serve`` checks the rule file before it sets PROMETHEUS_MULTIPROC_DIR for its
    workers: prometheus_client must not be imported by then, or the workers' values are not
    shared."""
    import subprocess
    import sys
    code = ("import sys; import proxy.cli, proxy.tools; from proxy.runtime import check_rules; "
            f"check_rules({str(ROOT / 'rules' / 'crm.yaml')!r}); print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
