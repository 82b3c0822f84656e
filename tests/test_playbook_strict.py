"""Strict audit as replayable scripts (see tests/playbook.py): changes wait for their record,
reads go at once and their answers wait, every execution counts, and a journal that fails."""

from proxy import codec
from proxy.session import (AuditDurable, AuditFailed, AuditHealth, ClientData, Close, PauseClientReading,
                           PauseServerReading, ResumeClientReading, ResumeServerReading, SendToClient, SendToServer,
                           ServerData)

from playbook import (DESCRIPTION, MASKED, ROW, SELECT_ID, SYNC, Audit, Playbook, ToClient, ToServer, active,
                      complete, extended, fatal, q, ready, refused_by_server)


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


def test_an_executions_outcome_names_its_execution_record_as_the_compact_form_reads_it():
    """proxy/audit/executions.py ends an execution record by the outcome that names it; one
    covered by its statement's record ends by the statement alone (no execution named)."""
    from proxy.audit.executions import expand
    s = active("clerk_wu", audit=True, audit_strict=False)
    bind_execute = codec.encode(codec.Bind("", "r", (), (), ())) + codec.encode(codec.Execute("", 0)) + SYNC
    answer = codec.encode(codec.BindComplete()) + ROW + complete("SELECT 1") + ready()
    written = []
    for event in [ClientData(extended(SELECT_ID, "r") + SYNC), ServerData(codec.encode(codec.ParseComplete()) + answer),
                  ClientData(bind_execute), ServerData(answer)]:
        written += [c.record for c in s.handle(event) if type(c).__name__ == "WriteAudit"]
    assert [r["type"] for r in written] == ["statement", "outcome", "outcome"]  # not strict: no execution records
    s = active("clerk_wu", audit=True)
    written = []
    for event in [ClientData(extended(SELECT_ID, "r") + SYNC), AuditDurable(1),
                  ServerData(codec.encode(codec.ParseComplete()) + answer),
                  ClientData(bind_execute), AuditDurable(2), ServerData(answer)]:
        written += [c.record for c in s.handle(event) if type(c).__name__ == "WriteAudit"]
    assert [r["type"] for r in written] == ["statement", "outcome", "execution", "outcome"]
    first, execution, second = written[1], written[2], written[3]
    assert "execution" not in first and second["execution"] == execution["id"] == f"{s.id}-x1"
    outcomes = [r for r in expand(written) if r["type"] == "outcome"]
    assert [(o["statement"], o["status"], o.get("execution")) for o in outcomes] == [
        (first["statement"], "ok", None), (execution["statement"], "ok", execution["id"])]
