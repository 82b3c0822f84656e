"""Classes follow the column, not its name (through a real pgveil, rules/crm.yaml, the catalog
read again every second): a rename by the database owner, a generated column that reads a
protected one, and a child attached to a protected parent keep the class."""

from __future__ import annotations

import time

import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD as PASSWORD, start_proxy
from proxy.catalog import Catalog
from proxy.policy import carried_classes
from proxy.rules import load_rules


@pytest.fixture(scope="module")
def crm(pg, tier_users):
    pg.psql("CREATE TABLE public.follow_t (id int PRIMARY KEY, phone text);"
            "INSERT INTO public.follow_t SELECT id, phone FROM customers WHERE id <= 5;"
            "GRANT SELECT ON public.follow_t TO it_zhou", "crm")
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(RULES),
                        "--catalog-dsn", pg.dsn(database="crm"), "--catalog-refresh", "1")
    yield proxy
    proxy.stop()
    pg.psql("DROP TABLE IF EXISTS public.follow_child, public.follow_t", "crm")


def refused(proxy, sql: str) -> str | None:
    with psycopg.connect(proxy.dsn("it_zhou", PASSWORD), autocommit=True) as conn:
        try:
            conn.execute(sql).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:
            return str(exc)
        except psycopg.Error:
            return None  # (the catalog not read again yet: the column is unknown)
    return None


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    return check()


def test_rename_and_generated_column_keep_the_class(pg, crm):
    assert "follow_t.phone is not visible" in eventually(lambda: refused(crm, "SELECT phone FROM follow_t"))
    pg.psql("ALTER TABLE follow_t RENAME COLUMN phone TO tel", "crm")
    assert "is not visible to tier it" in (eventually(lambda: refused(crm, "SELECT tel FROM follow_t")) or "")
    pg.psql("ALTER TABLE follow_t ADD COLUMN tail text GENERATED ALWAYS AS (right(tel, 4)) STORED", "crm")
    assert "follow_t.tail is not visible" in (eventually(lambda: refused(crm, "SELECT tail FROM follow_t")) or "")
    with psycopg.connect(crm.dsn("it_zhou", PASSWORD)) as conn:  # a star gives NULL for both
        assert all(r[1] is None and r[2] is None for r in conn.execute("SELECT * FROM follow_t"))


def test_carried_classes_pins_renamed_columns_by_attnum():
    rules = load_rules(RULES.read_text())
    old = Catalog.from_spec({"public.customers": {"id": "integer", "id_number": "text", "note": "text"}})
    new = Catalog.from_spec({"public.customers": {"id": "integer", "idno": "text", "note": "text"}})
    assert carried_classes(rules, old, new) == {(1000, 2): "id_number"}
    newer = Catalog.from_spec({"public.clients": {"id": "integer", "idno": "text", "note": "text"}})
    newer.by_oid[1000]  # same oid, relation renamed too
    new.pinned = carried_classes(rules, old, new)
    assert carried_classes(rules, new, newer) == {(1000, 2): "id_number"}
