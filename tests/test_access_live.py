"""Access that changes mid-session reaches what the session prepared, through a live proxy with
real drivers: asyncpg (its statement cache), psycopg (auto-prepare after prepare_threshold
executions, and prepare=True) and SQL PREPARE/EXECUTE.

Each test opens its connections while a grant is in force (or before it begins), waits for the
grant's boundary once, and checks every connection after it."""

import asyncio
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD, sleep_past, start_with_rules
from proxy.audit.journal import read_records

# sales may PREPARE, DECLARE and SET in these tests
BASE = RULES.read_text().replace(
    "id_number: mask, bank_card: mask}\n    statements: [read]\n    rows: {public.customers: \"grade = 'ordinary'\"}",
    "id_number: mask, bank_card: mask}\n    statements: [read, session]\n    rows: {public.customers: \"grade = 'ordinary'\"}", 1)
assert BASE != RULES.read_text()
SQL = "SELECT id_number FROM customers ORDER BY id LIMIT 1"
WINDOW = 8.0  # seconds until a grant's boundary: long enough to prepare everything on a loaded 2-core machine, short for the suite


@pytest.fixture(scope="module")
def grant_users(pg, tier_users):
    """sales_end has a grant that ends, sales_begin one that begins (both sales: ID numbers masked)."""
    users = ("sales_end", "sales_begin", "sales_cur")
    pg.psql("\n".join(f"DO $$BEGIN CREATE ROLE {u} LOGIN PASSWORD '{TIER_PASSWORD}'; "
                      f"EXCEPTION WHEN duplicate_object THEN NULL; END$$;" for u in users))  # another module may have
    pg.psql("\n".join(f"GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA public TO {u};" for u in users), "crm")
    return users


def grant(user: str, until: datetime, since: datetime | None = None, number: str = "CS-7") -> str:
    begin = f'\n    from: "{since.isoformat()}"' if since else ""
    return f"""  - user: {user}
    see: {{id_number: clear}}{begin}
    until: "{until.isoformat()}"
    reason: "{number} refund check"
    approved_by: [li_na]
"""


def masked(value: str) -> bool:
    return "*" in value


def records(proxy, kind):
    return [r for _, _, r, _ in read_records(proxy.audit_dir) if r and r.get("type") == kind]


class Clients:
    """One connection per driver and way of preparing, each having run SQL once or more."""

    def __init__(self, proxy, user: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.apg = self.loop.run_until_complete(asyncpg.connect(proxy.dsn(user, TIER_PASSWORD)))
        self.auto = psycopg.connect(proxy.dsn(user, TIER_PASSWORD), autocommit=True)
        self.auto.prepare_threshold = 2  # prepared server-side from the 2nd execution on
        self.explicit = psycopg.connect(proxy.dsn(user, TIER_PASSWORD), autocommit=True)
        self.simple = psycopg.connect(proxy.dsn(user, TIER_PASSWORD), autocommit=True)
        self.simple.execute(f"PREPARE p AS {SQL}", prepare=False)

    def run(self) -> dict:
        values = {"asyncpg": self.loop.run_until_complete(self.apg.fetchval(SQL))}
        for _ in range(3):
            values["psycopg auto"] = self.auto.execute(SQL).fetchone()[0]
        values["psycopg prepare=True"] = self.explicit.execute(SQL, prepare=True).fetchone()[0]
        return values

    def close(self) -> None:
        self.loop.run_until_complete(self.apg.close())
        self.loop.close()
        for conn in (self.auto, self.explicit, self.simple):
            conn.close()


def test_a_grant_that_ends_ends_for_prepared_statements(pg, grant_users, tmp_path):
    until = datetime.now(timezone.utc) + timedelta(seconds=WINDOW)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", BASE + "grants:\n" + grant("sales_end", until),
                             "--rules-poll", "0")
    clients = None
    try:
        clients = Clients(proxy, "sales_end")
        during = clients.run()
        assert not any(masked(v) for v in during.values()), during
        assert clients.run() == during  # again: the drivers' prepared statements run
        assert not masked(clients.simple.execute("EXECUTE p", prepare=False).fetchone()[0])
        sleep_past(until)
        after = clients.run()
        assert all(masked(v) for v in after.values()), after
        with pytest.raises(psycopg.Error) as info:
            clients.simple.execute("EXECUTE p", prepare=False)
        assert info.value.sqlstate == "42501" and "prepared under other access" in str(info.value)
        clients.simple.execute("DEALLOCATE p; PREPARE p AS " + SQL, prepare=False)
        assert masked(clients.simple.execute("EXECUTE p", prepare=False).fetchone()[0])
    finally:
        if clients:
            clients.close()
        proxy.stop()  # the journal is complete once the proxy has stopped
    statements = [r for r in records(proxy, "statement") if r["user"] == "sales_end"
                  and r["sql"].startswith("SELECT id_number")]
    assert statements[0]["grant"] and "CS-7" in statements[0]["grant"] and statements[-1]["grant"] is None
    # every execution's record names the grant it ran under: asyncpg and psycopg executed their
    # prepared statements without a new statement record while the grant was in force
    sql_of = {r["id"]: r["sql"] for r in statements}
    outcomes = [r for r in records(proxy, "outcome") if r["statement"] in sql_of and r["status"] == "ok"]
    granted = [o for o in outcomes if o["grant"] and "CS-7" in o["grant"]]
    assert len({o["statement"] for o in granted}) < len(granted)
    assert outcomes[-1]["grant"] is None


