"""The session's effective access as one value (pure: no network, a fake clock)."""

from datetime import datetime, timedelta, timezone

from proxy import codec
from proxy.access import Access, resolve
from proxy.catalog import Catalog
from proxy.policy import Engine
from proxy.rules import load_rules
from proxy.session.events import AuditDurable, ClientData, ServerData, UpstreamConnected
from proxy.session import Session, SessionConfig, SendToServer

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
RULES = f"""
version: 1
classes:
  id_number: {{mask: {{fn: partial, keep_first: 3, keep_last: 4}}}}
columns:
  public.customers.id_number: id_number
tiers:
  sales:
    see: {{id_number: mask}}
  lawyers:
    see: {{id_number: clear}}
identities:
  - {{user: sales_li, tier: sales, networks: [10.0.0.0/8]}}
  - {{user: sales_li, tier: lawyers}}
grants:
  - {{user: sales_li, see: {{id_number: clear}}, from: "{(T0 + timedelta(seconds=10)).isoformat()}",
     until: "{(T0 + timedelta(seconds=20)).isoformat()}", reason: CS-1, approved_by: [li_na]}}
default: deny
"""
CATALOG = Catalog.from_spec({"public.customers": {"id": "integer", "id_number": "text"}})
STARTUP = codec.StartupMessage(codec.PROTOCOL_3_0, (("user", "sales_li"), ("database", "crm")))
READY = codec.encode(codec.ReadyForQuery(b"I"))


def test_a_grant_begins_and_ends_in_the_access_with_its_boundaries():
    rules = load_rules(RULES)
    before = resolve(rules, "sales_li", frozenset(), "10.1.2.3", T0, None)
    during = resolve(rules, "sales_li", frozenset(), "10.1.2.3", T0 + timedelta(seconds=12), None)
    after = resolve(rules, "sales_li", frozenset(), "10.1.2.3", T0 + timedelta(seconds=20), None)
    assert before.access.grants == () and during.access.grants == (1,) and after.access.grants == ()
    assert before.valid_until == T0 + timedelta(seconds=10) and during.valid_until == T0 + timedelta(seconds=20)
    assert after.valid_until is None
    assert during.tier.action("id_number").action == "clear" and after.tier.action("id_number").action == "mask"
    assert during.access.narrowed_to(after.access) and not before.access.narrowed_to(during.access)


def test_the_network_match_is_part_of_the_access():
    rules = load_rules(RULES)
    inside = resolve(rules, "sales_li", frozenset(), "10.1.2.3", T0, None).access
    outside = resolve(rules, "sales_li", frozenset(), "192.0.2.1", T0, None).access
    assert (inside.tier, inside.rule) == ("sales", 0) and (outside.tier, outside.rule) == ("lawyers", 1)
    assert inside.narrowed_to(outside) and outside.narrowed_to(inside)


def test_purpose_declared_widens_and_cleared_narrows():
    a = Access("v1", "sales", (1,), None, 0)
    assert not a.narrowed_to(a.with_purpose("T-1")) and a.with_purpose("T-1").narrowed_to(a)
    assert a.with_purpose("T-1").narrowed_to(a.with_purpose("T-2"))
    assert a.narrowed_to(Access("v2", "sales", (1,), None, 0))  # a reload: decide again
    assert not a.narrowed_to(Access("v1", "sales", (1, 2), None, 0))


def test_the_decision_cache_is_keyed_by_the_access_not_the_tier_name():
    engine = Engine(load_rules(RULES), CATALOG)
    tier = engine.rules.tier("sales")
    sql = "SELECT id_number FROM customers"
    engine.decide(sql, tier, ("public",), "sales_li", Access("v", "sales", (), None, 0))
    engine.decide(sql, tier, ("public",), "sales_li", Access("v", "sales", (), "T-1", 0))
    engine.decide(sql, tier, ("public",), "sales_li", Access("v", "sales", (), None, 0))
    assert (engine.cache.misses, engine.cache.hits) == (2, 1)


def session_at(clock) -> tuple[Session, Engine]:
    engine = Engine(load_rules(RULES), CATALOG)
    s = Session(SessionConfig(engine=engine, clock=clock), peer=("10.1.2.3", 5000))
    s.handle(ClientData(codec.encode_startup(STARTUP)))
    s.handle(UpstreamConnected(False))
    s.handle(ServerData(codec.encode(codec.Authentication(0, b"")) + READY))
    return s, engine


