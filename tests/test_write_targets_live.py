"""A write's target reads nothing the tier may not read, through a real pgveil (rules/crm.yaml).

customer_service (crm_app) may write customers but sees id_number and bank_card masked: none of
the forms below may give it their clear values, whether through SET, WHERE, RETURNING, ON
CONFLICT or a notification.  Notification payloads, which any session can fill with anything,
reach restricted tiers empty.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD as PASSWORD, start_proxy


@pytest.fixture(scope="module")
def crm(pg, tier_users):
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(RULES),
                        "--catalog-dsn", pg.dsn(database="crm"))
    yield proxy
    proxy.stop()


WHOLE_ROWS = [
    "UPDATE customers c SET address = (c.*)::text WHERE id = 1 RETURNING address",
    "UPDATE customers c SET address = c::text WHERE id = 1 RETURNING address",
    "UPDATE customers c SET address = ROW(c.*)::text WHERE id = 1 RETURNING address",
    "UPDATE customers c SET address = to_json(c)::text WHERE id = 1 RETURNING address",
    "UPDATE customers c SET address = (c).bank_card WHERE id = 1 RETURNING address",
    "UPDATE customers SET address = customers::text WHERE id = 1 RETURNING address",
    "UPDATE customers SET address = address WHERE id = 1 RETURNING old",
    "UPDATE customers SET address = address WHERE id = 1 RETURNING old.*",
    "UPDATE customers SET address = address WHERE id = 1 RETURNING old.id_number",
    "UPDATE customers SET address = address WHERE id = 1 RETURNING new.bank_card",
    "UPDATE customers SET address = 'x' WHERE id = 1 RETURNING (new).*",
    "UPDATE customers c SET (name, address) = (SELECT 'x', c.id_number) WHERE id = 1 RETURNING address",
    "UPDATE customers c SET address = 'x' WHERE id = 1 AND pg_notify('leak', (c.*)::text) IS NOT NULL",
    "DELETE FROM customers c WHERE id = -1 AND to_json(c)::text LIKE '%' RETURNING 1",
    "INSERT INTO customers (id, name, grade, created_at) VALUES (1, 'x', 'ordinary', now()) "
    "ON CONFLICT (id) DO UPDATE SET address = customers::text RETURNING address",
    "INSERT INTO customers AS c (id, name, grade, created_at) VALUES (1, 'x', 'ordinary', now()) "
    "ON CONFLICT (id) DO UPDATE SET address = c.bank_card RETURNING address",
    "INSERT INTO customers AS c (id, name, grade, created_at) VALUES (1, 'x', 'ordinary', now()) "
    "ON CONFLICT (id) DO UPDATE SET address = 'x' WHERE (c.*)::text IS NOT NULL RETURNING address",
]


@pytest.mark.parametrize("sql", WHOLE_ROWS)
def test_write_targets_never_give_clear_protected_values(pg, crm, sql):
    clear = pg.psql("SELECT id_number || '|' || bank_card FROM customers WHERE id = 1", "crm").strip().split("|")
    with psycopg.connect(crm.dsn("crm_app", PASSWORD)) as conn:
        try:
            cur = conn.execute(sql)
            text = repr(cur.fetchall() if cur.description else cur.rowcount)
        except psycopg.Error as exc:
            text = str(exc)
            assert exc.sqlstate == "42501", text
            assert "stopped a result" not in text  # the second layer must never be what stops it
        conn.rollback()
    assert clear[0][6:14] not in text and clear[1][6:12] not in text, text


def test_whole_rows_into_notifications_are_refused(crm):
    with psycopg.connect(crm.dsn("crm_app", PASSWORD)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="whole row of customers"):
            conn.execute("UPDATE customers c SET address = 'x' WHERE id = 1 AND pg_notify('leak', (c.*)::text) "
                         "IS NOT NULL")


def test_returning_star_and_clear_columns_still_work(crm):
    with psycopg.connect(crm.dsn("crm_app", PASSWORD)) as conn:
        row = conn.execute("UPDATE customers c SET address = c.address WHERE id = 1 RETURNING c.*").fetchone()
        assert "*" in row[3] and "*" in row[4]
        assert conn.execute("UPDATE customers c SET name = c.name || '' WHERE id = 1 RETURNING old.name, "
                            "new.name").fetchone()[0]
        conn.rollback()


async def test_notification_payloads_reach_restricted_tiers_empty(crm):
    listener = await asyncpg.connect(crm.dsn("it_zhou", PASSWORD))
    clear_listener = await asyncpg.connect(crm.dsn("dba_sun", PASSWORD))
    sender = await asyncpg.connect(crm.dsn("dba_sun", PASSWORD))
    try:
        loop = asyncio.get_running_loop()
        got, clear_got = loop.create_future(), loop.create_future()
        await listener.add_listener("crm_events", lambda *args: got.set_result(args[3]))
        await clear_listener.add_listener("crm_events", lambda *args: clear_got.set_result(args[3]))
        await sender.execute("SELECT pg_notify('crm_events', (SELECT id_number FROM customers WHERE id = 1))")
        assert await asyncio.wait_for(got, 5) == ""
        assert len(await asyncio.wait_for(clear_got, 5)) == 18
    finally:
        for conn in (listener, clear_listener, sender):
            await conn.close()
