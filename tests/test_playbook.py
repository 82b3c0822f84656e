"""The session as replayable scripts, without a network (see tests/playbook.py): the durable wait,
purpose, max_rows, grants ending, refusals in a transaction and in an extended-protocol batch, a
revoked session and an audit failure."""

from datetime import datetime, timedelta, timezone

from proxy import codec
from proxy.catalog import Catalog
from proxy.policy import Engine
from proxy.rules import load_rules
from proxy.session import (Alert, AuditDurable, AuditFailed, AuditHealth, ClientClosed, ClientData, Close,
                           DecideApart, DecidedApart, HandlerCrashed, KillRequested, OpenUpstream,
                           PauseClientReading, PauseServerReading, ResumeClientReading, ResumeServerReading, RulesChanged, SendToClient, SendToServer,
                           ServerData, Session, SessionConfig, SessionStarted, TimerFired, UpstreamConnected,
                           UpstreamFailed, VerifierLookupFailed)

from playbook import (SYNC, Audit, Playbook, ToClient, ToServer, complete, extended, fatal, q, ready,
                      refused_by_server)

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
    statements: [read]
    max_rows: 2
  support:
    see: {{id_number: {{clear: {{purpose: required}}}}}}
  clerk:
    see: {{id_number: mask}}
    statements: [read, write, session]
identities:
  - {{user: sales_li, tier: sales}}
  - {{user: sup_wu, tier: support}}
  - {{user: clerk_wu, tier: clerk}}
grants:
  - {{user: sales_li, see: {{id_number: clear}}, from: "{(T0 + timedelta(seconds=10)).isoformat()}",
     until: "{(T0 + timedelta(seconds=20)).isoformat()}", reason: CS-1, approved_by: [li_na]}}
