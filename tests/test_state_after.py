"""What a statement leaves for later ones (search_path, cursors and prepared statements, RESET
ALL) is read once, with its decision in the analysing process for a statement decided apart:
the event loop then applies it without reading the text again (issue 13: a 4 MB statement or
3,000 statements in one Query held the loop 58-300 ms doing that).  No network."""

from __future__ import annotations

import doctest
import sys

import pytest

from policy_fixture import fixture_catalog
from proxy import codec, opened, searchpath, state_after
from proxy.analyst import decide_cold
from proxy.policy import Engine
from proxy.rewrite import Context
from proxy.rules import load_rules
from proxy.session import DecideApart, SessionConfig
from proxy.session.events import ClientData, DecidedApart, ServerData
from proxy.segments import split_statements
from conftest import RULES
from test_session import active_session, sent_to_server
from workcount import calls, grows_linearly

STATE_TEXT = "SET search_path = x; DECLARE c CURSOR FOR SELECT 1; PREPARE p AS SELECT 1; FETCH c; RESET ALL; "


def test_doctests():
    assert doctest.testmod(state_after).failed == 0
    assert doctest.testmod(opened).failed == 0


TEXTS = [
    "SELECT 1", "SET search_path = staging, public; SELECT 1", "SET search_path TO DEFAULT",
    "SET LOCAL search_path = a", "RESET search_path; SELECT 1", "RESET ALL", "DISCARD ALL", "DISCARD PLANS",
    "SET search_path = a; ROLLBACK", "ROLLBACK; SET search_path = b", "ABORT", "SELECT set_config('search_path', 'a', false)",
    "SET SESSION search_path = 'Staging', \"Q\"; ROLLBACK; SELECT 1", "SET search_path = a; SET search_path = b",
    "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; FETCH 1 FROM c; CLOSE c; COMMIT",
    "PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p; DEALLOCATE ALL; CLOSE ALL; PREPARE TRANSACTION 'x'",
    'CLOSE U&"c"', "SELECT 'search_path reset all declare c cursor'", "reset all", "-- RESET ALL\nSELECT 1",
]


@pytest.mark.parametrize("sql", TEXTS)
def test_reading_once_follows_the_statements_as_searchpath_and_opened_do(sql):
    segs = split_statements(sql)
    after = state_after.read(sql)
    for path in (("public",), ("a", "b")):
        for changed in (False, True):
            assert state_after.follow(after.paths, path, changed) == searchpath.after(segs, path, changed)
    assert after.opened in (None, tuple(opened.read(seg) for seg in segs))
    if after.opened is None:
        assert all(opened.read(seg) is None for seg in segs)
    assert after.clears_all == any(state_after.clears_all(seg) for seg in segs)


def test_reading_is_linear_in_the_statements():
    grows_linearly(state_after.read, lambda n: STATE_TEXT * (n // 50), sizes=(2_000, 4_000, 8_000))


# ----------------------------------------------------------------------------- the loop's share
def _session(tier: str = "dba"):
    rules = load_rules(RULES.read_text().replace("identities:", f"identities:\n  - {{user: app, tier: {tier}}}", 1),
                       "crm.yaml")
    return active_session(SessionConfig(engine=Engine(rules, fixture_catalog())))


def _decided_apart(sql: str, tier: str = "dba"):
    """A session that sent ``sql``, and the DecidedApart its analysing child would answer."""
    s = _session(tier)
    apart = [c for c in s.handle(ClientData(codec.encode(codec.Query(sql)))) if isinstance(c, DecideApart)]
    assert len(apart) == 1
    e = s.config.engine
    decision, _ = decide_cold(sql, Context(apart[0].tier, e.rules, e.catalog, apart[0].search_path, apart[0].user), {})
    assert decision.after is not None or decision.refused
    return s, DecidedApart(apart[0].key, decision)


def _names_called(fn, *args) -> set:
    """The names of the functions ``fn(*args)`` calls, Python and C."""
    names = set()

    def profile(frame, event, arg):
        if event == "call":
            names.add(frame.f_code.co_name)
        elif event == "c_call":
            names.add(getattr(arg, "__name__", ""))

    sys.setprofile(profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return names


def _statements(n: int) -> str:
    return "".join(f"SET search_path = public, staging;\nDECLARE c{i} CURSOR WITH HOLD FOR SELECT {i};\n"
                   f"FETCH 1 FROM c{i};\nCLOSE c{i};\n" for i in range(n // 4))


def _literal(n: int) -> str:
    return "SELECT length('" + "x" * n + STATE_TEXT + "')"


@pytest.mark.parametrize("make, sizes", [(_statements, (400, 800, 1600)), (_literal, (1 << 20, 2 << 20))])
def test_a_statement_decided_apart_is_followed_without_reading_its_text_again(make, sizes):
    counts = []
    for n in sizes:
        s, answer = _decided_apart(make(n))
        names = _names_called(s.handle, answer)
        assert not names & {"tokenize", "split_statements", "segments", "read"}, names
        s, answer = _decided_apart(make(n))
        counts.append(calls(s.handle, answer))
    if make is _statements:
        assert s._pending_path == ("public", "staging"), "the path it leaves is followed"
        assert sum(e is not None for e in s._opened._owed[-1][1]) == sizes[-1] // 4 * 2, "DECLARE and CLOSE"
        for small, big in zip(counts, counts[1:]):
            assert big <= 2 * small + 64, counts
    else:
        assert s._pending_path is None, "words inside a literal change nothing"
        assert counts[1] <= counts[0] + 64, ("the loop's work does not grow with the literal", counts)


def test_a_refusal_decided_apart_is_not_read_again_on_the_loop():
    """bench/stall.py, masking tier, "3,000 statements of state words": refused in the child (the
    sales tier has no session statements), then read again on the loop to follow its block's
    ends (130 ms of the worker's CPU).  A refusal runs nothing: nothing to follow."""
    sql = "BEGIN;\n" + _statements(1600) + "PREPARE p AS SELECT 1;\nROLLBACK;\nSELECT 1;"
    s, answer = _decided_apart(sql, "sales")
    assert answer.decision.refused
    names = _names_called(s.handle, answer)
    assert not names & {"tokenize", "split_statements", "segments", "read"}, names


def test_a_large_text_whose_block_ends_move_the_path_is_refused_rather_than_decided_again_on_the_loop():
    """A restricted tier's large text whose ROLLBACK restores the path in force before a SET of
    an earlier Query must be decided again with the block's ends; on the loop that would hold
    the worker, so it is refused (42501): only the refusal's stand-in is sent."""
    s = _session("it")
    s.handle(ClientData(codec.encode(codec.Query("BEGIN; SET search_path = staging, public"))))
    s.handle(ServerData(codec.encode(codec.CommandComplete("BEGIN")) + codec.encode(codec.CommandComplete("SET"))
                        + codec.encode(codec.ParameterStatus("search_path", "staging, public"))
                        + codec.encode(codec.ReadyForQuery(b"T"))))
    sql = "ROLLBACK;\nSELECT id FROM public.customers /* " + "x" * 4096 + " */;"
    apart = [c for c in s.handle(ClientData(codec.encode(codec.Query(sql)))) if isinstance(c, DecideApart)]
    assert len(apart) == 1
    e = s.config.engine
    decision, _ = decide_cold(sql, Context(apart[0].tier, e.rules, e.catalog, apart[0].search_path, apart[0].user), {})
    assert not decision.refused, decision
    sent = sent_to_server(s.handle(DecidedApart(apart[0].key, decision)))
    assert b"public.customers" not in sent and b"pgveil" in sent, sent  # the refusal's stand-in only