def sent(commands) -> str:
    return b"".join(c.data for c in commands if isinstance(c, SendToServer)).decode("utf-8", "replace")


def test_each_statement_is_decided_under_the_access_at_the_servers_clock():
    now = [T0]
    s, _ = session_at(lambda: now[0])
    query = codec.encode(codec.Query("SELECT id_number FROM customers"))
    masked = sent(s.handle(ClientData(query)))
    assert "CASE WHEN \"id_number\" IS NULL" in masked  # sales masks id_number
    s.handle(ServerData(READY))
    now[0] = T0 + timedelta(seconds=11)
    clear = sent(s.handle(ClientData(query)))
    assert s.access.grants == (1,) and clear != masked and "CASE" not in clear
    now[0] = T0 + timedelta(seconds=21)
    s.handle(ServerData(READY))
    assert sent(s.handle(ClientData(query))) == masked and s.access.grants == ()


def test_the_unnamed_statement_is_parsed_again_when_the_access_changed():
    now = [T0 + timedelta(seconds=11)]
    s, _ = session_at(lambda: now[0])
    parse = codec.encode(codec.Parse("", "SELECT id_number FROM customers", ()))
    bind = codec.encode(codec.Bind("", "", (), (), ()))
    execute = codec.encode(codec.Execute("", 0)) + codec.encode(codec.Sync())
    first = sent(s.handle(ClientData(parse + bind + execute)))
    assert "CASE" not in first  # the grant is in force: clear
    s.handle(ServerData(codec.encode(codec.ParseComplete()) + codec.encode(codec.BindComplete()) + READY))
    now[0] = T0 + timedelta(seconds=21)  # the grant ended; the client binds the unnamed statement again
    again = s.handle(ClientData(bind + execute))
    wire = b"".join(c.data for c in again if isinstance(c, SendToServer))
    messages = [m for m in codec.Splitter(frozenset(range(256))).feed(wire)[1]]
    assert [chr(k) for k, _, _ in messages] == ["C", "P", "B", "E", "S"]
    assert "CASE WHEN" in sent(again)  # decided again: masked
    out = s.handle(ServerData(codec.encode(codec.CloseComplete()) + codec.encode(codec.ParseComplete())
                        + codec.encode(codec.BindComplete()) + READY))
    assert b"".join(c.data for c in out if hasattr(c, "data")).startswith(codec.encode(codec.BindComplete()))


# ----------------------------------------------------------------------------- purpose as a setting
def purpose_after(*steps):
    from proxy.purpose import PurposeSetting
    p = PurposeSetting()
    for step in steps:
        if step[0] == "set":
            p.set(step[1], local=step[2], in_block=step[3])
        elif step[0] == "tag":
            p.tag(step[1])
        else:
            p.ready(step[1])
    return p.current


def test_purpose_follows_postgresqls_rules_for_settings():
    assert purpose_after(("set", "A", False, False)) == "A"
    assert purpose_after(("set", "A", True, False)) is None  # SET LOCAL outside a block: nothing
    block = [("set", "A", False, False), ("ready", b"T"), ("set", "B", False, True)]
    assert purpose_after(*block, ("tag", "COMMIT"), ("ready", b"I")) == "B"
    assert purpose_after(*block, ("tag", "ROLLBACK"), ("ready", b"I")) == "A"
    assert purpose_after(*block, ("ready", b"E"), ("tag", "ROLLBACK"), ("ready", b"I")) == "A"
    local = [("set", "A", False, False), ("set", "L", True, True)]
    assert purpose_after(*local) == "L"
    assert purpose_after(*local, ("tag", "COMMIT"), ("ready", b"I")) == "A"  # SET LOCAL lasts for the block
    assert purpose_after(("set", "L", True, True), ("set", "S", False, True), ("tag", "COMMIT"),
                         ("ready", b"I")) == "S"
    assert purpose_after(*block, ("set", None, False, True), ("tag", "COMMIT"), ("ready", b"I")) is None
    # ambiguous endings clear it: ROLLBACK TO SAVEPOINT, another tag, two blocks in one Query
    assert purpose_after(*block, ("tag", "ROLLBACK"), ("ready", b"T")) is None
    assert purpose_after(*block, ("tag", "PREPARE TRANSACTION"), ("ready", b"I")) is None
    assert purpose_after(*block, ("tag", "COMMIT"), ("tag", "ROLLBACK"), ("ready", b"I")) is None


