"""The codec's names and readers: message kinds named by direction, and the readers of the few
fields the session needs (Bind's names, Close's and Describe's target, Execute's portal, Parse,
CommandComplete's tag, ParameterStatus, ReadyForQuery's status, error fields).  Each reader
agrees with the full decoder on what the builders write, and raises ProtocolViolation (never
anything else) on a body that is not what its kind says.  Pure: no network."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import codec
from proxy.codec import BE, FE, Field, ProtocolViolation, Target, TxStatus

text = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30)
int16 = st.integers(-(2 ** 15), 2 ** 15 - 1)
int32 = st.integers(-(2 ** 31), 2 ** 31 - 1)
values = st.lists(st.none() | st.binary(max_size=20), max_size=4).map(tuple)
formats = st.lists(int16, max_size=4).map(tuple)
target = st.sampled_from([Target.STATEMENT, Target.PORTAL])


def body(message) -> bytes:
    return codec.encode(message)[5:]


# ----------------------------------------------------------------------------- names
def test_kinds_name_every_message_class_in_its_direction():
    assert {FE.name(code) for code in codec.FRONTEND} == set(FE._NAMES.values())
    assert {BE.name(code) for code in codec.BACKEND} == set(BE._NAMES.values())
    assert codec.FRONTEND[FE.DESCRIBE] is codec.Describe and codec.BACKEND[BE.DATA_ROW] is codec.DataRow
    assert codec.FRONTEND[FE.EXECUTE] is codec.Execute and codec.BACKEND[BE.ERROR] is codec.ErrorResponse
    assert codec.Query.TYPE == bytes([FE.QUERY]) and codec.ReadyForQuery.TYPE == bytes([BE.READY_FOR_QUERY])
    assert FE.QUERY == b"Q"[0] and type(FE.QUERY) is int  # compares with data[0] as an int does


def test_kinds_name_an_unknown_code_by_its_letter():
    assert FE.name(ord("Z")) == "'Z'" and BE.name(ord("Z")) == "READY_FOR_QUERY"


# ----------------------------------------------------------------------------- round trips
@settings(max_examples=80, deadline=None)
@given(portal=text, statement=text, param_formats=formats, params=values, result_formats=formats)
def test_bind_names_round_trip(portal, statement, param_formats, params, result_formats):
    assert codec.bind_names(body(codec.Bind(portal, statement, param_formats, params, result_formats))) \
        == (portal, statement)


@settings(max_examples=60, deadline=None)
@given(kind=target, name=text)
def test_close_and_describe_targets_round_trip(kind, name):
    assert codec.close_target(body(codec.Close(kind, name))) == (kind, name)
    assert codec.describe_target(body(codec.Describe(kind, name))) == (kind, name)


@settings(max_examples=60, deadline=None)
@given(portal=text, max_rows=int32)
def test_execute_target_round_trip(portal, max_rows):
    assert codec.execute_target(body(codec.Execute(portal, max_rows))) == (portal, max_rows)


@settings(max_examples=60, deadline=None)
@given(name=text, query=text, types=st.lists(int32, max_size=4).map(tuple))
def test_parse_fields_round_trip(name, query, types):
    assert codec.parse_fields(body(codec.Parse(name, query, types))) == (name, query, types)


@settings(max_examples=60, deadline=None)
@given(tag=text)
def test_command_tag_round_trip(tag):
    assert codec.command_tag(body(codec.CommandComplete(tag))) == tag


@settings(max_examples=60, deadline=None)
@given(name=text, value=text)
def test_parameter_status_round_trip(name, value):
    assert codec.parameter_status(body(codec.ParameterStatus(name, value))) == (name, value)


@pytest.mark.parametrize("status", [TxStatus.IDLE, TxStatus.IN_BLOCK, TxStatus.FAILED])
def test_ready_status_round_trip(status):
    assert codec.ready_status(body(codec.ReadyForQuery(status))) == status
    assert codec.ready_for_query(status) == codec.encode(codec.ReadyForQuery(status))


def test_error_fields_by_name():
    wire = codec.error_response("42501", "no", detail="why", hint="how")
    error = codec.error_fields(wire[5:])
    assert (error.sqlstate, error.message, error.severity) == ("42501", "no", "ERROR")
    assert (error.get(Field.DETAIL), error.get(Field.HINT), error.get(Field.WHERE)) == ("why", "how", None)
    notice = codec.decode_message(codec.BACKEND, codec.notice_response("01000", "hello", "WARNING"))
    assert isinstance(notice, codec.NoticeResponse)
    assert (notice.sqlstate, notice.message, notice.severity) == ("01000", "hello", "WARNING")
    assert codec.error_fields(codec.notice_response("01000", "hi")[5:]).message == "hi"  # the same layout


# ----------------------------------------------------------------------------- malformed bodies
MALFORMED = [
    (codec.bind_names, b""),
    (codec.bind_names, b"portal"),
    (codec.bind_names, b"portal\0statement"),
    (codec.close_target, b""),
    (codec.close_target, b"Xname\0"),
    (codec.close_target, b"Sname"),
    (codec.close_target, b"Sname\0extra"),
    (codec.describe_target, b"P"),
    (codec.describe_target, b"Q\0"),
    (codec.execute_target, b"portal\0"),
    (codec.execute_target, b"portal\0\0\0\0"),
    (codec.execute_target, b"portal\0\0\0\0\0\0"),
    (codec.execute_target, b"portal"),
    (codec.parse_fields, b"name\0select 1\0"),
    (codec.parse_fields, b"name\0select 1\0\0\x01\0\0"),
    (codec.parse_fields, b"name\0select 1"),
    (codec.command_tag, b"SELECT 1"),
    (codec.command_tag, b"SELECT 1\0\0"),
    (codec.parameter_status, b"name\0"),
    (codec.parameter_status, b"name\0value\0more"),
    (codec.ready_status, b""),
    (codec.ready_status, b"X"),
    (codec.ready_status, b"II"),
    (codec.error_fields, b"Cabc"),
    (codec.error_fields, b"C42501\0"),
    (codec.error_fields, b"C42501\0\0extra"),
]


@pytest.mark.parametrize("reader, data", MALFORMED, ids=[f"{r.__name__}-{d!r}" for r, d in MALFORMED])
def test_malformed_bodies_raise_the_codec_error(reader, data):
    with pytest.raises(ProtocolViolation):
        reader(data)


READERS = [codec.bind_names, codec.close_target, codec.describe_target, codec.execute_target, codec.parse_fields,
           codec.command_tag, codec.parameter_status, codec.ready_status, codec.error_fields]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40), index=st.integers(0, len(READERS) - 1))
def test_fuzz_readers_raise_only_protocol_violation(data, index):
    try:
        READERS[index](data)
    except ProtocolViolation:
        pass


def test_readers_read_bytearrays_as_bytes():
    wire = bytearray(codec.encode(codec.Bind("p", "s", (), (), ())))
    assert codec.bind_names(wire[5:]) == ("p", "s")
    assert codec.execute_target(bytearray(body(codec.Execute("p", 7)))) == ("p", 7)


def test_the_answer_to_an_ssl_request_has_names():
    assert (codec.SSL_ACCEPTED, codec.SSL_REFUSED) == (b"S", b"N")
