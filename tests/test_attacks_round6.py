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
- casts a type's owner declared (``CREATE CAST (mood AS text) WITH FUNCTION f``): ``lower(m)``
  or ``m::text`` for a column ``m`` of type ``mood`` runs ``f``.

Each runs the user's function as the client's role: it reads any column in clear (a leak for a
restricted tier), and it may write while strict audit sends the statement as "proven read-only"
before its record is durable.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from conftest import TIER_PASSWORD, RULES, run_psql, start_with_rules
from proxy.catalog import load_catalog
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

    async def read():
        conn = await asyncpg.connect(pg.dsn(database="rev6"))
        try:
            return await load_catalog(conn)
        finally:
            await conn.close()
    catalog = asyncio.run(read())
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


def test_a_restricted_tier_cannot_reach_a_users_function_by_attribute_notation(pg, tier_users, tmp_path):
    """``o.id_numbers`` is ``id_numbers(o)``: orders has no such column.  The production tier
    (orders and products, no personal data) read every ID number in clear."""
    id_number = _clear_id_number(pg)
    pg.psql("CREATE FUNCTION public.id_numbers(public.orders) RETURNS text LANGUAGE sql "
            "AS $$ SELECT string_agg(id_number, ',') FROM public.customers $$", "crm")
    proxy = start_with_rules(pg, tmp_path / "crm.yaml", RULES.read_text())
    try:
        for sql in ("SELECT o.id_numbers\n  FROM orders o -- attribute notation\n LIMIT 1",
                    "SELECT (o).id_numbers FROM orders AS o LIMIT 1"):
            out = run_psql(pg.bin_dir / "psql", proxy, "-v", "VERBOSITY=verbose", "-Atc", sql, user="prod_wang", password=TIER_PASSWORD)
            assert id_number not in out.stdout + out.stderr, f"an ID number read in clear: {sql}"
            assert out.returncode != 0 and "42501" in out.stderr, out.stderr
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
        for sql in ("SELECT o.quantity LIKE 'x'::text\n  FROM orders o -- integer ~~ text\n LIMIT 1",
                    "SELECT o.id FROM orders o\n WHERE o.quantity IN ('x'::text)"):
            out = run_psql(pg.bin_dir / "psql", proxy, "-v", "VERBOSITY=verbose", "-Atc", sql, user="prod_wang", password=TIER_PASSWORD)
            assert id_number not in out.stdout + out.stderr, f"an ID number read in clear: {sql}"
            assert out.returncode != 0 and "42501" in out.stderr, out.stderr
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
        for sql in ("SELECT lower(f.m)\n  FROM rev6_feel f -- an implicit cast to text", "SELECT m::text FROM rev6_feel",
                    "SELECT CAST(m AS text) AS m FROM rev6_feel"):
            out = run_psql(pg.bin_dir / "psql", proxy, "-v", "VERBOSITY=verbose", "-Atc", sql, user="sales_li",
                           password=TIER_PASSWORD)
            assert id_number not in out.stdout + out.stderr, f"an ID number read in clear: {sql}"
            assert out.returncode != 0 and "42501" in out.stderr, out.stderr
        out = run_psql(pg.bin_dir / "psql", proxy, "-Atc", "SELECT id FROM orders ORDER BY id LIMIT 1", user="sales_li",
                       password=TIER_PASSWORD)
        assert out.returncode == 0 and out.stdout.strip() == "1", "relations without such a column are read as before"
    finally:
        proxy.stop()
        pg.psql("DROP TABLE public.rev6_feel; DROP CAST (public.rev6_mood AS text);"
                "DROP FUNCTION public.rev6_mood_text(public.rev6_mood); DROP TYPE public.rev6_mood", "crm")
