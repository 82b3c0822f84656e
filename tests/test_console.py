"""The console's protocol without a network: commands, the simple and the extended protocol."""

from __future__ import annotations

import asyncio

import pytest

from proxy import codec
from proxy.console import COLUMNS, ConsoleError, ConsoleProtocol, Table, parse_command

VERSION = Table(COLUMNS["SHOW VERSION"], [("pgveil 0.1.0",)], "SHOW 1")


def replies(data: bytes) -> list:
    splitter = codec.Splitter(frozenset(range(256)))
    out, marks = splitter.feed(data)
    return [codec.decode_message(codec.BACKEND, bytes(out[s:e])) for _, s, e in marks]


def protocol(ran: list) -> ConsoleProtocol:
    async def run(command, argument, how):
        ran.append((command, argument, how))
        if command == "KILL":
            raise ConsoleError("42704", "no session")
        if command == "SHOW STATS":
            return Table(COLUMNS["SHOW STATS"], [], "SHOW 0", ["worker 7 did not answer"])
        return VERSION if command == "SHOW VERSION" else Table((), [], command)
    return ConsoleProtocol(run)


def feed(console: ConsoleProtocol, data: bytes) -> bytes:
    return asyncio.run(console.feed(data))


@pytest.mark.parametrize("text, expected", [
    ("SHOW SESSIONS", ("SHOW SESSIONS", "")), ("  show   stats ;  ", ("SHOW STATS", "")),
    ("reload", ("RELOAD", "")), ("KILL 0a1b2c", ("KILL", "0a1b2c")),
])
def test_commands(text, expected):
    assert parse_command(text) == expected


@pytest.mark.parametrize("text", ["SELECT 1", "SHOW search_path", "KILL", "RELOAD; SHOW VERSION", "SHOW SESSIONS x"])
def test_anything_else_is_refused(text):
    with pytest.raises(ConsoleError) as caught:
        parse_command(text)
    assert caught.value.sqlstate == "42601"


def test_simple_query_answers_with_rows_and_errors():
    ran = []
    console = protocol(ran)
    out = replies(feed(console, codec.encode(codec.Query("SHOW VERSION")) + codec.encode(codec.Query("SELECT 1"))))
    assert [type(m).__name__ for m in out] == ["RowDescription", "DataRow", "CommandComplete", "ReadyForQuery",
                                               "ErrorResponse", "ReadyForQuery"]
    assert out[0].columns[0][0] == "version" and out[0].columns[0][3] == 25  # text
    assert out[1].values == (b"pgveil 0.1.0",) and out[2].tag == "SHOW 1"
    assert ran == [("SHOW VERSION", "", "simple")]  # the refused text never ran


def test_extended_protocol_and_skip_to_sync_after_an_error():
    ran = []
    console = protocol(ran)
    batch = b"".join(codec.encode(m) for m in (
        codec.Parse("s1", "SHOW VERSION", ()), codec.Describe(b"S", "s1"), codec.Sync(),
        codec.Bind("", "s1", (), (), ()), codec.Execute("", 0), codec.Sync(),
        codec.Parse("", "KILL 42", ()), codec.Bind("", "", (), (), ()), codec.Execute("", 0),
        codec.Parse("", "SHOW VERSION", ()), codec.Sync()))
    out = replies(feed(console, batch))
    assert [type(m).__name__ for m in out] == [
        "ParseComplete", "ParameterDescription", "RowDescription", "ReadyForQuery",
        "BindComplete", "DataRow", "CommandComplete", "ReadyForQuery",
        "ParseComplete", "BindComplete", "ErrorResponse", "ReadyForQuery"]  # the last Parse was skipped
    assert ran == [("SHOW VERSION", "", "extended"), ("KILL", "42", "extended")]
    feed(console, codec.encode(codec.Terminate()))
    assert console.closed


def test_a_warning_goes_before_the_rows():
    out = replies(feed(protocol([]), codec.encode(codec.Query("SHOW STATS"))))
    assert [type(m).__name__ for m in out] == ["NoticeResponse", "RowDescription", "CommandComplete",
                                               "ReadyForQuery"]
    assert out[0].get(b"S") == "WARNING" and out[0].get(b"M") == "worker 7 did not answer"
