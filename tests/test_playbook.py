"""The session as replayable scripts, without a network (see tests/playbook.py): purpose, max_rows,
grants ending, refusals in a transaction and in an extended-protocol batch, the decided-apart
wait, a revoked session and every end's SQLSTATE (strict audit: test_playbook_strict.py)."""

from datetime import timedelta

from proxy import codec
from proxy.policy import Engine
from proxy.rules import load_rules
from proxy.session import (Alert, ClientClosed, ClientData, Close, DecideApart, DecidedApart, HandlerCrashed,
                           KillRequested, OpenUpstream, PauseClientReading, ResumeClientReading, RulesChanged,
                           SendToClient, SendToServer, ServerData, Session, SessionConfig, TimerFired,
                           UpstreamConnected, UpstreamFailed, VerifierLookupFailed)

from playbook import (AUTH_OK, CATALOG, DESCRIPTION, MASKED, ROW, RULES, SELECT_ID, SYNC, T0, Audit, Playbook,
                      ToClient, ToServer, active, complete, extended, fatal, q, ready, refused_by_server, startup)


def test_without_strict_audit_nothing_waits():
    s = active("sales_li", audit=True, audit_strict=False)
    assert (Playbook(s)
            >> ClientData(q("SELECT 1"))
            << Audit(durable=False)
            << SendToServer(q("SELECT 1")))


# ----------------------------------------------------------------------------- the decided-apart wait
class ApartEngine(Engine):
    """Decides statements naming ``big`` apart (as a child process would, answered by the script)."""

    def apart(self, sql, tier, path, user, access):
        return ("apart", sql) if "big" in sql else None


def test_the_client_waits_in_the_session_while_a_decision_is_taken_apart():
    engine = ApartEngine(load_rules(RULES), CATALOG)
    s = Session(SessionConfig(engine=engine, clock=lambda: T0, backlog_high_water=10), ("10.1.2.3", 5000))
    s.handle(ClientData(startup("sales_li")))
    s.handle(UpstreamConnected(False))
    s.handle(ServerData(AUTH_OK + ready()))
    big, after = q("SELECT 1 AS big"), q("SELECT 2")
    decision = engine.decide("SELECT 1 AS big", engine.rules.tier("sales"), ("public",), "sales_li", s.access)
    assert (Playbook(s)
            >> ClientData(q("SELECT 0") + big)
            << SendToServer(q("SELECT 0"))  # what precedes it goes, once
            << DecideApart
            >> ClientData(after)
            << PauseClientReading()
            >> DecidedApart(("apart", "SELECT 1 AS big"), decision)
            << SendToServer(big)
            << SendToServer(after)
            << ResumeClientReading())


# ----------------------------------------------------------------------------- purpose
def test_purpose_declared_shows_in_clear_and_reset_masks_again():
    s = active("sup_wu")
    notice = ToClient(codec.NoticeResponse)
    assert (Playbook(s)
            >> ClientData(q(SELECT_ID))
            << notice  # id_number masked until a purpose is declared
            << ToServer(MASKED)
            >> ServerData(complete("SELECT 0") + ready())
            << SendToClient
            >> ClientData(q("SET pgveil.purpose = 'T-1'"))  # answered by pgveil: the server never sees it
            << SendToClient(complete("SET") + ready())
            >> ClientData(q(SELECT_ID))
            << ToServer("id_number", absent=(MASKED,))
            >> ServerData(complete("SELECT 0") + ready())
            << SendToClient
            >> ClientData(q("RESET pgveil.purpose"))
            << SendToClient(complete("RESET") + ready())
            >> ClientData(q(SELECT_ID))
            << notice
            << ToServer(MASKED))
    assert s.purpose is None


def test_a_purpose_set_with_other_statements_is_refused():
    s = active("sup_wu")
    assert (Playbook(s)
            >> ClientData(q("SELECT 1; SET pgveil.purpose = 'T-1'"))
            << ToServer("pgveil-refused-1")
            >> ServerData(refused_by_server(1) + ready())
            << ToClient(codec.ErrorResponse, codec.ReadyForQuery, code="42501", text="declare a purpose on its own"))


# ----------------------------------------------------------------------------- max_rows
def test_max_rows_stops_a_result_after_the_limit():
    s = active("sales_li", audit=True, audit_strict=False)
    assert (Playbook(s)
            >> ClientData(q(SELECT_ID))
            << Audit()
            << ToServer(MASKED)
            >> ServerData(DESCRIPTION + ROW + ROW + ROW + ROW + complete("SELECT 4") + ready())
            << ToClient(codec.RowDescription, codec.DataRow, codec.DataRow, codec.ErrorResponse,
                        codec.ReadyForQuery, code="54000", text="may read at most 2 rows")
            << Alert
            << Audit(type="outcome", status="limited", sqlstate="54000"))


# ----------------------------------------------------------------------------- grants
def test_a_grant_ending_between_two_executions_masks_the_second():
    now = [T0 + timedelta(seconds=11)]
    s = active("sales_li", now=lambda: now[0])
    bind_execute = codec.encode(codec.Bind("", "s1", (), (), ())) + codec.encode(codec.Execute("", 0)) + SYNC
    assert (Playbook(s)
            >> ClientData(extended(SELECT_ID, "s1") + SYNC)
            << ToServer("id_number", absent=(MASKED,))  # the grant is in force: clear
            >> ServerData(codec.encode(codec.ParseComplete()) + codec.encode(codec.BindComplete())
                          + complete("SELECT 0") + ready())
            << SendToClient)
    now[0] = T0 + timedelta(seconds=20)  # the grant ends
    assert (Playbook(s)
            >> ClientData(bind_execute)
            << ToServer(MASKED))  # prepared again under the access in force: masked
    assert s.access.grants == ()


