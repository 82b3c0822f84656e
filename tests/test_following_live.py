"""pgveil's view of the session follows the server's answers, through a live proxy and real
drivers (psycopg, libpq's pipeline mode through psycopg.pq, asyncpg): a Parse counts once the
server prepared it, DEALLOCATE and DISCARD ALL remove protocol statements, ROLLBACK undoes a
search_path set earlier in the block, and a purpose declared with the extended protocol counts
as one declared in a simple Query."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import psycopg
import pytest
from psycopg import pq

from conftest import TIER_PASSWORD, sleep_past, start_with_rules
from test_access_live import BASE, PURPOSE_RULES, SQL, grant, grant_users, masked, purpose_proxy, records  # noqa: F401 (fixtures)
from test_attacks_review import CURSOR_SQL, _grant_rules

OK, TUPLES = pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK


def pipeline(pgconn: pq.PGconn, *sends) -> list:
    """Send these (callables on ``pgconn``) in one pipeline with one Sync at the end, before
    reading anything; the results, in order (PIPELINE_ABORTED for those skipped)."""
    pgconn.enter_pipeline_mode()
    for send in sends:
        send(pgconn)
    pgconn.pipeline_sync()
    results = []
    while True:
        result = pgconn.get_result()
        if result is None:
            continue
        if result.status == pq.ExecStatus.PIPELINE_SYNC:
            break
        results.append(result)
    pgconn.exit_pipeline_mode()
    return results


def raw(proxy, user: str) -> pq.PGconn:
    pgconn = pq.PGconn.connect(proxy.dsn(user, TIER_PASSWORD).encode())
    assert pgconn.status == pq.ConnStatus.OK, pgconn.error_message
    return pgconn


# ----------------------------------------------------------------------------- 1. a Parse counts once the server prepared it
def test_a_statement_parsed_after_an_access_change_runs_as_sent(purpose_proxy):
    """After a purpose is declared, a new unnamed statement (psycopg with parameters), and a
    named one closed and parsed again in the same pipeline as its Bind, run as the client sent
    them: pgveil prepared again the statement it had seen answered before, in their place."""
    with psycopg.connect(purpose_proxy.dsn("sales_cur", TIER_PASSWORD), autocommit=True) as conn:
        assert conn.execute("SELECT %s::text AS a", ("first",)).fetchone() == ("first",)
        conn.execute("SET pgveil.purpose = 'T-1'")
        assert conn.execute("SELECT %s::text || '-second' AS b", ("x",)).fetchone() == ("x-second",)
    pgconn = raw(purpose_proxy, "sales_cur")
    try:
        assert pgconn.prepare(b"s", b"SELECT 'old'::text").status == OK
        assert pgconn.exec_(b"SET pgveil.purpose = 'T-2'").status == OK
        results = pipeline(pgconn, lambda c: c.send_close_prepared(b"s"),
                           lambda c: c.send_prepare(b"s", b"SELECT 'new'::text"),
                           lambda c: c.send_query_prepared(b"s", []))
        assert [r.status for r in results] == [OK, OK, TUPLES]
        assert results[-1].get_value(0, 0) == b"new"
    finally:
        pgconn.finish()


def test_a_parse_the_server_refuses_does_not_replace_what_it_runs(pg, tier_users, tmp_path):
    """As sales_li with a grant of id_number in clear that ends: statement s declares a held
    cursor; a second Parse of s fails (42P05), so executing s still declares the cursor, under
    the grant.  pgveil noted the failed Parse's text as s, so it did not see the cursor opened,
    and a FETCH after the grant ended returned clear ID numbers.  The execution's outcome
    record names the statement that ran."""
    text, until = _grant_rules("sales_li", 6.0)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", text, "--rules-poll", "0")
    try:
        pgconn = raw(proxy, "sales_li")
        try:
            assert pgconn.prepare(b"s", f"DECLARE h CURSOR WITH HOLD FOR {CURSOR_SQL}".encode()).status == OK
            refused = pgconn.prepare(b"s", b"SELECT 1")
            assert refused.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"
            assert pgconn.exec_prepared(b"s", []).status == OK  # DECLARE CURSOR, under the grant
            first = pgconn.exec_(b"FETCH 1 FROM h")
            assert first.status == TUPLES and b"*" not in first.get_value(0, 0)  # granted: clear
            sleep_past(until)
            after = pgconn.exec_(b"FETCH 1 FROM h")
            assert after.status != TUPLES, f"clear ID number after the grant ended: {after.get_value(0, 0)!r}"
            assert after.error_field(pq.DiagnosticField.SQLSTATE) == b"42501"
        finally:
            pgconn.finish()
    finally:
        proxy.stop()
    statements = {r["id"]: r["sql"] for r in records(proxy, "statement") if r["user"] == "sales_li"}
    ran = [statements.get(r["statement"]) for r in records(proxy, "outcome")
           if r["user"] == "sales_li" and r["status"] == "ok" and r["statement"] in statements]
    assert any(sql.startswith("DECLARE h") for sql in ran) and "SELECT 1" not in ran, ran


# ----------------------------------------------------------------------------- 2. DEALLOCATE and DISCARD ALL
REMOVALS = {  # (statement, sent with the extended protocol): each removes protocol statement s on the server
    "DEALLOCATE s": ("DEALLOCATE s", False),
    "DEALLOCATE s, extended": ("DEALLOCATE s", True),
    "DEALLOCATE ALL": ("DEALLOCATE ALL", False),
    "DEALLOCATE ALL, extended": ("DEALLOCATE ALL", True),
    "DISCARD ALL": ("DISCARD ALL", False),
}


@pytest.mark.parametrize("removal", REMOVALS)
def test_a_deallocated_statement_stays_deallocated_after_an_access_change(purpose_proxy, removal):
    """PostgreSQL says statement s does not exist; pgveil, seeing s prepared under other access,
    prepared it again before the Bind, and s ran."""
    statement, extended = REMOVALS[removal]
    pgconn = raw(purpose_proxy, "sales_cur")
    try:
        assert pgconn.prepare(b"s", SQL.encode()).status == OK
        done = pgconn.exec_params(statement.encode(), []) if extended else pgconn.exec_(statement.encode())
        assert done.status == OK, done.error_message
        assert pgconn.exec_(b"SET pgveil.purpose = 'T-3'").status == OK  # another access
        result = pgconn.exec_prepared(b"s", [])
        assert result.status != TUPLES, f"deallocated statement s ran: {result.get_value(0, 0)!r}"
        assert result.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"  # invalid_sql_statement_name
    finally:
        pgconn.finish()


def test_asyncpg_prepared_statement_deallocated_by_deallocate_all(purpose_proxy):
    async def run():
        conn = await asyncpg.connect(purpose_proxy.dsn("sales_cur", TIER_PASSWORD))
        try:
            statement = await conn.prepare(SQL)
            assert masked(await statement.fetchval())
            await conn.execute("DEALLOCATE ALL")
            await conn.execute("SET pgveil.purpose = 'T-4'")
            with pytest.raises(asyncpg.PostgresError) as info:
                await statement.fetchval()
            return info.value.sqlstate
        finally:
            await conn.close()
    assert asyncio.run(run()) == "26000"


def test_a_statement_prepared_with_sql_prepare_is_not_run_by_bind_after_a_grant_ends(pg, grant_users, tmp_path):
    """SQL PREPARE and the protocol's Parse name the same statements: PREPARE q under a grant,
    then Bind q (libpq's PQexecPrepared) after it ended ran q as decided under the grant."""
    until = datetime.now(timezone.utc) + timedelta(seconds=6.0)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", BASE + "grants:\n" + grant("sales_end", until),
                             "--rules-poll", "0")
    try:
        pgconn = raw(proxy, "sales_end")
        try:
            assert pgconn.exec_(f"PREPARE q AS {CURSOR_SQL} LIMIT 1".encode()).status == OK
            first = pgconn.exec_prepared(b"q", [])
            assert first.status == TUPLES and b"*" not in first.get_value(0, 0)  # granted: clear
            sleep_past(until)
            after = pgconn.exec_prepared(b"q", [])
            assert after.status != TUPLES or b"*" in after.get_value(0, 0), \
                f"clear ID number after the grant ended: {after.get_value(0, 0)!r}"
            assert after.error_field(pq.DiagnosticField.SQLSTATE) == b"42501"
            assert "prepared under other access" in after.error_message.decode()
            assert pgconn.exec_(b"DEALLOCATE q").status == OK  # prepared again: masked
            assert pgconn.exec_(f"PREPARE q AS {CURSOR_SQL} LIMIT 1".encode()).status == OK
            assert b"*" in pgconn.exec_prepared(b"q", []).get_value(0, 0)
        finally:
            pgconn.finish()
    finally:
        proxy.stop()


