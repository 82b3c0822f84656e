"""Round 6 of the attacks (helper "rev"): a user's function that PostgreSQL runs although the
statement never spells its name.

Round 5 closed the doors where a user's function or operator is *spelled* like a built-in one
(``md5(1)``, ``'a'::text + 'b'::text``): proxy/shadowing.py refuses, for restricted tiers, a
statement whose text calls such a name, and strict audit's proof of "read-only" asks the same.
PostgreSQL also reaches functions by names that are not in the text:

- attribute notation: ``o.f`` (and ``(o).f``) is ``f(o)`` when ``f`` is not a column of ``o``;
- operators named by keywords: ``a LIKE b`` is ``a ~~ b``, ``a IN (b)`` is ``a = b``,
  ``a BETWEEN b AND c`` is ``a >= b AND a <= c``, ``CASE a WHEN b``, ``NULLIF``, ``IS DISTINCT
  FROM``, ``JOIN ... USING`` are ``=``;
- operators spelled with ``?`` (``<?>``, ``?-``): the normalised text writes each literal as
  ``?``, so the proof read ``1 <?> 2`` as ``? < ? > ?``, built-in ``<`` and ``>``;
- a default operator class's support function (a superuser's ``CREATE OPERATOR CLASS ...
  DEFAULT FOR TYPE pair``): ``ORDER BY p``, ``DISTINCT p`` run it;
- casts a type's owner declared (``CREATE CAST (mood AS text) WITH FUNCTION f``): ``lower(m)``
  or ``m::text`` for a column ``m`` of type ``mood`` runs ``f``.

Each runs the user's function as the client's role: it reads any column in clear (a leak for a
restricted tier), and it may write while strict audit sends the statement as "proven read-only"
before its record is durable.
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import pytest

from conftest import TIER_PASSWORD, RULES, live_catalog, run_psql, start_with_rules
from proxy.normalize import normalize
from proxy.pgcluster import ClusterError
from proxy.policy import Engine
from proxy.rules import load_rules
from proxy.session.readonly import proven_read_only

RULES_TEXT = """
version: 1
classes:
  id_number: {mask: {fn: partial, keep_first: 3, keep_last: 4}}
columns:
  public.customers.id_number: id_number
tiers:
  sales:
    see: {id_number: mask}
  dba:
    see: {"*": clear}
    statements: [read, write, ddl, copy, session, admin]
identities:
  - {user: a, tier: sales}
default: deny
"""

# statement -> what public.note() records when PostgreSQL runs the user's function for it
WRITES_UNDER_A_READ = {
    "SELECT c.attr FROM plain c": "attribute notation",
    "SELECT (c).attr\n  FROM plain c -- the row's attribute": "attribute notation",
    "SELECT id FROM plain WHERE id LIKE name": "operator ~~",
    "SELECT id FROM plain WHERE id NOT LIKE name": "operator !~~",
    "SELECT id FROM plain WHERE id IN (name)": "operator =",
    "SELECT id FROM plain WHERE CASE id WHEN name THEN true END": "operator =",
    "SELECT lower(f.m) FROM feel f": "cast",
    "SELECT id FROM pairs ORDER BY p": "comparison",
    "SELECT DISTINCT p FROM pairs": "comparison",
    "SELECT 1 <?> 2": "operator with ?",
    "SELECT 1 ?- 2 -- an operator": "operator with ?",
    "SELECT id, m::text\n  FROM feel /* an enum cast to text */": "cast",
    "SELECT id FROM plain WHERE NULLIF(id, name) IS NULL": "operator =",
    "SELECT id FROM plain WHERE id IS DISTINCT FROM name": "operator =",
    "SELECT id FROM plain WHERE id BETWEEN name AND name": "operator >=",
}
SIDE_EFFECTS = """
CREATE TABLE side(what text);
CREATE TABLE customers(id integer, id_number text);
CREATE TABLE plain(id integer, name text);
INSERT INTO customers VALUES (1, '110101199003071234');
INSERT INTO plain VALUES (1, 'a');
CREATE FUNCTION public.note(what text) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO side VALUES (what); SELECT true $$;
CREATE FUNCTION public.attr(plain) RETURNS text LANGUAGE sql AS $$ SELECT public.note('attribute notation')::text $$;
CREATE FUNCTION public.intlike(integer, text) RETURNS boolean LANGUAGE sql AS $$ SELECT public.note('operator ~~') $$;
CREATE OPERATOR public.~~ (LEFTARG = integer, RIGHTARG = text, FUNCTION = public.intlike);
CREATE FUNCTION public.intnotlike(integer, text) RETURNS boolean LANGUAGE sql
    AS $$ SELECT public.note('operator !~~') $$;