# ----------------------------------------------------------------------------- refusals
def test_a_refusal_inside_a_transaction_aborts_it_as_postgresql_would():
    s = active("sales_li")
    assert (Playbook(s)
            >> ClientData(q("BEGIN"))
            << SendToServer(q("BEGIN"))
            >> ServerData(complete("BEGIN") + ready(b"T"))
            << SendToClient(complete("BEGIN") + ready(b"T"))
            >> ClientData(q("UPDATE customers SET id = 1"))
            << ToServer("pgveil-refused-1", absent=("UPDATE",))
            >> ServerData(refused_by_server(1) + ready(b"E"))
            << ToClient(codec.ErrorResponse, codec.ReadyForQuery, code="42501",
                        text="write statements (UPDATE) are not allowed for tier sales"))
    assert s.transaction_status == b"E"


def test_a_refusal_inside_an_extended_protocol_batch_fails_the_batch_at_that_statement():
    s = active("sales_li")
    batch = extended("SELECT 1") + extended("DELETE FROM customers") + extended("SELECT 2") + SYNC
    answer = (codec.encode(codec.ParseComplete()) + codec.encode(codec.BindComplete())
              + codec.encode(codec.DataRow((b"1",))) + complete("SELECT 1") + refused_by_server(1) + ready())
    assert (Playbook(s)
            >> ClientData(batch)
            << ToServer("SELECT 1", "pgveil-refused-1", "SELECT 2", absent=("DELETE",))
            >> ServerData(answer)
            << ToClient(codec.ParseComplete, codec.BindComplete, codec.DataRow, codec.CommandComplete,
                        codec.ErrorResponse, codec.ReadyForQuery, code="42501", text="DELETE"))


# ----------------------------------------------------------------------------- ending
def test_a_session_the_reloaded_rules_deny_is_ended_28000():
    s = active("sales_li", audit=True)
    s.config.engine.rules = load_rules(RULES.replace("  - {user: sales_li, tier: sales}\n", ""))
    assert (Playbook(s)
            >> RulesChanged()
            << Audit(type="connection", result="revoked")
            << fatal("28000", 'no longer give user "sales_li" access')
            << Audit(type="session_end")
            << Close
            >> ClientData(q("SELECT 1"))
            << [])


def test_the_session_picks_the_sqlstate_of_every_end():
    for event, code, text in [(UpstreamFailed("refused"), "08006", "could not connect to the database server"),
                              (TimerFired("startup"), "08P01", "timeout expired before the client authenticated"),
                              (VerifierLookupFailed("down"), "28000", "could not look up the role's credentials")]:
        s = Session(SessionConfig())
        s.handle(ClientData(startup("app")))
        assert Playbook(s) >> event << fatal(code, text) << Close
    s = active("sales_li")
    assert Playbook(s) >> TimerFired("startup") << []  # authenticated in time
    assert Playbook(s) >> HandlerCrashed() << fatal("XX000", "internal error") << Close
    s = active("sales_li")
    assert Playbook(s) >> KillRequested("console") << fatal("57P01", "administrator command (console)") << Close
    s = active("sales_li")
    assert Playbook(s) >> ClientClosed() << SendToServer(codec.encode(codec.Terminate())) << Close


def test_a_startup_packet_without_a_user_gets_28000_as_from_postgresql():
    packet = codec.encode_startup(codec.StartupMessage(codec.PROTOCOL_3_0, (("database", "crm"),)))
    assert (Playbook(Session())
            >> ClientData(packet)
            << fatal("28000", "no PostgreSQL user name specified in startup packet")
            << Close)


def test_the_phase_table_refuses_a_ready_for_query_before_authentication_ended():
    """A server that says ReadyForQuery before AuthenticationOk would skip the identity check:
    the phase table has no such transition (fail closed)."""
    s = Session(SessionConfig(engine=Engine(load_rules(RULES), CATALOG), clock=lambda: T0), ("10.1.2.3", 5000))
    assert (Playbook(s)
            >> ClientData(startup("sales_li"))
            << OpenUpstream
            >> UpstreamConnected(False)
            << SendToServer(startup("sales_li"))
            >> ServerData(ready())
            << fatal("08P01", "upstream protocol error: unexpected ReadyForQuery while auth")
            << Close)
    assert s.tier is None


def test_the_sessions_records_take_their_time_and_ids_from_its_configuration():
    """The session reads no clock and makes no id through audit.records: the server passes both in."""
    ids = iter(f"id{n}" for n in range(100))
    s = active("sales_li", audit=True, audit_strict=False, stamp=lambda: "2026-12-03T18:00:00.000001Z",
               record_id=lambda: next(ids))
    audits = [c.record for c in s.handle(ClientData(q("SELECT 1"))) + s.handle(ServerData(complete("SELECT 1") + ready()))
              + s.handle(ClientClosed()) if type(c).__name__ == "WriteAudit"]
    assert [r["type"] for r in audits] == ["statement", "outcome", "session_end"]
    assert {r["ts"] for r in audits} == {"2026-12-03T18:00:00.000001Z"}
    assert [r["id"] for r in audits[1:]] == ["id1", "id2"]  # (id0: the connection record; a statement's id is its own)
