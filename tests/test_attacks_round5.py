"""Round 5 of the attacks (helper "rev"): strict audit's "proven read-only" door (issue 17,
proxy/session/readonly.py) and the policy's "built-in functions only" door, each against the
real PostgreSQL the tests start.

A statement is proven read-only by its words: the functions it calls are known by *name*
(``md5``, ``lower``, ``count``), operators by their spelling (``+``, ``=``), casts by the type
after ``::``.  PostgreSQL resolves none of these by name alone:

- ``SELECT md5(1)``: there is no ``pg_catalog.md5(integer)``, so a ``public.md5(integer)``
  (anyone's who may create in public, or a migration's) is the exact match and runs;
- ``SELECT "COUNT"(1)``: a quoted name is not folded, ``"COUNT"`` is not ``count``;
- ``SELECT CAST(1 AS d)``, ``SELECT d '1'``: a domain's CHECK may call any function, and only
  the ``::`` spelling of a cast is checked;
- ``SELECT 'a'::text + 'b'::text``: there is no built-in ``text + text``, a user's is found.

Each runs a function that writes, in a statement sent at once, before its record is durable.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import TIER_PASSWORD, RULES, live_catalog, run_psql, start_with_rules
from proxy.normalize import normalize
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

# each runs public.note() (which writes) in PostgreSQL, given the objects of SIDE_EFFECTS
WRITES_UNDER_A_READ = {
    "SELECT md5(1)": "md5(integer)",
    "SELECT CAST(1 AS d)": "domain d",
    "SELECT 'a'::text + 'b'::text": "operator text + text",
    "SELECT \u00f1lower('x')": "nlower",  # readonly.py's tokens: "\u00f1" then "lower(", a known name
}
SIDE_EFFECTS = """
CREATE TABLE side(what text);
CREATE TABLE customers(id integer, id_number text);
INSERT INTO customers VALUES (1, '110101199003071234');
CREATE FUNCTION public.note(what text) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO side VALUES (what); SELECT true $$;
CREATE FUNCTION public.md5(integer) RETURNS text LANGUAGE sql AS $$ SELECT public.note('md5(integer)')::text $$;
CREATE FUNCTION public."COUNT"(integer) RETURNS int LANGUAGE sql AS $$ SELECT public.note('COUNT(integer)')::int $$;
CREATE FUNCTION public.\u00f1lower(text) RETURNS text LANGUAGE sql AS $$ SELECT public.note('nlower')::text $$;
CREATE DOMAIN public.d AS integer CHECK (public.note('domain d'));
CREATE FUNCTION public.tplus(text, text) RETURNS text LANGUAGE sql
    AS $$ SELECT public.note('operator text + text')::text $$;