# ----------------------------------------------------------------------------- 3. a rollback restores the search_path
STAGED = 987654  # an id only staging.customers has


@pytest.fixture(scope="module")
def staged_row(pg, tier_users):
    """staging.customers (unclassified) beside public.customers, with one row of its own."""
    pg.psql("CREATE SCHEMA IF NOT EXISTS staging; CREATE TABLE IF NOT EXISTS staging.customers (LIKE public.customers);"
            "GRANT USAGE ON SCHEMA staging TO crm_app; GRANT ALL ON staging.customers TO crm_app;"
            f"DELETE FROM staging.customers WHERE id = {STAGED};"
            f"INSERT INTO staging.customers SELECT * FROM public.customers WHERE grade = 'ordinary' LIMIT 1;"
            f"UPDATE staging.customers SET id = {STAGED}, name = 'staged' WHERE id <> {STAGED};", "crm")


ROLLBACKS = {  # (the Query that changes the path in the block, the Query that undoes it before the UPDATE)
    "ROLLBACK": (["BEGIN; SET search_path = public"], "ROLLBACK;"),
    "ROLLBACK TO SAVEPOINT": (["BEGIN; SAVEPOINT a", "SET search_path = public"], "ROLLBACK TO SAVEPOINT a;"),
    "ROLLBACK of an aborted block": (["BEGIN", "SET search_path = public", "SELECT 1/0"], "ROLLBACK;"),
    "ABORT, several savepoints": (["BEGIN; SAVEPOINT a; SET search_path = public; SAVEPOINT b",
                                   "SET search_path = pg_catalog, public; RELEASE b"], "ABORT;"),
    "COMMIT after SET LOCAL": (["BEGIN", "SET LOCAL search_path = public"], "COMMIT;"),
    "all in one Query": ([], "BEGIN; SET search_path = public; ROLLBACK;"),
    "pipelined, extended protocol": (["BEGIN; SET search_path = public"], None),
}


