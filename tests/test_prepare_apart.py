"""A large statement prepared under an access that has since changed is decided again in the
analysing child, not on the event loop (issue 13): its Bind, and what the client sends after,
wait in the session for the answer, as after a Parse decided apart.  No network (the script of
tests/playbook.py)."""

from datetime import timedelta

from proxy import codec
from proxy.session import ClientData, DecideApart, DecidedApart, PauseClientReading, ResumeClientReading, \
    SendToClient, SendToServer, ServerData

from test_bounded_work import UNION, guarded_session
from playbook import MASKED, SELECT_ID, SYNC, T0, Playbook, ToServer, active, complete, extended, ready

BIG = SELECT_ID + " WHERE id_number <> '" + "x" * 3000 + "'"  # long enough to be decided apart


def _answer(s, commands) -> DecidedApart:
    """What the analysing child would answer to the session's DecideApart among ``commands``."""
    apart = [c for c in commands if isinstance(c, DecideApart)]
    assert len(apart) == 1, commands
    a = apart[0]
    return DecidedApart(a.key, s.config.engine.decide(a.sql, a.tier, a.search_path, a.user, a.access))


def test_a_large_statement_prepared_again_after_a_grant_ends_is_decided_apart():
    now = [T0 + timedelta(seconds=11)]
    s = active("sales_li", now=lambda: now[0], backlog_high_water=10)
    commands = s.handle(ClientData(extended(BIG, "s1") + SYNC))  # the grant is in force
    assert not any(isinstance(c, SendToServer) for c in commands)
    assert (Playbook(s)
            >> _answer(s, commands)
            << ToServer("id_number", absent=(MASKED,))
            >> ServerData(codec.encode(codec.ParseComplete()) + codec.encode(codec.BindComplete())
                          + complete("SELECT 0") + ready())
            << SendToClient)
    now[0] = T0 + timedelta(seconds=20)  # the grant ends: s1 is prepared again, masked
    bind_execute = codec.encode(codec.Bind("", "s1", (), (), ())) + codec.encode(codec.Execute("", 0)) + SYNC
    before = codec.encode(codec.Execute("", 0))
    commands = s.handle(ClientData(before + bind_execute))
    assert b"".join(c.data for c in commands if isinstance(c, SendToServer)) == before, \
        "what precedes the Bind goes; the Bind waits for the decision under the new access"
    decided = _answer(s, commands)
    assert decided.key[2] == s.access and s.access.grants == ()
    after = codec.encode(codec.Query("SELECT 2"))
    assert (Playbook(s)
            >> ClientData(after)
            << PauseClientReading()
            >> decided
            << ToServer(MASKED)
            << SendToServer(after)
            << ResumeClientReading())


def test_the_prepared_again_statement_is_closed_and_parsed_then_bound():
    now = [T0 + timedelta(seconds=11)]
    s = active("sales_li", now=lambda: now[0])
    commands = s.handle(ClientData(extended(BIG, "s1") + SYNC))
    s.handle(_answer(s, commands))
    s.handle(ServerData(codec.encode(codec.ParseComplete()) + codec.encode(codec.BindComplete())
                        + complete("SELECT 0") + ready()))
    now[0] = T0 + timedelta(seconds=20)
    bind = codec.encode(codec.Bind("", "s1", (), (), ()))
    commands = s.handle(ClientData(bind + SYNC))
    commands = s.handle(_answer(s, commands))
    sent = b"".join(c.data for c in commands if isinstance(c, SendToServer))
    close = codec.encode(codec.Close(codec.Target.STATEMENT, "s1"))
    assert sent.startswith(close) and sent.endswith(bind + SYNC), sent[:80]
    parse = codec.decode_message(codec.FRONTEND, sent[len(close):-len(bind + SYNC)])
    assert parse.name == "s1" and MASKED in parse.query
    assert not any(isinstance(c, DecideApart) for c in commands), "decided once"


def test_a_large_statement_sent_while_the_search_path_is_unknown_is_decided_apart_too():
    """After a RESET ALL not yet answered the path later statements run under is unknown; a large
    statement sent then is still decided in the child (under the server's last path, as the loop
    would), never on the loop."""
    for tier in ("dba", "sales"):
        s = guarded_session(tier)
        s.handle(ClientData(codec.encode(codec.Query("RESET ALL"))))
        assert s._pending_path == "unknown"
        commands = s.handle(ClientData(codec.encode(codec.Query(UNION))))
        apart = [c for c in commands if isinstance(c, DecideApart)]
        assert len(apart) == 1, (tier, commands)
        decided = s.handle(_answer(s, commands))
        sent = b"".join(c.data for c in decided if isinstance(c, SendToServer))
        if tier == "dba":
            assert sent == codec.encode(codec.Query(UNION)), "all-clear: relayed as sent"
        else:
            assert b"pgveil-refused" in sent, "restricted: refused, the path it would run under is unknown"
