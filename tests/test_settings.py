"""Settings as an allow list, read as PostgreSQL reads them (issue 12), without a network."""

from __future__ import annotations

import doctest

import pytest

from proxy import encodings, settings


def test_doctests():
    for module in (settings, encodings):
        assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("text, expected", [
    ("-c a=1", [("a", "1")]),
    ("-ca=1", [("a", "1")]),
    ("--a-b=1", [("a_b", "1")]),
    ("  -c   a=1  \t--b=2 ", [("a", "1"), ("b", "2")]),
    ("-c a=x\\ y\\\\z", [("a", "x y\\z")]),  # backslash escapes the next character, as pg_split_opts does
    ("-c a\\ b=1", [("a b", "1")]),
    ("-c a==1", [("a", "=1")]),
    ("", []),
    ("-c a", None),  # no value
    ("-c", None),
    ("-f s", None),  # forbids a plan type: another way to set a setting
    ("-S 1000", None),
    ("-ec a=1", None),
    ("stray", None),
    ("--a", None),
])
def test_options_are_read_as_postgres_reads_them(text, expected):
    assert settings.options(text) == expected


@pytest.mark.parametrize("params, words", [
    ((("user", "u"), ("database", "d"), ("application_name", "x"), ("client_encoding", "UTF8"),
      ("DateStyle", "ISO"), ("TimeZone", "UTC"), ("extra_float_digits", "3"), ("replication", "false")), None),
    ((("options", "-c search_path=public,pg_catalog"),), "pg_catalog must come first"),
    ((("options", '-c search_path="$user",\\ public'),), None),
    ((("search_path", "pg_catalog, public"),), None),
    ((("search_path", '"unclosed'),), "empty schema name"),
    ((("client_encoding", "BIG5"),), "client_encoding BIG5 is not allowed"),
    ((("client_encoding", "latin-1"),), None),
    ((("client_encoding", "win932"),), "client_encoding win932 is not allowed"),
    ((("replication", "database"),), "replication connections"),
    ((("_pq_.x", "1"),), "protocol option"),
    ((("enable_seqscan", "off"),), "changing enable_seqscan is not allowed"),
    ((("options", "-c work_mem=1GB"),), "changing work_mem is not allowed"),
])
def test_startup_parameters(params, words):
    problem = settings.startup_problem(params)
    assert (problem is None) if words is None else (words in (problem or "")), problem


def test_a_tier_widens_the_list_but_never_to_what_pgveil_relies_on():
    assert settings.check("work_mem", ["1GB"], ("work_mem",)) is None
    assert settings.check("enable_seqscan", ["off"], ("enable_*",)) is None
    assert "not allowed" in settings.check("backslash_quote", ["on"], ("*",))
    assert "not allowed" in settings.check("standard_conforming_strings", ["off"], ("*",))


def test_unsafe_encodings_are_known_by_every_alias():
    for name in ("SJIS", "Shift_JIS", "mskanji", "win932", "BIG5", "win950", "GBK", "cp936", "GB18030", "UHC",
                 "JOHAB", "EUC_TW", "MULE_INTERNAL", "nonsense"):
        assert encodings.canonical(name) not in encodings.READABLE, name
    for name in ("UTF8", "utf-8", "unicode", "LATIN1", "iso-8859-15", "WIN1252", "windows-1251", "KOI8-R", "EUC_JP",
                 "SQL_ASCII"):
        assert encodings.canonical(name) in encodings.READABLE, name


def test_what_dump_scripts_set_is_allowed_but_not_what_pgveil_cannot_read():
    assert settings.check("standard_conforming_strings", ["on"]) is None
    assert settings.check("standard_conforming_strings", None) is None  # RESET: the server reports the result
    assert "not allowed" in settings.check("standard_conforming_strings", ["off"])
    assert settings.check("row_security", ["off"]) is None
    assert "not allowed" in settings.check("backslash_quote", ["safe_encoding"])
