"""Bounded work and memory for whatever a client sends (issue 13), without a network.

- the analysis never raises: a RecursionError or any other exception on deep input is a
  refusal for a restricted tier and a relay for an all-clear tier;
- large or deeply nested statements are decided in a child process (:mod:`proxy.analyst`), and
  the session holds the client's further messages until the answer comes;
- the caches are bounded in bytes.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest

from policy_fixture import fixture_catalog
from proxy import codec, limits, policy
from proxy.analyst import Analyst, decide_cold
from proxy.normalize import normalize
from proxy.policy import DecisionCache, Engine, failed_analysis
from proxy.prepared import PreparedStatements
from proxy.rewrite import Context
from proxy.rules import load_rules
from proxy.session.events import ClientData, DecidedApart, ServerData
from proxy.session import DecideApart, SendToServer, SessionConfig
from conftest import RULES
from stall_cases import distinct_statement, pathological
from test_session import active_session, sent_to_server

CRM = load_rules(RULES.read_text(), "crm.yaml")
DEEP = "SELECT " + "(" * 3000 + "1" + ")" * 3000
CALLS = "SELECT " + "abs(" * 800 + "1" + ")" * 800
UNION = "\nUNION ALL\n".join(f"SELECT id, name, phone FROM customers WHERE id = {i}" for i in range(50))


def engine() -> Engine:
    return Engine(CRM, fixture_catalog())


# ----------------------------------------------------------------------------- never an exception
@pytest.mark.parametrize("sql", [DEEP, CALLS])
def test_deep_nesting_is_refused_for_restricted_tiers_and_relayed_for_all_clear(sql):
    e = engine()
    for tier in ("sales", "it", "admin_office"):
        decision = e.decide(sql, CRM.tier(tier), ("$user", "public"), "u")
        assert decision.refused and decision.sqlstate == "42501", tier
    decision = e.decide(sql, CRM.tier("dba"), ("$user", "public"), "u")
    assert decision.verdict == "allow" and decision.sql == sql


@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"), IndexError("boom"),
                                   MemoryError(), AssertionError("parser bug")])
def test_any_exception_of_the_analysis_is_a_refusal_or_a_relay(monkeypatch, error):
    e = engine()

    def broken(*args, **kwargs):
        raise error
    monkeypatch.setattr(e.cache, "decide", broken)
    refused = e.decide("SELECT name FROM customers", CRM.tier("sales"), ("$user", "public"), "u")
    assert refused.refused and refused.sqlstate == "42501" and type(error).__name__ in refused.reason
    assert refused.normalized == "SELECT name FROM customers"  # the audit still has the statement's text
    relayed = e.decide("SELECT name FROM customers", CRM.tier("dba"), ("$user", "public"), "u")
    assert relayed.verdict == "allow" and relayed.unparsed and relayed.sql == "SELECT name FROM customers"


def test_a_failed_analysis_relays_only_for_an_all_clear_tier_with_every_statement_kind():
    text = "DELETE FROM customers"
    assert failed_analysis(text, CRM.tier("dba"), "x").verdict == "allow"
    text = re.sub(r"(\n  dba:\n    see: .*\n    statements: )\[.*\]", r"\1[read]", RULES.read_text())
    read_only = load_rules(text, "crm.yaml").tier("dba")
    assert read_only.all_clear and set(read_only.statements) == {"read"}
    assert failed_analysis(text, read_only, "x").refused  # nothing proves it is a read
    assert failed_analysis(text, CRM.tier("sales"), "x").refused


# ----------------------------------------------------------------------------- which go to a child
def test_large_and_deeply_nested_statements_are_decided_apart():
    e, sales = engine(), CRM.tier("sales")
    assert e.apart("SELECT name FROM customers WHERE id = 1", sales, ("public",), "u") is None
    for sql in pathological().values():
        assert e.apart(sql, sales, ("public",), "u") is not None
    key = e.apart(DEEP, sales, ("public",), "u")
    e.cache.adopt(key, failed_analysis(DEEP, sales, "x"))
    assert e.apart(DEEP, sales, ("public",), "u") is None, "decided before: answered from the cache"


def guarded_session(tier: str):
    """An active session of user app, whom the CRM rules put in ``tier``."""
    rules = load_rules(RULES.read_text().replace("identities:", f"identities:\n  - {{user: app, tier: {tier}}}", 1),
                       "crm.yaml")
    s = active_session(SessionConfig(engine=Engine(rules, fixture_catalog())))
    assert s.tier.name == tier
    return s


def test_the_session_holds_what_follows_a_statement_decided_apart():
    s = guarded_session("sales")
    big = UNION
    first, after = codec.encode(codec.Query("SELECT 1")), codec.encode(codec.Query("SELECT 2"))
    commands = s.handle(ClientData(first + codec.encode(codec.Query(big)) + after))
    apart = [c for c in commands if isinstance(c, DecideApart)]
    assert len(apart) == 1 and apart[0].sql == big
    assert sent_to_server(commands) == first, "the statements before it go now, nothing after it"
    e = s.config.engine
    decision, _ = decide_cold(big, Context(apart[0].tier, e.rules, e.catalog, apart[0].search_path, apart[0].user), {})
    assert decision.verdict == "rewrite"
    commands = s.handle(DecidedApart(apart[0].key, decision))
    assert sent_to_server(commands) == codec.encode(codec.Query(decision.sql)) + after
    assert s.outstanding == 3


def test_a_decision_taken_apart_for_other_rules_is_not_used():
    s = guarded_session("sales")
    big = UNION
    apart = [c for c in s.handle(ClientData(codec.encode(codec.Query(big)))) if isinstance(c, DecideApart)][0]
    wrong_key = ("another rules version",) + apart.key[1:]
    commands = s.handle(DecidedApart(wrong_key, policy.Decision("allow", big)))
    again = [c for c in commands if isinstance(c, DecideApart)]
    assert again and not sent_to_server(commands), "decided apart again, never sent on a stale decision"


def test_a_shape_decided_apart_decides_its_next_statements_in_the_worker():
    e, sales = engine(), CRM.tier("sales")
    ctx = Context(sales, CRM, e.catalog, ("public",), "u")
    key = e.apart(UNION, sales, ("public",), "u")
    decision, shape = decide_cold(UNION, ctx, {})
    assert shape is not None and shape[0][:-2] == key[:-1], "the shape's key, in the same context"
    e.cache.adopt(key, decision)
    e.cache.adopt(*shape)
    other = UNION.replace("= 1\n", "= 100001\n").replace("= 7\n", "= 77\n")
    assert e.apart(other, sales, ("public",), "u") is None, "a new statement of a known shape: decided here"
    assert e.decide(other, sales, ("public",), "u") == DecisionCache().decide(other, ctx)
    assert "100001" in e.decide(other, sales, ("public",), "u").sql


# ----------------------------------------------------------------------------- the child processes
def test_the_analyst_decides_as_the_engine_does_and_survives_its_children():
    e = engine()
    cases = pathological()

    async def main():
        analyst = Analyst(timeout=60)
        try:
            out = {}
            for tier in ("sales", "dba"):
                for name in ("3,000 nested parentheses", "3,000 statements in one Query", "4 MB string literal"):
                    out[tier, name] = await analyst.decide(e, cases[name], CRM.tier(tier), ("$user", "public"), "u")
            for child in list(analyst._all):  # a child that died while idle: a fresh one answers
                child.proc.kill()
            out["idle died"] = await analyst.decide(e, DEEP, CRM.tier("dba"), ("$user", "public"), "u")
            slow = cases["500 UNION ALL branches"]
            killer = asyncio.get_running_loop().call_later(0.3, lambda: [c.proc.kill() for c in analyst._all])
            out["killed"] = await analyst.decide(e, slow, CRM.tier("sales"), ("$user", "public"), "u")
            killer.cancel()
            out["after"] = await analyst.decide(e, DEEP, CRM.tier("sales"), ("$user", "public"), "u")
            analyst.timeout = 0.2
            out["timeout"] = await analyst.decide(e, slow, CRM.tier("sales"), ("$user", "public"), "u")
            return out, analyst.failed
        finally:
            analyst.close()

    out, failed = asyncio.run(main())
    for tier in ("sales", "dba"):
        for name in ("3,000 nested parentheses", "3,000 statements in one Query", "4 MB string literal"):
            ctx = Context(CRM.tier(tier), CRM, e.catalog, ("$user", "public"), "u")
            inline = decide_cold(cases[name], ctx, {})[0]
            if "RecursionError" in inline.reason:  # its text names where the stack ran out
                assert out[tier, name].reason.startswith(inline.reason.split(":")[0] + ": RecursionError")
                inline = replace(inline, reason=out[tier, name].reason)
            assert out[tier, name] == inline, (tier, name)
    assert out["sales", "3,000 nested parentheses"].refused
    assert out["dba", "4 MB string literal"].sql == cases["4 MB string literal"]
    assert out["idle died"].verdict == "allow" and not out["idle died"].unparsed
    assert out["killed"].refused and "ended" in out["killed"].reason  # died mid-analysis: fails closed
    assert out["after"].refused and "RecursionError" in out["after"].reason, "a new child answers"
    assert out["timeout"].refused and "longer than" in out["timeout"].reason
    assert failed == 2


# ----------------------------------------------------------------------------- bounded in bytes
def test_the_decision_cache_is_bounded_in_bytes():
    cache = DecisionCache(max_bytes=4 << 20)
    ctx = Context(CRM.tier("dba"), CRM, fixture_catalog())
    for i in range(200):
        cache.decide(distinct_statement(i), ctx)
    assert cache.bytes <= 4 << 20
    assert 0 < len(cache) < 200
    assert cache.bytes == sum(policy.entry_bytes(k, v) for k, v in cache._entries.items())
    cache.decide(distinct_statement(0, size=1 << 20), ctx)  # larger than a sixteenth: not kept
    assert cache.bytes <= 4 << 20


def test_long_texts_stay_out_of_normalizes_cache():
    before = normalize.cache_info().currsize
    texts = [distinct_statement(i, 8192) for i in range(50)]
    assert [limits.normalize_bounded(t) for t in texts] == [normalize.__wrapped__(t) for t in texts]
    assert normalize.cache_info().currsize == before
    assert len(limits.normalize_bounded("SELECT '" + "x" * 10_000_000 + "'")) < 100  # read from a prefix


def test_prepared_statement_text_per_session_is_bounded(monkeypatch):
    p = PreparedStatements()
    p.remember("a", "x" * 100, (), "v")
    p.remember("a", "y" * 50, (), "v")
    p.remember("b", "z" * 10, (), "v")
    assert p.bytes == 60
    p.forget("a")
    assert p.bytes == 10 and p.fits("c", "w" * 90, 100) and not p.fits("c", "w" * 91, 100)
    monkeypatch.setattr(limits, "PREPARED_BYTES", 1000)
    s = guarded_session("dba")
    ok = s.handle(ClientData(codec.encode(codec.Parse("s1", "SELECT " + "1, " * 200 + "1", ()))))
    assert b"pgveil-refused" not in sent_to_server(ok)
    refused = s.handle(ClientData(codec.encode(codec.Parse("s2", "SELECT " + "2, " * 200 + "2", ()))))
    assert b"pgveil-refused" in sent_to_server(refused), "beyond the bound: refused, not kept"
    s.handle(ServerData(codec.encode(codec.ParseComplete())))  # s1 is kept once the server prepared it
    assert set(s._prepared.statements) == {"s1"}


def test_a_long_message_in_pieces_is_appended_not_joined_again():
    import random
    rng = random.Random(13)
    messages = [codec.Query("x" * (1 << 20)), codec.Query("SELECT 1"), codec.Sync(), codec.Query("y" * 70_000)]
    wire = b"".join(codec.encode(m) for m in messages)
    for _ in range(20):
        splitter, got, pos = codec.Splitter(b"QS"), [], 0
        while pos < len(wire):
            step = rng.choice((1, 3, 4096, 65536, 300_000))
            out, marks = splitter.feed(wire[pos:pos + step])
            got += [bytes(out[s:e]) for _, s, e in marks]
            pos += step
        assert got == [codec.encode(m) for m in messages]
    splitter = codec.Splitter(b"Q")
    splitter.feed(codec.encode(messages[0])[:100])
    held = splitter._buf
    splitter.feed(b"x" * 1000)
    assert splitter._buf is held, "the held part grows in place"
