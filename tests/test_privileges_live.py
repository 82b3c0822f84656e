"""pgveil privileges: the GRANT/REVOKE it prints, applied to a real database, make the database
refuse the blocked columns for the tier's role, and leave the rest readable."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from conftest import ROOT, RULES


def test_printed_privileges_make_the_database_refuse_blocked_columns(pg, tier_users, tmp_path):
    pg.psql("CREATE ROLE it_priv LOGIN PASSWORD 'demo'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO it_priv", "crm")
    rules = RULES.read_text().replace('  - {user: "it_*", tier: it}', '  - {user: "it_*", tier: it}\n'
                                      '  - {user: it_priv, tier: it}', 1)
    path = tmp_path / "rules.yaml"
    path.write_text(rules)
    result = subprocess.run([sys.executable, "-m", "proxy", "privileges", str(path), "--catalog-dsn",
                             pg.dsn(database="crm")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    mine = [line for line in result.stdout.splitlines() if '"it_priv"' in line]
    assert 'REVOKE SELECT ON "public"."customers" FROM "it_priv";' in mine
    pg.psql("\n".join(mine), "crm")
    with psycopg.connect(pg.dsn("it_priv", "demo", database="crm")) as conn:
        assert conn.execute("SELECT id, grade FROM customers WHERE id = 1").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT id_number FROM customers WHERE id = 1")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT c::text FROM customers c WHERE id = 1")


def test_connect_warns_when_the_role_can_read_blocked_columns(pg, tier_users):
    import time

    from conftest import TIER_PASSWORD, start_proxy
    pg.psql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'it_tight') THEN "
            "CREATE ROLE it_tight LOGIN PASSWORD 'demo'; END IF; END $$;"
            "GRANT SELECT (id, grade, created_at) ON customers TO it_tight", "crm")
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(RULES),
                        "--catalog-dsn", pg.dsn(database="crm"))
    try:
        for user in ("it_zhou", "it_tight"):
            with psycopg.connect(proxy.dsn(user, TIER_PASSWORD)) as conn:
                conn.execute("SELECT 1").fetchall()
        deadline = time.monotonic() + 15
        while "role_can_read_blocked_columns" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        warnings = [line for line in proxy.log().splitlines() if "role_can_read_blocked_columns" in line]
        assert any('"it_zhou"' in w and "public.customers.id_number" in w for w in warnings), proxy.log()[-2000:]
        assert not any('"it_tight"' in w for w in warnings)
    finally:
        proxy.stop()


def test_demo_applies_the_privileges():
    from proxy import demo
    from proxy.pgcluster import Cluster, embedded_bin_dir
    cluster = Cluster(embedded_bin_dir())
    cluster.start()
    try:
        demo.prepare(cluster, 20)
        demo.apply_privileges(cluster, str(RULES))
        got = cluster.psql("SELECT has_column_privilege('it_zhou', 'public.customers', 'id_number', 'SELECT'), "
                           "has_column_privilege('it_zhou', 'public.customers', 'grade', 'SELECT'), "
                           "has_table_privilege('prod_wang', 'public.customers', 'SELECT'), "
                           "has_column_privilege('sales_li', 'public.customers', 'id_number', 'SELECT')", "crm")
        assert got.strip() == "f|t|f|t"  # sales only masks ID numbers: it must read them
    finally:
        cluster.destroy()
