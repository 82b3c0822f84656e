"""A small seeded sqlsmith run through pgveil (the long one is bench/sqlsmith.py).

sqlsmith sends random, formatted, deeply nested SQL built from the schema and the catalog; the
same seed sends the same statements straight to PostgreSQL and through pgveil as the all-clear
dba and the masking sales tier.  Nothing may stall, no session may break, pgveil never answers
XX000, and the dba's errors are PostgreSQL's own.
"""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT, RULES, start_with_rules
from proxy.pgcluster import ensure_debian_package

sys.path.insert(0, str(ROOT / "bench"))
import sqlsmith as smith  # noqa: E402  (bench/sqlsmith.py)

SEED, QUERIES = 20261203, 120
ANALYSIS = ("42", "0A")  # SQLSTATE classes raised before a statement runs


@pytest.fixture(scope="module")
def runs(pg, tier_users, tmp_path_factory):
    if ensure_debian_package("sqlsmith", "sqlsmith") is None:
        pytest.skip("sqlsmith is not installed and cannot be (apt-get install sqlsmith)")
    pg.psql("CREATE DATABASE smithlog")
    pg.psql(smith.LOG_SCHEMA, "smithlog")
    proxy = start_with_rules(pg, tmp_path_factory.mktemp("sqlsmith") / "rules.yaml", RULES.read_text(),
                             "--audit-mode", "batched")
    try:
        yield {name: smith.run_sqlsmith(pg, proxy, name, user, SEED, QUERIES, deadline=120)
               for name, user in (("direct", None), ("dba", "dba_sun"), ("sales", "sales_li"))}
    finally:
        proxy.stop()


@pytest.mark.parametrize("name", ["direct", "dba", "sales"])
def test_nothing_stalls_or_breaks(runs, name):
    run = runs[name]
    assert not run.stalled and run.returncode == 0, run.tail
    assert run.broken == 0 and not smith.failures(run), smith.failures(run)[:3]
    assert len(run.progress) >= QUERIES  # every query was sent and answered
    assert all(state != smith.INTERNAL for state, _, _ in run.errors)


def test_all_clear_errors_are_postgres_own(runs):
    """Errors PostgreSQL raises while analysing a statement (classes 42 and 0A) come out the same;
    errors raised while running it depend on the rows TABLESAMPLE and random() pick, and vary
    from run to run even straight to PostgreSQL (bench/sqlsmith.py measures that)."""
    direct, dba = ({key: n for key, n in runs[name].histogram().items() if key[:2] in ANALYSIS}
                   for name in ("direct", "dba"))
    assert sum(direct.values()) > QUERIES // 4  # sqlsmith's queries fail often: the comparison has material
    assert dba == direct