CREATE OPERATOR public.+ (LEFTARG = text, RIGHTARG = text, FUNCTION = public.tplus);
"""


@pytest.fixture(scope="module")
def side_db(pg):
    """A database of its own (the session's crm is shared) holding a user's function, domain
    and operator spelled like PostgreSQL's own."""
    pg.psql("CREATE DATABASE rev5")
    pg.psql(SIDE_EFFECTS, "rev5")

    catalog = live_catalog(pg, "rev5")
    yield pg, catalog, Engine(load_rules(RULES_TEXT), catalog)
    pg.psql("DROP DATABASE rev5 WITH (FORCE)")


@pytest.mark.parametrize("sql", sorted(WRITES_UNDER_A_READ))
def test_a_statement_that_runs_a_users_function_is_not_proven_read_only(side_db, sql):
    """The catalog is read from the database, as the proxy reads it."""
    side_db, catalog, engine = side_db
    wrote = []
    for tier in ("sales", "dba"):
        decision = engine.decide(sql, engine.rules.tier(tier), ("public",), "a", None)
        if decision.refused:
            continue
        side_db.psql("TRUNCATE side", "rev5")
        side_db.psql(decision.sql, "rev5")  # the text the proxy sends
        if WRITES_UNDER_A_READ[sql] in side_db.psql("SELECT what FROM side", "rev5"):
            wrote.append(tier)
            assert not proven_read_only(decision.normalized or normalize(sql), decision, catalog, None), (tier, sql)
    assert wrote, "the scene: PostgreSQL ran the user's function for the text some tier sends"


def test_a_restricted_tier_cannot_reach_a_users_overload_of_a_builtin_name(pg, tier_users, tmp_path):
    """The policy lets restricted tiers call built-in functions only, by name: ``md5(1)`` is
    taken for pg_catalog's md5, but PostgreSQL runs ``public.md5(integer)`` (the exact match),
    as the client's role, so it reads any column in clear."""
    phone = pg.psql("SELECT phone FROM customers WHERE phone IS NOT NULL ORDER BY id LIMIT 1", "crm").strip()
    pg.psql("CREATE FUNCTION public.md5(integer) RETURNS text LANGUAGE sql "
            "AS $$ SELECT string_agg(phone, ',') FROM public.customers $$;"
            "CREATE FUNCTION public.phones(text, text) RETURNS text LANGUAGE sql "
            "AS $$ SELECT string_agg(phone, ',') FROM public.customers $$;"
            "CREATE OPERATOR public.+ (LEFTARG = text, RIGHTARG = text, FUNCTION = public.phones)", "crm")
    proxy = start_with_rules(pg, tmp_path / "crm.yaml", RULES.read_text())
    try:
        for sql in ("SELECT md5(1)", "SELECT\n  ''::text + ''::text -- an operator"):
            out = run_psql(pg.bin_dir / "psql", proxy, "-v", "VERBOSITY=verbose", "-Atc", sql, user="admin_chen", password=TIER_PASSWORD)
            assert phone not in out.stdout, f"a masked phone read in clear through a user's object: {sql}"
            assert out.returncode != 0 and "42501" in out.stderr, out.stderr
    finally:
        proxy.stop()
        pg.psql("DROP OPERATOR public.+ (text, text); DROP FUNCTION public.phones(text, text);"
                "DROP FUNCTION public.md5(integer)", "crm")


def test_a_qualified_name_the_relation_lacks_keeps_the_masking_subquery(pg, tier_users, tmp_path):
    """``c.quantity`` where customers has no column quantity is PostgreSQL's attribute notation
    for ``quantity(c)``: a function of the whole row.  ``quantity`` is a column the catalog knows
    (of orders, also in the statement), so the relation was sent as itself (issue 17's shortcut),
    and a user's ``quantity(customers)`` read the row in clear."""
    phone = pg.psql("SELECT phone FROM customers WHERE phone IS NOT NULL ORDER BY id LIMIT 1", "crm").strip()
    pg.psql("CREATE FUNCTION public.quantity(c public.customers) RETURNS text LANGUAGE sql "
            "AS $$ SELECT c.phone $$", "crm")
    proxy = start_with_rules(pg, tmp_path / "crm.yaml", RULES.read_text())
    try:
        sql = ("SELECT c.quantity\n  FROM customers c\n  JOIN orders o ON o.customer_id = c.id -- attribute notation\n"
               " ORDER BY c.id")
        out = run_psql(pg.bin_dir / "psql", proxy, "-Atc", sql, user="admin_chen", password=TIER_PASSWORD)
        assert phone not in out.stdout, "a masked phone read in clear through c.quantity"
    finally:
        proxy.stop()
        pg.psql("DROP FUNCTION public.quantity(public.customers)", "crm")


# ----------------------------------------------------------------------------- a proof taken at Parse, used later
def _dba_session():
    """A session of an all-clear tier (which may put public before pg_catalog), strict audit."""
    import playbook
    from proxy.session import Session, SessionConfig
    rules = playbook.RULES.replace("identities:\n", "  dba:\n    see: {\"*\": clear}\n    statements: [read, write, "
                                   "session, ddl, admin]\nidentities:\n  - {user: dba_sun, tier: dba}\n")
    s = Session(SessionConfig(engine=Engine(load_rules(rules), playbook.CATALOG), clock=lambda: playbook.T0,
                              audit=True), ("10.1.2.3", 5000))
    for event in (playbook.ClientData(playbook.startup("dba_sun")), playbook.UpstreamConnected(False),
                  playbook.ServerData(playbook.AUTH_OK + playbook.ready())):
        s.handle(event)
    return s


def test_a_statement_proven_read_only_at_parse_is_not_so_once_the_search_path_puts_public_first():
    """``lower('x')`` prepared under the default path is pg_catalog's; after ``SET search_path =
    public, pg_catalog`` PostgreSQL re-plans it and runs ``public.lower(text)`` if there is one.
    Its later execution was sent at once (answer_only), before its record was durable."""
    from proxy import codec
    from proxy.session import AuditDurable, ClientData, SendToServer, ServerData, WriteAudit
    from playbook import SYNC, complete, q, ready
    s = _dba_session()
    s.handle(ClientData(codec.encode(codec.Parse("s1", "SELECT lower('x')", ())) + SYNC))
    s.handle(AuditDurable(1))
    s.handle(ServerData(codec.encode(codec.ParseComplete()) + ready()))
    s.handle(ClientData(q("SET search_path = public, pg_catalog")))
    s.handle(AuditDurable(2))
    s.handle(ServerData(complete("SET") + codec.encode(codec.ParameterStatus("search_path", "public, pg_catalog"))
                        + ready()))
    commands = s.handle(ClientData(codec.encode(codec.Bind("", "s1", (), (), ())) + codec.encode(codec.Execute("", 0))
                                   + SYNC))
    audits = [c for c in commands if isinstance(c, WriteAudit) and c.durable]
    assert audits and not any(c.answer_only for c in audits), audits
    assert not [c for c in commands if isinstance(c, SendToServer)], "the execution waits for its record"


def test_a_statement_longer_than_its_recorded_text_is_not_proven_read_only():
    """The record keeps the normalised text up to 4,000 characters (and reads a prefix of a huge
    statement): what lies beyond was not read, so ``SELECT id, id, ... , nextval('s')`` was
    proven read-only by its first 4,000 characters and sent before its record was durable."""
    from proxy.session import ClientData, DecideApart, DecidedApart, SendToServer, WriteAudit
    from playbook import q
    for sql in ("SELECT " + ", ".join(["id"] * 1500) + ",\n  nextval('s') -- advances a sequence\n  FROM customers",
                "SELECT '" + "x" * 70_000 + "' AS pad, id, id, pg_advisory_lock(1) FROM customers"):
        s = _dba_session()
        commands = s.handle(ClientData(q(sql)))
        for apart in [c for c in commands if isinstance(c, DecideApart)]:  # a long text is decided apart
            decision = s.config.engine.decide(apart.sql, apart.tier, apart.search_path, apart.user, apart.access)
            commands += s.handle(DecidedApart(apart.key, decision))
        audits = [c for c in commands if isinstance(c, WriteAudit) and c.durable]
        assert audits and not any(c.answer_only for c in audits), sql[-60:]
        assert not [c for c in commands if isinstance(c, SendToServer)], "it waits for its record"


# ----------------------------------------------------------------------------- the console under strict audit
class _Journal:
    """An audit writer in strict mode whose records become durable only when the test says so."""

    mode = "strict"

    def __init__(self) -> None:
        self.records, self.waiting = [], []

    def submit(self, record, on_durable=None) -> None:
        self.records.append(record)
        if on_durable is not None:
            self.waiting.append(on_durable)


class _Link:
    def __init__(self, session) -> None:
        self.session, self.failed = session, []

    def dispatch(self, handler, *args) -> None:
        self.failed.append(args)


def _console(journal, links=()):
    from types import SimpleNamespace
    from proxy.console_server import ConsoleConnection
    proxy = SimpleNamespace(engine=None, audit=journal, links=list(links))
    writer = SimpleNamespace(get_extra_info=lambda name: ("127.0.0.1", 5000))
    conn = ConsoleConnection(proxy, None, writer)
    conn.user = "it_zhou"
    return conn


def test_a_console_kill_waits_for_its_durable_record_under_strict_audit():
    """Strict audit: nothing is changed without a durable record.  KILL ended the session while its
    record was only queued; now it waits, and a journal that fails refuses it (58030)."""
    from types import SimpleNamespace
    from proxy.console import ConsoleError

    async def scene():
        journal = _Journal()
        link = _Link(SimpleNamespace(id="abc123", fail=None))
        conn = _console(journal, [link])
        kill = asyncio.ensure_future(conn._run("KILL", "abc123", "simple"))
        await asyncio.sleep(0.05)
        assert journal.records and journal.records[0]["sql"] == "KILL abc123"
        assert not link.failed and not kill.done(), "the session was ended before the record was durable"
        journal.waiting.pop(0)(None)
        await asyncio.wait_for(kill, 2)
        assert link.failed, "once durable, the KILL is carried out"

        journal = _Journal()
        link = _Link(SimpleNamespace(id="abc123", fail=None))
        conn = _console(journal, [link])
        kill = asyncio.ensure_future(conn._run("KILL", "abc123", "simple"))
        await asyncio.sleep(0.05)
        journal.waiting.pop(0)(OSError("the disk is gone"))
        with pytest.raises(ConsoleError) as refused:
            await asyncio.wait_for(kill, 2)
        assert refused.value.sqlstate == "58030" and not link.failed
    asyncio.run(scene())


def test_a_name_with_non_ascii_letters_is_not_read_as_the_known_name_it_ends_with():
    """With a catalog that does not know public.ñlower yet (created since it was read),
    readonly.py's ASCII tokens saw ``ñ`` then ``lower(``, a known read-only function."""
    from proxy.catalog import Catalog
    catalog = Catalog.from_spec({"public.customers": {"id": "integer", "id_number": "text"}})
    engine = Engine(load_rules(RULES_TEXT), catalog)
    for sql in ("SELECT \u00f1lower('x')", "SELECT lower\u00f1('x')", "SELECT lower('x')"):
        decision = engine.decide(sql, engine.rules.tier("dba"), ("public",), "a", None)
        proven = proven_read_only(decision.normalized or normalize(sql), decision, catalog, None)
        assert proven == sql.isascii(), sql
