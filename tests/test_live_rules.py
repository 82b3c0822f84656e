"""Live rules: an edited rule file takes effect for the next statement of every open session,
atomically; a broken file keeps the old rules; a revoked identity's session ends."""

import os
import signal
import threading
import time

import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD, start_with_rules
from proxy.audit.journal import read_records

CLEAR_FOR_SALES = RULES.read_text().replace(
    "sales:                                  # basic information; ID and bank card numbers masked\n"
    "    see: {person_name: clear, phone: clear, address: clear, id_number: mask, bank_card: mask}",
    "sales:\n    see: {person_name: clear, phone: clear, address: clear, id_number: clear, bank_card: mask}")


@pytest.fixture
def live(pg, tier_users, tmp_path):
    rules = tmp_path / "rules.yaml"
    proxy = start_with_rules(pg, rules, RULES.read_text(), "--rules-poll", "0.2")
    proxy.rules = rules
    yield proxy
    proxy.stop()


def replace_file(path, text):
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)  # as editors and ConfigMaps do: the reader never sees half a file


def records(proxy, kind):
    return [r for _, _, r, _ in read_records(proxy.audit_dir) if r and r.get("type") == kind]


def test_reload_under_load_switches_atomically(live):
    assert CLEAR_FOR_SALES != RULES.read_text()
    results, errors, stop = [], [], threading.Event()

    def worker():
        with psycopg.connect(live.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            while not stop.is_set():
                try:
                    results.append(conn.execute("SELECT id_number FROM customers WHERE id = 1").fetchone()[0])
                except psycopg.Error as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    replace_file(live.rules, CLEAR_FOR_SALES)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    masked = [v for v in results if "*" in v]
    clear = [v for v in results if "*" not in v]
    assert masked and clear and len(set(clear)) == 1 and len(set(masked)) == 1
    # each statement was decided under exactly one version, and none after the swap under the old one
    versions = [r["rules_version"] for r in records(live, "statement") if r["user"] == "sales_li"]
    assert len(set(versions)) == 2
    first_new = versions.index(versions[-1])
    assert all(v == versions[-1] for v in versions[first_new:])
    (reloaded,) = [r for r in records(live, "rules") if r["event"] == "reloaded"]
    assert reloaded["rules_version"] == versions[-1] and reloaded["previous_version"] == versions[0]


def test_broken_file_keeps_the_rules_in_force(live):
    replace_file(live.rules, RULES.read_text().replace("statements: [read]", "statements: [read, fly]", 1))
    time.sleep(1.0)
    with psycopg.connect(live.dsn("sales_li", TIER_PASSWORD)) as conn:
        value = conn.execute("SELECT id_number FROM customers WHERE id = 1").fetchone()[0]
    assert "*" in value  # still the old rules
    assert "rules_reload_rejected" in live.log() and "unknown statement kind 'fly'" in live.log()
    (rejected,) = [r for r in records(live, "rules") if r["event"] == "rejected"]
    assert "rules.yaml:" in rejected["error"] and "'fly'" in rejected["error"]


def test_revoked_identity_session_ends(live):
    with psycopg.connect(live.dsn("partner_acme", TIER_PASSWORD), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 6
        replace_file(live.rules, live.rules.read_text().replace('  - {user: "partner_*", tier: third_party}\n', ""))
        time.sleep(1.0)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT count(*) FROM products")
    revoked = [r for r in records(live, "connection") if r["result"] == "revoked"]
    assert revoked and revoked[0]["user"] == "partner_acme"
    with pytest.raises(psycopg.OperationalError, match='no access rule matches user "partner_acme"'):
        psycopg.connect(live.dsn("partner_acme", TIER_PASSWORD))


def test_sighup_reloads(pg, tier_users, tmp_path):
    rules = tmp_path / "rules.yaml"
    proxy = start_with_rules(pg, rules, RULES.read_text(), "--rules-poll", "0")
    try:
        replace_file(rules, CLEAR_FOR_SALES)
        time.sleep(0.5)
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD)) as conn:
            assert "*" in conn.execute("SELECT id_number FROM customers WHERE id = 1").fetchone()[0]
            os.kill(proxy.proc.pid, signal.SIGHUP)
            time.sleep(0.5)
            assert "*" not in conn.execute("SELECT id_number FROM customers WHERE id = 1").fetchone()[0]
    finally:
        proxy.stop()