@pytest.mark.parametrize("rollback", ROLLBACKS)
def test_a_rollback_in_a_later_query_restores_the_search_path(pg, tier_users, staged_row, tmp_path, rollback):
    """As crm_app with search_path staging, public: the path set in the block is undone by a
    rollback sent in a later Query, with an UPDATE after it in that Query.  PostgreSQL runs the
    UPDATE on staging.customers; pgveil decided it under the path before the rollback and sent
    it qualified as public.customers (a write to another table than the client's)."""
    from test_access_live import BASE
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", BASE)
    try:
        with psycopg.connect(proxy.dsn("crm_app", TIER_PASSWORD), autocommit=True) as conn:
            conn.execute("SET search_path = staging, public")
            before, undo = ROLLBACKS[rollback]
            for query in before:
                try:
                    conn.execute(query)
                except psycopg.errors.DivisionByZero:
                    pass
            update = f"UPDATE customers SET name = name || '!'\n  WHERE id = {STAGED} RETURNING name"
            if undo is None:  # Parse/Bind/Execute each, one Sync: the UPDATE is sent before the ROLLBACK ran
                with conn.pipeline():
                    conn.execute("ROLLBACK")
                    cur = conn.execute(update)
            else:
                cur = conn.execute(f"{undo}\n  {update};")
                while cur.nextset():
                    pass
            assert cur.fetchall() == [("staged!",)]  # staging.customers, as PostgreSQL runs it
            cur = conn.execute(f"SELECT current_setting('search_path'); UPDATE customers SET name = 'staged' "
                               f"WHERE id = {STAGED} RETURNING name")
            assert cur.fetchone() == ("staging, public",) and cur.nextset() and cur.fetchall() == [("staged",)]
    finally:
        proxy.stop()