def test_a_grant_that_begins_reaches_prepared_statements(pg, grant_users, tmp_path):
    since = datetime.now(timezone.utc) + timedelta(seconds=WINDOW)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", BASE + "grants:\n" +
                             grant("sales_begin", since + timedelta(hours=1), since), "--rules-poll", "0")
    clients = None
    try:
        clients = Clients(proxy, "sales_begin")
        assert all(masked(v) for v in clients.run().values())
        time.sleep(max(0.0, (since - datetime.now(timezone.utc)).total_seconds()) + 0.3)
        after = clients.run()
        assert not any(masked(v) for v in after.values()), after
    finally:
        if clients:
            clients.close()
        proxy.stop()


def test_a_reload_that_moves_the_identity_reaches_prepared_statements(pg, grant_users, tmp_path):
    rules = tmp_path / "rules.yaml"
    text = BASE
    moved = text.replace("identities:                               # first match wins\n",
                         "identities:\n  - {user: sales_end, tier: dba}\n", 1)
    assert moved != text
    proxy = start_with_rules(pg, rules, moved, "--rules-poll", "0.2")
    clients = None
    try:
        clients = Clients(proxy, "sales_end")
        assert not any(masked(v) for v in clients.run().values())
        assert not masked(clients.simple.execute("EXECUTE p", prepare=False).fetchone()[0])
        rules.write_text(text)  # sales_end is sales again
        deadline = time.monotonic() + 10
        while "rules_reloaded" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        after = clients.run()
        assert all(masked(v) for v in after.values()), after
        with pytest.raises(psycopg.Error, match="prepared under other access"):
            clients.simple.execute("EXECUTE p", prepare=False)
    finally:
        if clients:
            clients.close()
        proxy.stop()


# purpose-bound ID numbers for sales
PURPOSE_RULES = BASE.replace(
    "id_number: mask, bank_card: mask}\n    statements: [read, session]",
    "id_number: {clear: {purpose: required}}, bank_card: mask}\n    statements: [read, session]", 1)


@pytest.fixture(scope="module")
def purpose_proxy(pg, grant_users, tmp_path_factory):
    assert PURPOSE_RULES != BASE
    proxy = start_with_rules(pg, tmp_path_factory.mktemp("purpose") / "rules.yaml", PURPOSE_RULES)
    yield proxy
    proxy.stop()


CLEARINGS = {  # each ends a purpose declared before it, the way PostgreSQL ends a setting
    "RESET": (["SET pgveil.purpose = 'T-1'"], ["RESET pgveil.purpose"]),
    "ROLLBACK": (["BEGIN", "SET pgveil.purpose = 'T-1'"], ["ROLLBACK"]),
    "SET LOCAL then COMMIT": (["BEGIN", "SET LOCAL pgveil.purpose = 'T-1'"], ["COMMIT"]),
    "RESET ALL": (["SET SESSION pgveil.purpose = 'T-1'"], ["RESET ALL"]),
    "DISCARD ALL": (["SET pgveil.purpose TO 'T-1'"], ["DISCARD ALL"]),
}