def test_networks_refuse_other_addresses_at_connect(pg, tier_users, tmp_path):
    rules = tmp_path / "rules.yaml"
    proxy = start_with_rules(pg, rules, RULES.read_text().replace('{user: "partner_*", tier: third_party}',
                                               '{user: "partner_*", tier: third_party, networks: [192.0.2.0/24]}'))
    try:
        with pytest.raises(psycopg.OperationalError, match='no access rule matches user "partner_acme" from 127.0.0.1'):
            psycopg.connect(proxy.dsn("partner_acme", TIER_PASSWORD))
        replace_file(rules, rules.read_text().replace("192.0.2.0/24", "127.0.0.0/8"))
        os.kill(proxy.proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        with psycopg.connect(proxy.dsn("partner_acme", TIER_PASSWORD)) as conn:
            assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 6
    finally:
        proxy.stop()


def test_grant_expires_mid_session_without_reload(pg, tier_users, tmp_path):
    from datetime import datetime, timedelta, timezone
    until = (datetime.now(timezone.utc) + timedelta(seconds=4)).isoformat()
    rules = tmp_path / "rules.yaml"
    proxy = start_with_rules(pg, rules, RULES.read_text() + f"""grants:
  - user: sales_li
    see: {{id_number: clear}}
    until: "{until}"
    reason: "CS-1042 identity check for a refund"
    approved_by: [li_na, wang_fang]
""", "--rules-poll", "0")
    try:
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            sql = "SELECT id_number, bank_card FROM customers WHERE id = 1"
            during = conn.execute(sql).fetchone()
            assert "*" not in during[0] and "*" in during[1]  # the grant covers id_number only
            time.sleep(4.5)
            after = conn.execute(sql).fetchone()
            assert "*" in after[0]
        statements = [r for r in records(proxy, "statement") if r["user"] == "sales_li" and "bank_card" in r["sql"]]
        assert "CS-1042" in statements[0]["grant"] and "li_na, wang_fang" in statements[0]["grant"]
        assert statements[-1]["grant"] is None and statements[0]["tier"] == "sales+grant1"
    finally:
        proxy.stop()


def test_purpose_flow_with_psql(pg, tier_users, tmp_path, psql_bin):
    from conftest import run_psql
    rules = tmp_path / "rules.yaml"
    proxy = start_with_rules(pg, rules, RULES.read_text().replace(
        "see: {person_name: clear, phone: clear, address: clear, id_number: mask, bank_card: mask}\n"
        "    statements: [read, write]",
        "see: {person_name: clear, phone: clear, address: clear, id_number: {clear: {purpose: required}},"
        " bank_card: mask}\n    statements: [read, write]", 1))
    try:
        script = """SELECT id_number FROM customers WHERE id = 1;
SET pgveil.purpose = 'CS-1042 refund check';
SELECT id_number FROM customers WHERE id = 1;
SELECT current_setting('pgveil.purpose', true);
RESET pgveil.purpose;
SELECT id_number FROM customers WHERE id = 1;
"""
        result = run_psql(psql_bin, proxy, "-At", user="crm_app", password=TIER_PASSWORD, input=script)
        lines = result.stdout.split()
        assert lines[0].count("*") == 8 and lines[1] == "SET"
        assert "*" not in lines[2] and len(lines[2]) == 18
        assert lines[3] == "RESET" and lines[4].count("*") == 8
        assert "masked until you declare a purpose: SET pgveil.purpose" in result.stderr
        assert "declare a purpose on its own" in result.stderr  # nothing else may name the setting
        statements = [r for r in records(proxy, "statement") if r["user"] == "crm_app"]
        with_purpose = [r for r in statements if r["purpose"] == "CS-1042 refund check"]
        assert len(with_purpose) == 3  # the SET itself, and the two statements until RESET
        clear = [r for r in with_purpose if r["sql"].startswith("SELECT id_number")]
        assert {c["action"] for c in clear[0]["columns"]} == {"clear"}
        with psycopg.connect(proxy.dsn("crm_app", TIER_PASSWORD)) as conn:
            with pytest.raises(psycopg.Error, match="declare a purpose on its own"):
                conn.execute("SET pgveil.purpose = %s", ("x",))  # extended protocol: not a declaration
    finally:
        proxy.stop()


def test_max_rows_stops_the_result_after_the_limit(pg, tier_users, tmp_path):
    import asyncio

    import asyncpg
    rules = tmp_path / "rules.yaml"
    proxy = start_with_rules(pg, rules, RULES.read_text().replace(
        "see: {person_name: clear, phone: clear, address: clear, id_number: mask, bank_card: mask}\n"
        "    statements: [read]\n",
        "see: {person_name: clear, phone: clear, address: clear, id_number: mask, bank_card: mask}\n"
        "    statements: [read]\n    max_rows: {id_number: 5}\n", 1))
    try:
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT id, id_number FROM customers ORDER BY id").fetchall()
            assert info.value.sqlstate == "54000" and "at most 5 rows" in str(info.value)
            assert len(conn.execute("SELECT id, id_number FROM customers WHERE id <= 5").fetchall()) == 5
            assert len(conn.execute("SELECT id, name FROM customers LIMIT 50").fetchall()) == 50  # no ID numbers

        async def in_pieces():  # a cursor fetched 3 rows at a time is one result: no way around the limit
            conn = await asyncpg.connect(proxy.dsn("sales_li", TIER_PASSWORD))
            got = []
            try:
                async with conn.transaction():
                    cursor = await conn.cursor("SELECT id, id_number FROM customers ORDER BY id")
                    with pytest.raises(asyncpg.PostgresError) as info:
                        for _ in range(5):
                            got += await cursor.fetch(3)
                    assert info.value.sqlstate == "54000"
            finally:
                await conn.close()
            return got
        assert len(asyncio.run(in_pieces())) <= 5
        assert "max_rows_stop" in proxy.log()
        limited = [r for r in records(proxy, "outcome") if r["status"] == "limited"]
        assert limited and limited[0]["rows"] == 5 and limited[0]["sqlstate"] == "54000"
    finally:
        proxy.stop()