default: deny
"""
CATALOG = Catalog.from_spec({"public.customers": {"id": "integer", "id_number": "text"}})
SELECT_ID = "SELECT id_number FROM customers"
MASKED = 'CASE WHEN "id_number" IS NULL'
ROW = codec.encode(codec.DataRow((b"110***0021",)))
DESCRIPTION = codec.encode(codec.RowDescription((("id_number", 0, 0, 25, -1, -1, 0),)))
AUTH_OK = codec.encode(codec.Authentication(0, b""))


def startup(user: str) -> bytes:
    return codec.encode_startup(codec.StartupMessage(codec.PROTOCOL_3_0, (("user", user), ("database", "crm"))))


def active(user: str, now=None, **config) -> Session:
    """A session of ``user`` through start-up and authentication, at the clock ``now()``."""
    engine = Engine(load_rules(RULES), CATALOG)
    s = Session(SessionConfig(engine=engine, clock=now or (lambda: T0), **config), ("10.1.2.3", 5000))
    audited = [Audit(type="connection", result="accepted")] if config.get("audit") else []
    assert (Playbook(s)
            >> ClientData(startup(user))
            << OpenUpstream
            >> UpstreamConnected(False)
            << SendToServer(startup(user))
            >> ServerData(AUTH_OK + ready())
            << audited + [SendToClient(AUTH_OK), SendToClient(ready()), SessionStarted()])
    return s


# ----------------------------------------------------------------------------- changes wait for their record
def update(n: int) -> bytes:
    return q(f"UPDATE customers SET id = {n} WHERE id = {n}")


def test_a_change_waits_for_its_record_and_the_client_is_replayed_in_order_with_back_pressure():
    s = active("clerk_wu", audit=True, backlog_high_water=60)
    first, second, third = update(1), update(2), update(3)
    assert (Playbook(s)
            >> ClientData(first)
            << Audit(durable=True, token=1, answer_only=False, kinds=["write"])  # the statement waits for it
            >> ClientData(second)
            << []  # queued in the session (45 bytes)
            >> ServerData(codec.encode(codec.NoticeResponse(((b"S", "NOTICE"), (b"M", "earlier")))))
            << SendToClient  # the server's stream is not held
            >> ClientData(third)
            << PauseClientReading()  # 90 bytes queued: past the high-water mark
            >> AuditDurable(1)
            << ToServer("SET id = 1 WHERE")
            << Audit(durable=True, token=2)  # the second, replayed: waits in its turn
            >> AuditDurable(2)
            << ToServer("SET id = 2 WHERE")
            << Audit(durable=True, token=3)  # the queue is empty, but a statement still waits: still paused
            >> AuditDurable(3)
            << ToServer("SET id = 3 WHERE")
            << ResumeClientReading())
    assert s.stats.bytes_from_client > 0 and not s.waiting


def test_a_batch_with_a_change_waits_whole_until_every_record_is_durable():
    s = active("clerk_wu", audit=True)
    batch = q("SELECT 1") + update(1)
    assert (Playbook(s)
            >> ClientData(batch)
            << Audit(durable=True, token=1, answer_only=True)
            << Audit(durable=True, token=2, answer_only=False)
            >> AuditDurable(2)
            << []
            >> AuditDurable(1)
            << ToServer("SELECT 1", "UPDATE"))


def test_an_audit_failure_ends_the_session_with_58030_and_sends_nothing():
    s = active("clerk_wu", audit=True)
    assert (Playbook(s)
            >> ClientData(update(1))
            << Audit(durable=True, token=1)
            >> ClientData(update(2))
            << []
            >> AuditFailed(1, "No space left on device")
            << fatal("58030", "pgveil cannot write its audit journal; the statement was not sent")
            << Audit(type="session_end")
            << Close
            >> AuditDurable(1)
            << [])


def test_while_the_journal_cannot_be_written_statements_are_refused_58030():
    s = active("clerk_wu", audit=True)
    assert (Playbook(s)
            >> AuditHealth(False)
            << []
            >> ClientData(q("SELECT 1"))
            << Audit(durable=False, decision="refuse")
            << ToServer("pgveil-refused-1")
            >> ServerData(refused_by_server(1) + ready())
            << ToClient(codec.ErrorResponse, codec.ReadyForQuery, code="58030", text="cannot write its audit journal")
            << Audit(type="outcome", status="refused", sqlstate="58030")
            >> AuditHealth(True)
            << []
            >> ClientData(update(1))
            << Audit(durable=True, token=1))


# ----------------------------------------------------------------------------- reads go at once, results wait
ANSWER = DESCRIPTION + ROW + complete("SELECT 1") + ready()


def test_a_read_goes_at_once_and_no_byte_of_its_answer_before_its_record_is_durable():
    s = active("sales_li", audit=True)
    assert (Playbook(s)
            >> ClientData(q(SELECT_ID))
            << Audit(durable=True, token=1, answer_only=True, kinds=["read"])
            << ToServer(MASKED)  # sent at once: the sync overlaps the database's work
            >> ServerData(ANSWER[:40])
            << []  # nothing reaches the client
            >> ServerData(ANSWER[40:])
            << Audit(type="outcome", status="ok", rows=1)  # (the outcome may be written before)
            >> AuditDurable(1)
            << ToClient(codec.RowDescription)  # as the relay passed them on (whole messages for this tier)
            << ToClient(codec.DataRow, codec.CommandComplete, codec.ReadyForQuery))


def test_a_sync_that_never_completes_releases_no_result_byte_and_sends_no_write():
    s = active("clerk_wu", audit=True)
    commands = []
    for event in [ClientData(q(SELECT_ID)), ServerData(ANSWER), ClientData(update(1)),
                  ClientData(q("SELECT 2")), ServerData(ANSWER)]:
        commands += s.handle(event)
    assert not [c for c in commands if isinstance(c, SendToClient)]
    sent = b"".join(c.data for c in commands if isinstance(c, SendToServer))
    assert b"SELECT id_number" in sent and b"UPDATE" not in sent and b"SELECT 2" not in sent
    assert s.waiting
    assert (Playbook(s)
            >> AuditFailed(1, "the disk is gone")
            << fatal("58030", "the statement's result was withheld")
            << Audit(type="session_end")
            << Close)


def test_a_held_answer_past_the_high_water_mark_pauses_the_server():
    s = active("clerk_wu", audit=True, backlog_high_water=100)
    rows = ROW * 10  # 210 bytes
    assert (Playbook(s)
            >> ClientData(q(SELECT_ID))
            << Audit(durable=True, token=1, answer_only=True)
            << ToServer(MASKED)
            >> ServerData(DESCRIPTION + rows)
            << PauseServerReading()
            >> AuditDurable(1)
            << SendToClient(DESCRIPTION + rows)
            << ResumeServerReading())


def test_a_purpose_reply_keeps_its_place_behind_a_held_answer():
    s = active("sup_wu", audit=True)
    reply = complete("SET") + ready()
    assert (Playbook(s)
            >> ClientData(q("SELECT 1"))
            << Audit(durable=True, token=1, answer_only=True)
            << SendToServer(q("SELECT 1"))
            >> ServerData(ANSWER)
            << Audit(type="outcome")
            >> ClientData(q("SET pgveil.purpose = 'T-1'"))  # answered by pgveil itself
            << Audit(sql="SET pgveil.purpose = ?")
            >> AuditDurable(1)
            << SendToClient(ANSWER)
            << SendToClient(reply))


def test_every_execution_of_a_prepared_statement_gets_a_durable_record():
    s = active("clerk_wu", audit=True)
    bind_execute = codec.encode(codec.Bind("", "r", (), (), ())) + codec.encode(codec.Execute("", 0)) + SYNC
    answer = codec.encode(codec.BindComplete()) + ROW + complete("SELECT 1") + ready()
    assert (Playbook(s)
            >> ClientData(extended(SELECT_ID, "r") + SYNC)  # the Parse's record covers this execution
            << Audit(type="statement", durable=True, token=1, answer_only=True)
            << ToServer(MASKED)
            >> AuditDurable(1)
            << []
            >> ClientData(bind_execute)  # a later execution: its own record, its answer waits for it
            << Audit(type="execution", durable=True, token=2, answer_only=True, portal="")
            << SendToServer(bind_execute)
            >> ServerData(answer)
            << Audit(type="outcome")
            >> AuditDurable(2)
            << SendToClient(answer))
    write_execute = codec.encode(codec.Bind("", "w", (), (), ())) + codec.encode(codec.Execute("", 0)) + SYNC
    assert (Playbook(s)
            >> ClientData(codec.encode(codec.Parse("w", "UPDATE customers SET id = 1", ())) + SYNC)
            << Audit(type="statement", durable=True, token=3, answer_only=False)
            >> AuditDurable(3)
            << ToServer("UPDATE")
            >> ServerData(codec.encode(codec.ParseComplete()) + ready())
            << SendToClient
            << Audit(type="outcome")
            >> ClientData(write_execute)  # a change: not sent before its execution's record is durable
            << Audit(type="execution", durable=True, token=4, answer_only=False)
            >> AuditDurable(4)
            << SendToServer(write_execute))


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
