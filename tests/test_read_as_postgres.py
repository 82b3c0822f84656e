"""pgveil reads every statement as PostgreSQL will (issue 12), live, per restricted tier.

The proxy enforces rules/crm.yaml, with one change: the sales tier may also run session
statements, so that PREPARE/EXECUTE are analysed for a tier without ``admin`` too (``it`` has
both).  A statement of a restricted tier either is refused or gives no clear ID number.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg
import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD as PASSWORD, start_with_rules
from proxy import sampledata

RESTRICTED = ["crm_app", "sales_li", "prod_wang", "admin_chen", "it_zhou", "partner_acme"]
CLEAR_IDS = [row[3] for row in sampledata.customers(500)]


@pytest.fixture(scope="module")
def veil(pg, tier_users, tmp_path_factory):
    text = RULES.read_text().replace("    statements: [read]\n    rows: {public.customers: \"grade = 'ordinary'\"}",
                                     "    statements: [read, session]\n    settings: [work_mem]\n"
                                     "    rows: {public.customers: \"grade = 'ordinary'\"}")
    assert "[read, session]" in text
    proxy = start_with_rules(pg, tmp_path_factory.mktemp("rules") / "crm.yaml", text)
    yield proxy
    proxy.stop()


def leaked(rows) -> list[str]:
    """The clear ID numbers found anywhere in ``rows``."""
    text = repr(rows)
    return [value for value in CLEAR_IDS if value in text]


def attempt(proxy, user: str, *statements: str):
    """Run the statements in one transaction; the last one's rows, or the refusal (42501)."""
    with psycopg.connect(proxy.dsn(user, PASSWORD)) as conn:
        try:
            for sql in statements[:-1]:
                conn.execute(sql)
            return conn.execute(statements[-1]).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:
            return exc


# ----------------------------------------------------------------------------- quoted keywords
@pytest.mark.parametrize("user", RESTRICTED)
def test_quoted_for_in_declare_gives_no_clear_data(veil, user):
    got = attempt(veil, user, 'DECLARE "for" CURSOR FOR SELECT (c.*)::text FROM customers c',
                  'FETCH ALL FROM "for"')
    assert not isinstance(got, list) or not leaked(got), got
    if user in ("sales_li", "crm_app", "admin_chen", "it_zhou"):  # tiers that may read customers: masked rows
        assert isinstance(got, list) and got, got


@pytest.mark.parametrize("user", RESTRICTED)
def test_quoted_as_in_prepare_gives_no_clear_data(veil, user):
    got = attempt(veil, user, 'PREPARE "as" AS SELECT (c.*)::text FROM customers c', 'EXECUTE "as"')
    assert not isinstance(got, list) or not leaked(got), got
    if user in ("sales_li", "it_zhou"):  # tiers with session statements: analysed, masked
        assert isinstance(got, list) and got, got


@pytest.mark.parametrize("user", ["sales_li", "it_zhou"])
def test_execute_parameters_are_analysed(veil, user):
    got = attempt(veil, user, "PREPARE p(text) AS SELECT $1",
                  "EXECUTE p(query_to_xml('SELECT id_number FROM customers', true, true, ''))")
    assert isinstance(got, psycopg.errors.InsufficientPrivilege), got
    assert "query_to_xml" in str(got)


@pytest.mark.parametrize("user", ["sales_li", "it_zhou"])
def test_fetch_and_execute_of_names_pgveil_did_not_see_are_refused(veil, user):
    for sql, words in (("FETCH ALL FROM nosuch", 'cursor "nosuch" was not declared through pgveil'),
                       ('EXECUTE "Nosuch"', 'prepared statement "Nosuch" was not prepared through pgveil')):
        got = attempt(veil, user, sql)
        assert isinstance(got, psycopg.errors.InsufficientPrivilege) and words in str(got), got


def test_cursor_and_prepared_statement_work_with_masks(veil):
    rows = attempt(veil, "sales_li", "DECLARE Cur NO SCROLL CURSOR WITHOUT HOLD FOR "
                   "SELECT id, id_number FROM customers ORDER BY id", "FETCH FORWARD 3 FROM cur")
    assert len(rows) == 3 and all("*" in r[1] for r in rows)
    rows = attempt(veil, "sales_li", "PREPARE q (int) AS SELECT id_number FROM customers WHERE id = $1",
                   "EXECUTE q(1)")
    assert rows and "*" in rows[0][0]