# ----------------------------------------------------------------------------- search_path within one Query
def test_each_statement_of_a_query_is_decided_under_the_path_the_earlier_ones_leave():
    from proxy.policy import Context, decide
    rules = load_rules(RULES)
    catalog = Catalog.from_spec({"public.customers": {"id": "integer", "id_number": "text"},
                                 "staging.customers": {"id": "integer", "id_number": "text"},
                                 "pg_catalog.pg_class": {"oid": "oid", "relname": "name"}})
    ctx = Context(rules.tier("sales"), rules, catalog, ("staging", "public"), "sales_li")
    plain = decide("SELECT id_number FROM customers", ctx)
    assert plain.verdict == "allow" and "FROM staging.customers" in plain.sql  # unclassified, and qualified
    moved = decide("SET search_path = public; SELECT id_number FROM customers", ctx)
    assert moved.verdict == "rewrite" and '"public"."customers"' in moved.sql
    lost = decide("BEGIN; SET search_path = public; ROLLBACK; SELECT id_number FROM customers", ctx)
    assert lost.refused and "cannot follow" in lost.reason
    assert "FROM pg_catalog.pg_class" in decide("SELECT relname FROM pg_class", ctx).sql


def test_a_reload_mid_result_keeps_counting_rows_against_the_limit():
    limited = RULES.replace("  sales:\n    see: {id_number: mask}", "  sales:\n    see: {id_number: mask}\n    max_rows: 2")
    engine = Engine(load_rules(limited), CATALOG)
    s = Session(SessionConfig(engine=engine, clock=lambda: T0, audit=True), peer=("10.1.2.3", 5000))
    s.handle(ClientData(codec.encode_startup(STARTUP)))
    s.handle(UpstreamConnected(False))
    s.handle(ServerData(codec.encode(codec.Authentication(0, b"")) + READY))
    s.handle(ClientData(codec.encode(codec.Query("SELECT id_number FROM customers"))))
    s.handle(AuditDurable(1))  # strict audit: the answer waits for the read's record
    row = codec.encode(codec.DataRow((b"110***0021",)))
    s.handle(ServerData(codec.encode(codec.RowDescription((("id_number", 0, 0, 25, -1, -1, 0),))) + row))
    engine.rules = load_rules(limited + "# edited\n")  # a reload while the result streams
    s.handle(ClientData(codec.encode(codec.Query("SELECT 1"))))  # pipelined: the access is decided again
    s.handle(AuditDurable(2))
    out = s.handle(ServerData(row * 3 + codec.encode(codec.CommandComplete("SELECT 4")) + READY))
    sent_back = b"".join(c.data for c in out if hasattr(c, "data"))
    assert sent_back.count(row) == 1 and b"may read at most 2 rows" in sent_back


def test_statements_pipelined_after_a_search_path_change_are_decided_under_it():
    engine = Engine(load_rules(RULES), Catalog.from_spec({"public.customers": {"id": "integer", "id_number": "text"},
                                                          "staging.customers": {"id": "integer", "id_number": "text"}}))
    s = Session(SessionConfig(engine=engine, clock=lambda: T0), peer=("10.1.2.3", 5000))
    s.handle(ClientData(codec.encode_startup(STARTUP)))
    s.handle(UpstreamConnected(False))
    s.handle(ServerData(codec.encode(codec.Authentication(0, b"")) + codec.encode(
        codec.ParameterStatus("search_path", "staging, public")) + READY))

    def extended(sql):
        return (codec.encode(codec.Parse("", sql, ())) + codec.encode(codec.Bind("", "", (), (), ()))
                + codec.encode(codec.Execute("", 0)))
    wire = sent(s.handle(ClientData(extended("SET search_path = public") + extended("SELECT id_number FROM customers")
                              + codec.encode(codec.Sync()))))
    assert '"public"."customers"' in wire and "CASE WHEN" in wire  # decided under public: masked
    s.handle(ServerData(codec.encode(codec.ParameterStatus("search_path", "public")) + READY))
    assert "CASE WHEN" in sent(s.handle(ClientData(codec.encode(codec.Query("SELECT id_number FROM customers")))))
    s.handle(ServerData(READY))
    lost = sent(s.handle(ClientData(extended("RESET search_path") + extended("SELECT id_number FROM customers")
                              + codec.encode(codec.Sync()))))
    assert "pgveil-refused-" in lost and "CASE WHEN" not in lost
