"""Row locks are writes (attack review): a read-only tier may not hold rows with FOR UPDATE/SHARE,
which would stall the application's writes; PostgreSQL itself asks UPDATE privilege for them."""

import pytest

from policy_fixture import fixture_catalog, fixture_rules
from proxy.policy import Engine

LOCKING = [
    "SELECT id FROM customers WHERE id = 1 FOR UPDATE",
    "SELECT id FROM customers FOR SHARE NOWAIT",
    "SELECT o.id FROM orders o FOR NO KEY UPDATE",
    "SELECT o.id FROM orders o FOR KEY SHARE SKIP LOCKED",
    "SELECT id FROM (SELECT id FROM orders FOR UPDATE) AS x",
    "WITH x AS (SELECT id FROM orders FOR UPDATE) SELECT * FROM x",
]


@pytest.fixture(scope="module")
def engine():
    return Engine(fixture_rules(), fixture_catalog())


@pytest.mark.parametrize("sql", LOCKING)
def test_a_read_only_tier_may_not_lock_rows(engine, sql):
    decision = engine.decide(sql, engine.rules.tier("sales"), ("$user", "public"), "u")
    assert decision.refused and "write statements" in decision.reason and "FOR UPDATE/SHARE" in decision.reason


@pytest.mark.parametrize("sql", LOCKING[2:4])
def test_a_tier_that_writes_may(engine, sql):
    decision = engine.decide(sql, engine.rules.tier("customer_service"), ("$user", "public"), "u")
    assert not decision.refused, decision.reason


def test_a_plain_read_is_untouched(engine):
    decision = engine.decide("SELECT o.id FROM orders o WHERE o.id = 1", engine.rules.tier("sales"),
                             ("$user", "public"), "u")
    assert not decision.refused