@pytest.mark.parametrize("clearing", CLEARINGS)
def test_a_purpose_cleared_like_a_setting_reaches_prepared_statements(purpose_proxy, clearing):
    declare, clear = CLEARINGS[clearing]

    async def with_asyncpg():
        conn = await asyncpg.connect(purpose_proxy.dsn("sales_cur", TIER_PASSWORD))
        try:
            assert masked(await conn.fetchval(SQL))
            for statement in declare:
                await conn.execute(statement)
            during = await conn.fetchval(SQL)  # the same cached statement
            for statement in clear:
                await conn.execute(statement)
            if clearing == "DISCARD ALL":  # it deallocated asyncpg's cached statement, as PostgreSQL says
                with pytest.raises(asyncpg.InvalidSQLStatementNameError):
                    await conn.fetchval(SQL)
                return during, await conn.fetchval(SQL + "\n")  # prepared anew
            return during, await conn.fetchval(SQL)
        finally:
            await conn.close()
    during, after = asyncio.run(with_asyncpg())
    assert not masked(during) and masked(after), (during, after)
    deadline = time.monotonic() + 5  # outcome records are written in batches: wait for them
    while not any(o["user"] == "sales_cur" and o["purpose"] == "T-1" for o in records(purpose_proxy, "outcome")):
        assert time.monotonic() < deadline, "no outcome record names the purpose"  # executions name it
        time.sleep(0.1)

    with psycopg.connect(purpose_proxy.dsn("sales_cur", TIER_PASSWORD), autocommit=True) as conn:
        assert masked(conn.execute(SQL, prepare=True).fetchone()[0])
        for statement in declare:
            conn.execute(statement, prepare=False)
        assert not masked(conn.execute(SQL, prepare=True).fetchone()[0])
        for statement in clear:
            conn.execute(statement, prepare=False)
        assert masked(conn.execute(SQL, prepare=True).fetchone()[0])


def test_a_purpose_set_in_a_committed_block_stays(purpose_proxy):
    with psycopg.connect(purpose_proxy.dsn("sales_cur", TIER_PASSWORD), autocommit=True) as conn:
        notices = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary))
        conn.execute("SET LOCAL pgveil.purpose = 'T-0'", prepare=False)  # outside a block: nothing, as in PostgreSQL
        assert notices == ["SET LOCAL can only be used in transaction blocks"]
        assert masked(conn.execute(SQL, prepare=True).fetchone()[0])
        for statement in ("BEGIN", "SET pgveil.purpose = 'T-2'", "COMMIT"):
            conn.execute(statement, prepare=False)
        assert not masked(conn.execute(SQL, prepare=True).fetchone()[0])
        for statement in ("BEGIN", "SAVEPOINT a", "RESET pgveil.purpose", "ROLLBACK TO SAVEPOINT a"):
            conn.execute(statement, prepare=False)
        # PostgreSQL would have the purpose back; pgveil cannot tell this ROLLBACK from a whole
        # block's by its tag alone, and clears it (fail closed)
        assert masked(conn.execute(SQL).fetchone()[0])
        conn.execute("COMMIT", prepare=False)
        assert masked(conn.execute(SQL).fetchone()[0])


def test_cursors_and_portals_opened_under_a_grant_return_no_more_rows_after_it_ends(pg, grant_users, tmp_path):
    until = datetime.now(timezone.utc) + timedelta(seconds=WINDOW)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", BASE + "grants:\n" + grant("sales_end", until),
                             "--rules-poll", "0")
    loop = asyncio.new_event_loop()
    try:
        dsn = proxy.dsn("sales_end", TIER_PASSWORD)
        simple = psycopg.connect(dsn, autocommit=True)
        simple.execute("BEGIN", prepare=False)
        simple.execute(f"DECLARE c CURSOR FOR {SQL[:-8]}", prepare=False)
        simple.execute(f"DECLARE h CURSOR WITH HOLD FOR {SQL[:-8]}", prepare=False)
        assert not masked(simple.execute("FETCH 1 FROM c", prepare=False).fetchone()[0])
        simple.execute("COMMIT", prepare=False)  # c is gone, h is held
        assert not masked(simple.execute("FETCH 1 FROM h", prepare=False).fetchone()[0])
        server_side = psycopg.connect(dsn)  # psycopg's named cursors: DECLARE and FETCH, extended protocol
        named = server_side.cursor("named", withhold=True)
        named.execute(SQL[:-8])
        assert not masked(named.fetchone()[0])
        apg = loop.run_until_complete(asyncpg.connect(dsn))
        transaction = apg.transaction()
        loop.run_until_complete(transaction.start())
        portal = loop.run_until_complete(apg.cursor(SQL[:-8]))  # a portal, fetched with Execute
        assert not masked(loop.run_until_complete(portal.fetch(1))[0][0])

        sleep_past(until)
        for statement in ("FETCH 1 FROM h", "MOVE 1 IN h", "FETCH NEXT FROM h"):
            with pytest.raises(psycopg.Error) as info:
                simple.execute(statement, prepare=False)
            assert info.value.sqlstate == "42501" and "access changed since it was opened" in str(info.value)
        simple.execute("CLOSE h", prepare=False)
        assert masked(simple.execute(SQL).fetchone()[0])  # the rest of the session goes on
        with pytest.raises(psycopg.Error, match="access changed since it was opened"):
            named.fetchone()
        server_side.rollback()
        with pytest.raises(asyncpg.PostgresError) as apg_info:
            loop.run_until_complete(portal.fetch(1))
        assert apg_info.value.sqlstate == "42501" and "access changed since it was opened" in str(apg_info.value)
        loop.run_until_complete(transaction.rollback())
        assert masked(loop.run_until_complete(apg.fetchval(SQL)))
        loop.run_until_complete(apg.close())
        server_side.close()
        simple.close()
    finally:
        loop.close()
        proxy.stop()


