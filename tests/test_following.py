"""Pure: what a Bind runs is what the server holds when it runs (proxy/prepared.py held), and
SQL PREPARE/DEALLOCATE/DISCARD ALL confirmed by the server change the protocol's statements
(proxy/opened.py tells proxy/prepared.py).  No network."""

from __future__ import annotations

from proxy.codec import BE, FE
from proxy.opened import QUERY, Opened, segments
from proxy.prepared import PreparedStatements


def _parse(p: PreparedStatements, name: str, sql: str, access: str) -> None:
    p.client(FE.PARSE)
    p.remember(name, sql, (), access)


def test_a_bind_in_the_parse_s_pipeline_runs_the_new_statement():
    p = PreparedStatements()
    _parse(p, "s", "old", "granted"); p.client(FE.SYNC)
    p.server(BE.PARSE_COMPLETE), p.server(BE.READY_FOR_QUERY)
    p.client(FE.CLOSE); p.forget("s"); _parse(p, "s", "new", "ended")
    expected, possible = p.held("s")  # the Bind runs only if the Close and Parse succeeded
    assert expected.sql == "new" and possible == [expected]
    p.client(FE.SYNC)
    expected, possible = p.held("s")  # after a Sync they may have failed: the old one is possible
    assert expected.sql == "new" and [k.sql if k else None for k in possible] == ["old", None, "new"]
    p.server(BE.ERROR), p.server(BE.READY_FOR_QUERY)  # the Close failed, the Parse was skipped
    expected, possible = p.held("s")
    assert expected.sql == "old" and possible == [expected] and p.statements["s"].access == "granted"


def test_sql_deallocate_and_discard_all_remove_protocol_statements():
    p = PreparedStatements()
    opened = Opened(p)
    for name in ("a", "b"):
        _parse(p, name, "SELECT 1", "granted")
    p.client(FE.SYNC)
    p.server(BE.PARSE_COMPLETE), p.server(BE.PARSE_COMPLETE), p.server(BE.READY_FOR_QUERY)
    for sql, tag, left in (("DEALLOCATE a", "DEALLOCATE", {"b"}), ("PREPARE q AS SELECT 2", "PREPARE", {"b", "q"}),
                           ("DISCARD ALL", "DISCARD ALL", set())):
        assert opened.query(segments(sql), "ended", True) is None
        opened.client(QUERY), opened.sent(opened.take()), p.client(FE.QUERY)
        opened.answered(tag), opened.ready(b"I"), p.server(BE.READY_FOR_QUERY)
        assert set(p.statements) == left, sql
    assert p.bytes == 0
