"""The wire codec: every message type round-trips, and no input makes it raise anything but
ProtocolViolation.  Pure: no network."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import codec
from proxy.codec import FRONTEND, ProtocolViolation, Query, decode_message, encode, query_text

text = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30)
raw = st.binary(max_size=40)
int16 = st.integers(-(2 ** 15), 2 ** 15 - 1)
int32 = st.integers(-(2 ** 31), 2 ** 31 - 1)
byte1 = st.binary(min_size=1, max_size=1)


def strategy_for(kind):
    if kind == codec.INT8:
        return byte1
    if kind == codec.INT16:
        return int16
    if kind == codec.INT32:
        return int32
    if kind == codec.CSTR:
        return text
    if kind == codec.NBYTES:
        return st.none() | raw
    if kind == codec.REST:
        return raw
    if kind == codec.CSTRLIST:
        return st.lists(text.filter(bool), max_size=4).map(tuple)
    if kind == codec.FIELDLIST:
        code = st.binary(min_size=1, max_size=1).filter(lambda b: b != b"\0")
        return st.lists(st.tuples(code, text), max_size=5).map(tuple)
    tag, inner = kind
    if tag == "record":
        return st.tuples(*(strategy_for(k) for _, k in inner))
    return st.lists(strategy_for(inner), max_size=5).map(tuple)


def message_strategy(cls):
    return st.builds(cls, *(strategy_for(kind) for _, kind in cls.SPEC))


ALL = [(codec.FRONTEND, cls) for cls in codec.FRONTEND_MESSAGES] + \
      [(codec.BACKEND, cls) for cls in codec.BACKEND_MESSAGES]


@pytest.mark.parametrize("table, cls", ALL, ids=[f"{'F' if t is codec.FRONTEND else 'B'}-{c.__name__}"
                                                 for t, c in ALL])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_every_message_type(table, cls, data):
    message = data.draw(message_strategy(cls))
    wire = codec.encode(message)
    assert codec.decode_message(table, wire) == message
    assert struct.unpack_from("!i", wire, 1)[0] == len(wire) - 1


@pytest.mark.parametrize("cls", [codec.PasswordMessage, codec.SASLInitialResponse, codec.SASLResponse])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip_authentication_responses(cls, data):
    message = data.draw(message_strategy(cls))
    assert codec.decode_as(cls, message.body()) == message


def test_direction_tables_are_separate():
    assert codec.FRONTEND[ord("D")] is codec.Describe
    assert codec.BACKEND[ord("D")] is codec.DataRow
    assert codec.FRONTEND[ord("E")] is codec.Execute and codec.BACKEND[ord("E")] is codec.ErrorResponse


startup_params = st.lists(st.tuples(text.filter(bool), text), max_size=5).map(tuple)


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.builds(codec.StartupMessage, st.sampled_from([codec.PROTOCOL_3_0, codec.PROTOCOL_3_2]), startup_params),
    st.just(codec.SSLRequest()), st.just(codec.GSSENCRequest()),
    st.builds(codec.CancelRequest, int32, st.binary(min_size=4, max_size=256))))
def test_startup_round_trip(packet):
    assert codec.decode_startup(codec.encode_startup(packet)) == packet


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decoders_raise_only_protocol_violation(data):
    for table in (codec.FRONTEND, codec.BACKEND):
        try:
            codec.decode_message(table, data)
        except codec.ProtocolViolation:
            pass
    for cls in codec.FRONTEND_MESSAGES + codec.BACKEND_MESSAGES:
        try:
            codec.decode_as(cls, data)
        except codec.ProtocolViolation:
            pass
    try:
        codec.decode_startup(data)
    except codec.ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100), st.integers(5, 40))
def test_fuzz_valid_header_garbage_body(body, type_index):
    kind = sorted(set(codec.FRONTEND) | set(codec.BACKEND))[type_index % 25]
    wire = bytes([kind]) + struct.pack("!i", len(body) + 4) + body
    for table in (codec.FRONTEND, codec.BACKEND):
        try:
            codec.decode_message(table, wire)
        except codec.ProtocolViolation:
            pass


stream_messages = st.lists(st.one_of(
    st.builds(codec.DataRow, st.lists(st.none() | st.binary(max_size=300), max_size=4).map(tuple)),
    st.builds(codec.CommandComplete, text),
    st.builds(codec.ReadyForQuery, st.sampled_from([b"I", b"T", b"E"])),
    st.builds(codec.ErrorResponse, strategy_for(codec.FIELDLIST)),
    st.builds(codec.ParameterStatus, text, text)), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(stream_messages, st.lists(st.integers(1, 64), min_size=1, max_size=50), st.booleans())
def test_splitter_chunking_does_not_matter(messages, cuts, watch_rows):
    """However the stream is cut, the same bytes come out, and each watched message whole."""
    stream = b"".join(codec.encode(m) for m in messages)
    watch = b"ZES" + (b"D" if watch_rows else b"")
    splitter = codec.Splitter(watch)
    out = bytearray()
    seen = []
    pos = 0
    i = 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        i += 1
        chunk, marks = splitter.feed(stream[pos:pos + size])
        pos += size
        for kind, start, end in marks:
            seen.append(codec.decode_message(codec.BACKEND, bytes(chunk[start:end])))
        out += chunk
    assert bytes(out) == stream
    assert splitter.pending == 0 and not splitter.mid_message
    assert seen == [m for m in messages if m.TYPE in [bytes([w]) for w in watch]]


def test_splitter_rejects_absurd_length_and_streams_long_unwatched():
    splitter = codec.Splitter(b"Z", max_size=1000)
    with pytest.raises(codec.ProtocolViolation):
        splitter.feed(b"Z\x00\x00\x10\x00")
    splitter = codec.Splitter(b"Z")
    big = codec.encode(codec.DataRow((b"x" * 100_000,)))
    out, marks = splitter.feed(big[:10])
    assert out == big[:10] and splitter.mid_message  # streamed, not held
    out, _ = splitter.feed(big[10:] + codec.encode(codec.ReadyForQuery(b"I")))
    assert out == big[10:] + codec.encode(codec.ReadyForQuery(b"I"))


def test_error_response_helper_fields():
    error = codec.decode_message(codec.BACKEND, codec.error_response("42501", "no", detail="d", hint="h"))
    assert error.get(b"C") == "42501" and error.get(b"D") == "d" and error.get(b"H") == "h"
    assert error.get(b"S") == "ERROR"


@settings(max_examples=500, deadline=None)
@given(st.text().filter(lambda t: "\0" not in t))
def test_query_text_is_decode_message_without_the_message(text):
    data = encode(Query(text))
    assert query_text(data) == decode_message(FRONTEND, data).query == text


@pytest.mark.parametrize("data", [b"Q\0\0\0\x05\0" + b"x", b"Q\0\0\0\x07a\0", b"Q\0\0\0\x09a\0b\0\0", b"Q\0\0\0\x04",
                                  b"Q\0\0\0\x06ab"])
def test_query_text_rejects_what_decode_message_rejects(data):
    with pytest.raises(ProtocolViolation):
        query_text(data)


field = st.tuples(text, int32, int16, int32, int16, int32, int16)


@settings(max_examples=500, deadline=None)
@given(st.lists(field, max_size=6))
def test_row_sources_are_decode_message_without_the_message(columns):
    data = encode(codec.RowDescription(tuple(columns)))
    assert codec.row_sources(data) == [c[:3] for c in decode_message(codec.BACKEND, data).columns] == \
        [c[:3] for c in columns]


@settings(max_examples=500, deadline=None)
@given(st.lists(field, min_size=1, max_size=3), st.integers(0, 60), st.binary(max_size=3))
def test_row_sources_reject_what_decode_message_rejects(columns, cut, extra):
    data = encode(codec.RowDescription(tuple(columns)))
    broken = data[:max(5, len(data) - cut)] + extra
    broken = broken[:1] + struct.pack("!I", len(broken) - 1) + broken[5:]  # a consistent length, a wrong body
    try:
        expected = [c[:3] for c in decode_message(codec.BACKEND, broken).columns]
    except ProtocolViolation:
        with pytest.raises(ProtocolViolation):
            codec.row_sources(broken)
    else:
        assert codec.row_sources(broken) == expected