# ----------------------------------------------------------------------------- 4. a purpose declared with the extended protocol
def test_a_purpose_declared_with_the_extended_protocol_counts_like_a_simple_one(purpose_proxy):
    """psycopg prepare=True and pipelines, asyncpg's fetch, libpq's PQprepare: SET/RESET
    pgveil.purpose as Parse/Bind/Execute was refused ('must be sent alone')."""
    with psycopg.connect(purpose_proxy.dsn("sales_cur", TIER_PASSWORD), autocommit=True) as conn:
        assert masked(conn.execute(SQL, prepare=True).fetchone()[0])
        conn.execute("SET pgveil.purpose = 'T-5'", prepare=True)  # a named prepared statement
        assert not masked(conn.execute(SQL, prepare=True).fetchone()[0])  # the same prepared SELECT
        conn.execute("RESET pgveil.purpose", prepare=True)
        assert masked(conn.execute(SQL, prepare=True).fetchone()[0])
        conn.execute("SET pgveil.purpose = 'T-5'", prepare=True)  # the prepared declaration, executed again
        assert not masked(conn.execute(SQL, prepare=True).fetchone()[0])
        conn.execute("BEGIN", prepare=False)
        conn.execute("RESET pgveil.purpose", prepare=True)
        assert masked(conn.execute(SQL, prepare=True).fetchone()[0])
        conn.execute("ROLLBACK", prepare=False)  # undoes the RESET, as PostgreSQL undoes a setting
        assert not masked(conn.execute(SQL, prepare=True).fetchone()[0])
        with conn.pipeline():  # RESET then SELECT, sent together: the SELECT runs after the RESET
            conn.execute("RESET pgveil.purpose")
            cur = conn.execute(SQL)
        assert masked(cur.fetchone()[0])
        with conn.transaction():
            conn.execute("SET LOCAL pgveil.purpose = 'T-6'", prepare=True)
            assert not masked(conn.execute(SQL).fetchone()[0])
        assert masked(conn.execute(SQL).fetchone()[0])  # SET LOCAL ended with the block

    async def with_asyncpg():
        conn = await asyncpg.connect(purpose_proxy.dsn("sales_cur", TIER_PASSWORD))
        try:
            await conn.fetch("SET pgveil.purpose = 'T-7'")  # Parse/Describe/Sync, then Bind/Execute/Sync
            during = await conn.fetchval(SQL)
            await conn.fetch("RESET pgveil.purpose")
            return during, await conn.fetchval(SQL)
        finally:
            await conn.close()
    during, after = asyncio.run(with_asyncpg())
    assert not masked(during) and masked(after), (during, after)

    pgconn = raw(purpose_proxy, "sales_cur")
    try:  # a declaration that fails (inside an aborted block) declares nothing
        assert pgconn.prepare(b"d", b"SET pgveil.purpose = 'T-8'").status == OK
        assert pgconn.exec_(b"BEGIN").status == OK
        pgconn.exec_(b"SELECT 1/0")
        assert pgconn.exec_prepared(b"d", []).error_field(pq.DiagnosticField.SQLSTATE) == b"25P02"
        assert pgconn.exec_(b"ROLLBACK").status == OK
        assert masked(pgconn.exec_(SQL.encode()).get_value(0, 0).decode())
        # one Sync for both: the error rolls back the implicit transaction, and the SET with it
        results = pipeline(pgconn, lambda c: c.send_query_prepared(b"d", []),
                           lambda c: c.send_query_params(b"SELECT 1/0", []))
        assert results[0].status == OK and results[1].status == pq.ExecStatus.FATAL_ERROR
        assert masked(pgconn.exec_(SQL.encode()).get_value(0, 0).decode())
        assert pgconn.exec_prepared(b"d", []).status == OK  # alone, it holds
        assert not masked(pgconn.exec_(SQL.encode()).get_value(0, 0).decode())
    finally:
        pgconn.finish()
    deadline = time.monotonic() + 5
    while not any(r["user"] == "sales_cur" and r["sql"] == "SET pgveil.purpose = ?" and r.get("purpose") == "T-7"
                  for r in records(purpose_proxy, "statement")):
        assert time.monotonic() < deadline, "no record of the declaration"
        time.sleep(0.1)