CREATE OPERATOR public.!~~ (LEFTARG = integer, RIGHTARG = text, FUNCTION = public.intnotlike);
CREATE FUNCTION public.inteq(integer, text) RETURNS boolean LANGUAGE sql AS $$ SELECT public.note('operator =') $$;
CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = text, FUNCTION = public.inteq);
CREATE FUNCTION public.intge(integer, text) RETURNS boolean LANGUAGE sql AS $$ SELECT public.note('operator >=') $$;
CREATE OPERATOR public.>= (LEFTARG = integer, RIGHTARG = text, FUNCTION = public.intge);
CREATE OPERATOR public.<= (LEFTARG = integer, RIGHTARG = text, FUNCTION = public.intge);
CREATE FUNCTION public.q(integer, integer) RETURNS boolean LANGUAGE sql AS $$ SELECT public.note('operator with ?') $$;
CREATE OPERATOR public.<?> (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.q);
CREATE OPERATOR public.?- (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.q);
CREATE TYPE pair AS (a int, b int);
CREATE TABLE pairs(id int, p pair);
INSERT INTO pairs VALUES (1, (1, 2)), (2, (2, 1));
CREATE FUNCTION pair_cmp(pair, pair) RETURNS int LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.note('comparison'); RETURN ($1).a - ($2).a; END $$;
CREATE FUNCTION pair_lt(pair, pair) RETURNS bool LANGUAGE sql AS $$ SELECT pair_cmp($1, $2) < 0 $$;
CREATE FUNCTION pair_eq(pair, pair) RETURNS bool LANGUAGE sql AS $$ SELECT pair_cmp($1, $2) = 0 $$;
CREATE OPERATOR public.< (LEFTARG = pair, RIGHTARG = pair, FUNCTION = pair_lt);
CREATE OPERATOR public.= (LEFTARG = pair, RIGHTARG = pair, FUNCTION = pair_eq);
CREATE OPERATOR CLASS pair_ops DEFAULT FOR TYPE pair USING btree
    AS OPERATOR 1 <, OPERATOR 3 =, FUNCTION 1 pair_cmp(pair, pair);
