"""The layers' imports, read from the source: the pure layers (wire codec, policy, rules, SQL
text) import no I/O, clock, audit writer or metrics, and the SQL layer imports nothing of audit/
(normalisation lives in proxy/normalize.py, beside the lexer).  No network."""

import ast
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parent.parent / "proxy"

PURE = ["codec/__init__.py", "codec/kinds.py", "codec/fields.py", "codec/messages.py", "codec/backend.py",
        "codec/readers.py", "codec/startup.py", "codec/splitter.py",
        "verdicts.py", "segments.py", "statement.py", "pipeline.py", "decision_cache.py", "engine.py", "policy.py",
        "rewrite.py", "writes.py", "rules.py", "ruleset.py", "sql.py", "lexer.py", "normalize.py", "heads.py", "purpose.py",
        "state_after.py"]
PURE += sorted(f"session/{p.name}" for p in (PROXY / "session").glob("*.py"))  # the session: events in, commands out
IO_MODULES = {"asyncio", "socket", "ssl", "select", "selectors", "subprocess", "threading", "time", "signal"}
SQL_LAYER = {"sql", "lexer", "normalize", "heads", "segments", "statement", "pipeline", "policy", "rewrite", "writes"}


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import in the file, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found += [(f"{module}.{alias.name}" if module else alias.name, node.level) for alias in node.names]
    return found


@pytest.mark.parametrize("name", PURE)
def test_pure_layers_import_no_io_clock_writer_or_metrics(name):
    bad = []
    for module, level in imports(PROXY / name):
        parts = module.split(".")
        if level == 0 and parts[0] in IO_MODULES:
            bad.append(module)
        if level and ("metrics" in parts or "writer" in parts or "logs" in parts):
            bad.append(module)
    assert bad == []


@pytest.mark.parametrize("name", sorted(SQL_LAYER))
def test_the_sql_layer_imports_nothing_of_audit(name):
    assert [m for m, level in imports(PROXY / f"{name}.py") if level and m.split(".")[0] == "audit"] == []


def test_audit_reads_the_sql_layer_in_two_known_places_only():
    """records.statement's text for a statement without a decision (limits.normalize_bounded), and
    investigate (it parses statements to find sealed values)."""
    reading = set()
    for path in sorted((PROXY / "audit").glob("*.py")):
        for module, level in imports(path):
            if level == 2 and module.split(".")[0] in SQL_LAYER | {"limits"}:
                reading.add(path.name)
    assert reading == {"records.py", "investigate.py"}