# ----------------------------------------------------------------------------- settings: an allow list
@pytest.mark.parametrize("user", RESTRICTED)
def test_settings_outside_the_allow_list_are_refused_naming_them(veil, user):
    for sql, name in (("SET cpu_operator_cost = 0", "cpu_operator_cost"),
                      ('SET LOCAL "Random_Page_Cost" TO 0', "random_page_cost"),
                      ("RESET enable_seqscan", "enable_seqscan"),
                      ("SELECT set_config('cpu_operator_cost', '0', false)", "cpu_operator_cost"),
                      ("SET backslash_quote = on", "backslash_quote"),
                      ("SET NAMES 'SJIS'", "client_encoding SJIS")):
        got = attempt(veil, user, sql)
        assert isinstance(got, psycopg.errors.InsufficientPrivilege), (sql, got)
        assert name in str(got), (sql, got)


@pytest.mark.parametrize("user", RESTRICTED)
def test_harmless_settings_still_work(veil, user):
    got = attempt(veil, user, "SET application_name = 'crm-ui'", "SET TIME ZONE 'Asia/Shanghai'",
                  "SET statement_timeout = '5s'", "SET LOCAL DateStyle TO 'ISO, DMY'", "RESET extra_float_digits",
                  "SELECT current_setting('application_name'), current_setting('TimeZone')")
    assert got == [("crm-ui", "Asia/Shanghai")]


def test_a_tier_can_widen_the_allow_list(veil):
    assert attempt(veil, "sales_li", "SET work_mem = '8MB'", "SHOW work_mem") == [("8MB",)]
    assert isinstance(attempt(veil, "crm_app", "SET work_mem = '8MB'"), psycopg.errors.InsufficientPrivilege)


@pytest.mark.parametrize("user", RESTRICTED)
@pytest.mark.parametrize("params, words", [
    ({"options": "-c cpu_operator_cost=0"}, "cpu_operator_cost"),
    ({"options": "--cpu-operator-cost=0"}, "cpu_operator_cost"),
    ({"options": "-c application_name=x -cbackslash_quote=on"}, "backslash_quote"),
    ({"options": "-c application_name=a\\ b -f s"}, "only -c name=value"),
    ({"client_encoding": "SJIS"}, "client_encoding SJIS"),
])
def test_startup_parameters_outside_the_allow_list_are_refused_at_connect(veil, user, params, words):
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(veil.dsn(user, PASSWORD), **params)
    assert words in str(info.value) and "start-up parameter" in str(info.value), info.value
    assert info.value.sqlstate in (None, "28000")  # libpq keeps no SQLSTATE for a failed connect


def test_pgoptions_is_the_options_parameter(veil, monkeypatch):
    monkeypatch.setenv("PGOPTIONS", "-c enable_seqscan=off")
    with pytest.raises(psycopg.OperationalError, match="changing enable_seqscan is not allowed for tier sales"):
        psycopg.connect(veil.dsn("sales_li", PASSWORD))
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=7s --application-name=from\\ options")
    with psycopg.connect(veil.dsn("sales_li", PASSWORD)) as conn:
        assert conn.execute("SELECT current_setting('statement_timeout'), current_setting('application_name')"
                            ).fetchone() == ("7s", "from options")


@pytest.mark.parametrize("user", ["crm_app", "it_zhou"])
def test_settings_by_other_doors_are_refused(veil, user):
    for sql, words in (("UPDATE pg_settings SET setting = 'on' WHERE name = 'backslash_quote'",
                        ("system catalog", "write statements")),
                       (f"ALTER ROLE {user} SET cpu_operator_cost = 0", ("cpu_operator_cost", "ddl statements")),
                       ("ALTER DATABASE crm SET backslash_quote = on", ("backslash_quote", "ddl statements"))):
        got = attempt(veil, user, sql)
        assert isinstance(got, psycopg.errors.InsufficientPrivilege), (sql, got)
        assert any(w in str(got) for w in words), (sql, got)