# ----------------------------------------------------------------------------- search_path and qualified relations
@pytest.fixture(scope="module")
def staging(pg, grant_users):
    """An unclassified staging.customers beside public.customers, and a top-secret customer's id."""
    pg.psql("CREATE SCHEMA IF NOT EXISTS staging; CREATE TABLE IF NOT EXISTS staging.customers (LIKE public.customers);"
            "GRANT USAGE ON SCHEMA staging TO crm_app, sales_cur;"
            "GRANT ALL ON staging.customers TO crm_app, sales_cur;", "crm")
    out = pg.psql("SELECT min(id) FROM customers WHERE grade = 'top_secret'", "crm")
    return int(out.strip().splitlines()[-1].strip() if not out.strip().isdigit() else out.strip())


def test_search_path_changed_inside_one_query_does_not_redirect_a_write(pg, tier_users, staging, tmp_path):
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", BASE)
    try:
        with psycopg.connect(proxy.dsn("crm_app", TIER_PASSWORD), autocommit=True) as conn:
            conn.execute("SET search_path = staging, public")
            query = (f"BEGIN; SET search_path = public;\n  UPDATE customers SET name = name WHERE id = {staging}\n"
                     f"  RETURNING id_number || ' ', bank_card || ' ';\nROLLBACK")
            rows = []
            try:
                cur = conn.execute(query)
                while True:  # every result of the Query
                    rows += cur.fetchall() if cur.description else []
                    if not cur.nextset():
                        break
            except psycopg.Error as exc:
                rows = []
                assert exc.sqlstate == "42501" and "cannot be used in a write statement" in str(exc)
                conn.execute("ROLLBACK")
            assert rows == []  # nothing of the top-secret customer came back
            with pytest.raises(psycopg.Error, match="cannot follow"):
                conn.execute("RESET search_path; SELECT id_number FROM customers")
            # following the path: the second statement reads public.customers, masked and filtered
            cur = conn.execute("SET search_path = public; SELECT id_number FROM customers ORDER BY id LIMIT 1")
            assert cur.nextset() and masked(cur.fetchone()[0])
    finally:
        proxy.stop()


def test_a_temporary_view_cannot_stand_in_for_a_catalog_relation(pg, grant_users, tmp_path):
    until = datetime.now(timezone.utc) + timedelta(seconds=WINDOW)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", BASE + f"""grants:
  - user: sales_end
    tier: dba
    until: "{until.isoformat()}"
    reason: "CS-9 data fix"
    approved_by: [li_na]
""", "--rules-poll", "0")
    try:
        with psycopg.connect(proxy.dsn("sales_end", TIER_PASSWORD), autocommit=True) as conn:
            conn.execute("CREATE TEMP VIEW pg_namespace AS SELECT id::oid AS oid, id_number::name AS nspname "
                         "FROM public.customers")  # while the grant makes the session dba
            sleep_past(until)
            names = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall()]
            assert "public" in names and not any(name[:1].isdigit() for name in names), names[:5]
    finally:
        proxy.stop()