CREATE TYPE public.mood AS ENUM ('happy', 'sad');
CREATE TABLE feel(id integer, m mood);
INSERT INTO feel VALUES (1, 'happy');
CREATE FUNCTION public.mood_text(mood) RETURNS text LANGUAGE sql AS $$ SELECT public.note('cast')::text $$;
CREATE CAST (mood AS text) WITH FUNCTION public.mood_text(mood) AS IMPLICIT;
"""


@pytest.fixture(scope="module")
def side_db(pg):
    """A database of its own holding a user's function reached by attribute notation and
    operators reached by keywords."""
    pg.psql("CREATE DATABASE rev6")
    pg.psql(SIDE_EFFECTS, "rev6")

    catalog = live_catalog(pg, "rev6")
    yield pg, catalog, Engine(load_rules(RULES_TEXT), catalog)
    pg.psql("DROP DATABASE rev6 WITH (FORCE)")


@pytest.mark.parametrize("sql", sorted(WRITES_UNDER_A_READ))
def test_a_statement_that_reaches_a_users_function_without_naming_it_is_not_proven_read_only(side_db, sql):
    """The catalog is read from the database, as the proxy reads it; the text is the one the
    proxy sends."""
    side_db, catalog, engine = side_db
    wrote = []
    for tier in ("sales", "dba"):
        decision = engine.decide(sql, engine.rules.tier(tier), ("public",), "a", None)
        if decision.refused:
            continue
        side_db.psql("TRUNCATE side", "rev6")
        try:
            side_db.psql(decision.sql, "rev6")
        except ClusterError:
            continue  # (the sales tier's rewriting reads ``?`` as a parameter: 1 ?- 2 is sent as 1 ? -2)
        if WRITES_UNDER_A_READ[sql] in side_db.psql("SELECT what FROM side", "rev6"):
            wrote.append(tier)
            assert not proven_read_only(decision.normalized or normalize(sql), decision, catalog, None), (tier, sql)
    assert wrote, "the scene: PostgreSQL ran the user's function for the text some tier sends"


def _clear_id_number(pg) -> str:
    return pg.psql("SELECT id_number FROM customers WHERE id_number IS NOT NULL ORDER BY id LIMIT 1", "crm").strip()


def _assert_refused_without_leak(pg, proxy, user: str, id_number: str, *statements: str) -> None:
    """Each statement, sent by psql as ``user``, is refused (42501) and shows no ID number."""
    for sql in statements:
        out = run_psql(pg.bin_dir / "psql", proxy, "-v", "VERBOSITY=verbose", "-Atc", sql, user=user,
                       password=TIER_PASSWORD)
        assert id_number not in out.stdout + out.stderr, f"an ID number read in clear: {sql}"
        assert out.returncode != 0 and "42501" in out.stderr, out.stderr


def test_a_restricted_tier_cannot_reach_a_users_function_by_attribute_notation(pg, tier_users, tmp_path):
    """``o.id_numbers`` is ``id_numbers(o)``: orders has no such column.  The production tier
    (orders and products, no personal data) read every ID number in clear."""
    id_number = _clear_id_number(pg)
    pg.psql("CREATE FUNCTION public.id_numbers(public.orders) RETURNS text LANGUAGE sql "
            "AS $$ SELECT string_agg(id_number, ',') FROM public.customers $$", "crm")
    proxy = start_with_rules(pg, tmp_path / "crm.yaml", RULES.read_text())
    try:
        _assert_refused_without_leak(pg, proxy, "prod_wang", id_number,
                                     "SELECT o.id_numbers\n  FROM orders o -- attribute notation\n LIMIT 1",
                                     "SELECT (o).id_numbers FROM orders AS o LIMIT 1")
    finally:
        proxy.stop()
        pg.psql("DROP FUNCTION public.id_numbers(public.orders)", "crm")


def test_a_restricted_tier_cannot_reach_a_users_operator_through_a_keyword(pg, tier_users, tmp_path):
    """``quantity LIKE 'x'`` is ``quantity ~~ 'x'``: with no built-in ``integer ~~ text``, a
    user's is the one PostgreSQL runs; ``quantity IN ('x')`` is ``quantity = 'x'``.  The text
    has no ``~~`` or ``=`` for the round-5 check to see."""
    id_number = _clear_id_number(pg)
    pg.psql("CREATE FUNCTION public.ids_like(integer, text) RETURNS text LANGUAGE sql "
            "AS $$ SELECT string_agg(id_number, ',') FROM public.customers $$;"
            "CREATE OPERATOR public.~~ (LEFTARG = integer, RIGHTARG = text, FUNCTION = public.ids_like);"
            "CREATE FUNCTION public.ids_eq(integer, text) RETURNS boolean LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION '%', (SELECT string_agg(id_number, ',') FROM public.customers); END $$;"
            "CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = text, FUNCTION = public.ids_eq)", "crm")
    proxy = start_with_rules(pg, tmp_path / "crm.yaml", RULES.read_text())
    try:
        _assert_refused_without_leak(pg, proxy, "prod_wang", id_number,
                                     "SELECT o.quantity LIKE 'x'::text\n  FROM orders o -- integer ~~ text\n LIMIT 1",
                                     "SELECT o.id FROM orders o\n WHERE o.quantity IN ('x'::text)")
    finally:
        proxy.stop()
        pg.psql("DROP OPERATOR public.~~ (integer, text); DROP FUNCTION public.ids_like(integer, text);"
                "DROP OPERATOR public.= (integer, text); DROP FUNCTION public.ids_eq(integer, text)", "crm")


def test_a_restricted_tier_cannot_reach_a_users_cast_function(pg, tier_users, tmp_path):
    """A type's owner may declare its casts: ``CREATE CAST (mood AS text) WITH FUNCTION f AS
    IMPLICIT``.  ``lower(m)`` or ``m::text`` then runs ``f`` (as the client's role), and the text
    names neither ``f`` nor the type.  The sales tier (ID numbers masked) read them in clear."""
    id_number = _clear_id_number(pg)
    pg.psql("CREATE TYPE public.rev6_mood AS ENUM ('happy', 'sad');"
            "CREATE TABLE public.rev6_feel(id integer, m public.rev6_mood);"
            "INSERT INTO public.rev6_feel VALUES (1, 'happy');"
            "GRANT SELECT ON public.rev6_feel TO sales_li;"
            "CREATE FUNCTION public.rev6_mood_text(public.rev6_mood) RETURNS text LANGUAGE sql "
            "AS $$ SELECT string_agg(id_number, ',') FROM public.customers $$;"
            "CREATE CAST (public.rev6_mood AS text) WITH FUNCTION public.rev6_mood_text(public.rev6_mood) AS IMPLICIT",
            "crm")
    proxy = start_with_rules(pg, tmp_path / "crm.yaml", RULES.read_text())
    try:
        _assert_refused_without_leak(pg, proxy, "sales_li", id_number,
                                     "SELECT lower(f.m)\n  FROM rev6_feel f -- an implicit cast to text",
                                     "SELECT m::text FROM rev6_feel",
                                     "SELECT CAST(m AS text) AS m FROM rev6_feel")
        out = run_psql(pg.bin_dir / "psql", proxy, "-Atc", "SELECT id FROM orders ORDER BY id LIMIT 1", user="sales_li",
                       password=TIER_PASSWORD)
        assert out.returncode == 0 and out.stdout.strip() == "1", "relations without such a column are read as before"
    finally:
        proxy.stop()
        pg.psql("DROP TABLE public.rev6_feel; DROP CAST (public.rev6_mood AS text);"
                "DROP FUNCTION public.rev6_mood_text(public.rev6_mood); DROP TYPE public.rev6_mood", "crm")


def test_a_restricted_tier_cannot_sort_by_a_type_a_users_function_compares(side_db):
    """``ORDER BY p`` runs the default operator class's comparison function of p's type, as the
    client's role (so it may read any column in clear): refused for a restricted tier, as a
    call of that function would be; other relations are read as before."""
    _, _, engine = side_db
    for sql in ("SELECT id FROM pairs ORDER BY p", "SELECT id\n  FROM pairs -- grouped\n GROUP BY p, id"):
        decision = engine.decide(sql, engine.rules.tier("sales"), ("public",), "a", None)
        assert decision.refused and decision.sqlstate == "42501" and "pair_" in decision.reason, (sql, decision)
    assert not engine.decide("SELECT id FROM plain ORDER BY id", engine.rules.tier("sales"), ("public",), "a", None).refused


def test_a_question_mark_operator_is_not_proven_after_a_literal_of_the_same_shape():
    """``SELECT 1 <'x'> 2`` and ``SELECT 1 <?> 2`` have the same normalised text (``SELECT ? <?> ?``):
    the first holds built-in ``<`` and ``>`` only, the second a user's ``<?>``.  A proof
    remembered by the normalised text (branch pa's worker-wide proof cache) must not carry over:
    the second statement waits for its record (no answer_only, nothing sent)."""
    from playbook import q
    from proxy.session import ClientData, SendToServer, WriteAudit
    s = _dba_session()
    s.handle(ClientData(q("SELECT 1 <'x'> 2")))  # (the proof of this one is not asserted: it may be cached)
    s = _dba_session()  # a new session of the same worker
    commands = s.handle(ClientData(q("SELECT 1 <?> 2")))
    audits = [c for c in commands if isinstance(c, WriteAudit) and c.durable]
    assert audits and not any(c.answer_only for c in audits)
    assert not [c for c in commands if isinstance(c, SendToServer)], "it waits for its record"


def _dba_session():
    """A session of an all-clear tier under strict audit (test_attacks_round5's)."""
    from test_attacks_round5 import _dba_session as dba_session
    return dba_session()



# ----------------------------------------------------------------------------- stalls
MANY_TABLES = "\nUNION ALL\n".join(["TABLE customers"] * 74) + "\nLIMIT 1 -- {}"  # 1.9 KB, 74 relations read


def test_reading_a_masking_tiers_sent_text_for_users_objects_is_cheap():
    """Any function of the database's users (here one no statement names) made the policy and
    strict audit's proof tokenize the *sent* text with sqlglot to look for users' objects.  A
    masking tier's sent text repeats the masking subquery per relation read: ``TABLE customers``
    74 times (1.9 KB, decided on the event loop) is sent as 120 KB, 0.2-0.5 s of tokenizing on
    the loop, twice (the policy, then the proof).  A substring search for the few names first."""
    from workcount import calls
    from proxy import shadowing
    from proxy.catalog import Catalog
    from conftest import RULES as CRM_RULES
    catalog = Catalog.from_spec({"public.customers": {"id": "integer", "name": "text", "phone": "text",
                                                      "id_number": "character(18)", "address": "text"}})
    catalog.user_functions = frozenset({"rev6_unrelated"})
    engine = Engine(load_rules(CRM_RULES.read_text()), catalog)
    decision = engine.decide(MANY_TABLES, engine.rules.tier("admin_office"), ("public",), "admin_chen", None)
    assert decision.verdict == "rewrite" and len(decision.sql) > 80_000 and len(MANY_TABLES) < 2048
    assert calls(shadowing.users_objects, decision.sql, catalog) < 200
    assert calls(proven_read_only, decision.normalized, decision, catalog, None) < 2000
    # what is looked for is still found
    catalog.user_functions = frozenset({"rev6_unrelated", "repeat"})
    assert shadowing.users_objects(decision.sql + ", repeat('x', 2)", catalog)


def test_a_short_statement_reading_many_relations_does_not_hold_the_worker(pg, tier_users, tmp_path):
    """A statement shorter than proxy.limits.APART_BYTES is decided on the event loop; but a
    masking tier's decision writes a masking subquery per relation read, so ``TABLE customers``
    74 times (1.9 KB) costs 50-170 ms of rewriting there (120 KB sent), and with any function of
    the database's users, 0.5-0.8 s more reading that text (the commit before): another
    session's ``SELECT 1`` waited 847 ms, then 227-267 ms.  Such a text is decided apart."""
    sql = MANY_TABLES
    pg.psql("CREATE FUNCTION public.rev6_unrelated() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", "crm")
    proxy = start_with_rules(pg, tmp_path / "crm.yaml", RULES.read_text(), "--audit-mode", "strict")

    async def scene() -> float:
        costly = await asyncpg.connect(proxy.dsn("admin_chen", TIER_PASSWORD), ssl=False)
        other = await asyncpg.connect(proxy.dsn("dba_sun", TIER_PASSWORD), ssl=False)
        waits, done = [], asyncio.Event()

        async def ping():
            while not done.is_set():
                sent = time.monotonic()
                assert await other.fetchval("SELECT 1") == 1
                waits.append(time.monotonic() - sent)
                await asyncio.sleep(0.002)

        pinger = asyncio.create_task(ping())
        await asyncio.sleep(0.1)
        waits.clear()
        started = time.monotonic()
        for i in range(6):  # distinct texts: each decided (and proven) anew
            await costly.fetch(sql.format(i))
        phase = time.monotonic() - started
        done.set()
        await pinger
        await costly.close()
        await other.close()
        return phase, sorted(waits)

    try:
        phase, waits = asyncio.run(scene())
        held = sum(w for w in waits if w > 0.05)  # time the other session spent in waits over 50 ms
        print(f"SELECT 1 beside: {len(waits)} answers in {phase:.2f} s, worst {waits[-1] * 1000:.0f} ms, "
              f"{held:.2f} s in waits over 50 ms")
        # (a loaded machine's pauses make a few long waits; a worker held by the statements, most of them)
        assert held < phase / 2, f"another session's SELECT 1 was held {held:.2f} s of {phase:.2f} s"
    finally:
        proxy.stop()
        pg.psql("DROP FUNCTION public.rev6_unrelated()", "crm")


# ----------------------------------------------------------------------------- a Parse's parameter types
def test_a_parameter_typed_as_a_checked_domain_is_not_proven_read_only_nor_allowed(pg, tier_users, tmp_path):
    """A Parse names its parameters' types by oid: ``SELECT $1`` with the type of a domain whose
    CHECK calls a function runs that function at Bind, with nothing of it in the text (round 5
    closed ``CAST(1 AS d)``).  Strict audit proved ``SELECT $1`` read-only and sent it before
    its record was durable while the CHECK wrote; a restricted tier ran a user's function."""
    import psycopg
    from psycopg.adapt import Dumper
    pg.psql("CREATE TABLE public.rev6_side(what text); GRANT INSERT, SELECT ON public.rev6_side TO PUBLIC;"
            "CREATE FUNCTION public.rev6_note(v text) RETURNS boolean LANGUAGE sql "
            "AS $$ INSERT INTO public.rev6_side VALUES (v); SELECT true $$;"
            "CREATE DOMAIN public.rev6_d AS text CHECK (public.rev6_note(VALUE))", "crm")
    oid = int(pg.psql("SELECT 'public.rev6_d'::regtype::oid", "crm"))
    proxy = start_with_rules(pg, tmp_path / "crm.yaml", RULES.read_text(), "--audit-mode", "strict")

    class Checked(str):
        pass

    class CheckedDumper(Dumper):
        def dump(self, obj):
            return str(obj).encode()
    CheckedDumper.oid = oid

    def run(user: str):
        with psycopg.connect(f"host=127.0.0.1 port={proxy.port} user={user} password={TIER_PASSWORD} dbname=crm "
                             f"sslmode=disable", autocommit=True) as conn:
            conn.adapters.register_dumper(Checked, CheckedDumper)
            return conn.execute("SELECT %s AS v", [Checked(f"{user} ran the check")]).fetchall()

    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            run("sales_li")
        assert "sales_li" not in pg.psql("SELECT what FROM public.rev6_side", "crm")
        assert run("dba_sun") == [("dba_sun ran the check",)]  # an all-clear tier's runs, recorded first:
        assert "dba_sun ran the check" in pg.psql("SELECT what FROM public.rev6_side", "crm")
        records = [json.loads(line) for path in sorted(proxy.audit_dir.glob("audit-*.jsonl"))
                   for line in path.read_text().splitlines() if line.strip()]
        assert any(r.get("type") == "statement" and r.get("user") == "dba_sun" and r.get("sql") == "SELECT $1 AS v"
                   for r in records), [r.get("sql") for r in records if r.get("user") == "dba_sun"]
    finally:
        proxy.stop()
        pg.psql("DROP DOMAIN public.rev6_d; DROP FUNCTION public.rev6_note(text); DROP TABLE public.rev6_side", "crm")


def test_a_parse_with_a_checked_parameter_type_is_not_sent_before_its_record_is_durable():
    """The session level: a Parse of ``SELECT $1`` whose parameter type runs a user's check waits
    for its durable record (no answer_only, nothing sent), as ``SELECT $1::text`` does not."""
    from proxy import codec
    from proxy.session import ClientData, SendToServer, WriteAudit
    from playbook import SYNC
    for types, proven in (((90001,), False), ((25,), True)):
        s = _dba_session()
        s.config.engine.catalog.checked_types = frozenset({90001})
        commands = s.handle(ClientData(codec.encode(codec.Parse("", "SELECT $1", types))
                                       + codec.encode(codec.Bind("", "", (), (b"x",), ()))
                                       + codec.encode(codec.Execute("", 0)) + SYNC))
        audits = [c for c in commands if isinstance(c, WriteAudit) and c.durable]
        assert audits and any(c.answer_only for c in audits) == proven, types
        assert bool([c for c in commands if isinstance(c, SendToServer)]) == proven, types


# ----------------------------------------------------------------------------- audit records read back
def _error() -> bytes:
    from proxy import codec
    return codec.encode(codec.ErrorResponse(((b'S', 'ERROR'), (b'C', '42501'), (b'M', 'refused'))))


def test_a_repeated_query_read_back_after_many_refusals_still_names_what_it_read():
    """(Guards branch pa's short records.)  A repeated simple Query may be recorded in short
    (``same_as``: the id of the full record it repeats, at most a minute old), the readers putting
    the full record's fields back from the session's newest 16,384 full Query records.  Refusals
    are always recorded in full and counted among those: 16,400 refusals pushed the full record
    out of the readers' memory while the recorder still referred to it, and the repeat reached
    search and usage without its text, relations or columns."""
    from proxy.audit import executions
    from proxy.session import ClientData, ServerData, SessionConfig, Session, WriteAudit
    from playbook import CATALOG, RULES as PLAYBOOK_RULES, T0, AUTH_OK, complete, q, ready, startup, UpstreamConnected
    s = Session(SessionConfig(engine=Engine(load_rules(PLAYBOOK_RULES), CATALOG), clock=lambda: T0,
                              audit=True, audit_strict=False), ("10.1.2.3", 5000))
    records = []

    def run(sql, answer):
        for c in s.handle(ClientData(q(sql))):
            if isinstance(c, WriteAudit):
                records.append(c.record)
        for c in s.handle(ServerData(answer + ready())):
            if isinstance(c, WriteAudit):
                records.append(c.record)

    for event in (ClientData(startup("sales_li")), UpstreamConnected(False), ServerData(AUTH_OK + ready())):
        s.handle(event)
    run("SELECT id_number FROM customers", complete("SELECT 1"))
    for i in range(16_400):
        run(f"DELETE FROM customers WHERE id = {i} -- refused: sales reads only", _error())
    run("SELECT id_number FROM customers", complete("SELECT 1"))
    statements = [r for r in executions.expand(records) if r.get("type") == "statement"]
    last = statements[-1]
    assert last.get("relations") == ["public.customers"] and last.get("sql"), last


# ----------------------------------------------------------------------------- standard_conforming_strings off
SMUGGLED = "SELECT 'a\\' || ' , nextval($$rev6_seq$$) -- '"  # scs off: the server runs nextval


def test_an_all_clear_tiers_text_under_nonstandard_strings_is_not_proven_read_only():
    """An all-clear tier may turn standard_conforming_strings off (restricted tiers are refused).
    pgveil reads ``'a\\'`` as a whole literal, the server as an open one ending at the next quote:
    ``SELECT 'a\\' || ' , nextval(...) -- '`` was normalised to ``SELECT ? || ?`` and proven
    read-only, sent before its record was durable while the server advanced a sequence."""
    from proxy import codec
    from proxy.session import AuditDurable, ClientData, SendToServer, ServerData, WriteAudit
    from playbook import complete, q, ready
    s = _dba_session()
    s.handle(ClientData(q("SET standard_conforming_strings = off")))
    s.handle(AuditDurable(1))
    s.handle(ServerData(complete("SET") + codec.encode(codec.ParameterStatus("standard_conforming_strings", "off"))
                        + ready()))
    commands = s.handle(ClientData(q(SMUGGLED)))
    audits = [c for c in commands if isinstance(c, WriteAudit) and c.durable]
    assert audits and not any(c.answer_only for c in audits) and audits[0].record["unparsed"] is True
    assert not [c for c in commands if isinstance(c, SendToServer)], "it waits for its record"


def test_an_all_clear_tiers_record_under_nonstandard_strings_says_it_was_not_read(pg, tier_users, tmp_path):
    """Live: the server runs what the record's text (``SELECT ? || ?``) does not show; the record
    says so (unparsed), and the statement waited for it."""
    pg.psql("CREATE SEQUENCE public.rev6_seq; GRANT USAGE ON SEQUENCE public.rev6_seq TO dba_sun", "crm")
    proxy = start_with_rules(pg, tmp_path / "crm.yaml", RULES.read_text(), "--audit-mode", "strict")
    try:
        out = run_psql(pg.bin_dir / "psql", proxy, "-Atc", "SET standard_conforming_strings = off", "-c", SMUGGLED,
                       user="dba_sun", password=TIER_PASSWORD)
        assert out.returncode == 0, out.stderr
        assert pg.psql("SELECT last_value FROM public.rev6_seq", "crm").strip() == "1", "the scene: nextval ran"
        proxy.stop()
        records = [json.loads(line) for path in sorted(proxy.audit_dir.glob("audit-*.jsonl"))
                   for line in path.read_text().splitlines() if line.strip()]
        ran = [r for r in records if r.get("type") == "statement" and r.get("user") == "dba_sun"
               and "||" in (r.get("sql") or "")]
        assert ran and ran[0]["unparsed"] is True, ran
    finally:
        proxy.stop()
        pg.psql("DROP SEQUENCE public.rev6_seq", "crm")


def test_a_text_sent_before_the_server_reports_nonstandard_strings_is_not_proven_read_only():
    """The same, pipelined: the Query after ``SET standard_conforming_strings = off`` is decided
    before the server's report arrives (and a Query holding both is one text)."""
    from proxy.session import ClientData, SendToServer, WriteAudit
    from playbook import q
    for wire in (q("SET standard_conforming_strings = off") + q(SMUGGLED),
                 q("SET standard_conforming_strings = off;\n" + SMUGGLED)):
        s = _dba_session()
        commands = s.handle(ClientData(wire))
        audits = [c for c in commands if isinstance(c, WriteAudit) and c.durable]
        assert audits and not any(c.answer_only for c in audits)
        assert not [c for c in commands if isinstance(c, SendToServer)]
