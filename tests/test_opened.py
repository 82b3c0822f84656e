"""Pure: what proxy/opened.py records follows the server's answers (CommandComplete tags, errors,
ReadyForQuery), not the client's messages.  No network."""

from __future__ import annotations

from proxy.access import Access
from proxy.opened import QUERY, SYNC, UNKNOWN, Opened, segments

GRANTED, ENDED = Access("v", "sales", (1,)), Access("v", "sales", ())


def _send(opened: Opened, sql: str, access) -> str | None:
    """A Query decided and sent (as proxy/session.py does); the refusal's reason, or None."""
    reason = opened.query(segments(sql), access, True)
    if reason is None:
        opened.client(QUERY)
        opened.sent(opened.take())
    return reason


def _held_under_grant() -> Opened:
    opened = Opened()
    assert _send(opened, "DECLARE h CURSOR WITH HOLD FOR SELECT 1", GRANTED) is None
    opened.answered("DECLARE CURSOR"), opened.ready(b"I")
    assert opened.cursors == {"h": GRANTED} and opened.held == {"h"}
    return opened


def test_a_declare_the_server_refuses_leaves_the_cursor_as_it_was():
    opened = _held_under_grant()
    assert _send(opened, "DECLARE h CURSOR WITH HOLD FOR SELECT 1", ENDED) is None
    # sent, not answered yet: a FETCH sent meanwhile is judged against the held cursor too
    assert "access changed" in opened.query(segments("FETCH 1 FROM h"), ENDED, True)
    opened.error(), opened.ready(b"I")  # 42P03: cursor "h" already exists
    assert opened.cursors == {"h": GRANTED} and not opened._waiting
    assert "access changed" in opened.query(segments("FETCH 1 FROM h"), ENDED, True)


def test_a_close_skipped_after_an_error_keeps_the_cursor():
    opened = _held_under_grant()
    assert _send(opened, "SELECT 1/0; CLOSE h", ENDED) is None
    opened.error(), opened.ready(b"I")  # division by zero: the CLOSE never ran
    assert "access changed" in opened.query(segments("FETCH 1 FROM h"), ENDED, True)
    assert _send(opened, "SELECT 1; CLOSE h", ENDED) is None
    opened.answered("SELECT 1"), opened.answered("CLOSE CURSOR"), opened.ready(b"I")
    assert opened.cursors == {} and opened.query(segments("FETCH 1 FROM h"), ENDED, True) is None


def test_within_one_query_the_statement_before_decides():
    opened = _held_under_grant()
    # a FETCH after a CLOSE of the same Query runs only if the CLOSE did: then h is gone
    assert opened.query(segments("CLOSE h; FETCH 1 FROM h"), ENDED, True) is None
    opened.take()
    assert "access changed" in opened.query(segments("FETCH 1 FROM h; CLOSE h"), ENDED, True)


def test_cursors_without_hold_end_with_their_transaction_and_odd_answers_fail_closed():
    opened = Opened()
    assert _send(opened, "BEGIN; DECLARE c CURSOR FOR SELECT 1", GRANTED) is None
    opened.answered("BEGIN"), opened.answered("DECLARE CURSOR"), opened.ready(b"T")
    assert opened.cursors == {"c": GRANTED}
    assert _send(opened, "COMMIT", GRANTED) is None
    opened.answered("COMMIT"), opened.ready(b"I")
    assert opened.cursors == {}
    # the answer where a DECLARE's was awaited is not DECLARE CURSOR: the cursor's access is unknown
    assert _send(opened, "DECLARE d CURSOR WITH HOLD FOR SELECT 1", GRANTED) is None
    opened.answered("SELECT 1"), opened.ready(b"I")
    assert opened.cursors == {"d": UNKNOWN}
    assert "access changed" in opened.query(segments("FETCH d"), GRANTED, True)


def test_extended_protocol_declare_counts_when_its_execute_completes():
    opened = Opened()
    assert opened.query(segments("DECLARE h CURSOR WITH HOLD FOR SELECT 1"), GRANTED, True) is None
    effects = opened.take()  # Parse of statement s: its effects are kept with it (proxy.prepared.Kept)
    opened.bind("", GRANTED, effects), opened.executed(""), opened.client(SYNC)
    opened.error(), opened.ready(b"I")  # the Execute failed: nothing declared
    assert opened.cursors == {}
    opened.bind("", GRANTED, effects), opened.executed(""), opened.client(SYNC)
    opened.answered("DECLARE CURSOR"), opened.ready(b"I")
    assert opened.cursors == {"h": GRANTED}


def test_prepare_and_deallocate_follow_the_server():
    opened = Opened()
    assert _send(opened, "PREPARE p AS SELECT 1", GRANTED) is None
    opened.answered("PREPARE"), opened.ready(b"I")
    assert _send(opened, "PREPARE p AS SELECT 2", ENDED) is None
    opened.error(), opened.ready(b"I")  # 42P05: prepared statement "p" already exists
    assert "prepared under other access" in opened.query(segments("EXECUTE p"), ENDED, True)
    assert _send(opened, "SELECT 1/0; DEALLOCATE p", ENDED) is None
    opened.error(), opened.ready(b"I")
    assert opened.prepared == {"p": GRANTED}
    assert _send(opened, "DEALLOCATE p", ENDED) is None
    opened.answered("DEALLOCATE"), opened.ready(b"I")
    assert opened.prepared == {} and not opened._waiting and not opened._owed


def test_a_long_query_costs_linear_time():
    """A Query of many statements: answering them costs work linear in their number (twice as
    many statements: at most twice the lines and calls; counted, not timed: tests/workcount.py)."""
    from workcount import steps
    counts = []
    for n in (2_000, 4_000, 8_000):
        opened = Opened()
        opened.client(QUERY)
        opened.sent([("declare", f"c{i}", GRANTED, True) for i in range(n)])

        def answer_all(n=n, opened=opened):
            for _ in range(n):
                opened.answered("DECLARE CURSOR")
            opened.ready(b"I")
        counts.append(steps(answer_all))
        assert len(opened.cursors) == n and not opened._waiting
    for small, big in zip(counts, counts[1:]):
        assert big <= 2 * small + 64, counts