def test_drivers_connect_through_a_restricted_tier(veil):
    async def run():
        conn = await asyncpg.connect(veil.dsn("sales_li", PASSWORD),
                                     server_settings={"application_name": "asyncpg-app", "jit": "off",
                                                      "DateStyle": "ISO, MDY", "TimeZone": "UTC"})
        try:
            return await conn.fetchrow("SELECT id_number, current_setting('application_name') FROM customers LIMIT 1")
        finally:
            await conn.close()
    row = asyncio.run(run())
    assert "*" in row[0] and row[1] == "asyncpg-app"
    with psycopg.connect(veil.dsn("sales_li", PASSWORD), application_name="psycopg-app", client_encoding="UTF8",
                         options="-c extra_float_digits=3 -c DateStyle=ISO,\\ MDY -c TimeZone=UTC") as conn:
        row = conn.execute("SELECT id_number, current_setting('DateStyle') FROM customers LIMIT 1").fetchone()
    assert "*" in row[0] and row[1] == "ISO, MDY"


# ----------------------------------------------------------------------------- one encoding, known to pgveil
SJIS_ATTACK = (b"SET NAMES 'SJIS';\n"
               b"SELECT E'\x83\\\\', ' || (SELECT array_agg(id_number)::text FROM customers) -- ';\n")


def psql_bytes(psql: str, proxy, user: str, script: bytes, **env: str):
    import subprocess
    environment = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10", **env)
    return subprocess.run([psql, "-X", "-At", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", user, "-d", "crm",
                           "-f", "-"], input=script, capture_output=True, env=environment, timeout=60)


@pytest.mark.parametrize("user", RESTRICTED)
@pytest.mark.parametrize("env", [{"PGOPTIONS": "-c backslash_quote=on"}, {}, {"PGCLIENTENCODING": "SJIS"}],
                         ids=["backslash_quote", "plain", "pgclientencoding"])
def test_sjis_example_gives_no_clear_data(veil, psql_bin, user, env):
    result = psql_bytes(psql_bin, veil, user, SJIS_ATTACK, **env)
    out = result.stdout.decode("latin-1") + result.stderr.decode("latin-1")
    assert not leaked(out), out
    if env:  # refused at connect
        assert "start-up parameter" in out, out
    else:  # SET NAMES refused, then the bytes are not UTF-8
        assert "client_encoding SJIS is not allowed" in out and "invalid byte sequence" in out, out


def test_invalid_bytes_are_refused_by_pgveil_not_carried(veil, psql_bin):
    result = psql_bytes(psql_bin, veil, "sales_li", b"SELECT 'caf\xe9' AS x, id_number FROM customers LIMIT 1;\n")
    err = result.stderr.decode("latin-1")
    assert "pgveil refuses statements that are not valid in the session's client encoding" in err, err


@pytest.mark.parametrize("user", ["sales_li", "crm_app", "admin_chen"])
def test_a_server_safe_encoding_is_read_in_that_encoding(veil, user):
    with psycopg.connect(veil.dsn(user, PASSWORD), client_encoding="LATIN1") as conn:
        rows = conn.execute("SELECT 'café', id_number, id FROM customers WHERE id_number IS NOT NULL "
                            "ORDER BY id LIMIT 3").fetchall()
        conn.execute("SET client_encoding = 'UTF8'")
        again = conn.execute("SELECT '王', id_number FROM customers ORDER BY id LIMIT 1").fetchone()
    assert rows and all(r[0] == "café" for r in rows) and not leaked(rows), rows
    assert again[0] == "王" and not leaked([again])


@pytest.mark.parametrize("user", RESTRICTED)
@pytest.mark.parametrize("setting, words", [
    ("client_encoding = 'SJIS'", "the client encoding SJIS is not one pgveil reads"),
    ("search_path = public, pg_catalog", "the server reports a search_path pgveil cannot follow"),
    ("standard_conforming_strings = off", "the server reports standard_conforming_strings off"),
])
def test_server_parameters_pgveil_cannot_follow_fail_closed(pg, veil, user, setting, words):
    pg.psql(f"ALTER ROLE {user} SET {setting}")
    try:
        with psycopg.connect(veil.dsn(user, PASSWORD)) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=words):
                conn.execute("SELECT count(*) FROM products")
    finally:
        pg.psql(f"ALTER ROLE {user} RESET {setting.split(' ')[0]}")


@pytest.mark.parametrize("user", RESTRICTED)
def test_asyncpg_server_settings_outside_the_allow_list_are_refused_at_connect(veil, user):
    async def run():
        conn = await asyncpg.connect(veil.dsn(user, PASSWORD), server_settings={"cpu_operator_cost": "0"})
        await conn.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="changing cpu_operator_cost"):
        asyncio.run(run())