# ----------------------------------------------------------------------------- 5. other state: a cursor is a portal too
class RawClient:
    """The protocol by hand (no driver sends an Execute of a portal it did not Bind): a trust
    user, so no password exchange."""

    def __init__(self, proxy, user: str) -> None:
        import socket
        from proxy import codec
        self.codec = codec
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        self.splitter = codec.Splitter(frozenset(range(256)))
        self.send(codec.encode_startup(codec.StartupMessage(codec.PROTOCOL_3_0, (("user", user), ("database", "crm")))))
        self.until_ready()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until_ready(self) -> list:
        """The server's messages up to ReadyForQuery, decoded."""
        messages = []
        while True:
            out, marks = self.splitter.feed(self.sock.recv(65536))
            for kind, start, end in marks:
                messages.append(self.codec.decode_message(self.codec.BACKEND, out[start:end]))
                if kind == self.codec.BE.READY_FOR_QUERY:
                    return messages

    def query(self, sql: str) -> list:
        self.send(self.codec.encode(self.codec.Query(sql)))
        return self.until_ready()

    def close(self) -> None:
        self.sock.close()


def _trust_user_in_sales_with_a_grant(pg, tmp_path):
    """A proxy where trust_user (who sends the protocol by hand) is in the sales tier with a
    6 s grant of ID numbers in clear; and when the grant ends."""
    text, until = _grant_rules("trust_user", 6.0)
    text = text.replace("identities:                               # first match wins\n",
                        "identities:\n  - {user: trust_user, tier: sales}\n", 1)
    return start_with_rules(pg, tmp_path / "rules.yaml", text, "--rules-poll", "0"), until


def test_an_execute_naming_a_cursor_is_refused_once_access_narrowed(pg, tier_users, tmp_path):
    """DECLARE c under a grant; after it ended, FETCH FROM c was refused, but the protocol's
    Execute naming portal c (a cursor is a portal) returned its rows in clear."""
    proxy, until = _trust_user_in_sales_with_a_grant(pg, tmp_path)
    try:
        client = RawClient(proxy, "trust_user")
        codec = client.codec
        try:
            replies = client.query(f"DECLARE c CURSOR WITH HOLD FOR {CURSOR_SQL}")
            assert not any(isinstance(m, codec.ErrorResponse) for m in replies), replies
            rows = [m for m in client.query("FETCH 1 FROM c") if isinstance(m, codec.DataRow)]
            assert rows and b"*" not in rows[0].values[0]  # granted: clear
            sleep_past(until)
            client.send(codec.encode(codec.Execute("c", 1)) + codec.encode(codec.Sync()))
            replies = client.until_ready()
            rows = [m.values[0] for m in replies if isinstance(m, codec.DataRow)]
            assert not rows or b"*" in rows[0], f"clear ID number after the grant ended: {rows[0]!r}"
            errors = [m for m in replies if isinstance(m, codec.ErrorResponse)]
            assert errors and errors[0].get(codec.Field.SQLSTATE) == "42501", replies
        finally:
            client.close()
    finally:
        proxy.stop()


def test_a_named_portal_bound_again_keeps_the_access_it_was_opened_under(pg, tier_users, tmp_path):
    """Portal p opened under a grant; after it ended, a second Bind of p fails on the server
    (42P03: the portal exists), ROLLBACK TO SAVEPOINT makes the block usable again, and p (the
    first one) runs: pgveil had noted p as opened under the new access at the failed Bind."""
    proxy, until = _trust_user_in_sales_with_a_grant(pg, tmp_path)
    try:
        client = RawClient(proxy, "trust_user")
        codec = client.codec

        def extended(*messages) -> list:
            client.send(b"".join(codec.encode(m) for m in messages) + codec.encode(codec.Sync()))
            return client.until_ready()
        try:
            client.query("BEGIN")
            replies = extended(codec.Parse("s", CURSOR_SQL, ()), codec.Bind("p", "s", (), (), ()),
                               codec.Execute("p", 1))
            rows = [m.values[0] for m in replies if isinstance(m, codec.DataRow)]
            assert rows and b"*" not in rows[0], replies  # granted: clear
            client.query("SAVEPOINT x")
            sleep_past(until)
            replies = extended(codec.Bind("p", "s", (), (), ()))
            assert any(isinstance(m, codec.ErrorResponse) for m in replies), replies  # 42P03
            client.query("ROLLBACK TO SAVEPOINT x")
            replies = extended(codec.Execute("p", 1))
            rows = [m.values[0] for m in replies if isinstance(m, codec.DataRow)]
            assert not rows or b"*" in rows[0], f"clear ID number after the grant ended: {rows[0]!r}"
        finally:
            client.close()
    finally:
        proxy.stop()
