"""proxy/errors.py without a network: which fields and messages a restricted tier keeps."""

import doctest

import pytest

from proxy import errors


def fields(code, message, **extra):
    return ((b"S", "ERROR"), (b"V", "ERROR"), (b"C", code), (b"M", message),
            *((k.encode(), v) for k, v in extra.items()))


def test_doctest():
    assert doctest.testmod(errors).failed == 0


@pytest.mark.parametrize("code, message", [
    ("22001", "value too long for type character varying(3)"),
    ("22021", 'invalid byte sequence for encoding "UTF8": 0xe4 0xb8'),
    ("22P05", 'character with byte sequence 0xe4 0xb8 0x80 in encoding "UTF8" has no equivalent in encoding "LATIN1"'),
    ("2200N", "invalid XML content"),
    ("P0001", "customer 13912345678 is blocked"),
    ("XX000", "could not find tuple for 13912345678"),
    ("00000", 'table "13912345678" does not exist, skipping'),
    ("01000", "13912345678"),
    ("42622", 'identifier "13912345678..." will be truncated'),
])
def test_value_bearing_messages_become_fixed_texts(code, message):
    out = dict(errors.scrub(fields(code, message), "sales"))
    assert out[b"C"] == code and out[b"S"] == "ERROR"
    assert message not in out[b"M"] and "1391" not in out[b"M"] and "0xe4" not in out[b"M"]
    assert f"SQLSTATE {code}" in out[b"M"]


@pytest.mark.parametrize("code, message", [
    ("23505", 'duplicate key value violates unique constraint "customers_pkey"'),
    ("42501", "permission denied for table customers"),
    ("25P02", "current transaction is aborted, commands ignored until end of transaction block"),
    ("57014", "canceling statement due to user request"),
    ("22012", "division by zero"),
    ("42703", 'column "nme" does not exist'),
])
def test_messages_that_name_objects_are_kept(code, message):
    assert dict(errors.scrub(fields(code, message), "sales"))[b"M"] == message


def test_every_field_that_can_echo_data_is_dropped():
    scrubbed = errors.scrub(fields("23514", 'new row for relation "customers" violates check constraint "g"',
                                   D="Failing row contains (1, 13912345678).", H="hint 1391", W="SQL function 1391",
                                   q="SELECT 1391", p="3", F="execMain.c", L="2000", R="ExecConstraints",
                                   t="customers", n="g", P="12"), "sales")
    assert {k for k, _ in scrubbed} == {b"S", b"V", b"C", b"M", b"t", b"n", b"P"}
