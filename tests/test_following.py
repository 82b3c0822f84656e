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


def _after(block, sql, path):
    from proxy.searchpath import after
    ends: list = []
    return after(segments(sql), path, False, block, ends), ends


def test_the_block_follows_savepoints_release_chain_and_set_local():
    from proxy.searchpath import UNKNOWN, Block
    block = Block()
    a, b, c = ("a",), ("b",), ("c",)
    assert _after(block, "BEGIN; SET search_path = b; SAVEPOINT s1; SET search_path = c; SAVEPOINT s2", a)[0] == c
    assert _after(block, "RELEASE s2; SET LOCAL search_path = a", c)[0] == UNKNOWN  # SET LOCAL: not read
    assert _after(block, "ROLLBACK TO SAVEPOINT s2", b) == (UNKNOWN, [UNKNOWN])  # released: no such savepoint
    block = Block()
    _after(block, "BEGIN; SET search_path = b; SAVEPOINT s1; SET search_path = c", a)
    assert _after(block, "ROLLBACK TO s1", c)[0] == b
    assert _after(block, "SET LOCAL search_path = c; COMMIT", b) == (b, [b])  # COMMIT keeps the last SET
    block.ready(b"I")
    assert _after(block, "BEGIN; SET search_path = b; ROLLBACK AND CHAIN; SET search_path = c; ROLLBACK", a) == \
        (a, [a, a])  # the chained block began under a: its ROLLBACK leaves a again


def test_a_block_not_run_as_sent_leaves_the_path_unknown_at_its_end():
    from proxy.searchpath import UNKNOWN, Block
    block = Block()
    _after(block, "BEGIN; SET search_path = b; SELECT 1/0; SET search_path = c", ("a",))
    block.error(), block.ready(b"E")  # which of them ran?
    assert _after(block, "ROLLBACK", ("c",)) == (UNKNOWN, [UNKNOWN])
    block = Block()
    block.ready(b"T")  # a block pgveil did not see begin
    assert _after(block, "COMMIT", ("a",)) == (UNKNOWN, [UNKNOWN])
    block = Block()
    _after(block, "BEGIN; SET search_path = b", ("a",))
    block.ready(b"T")
    _after(block, "SELECT 1/0", ("b",))  # an error in a Query that changed nothing of the block
    block.error(), block.ready(b"E")
    assert _after(block, "ROLLBACK", ("b",)) == (("a",), [("a",)])


def test_set_schema_and_block_statements_are_read_for_the_statements_after_them():
    from proxy import state_after
    from proxy.searchpath import Step
    assert state_after.read("SET SCHEMA 'x'").paths == (("x",),)  # followed for pipelined Queries too
    assert state_after.read("BEGIN; SAVEPOINT a; ROLLBACK TO a").paths == (
        Step("BEGIN"), Step("SAVEPOINT", "a"), Step("ROLLBACK_TO", "a"))
