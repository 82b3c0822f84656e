"""Attacks of the second review (after issues 12, 14 and 15 were filed), as users of the ordinary
restricted tiers of rules/crm.yaml, against a real PostgreSQL through a real pgveil process.

Each test shows one hole: while it is open the test fails, and is marked
``xfail(strict=True)`` with the hole as its reason; the fix removes the mark."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD, sleep_past, start_with_rules


@pytest.fixture(scope="module")
def guarded(pg, tier_users, tmp_path_factory):
    process = start_with_rules(pg, tmp_path_factory.mktemp("attacks") / "crm.yaml", RULES.read_text())
    yield process
    process.stop()


async def _connect(proxy, user):
    return await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=user, password=TIER_PASSWORD,
                                 database="crm", ssl=False, timeout=30)


def test_short_nested_array_constructor_does_not_hold_the_worker(guarded):
    """sqlglot parses nested ``ARRAY[`` constructors in time exponential in their depth (depth 14:
    ~1-4 s, 16: ~15 s, 20: ~4 min) although the text is ~125 bytes with no parenthesis, so
    proxy.limits.decided_apart keeps its cold decision on the worker's event loop: every other
    session of the worker waits.  As partner_acme (third_party): another session's SELECT 1 must
    still answer promptly."""
    depth = 16
    sql = "SELECT " + "ARRAY[" * depth + "1" + "]" * depth

    async def scenario():
        costly, other = await _connect(guarded, "partner_acme"), await _connect(guarded, "sales_li")
        try:
            assert await other.fetchval("SELECT 1") == 1
            task = asyncio.create_task(costly.execute(sql))
            await asyncio.sleep(0.5)  # the statement has reached the proxy
            started = time.monotonic()
            try:
                assert await asyncio.wait_for(other.fetchval("SELECT 1"), 8) == 1
            finally:
                waited = time.monotonic() - started
                task.cancel()
            return waited
        finally:
            costly.terminate()
            await other.close()

    waited = asyncio.run(scenario())
    assert waited < 3.0, f"SELECT 1 of another session waited {waited:.1f} s behind a 125-byte statement"


# ----------------------------------------------------------------------------- cursors opened under a grant
def _grant_rules(user: str, seconds: float) -> tuple[str, datetime]:
    until = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return RULES.read_text() + f"""grants:
  - user: {user}
    see: {{id_number: clear}}
    until: "{until.isoformat()}"
    reason: "CS-9 refund check"
    approved_by: [li_na]
""", until


def assert_masked_or_refused(conn, sql: str) -> None:
    """After the grant ended, ``sql`` either shows the ID number masked (or no row) or is refused
    with 42501; it never shows it in clear."""
    try:
        row = conn.execute(sql, prepare=False).fetchone()
    except psycopg.Error as exc:
        assert exc.sqlstate == "42501", str(exc)
        return
    assert row is None or "*" in row[0], f"clear ID number after the grant ended: {row[0]}"


CURSOR_SQL = "SELECT id_number || '' AS v FROM customers ORDER BY id"  # not a plain column: the RowDescription check cannot stop it

# (how the cursor is declared, how it is fetched): PostgreSQL names both the same cursor
CURSOR_NAMES = {
    # PostgreSQL folds only ASCII letters of an unquoted name (multibyte encodings); pgveil's
    # proxy/opened.py folded with str.lower(), so it looked for "ä" and found nothing to refuse
    "non-ASCII unquoted name": ('"Ä"', "Ä"),
    # a Unicode-escaped identifier names cursor c for PostgreSQL, something else for sqlglot's
    # tokens (u & "\0063"): pgveil refuses such names (proxy/heads.py unicode_name)
    "U& identifier": ('U&"\\0063"', "c"),
}


@pytest.mark.parametrize("names", list(CURSOR_NAMES.values()), ids=list(CURSOR_NAMES))
def test_a_cursor_opened_under_an_ended_grant_returns_nothing_whatever_its_name(pg, tier_users, tmp_path, names):
    """As sales_li with a grant of id_number in clear that ends: a cursor declared WITH HOLD
    under the grant returns no more clear values once it ended."""
    declared, fetched = names
    text, until = _grant_rules("sales_li", 6.0)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", text, "--rules-poll", "0")
    try:
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            try:
                conn.execute(f"DECLARE {declared} CURSOR WITH HOLD FOR {CURSOR_SQL}", prepare=False)  # granted: clear
            except psycopg.Error as exc:  # a name pgveil does not read is refused, not guessed
                assert exc.sqlstate == "42501" and "Unicode escapes" in str(exc), str(exc)
                return
            sleep_past(until)
            assert "*" in conn.execute("SELECT id_number FROM customers LIMIT 1").fetchone()[0]  # the grant ended
            assert_masked_or_refused(conn, f"FETCH 1 FROM {fetched}")
    finally:
        proxy.stop()


# ----------------------------------------------------------------------------- prepared statements and access changes
def test_a_failed_parse_of_the_same_name_does_not_refresh_a_statement_prepared_under_an_ended_grant(
        pg, tier_users, tmp_path):
    """As sales_li with a grant of id_number in clear that ends (libpq's PQprepare/PQexecPrepared:
    Parse+Sync, then Bind/Execute/Sync, as any driver sends them)."""
    text, until = _grant_rules("sales_li", 6.0)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", text, "--rules-poll", "0")
    try:
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            pgconn = conn.pgconn
            ok = psycopg.pq.ExecStatus.COMMAND_OK
            assert pgconn.prepare(b"s1", f"{CURSOR_SQL} LIMIT 1".encode()).status == ok
            first = pgconn.exec_prepared(b"s1", [])
            assert b"*" not in first.get_value(0, 0)  # granted: clear
            sleep_past(until)
            again = pgconn.prepare(b"s1", b"SELECT 'harmless'")
            assert again.status != ok  # 42P05: prepared statement "s1" already exists
            result = pgconn.exec_prepared(b"s1", [])
            value = result.get_value(0, 0) if result.status == psycopg.pq.ExecStatus.TUPLES_OK else None
            assert value is None or b"*" in value or value == b"harmless", \
                f"clear ID number after the grant ended: {value!r}"
    finally:
        proxy.stop()


def test_prepared_statements_follow_the_server_s_answers_not_the_client_s_messages():
    """Pure: what pgveil believes prepared under which access changes only when the server
    answers ParseComplete/CloseComplete (a Parse refused with 42P05, or a Close skipped after an
    error, leaves the server's statement, and so pgveil's record of it, as it was)."""
    from proxy.prepared import PreparedStatements
    p = PreparedStatements()
    P, C, S = (ord(c) for c in "PCS")
    p.client(P); p.remember("s1", "clear", (), "granted"); p.client(S)
    p.server(ord("1")); p.server(ord("Z"))
    assert p.statements["s1"][2] == "granted"
    p.client(P); p.remember("s1", "masked", (), "ended"); p.client(S)
    p.server(ord("E")); p.server(ord("Z"))  # 42P05: prepared statement "s1" already exists
    assert p.statements["s1"][:3] == ("clear", (), "granted")
    p.client(P); p.remember("bad", "x", (), "ended"); p.client(C); p.forget("s1"); p.client(S)
    p.server(ord("E")); p.server(ord("Z"))  # the Parse failed, the Close was skipped
    assert "bad" not in p.statements and p.statements["s1"][2] == "granted"
    p.client(C); p.forget("s1"); p.client(S)
    p.server(ord("3")); p.server(ord("Z"))
    assert "s1" not in p.statements and p.bytes == 0


# (what the session sends after the grant ended, before fetching again): PostgreSQL keeps the held cursor
CURSOR_STATE = {
    # 42P03: cursor "h" already exists; pgveil recorded h as opened under the new access
    "DECLARE of the same name, refused upstream": 'DECLARE h CURSOR WITH HOLD FOR SELECT 1',
    # the CLOSE is never run (the Query stops at the error); pgveil forgot h
    "CLOSE skipped after an error": "SELECT 1/0; CLOSE h",
}


@pytest.mark.parametrize("between", list(CURSOR_STATE.values()), ids=list(CURSOR_STATE))
def test_a_held_cursor_stays_refused_whatever_the_session_sends_between(pg, tier_users, tmp_path, between):
    text, until = _grant_rules("sales_li", 6.0)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", text, "--rules-poll", "0")
    try:
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            conn.execute(f"DECLARE h CURSOR WITH HOLD FOR {CURSOR_SQL}", prepare=False)
            assert "*" not in conn.execute("FETCH 1 FROM h", prepare=False).fetchone()[0]  # granted: clear
            sleep_past(until)
            with pytest.raises(psycopg.Error):
                conn.execute(between, prepare=False)
            assert_masked_or_refused(conn, "FETCH 1 FROM h")
    finally:
        proxy.stop()


@pytest.mark.parametrize("prepare", [None, True], ids=["psycopg default", "named prepared statement"])
def test_a_held_cursor_declared_with_the_extended_protocol_is_recorded_when_it_runs(pg, tier_users, tmp_path,
                                                                                      prepare):
    """As sales_li with a grant that ends: DECLARE sent as psycopg sends it by default, and as a
    named prepared statement (Parse/Bind/Execute: recorded once its Execute completes)."""
    text, until = _grant_rules("sales_li", 6.0)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", text, "--rules-poll", "0")
    try:
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            conn.execute(f"DECLARE h CURSOR WITH HOLD FOR {CURSOR_SQL}", prepare=prepare)
            assert "*" not in conn.execute("FETCH 1 FROM h", prepare=False).fetchone()[0]  # granted: clear
            sleep_past(until)
            with pytest.raises(psycopg.Error) as refused:
                conn.execute("FETCH 1 FROM h", prepare=False)
            assert refused.value.sqlstate == "42501", str(refused.value)
    finally:
        proxy.stop()


def test_a_unicode_escaped_close_does_not_make_pgveil_forget_another_cursor(pg, tier_users, tmp_path):
    """As sales_li with a grant of id_number in clear that ends: CLOSE U&"\\0063" closes cursor c
    for PostgreSQL; read from sqlglot's tokens it named the cursor "\\0063", which pgveil then
    forgot, so FETCH from that one (declared under the grant) ran unchecked."""
    text, until = _grant_rules("sales_li", 6.0)
    proxy = start_with_rules(pg, tmp_path / "rules.yaml", text, "--rules-poll", "0")
    try:
        with psycopg.connect(proxy.dsn("sales_li", TIER_PASSWORD), autocommit=True) as conn:
            conn.execute(f'DECLARE "\\0063" CURSOR WITH HOLD FOR {CURSOR_SQL}', prepare=False)  # granted: clear
            conn.execute("DECLARE c CURSOR WITH HOLD FOR SELECT 1", prepare=False)
            sleep_past(until)
            try:
                conn.execute('CLOSE U&"\\0063"', prepare=False)
            except psycopg.Error as exc:
                assert exc.sqlstate == "42501" and "Unicode escapes" in str(exc), str(exc)
            assert_masked_or_refused(conn, 'FETCH 1 FROM "\\0063"')
    finally:
        proxy.stop()


def test_unicode_escaped_names_are_refused_wherever_a_cursor_or_statement_is_named():
    """Pure: U&"..." names (sqlglot: u & "...") are refused for restricted tiers by the head
    readers (DECLARE, PREPARE, EXECUTE, FETCH) and by proxy/opened.py (CLOSE, DEALLOCATE ...)."""
    from proxy import heads
    from proxy.access import Access
    from proxy.opened import Opened, segments
    from proxy.sql import tokenize
    for reader, text in ((heads.declare, 'U&"\\0063" CURSOR FOR SELECT 1'), (heads.prepare, 'u&"p" AS SELECT 1'),
                         (heads.execute, 'U&"p"'), (heads.fetch, "1 FROM u&\"d!0063\" UESCAPE '!'")):
        with pytest.raises(heads.HeadError, match="Unicode escapes"):
            reader(tokenize(text), text)
    access = Access("v", "sales", ())
    for sql in ('CLOSE U&"\\0063"', 'DEALLOCATE u&"p"', 'SELECT 1; MOVE 1 IN U&"c"'):
        assert "Unicode escapes" in Opened().query(segments(sql), access, True)
    assert Opened().query(segments('CLOSE U&"c"'), access, False) is None  # all-clear tiers: as sent
    assert Opened().query(segments('SELECT u & "x" FROM t'), access, True) is None  # an operator


def test_cursor_names_fold_as_postgresql_folds_them_for_the_row_limits_too():
    """Pure: max_rows follows a cursor by name (proxy/rowlimits.py); an unquoted non-ASCII name
    keeps its case in PostgreSQL (UTF8), so FETCH Ä reads cursor "Ä" (str.lower() made it "ä"),
    as do DDL names (proxy/ddl.py)."""
    from proxy.ddl import _name as ddl_name
    from proxy.rowlimits import cursor_ref
    from proxy.sql import tokenize
    assert cursor_ref("FETCH 1 FROM Ä", tokenize("FETCH 1 FROM Ä")[0]) == ("fetch", "Ä")
    assert cursor_ref('DECLARE "Ä" CURSOR FOR SELECT 1', tokenize('DECLARE "Ä" CURSOR FOR SELECT 1')[0]) == \
        ("declare", "Ä")
    assert cursor_ref("FETCH 1 FROM MyC", tokenize("FETCH 1 FROM MyC")[0]) == ("fetch", "myc")
    assert ddl_name(tokenize("Éx")[0]) == "Éx"
