"""The purpose declaration read by proxy/purpose.py (the session only asks it): what counts as
``SET``/``RESET pgveil.purpose`` on its own, the value, the scope, the tag the client gets and
the text the audit keeps.  Pure: no network."""

import pytest

from proxy.purpose import Declaration, mentions_purpose, read_declaration

CASES = [
    ("SET pgveil.purpose = 'CS-1042'", Declaration("CS-1042", False, "SET", "SET pgveil.purpose = ?")),
    ("  set   PGVEIL.PURPOSE to 'x'  ;  ", Declaration("x", False, "SET", "SET pgveil.purpose = ?")),
    ("SET SESSION pgveil.purpose = 'x'", Declaration("x", False, "SET", "SET pgveil.purpose = ?")),
    ("SET LOCAL pgveil.purpose = 'x'", Declaration("x", True, "SET", "SET LOCAL pgveil.purpose = ?")),
    ("SET pgveil.purpose = 'it''s'", Declaration("it's", False, "SET", "SET pgveil.purpose = ?")),
    ("SET pgveil.purpose = ''", Declaration(None, False, "SET", "RESET pgveil.purpose")),
    ("SET pgveil.purpose TO DEFAULT", Declaration(None, False, "SET", "RESET pgveil.purpose")),
    ("SET LOCAL pgveil.purpose = DEFAULT", Declaration(None, True, "SET", "RESET pgveil.purpose")),
    ("RESET pgveil.purpose", Declaration(None, False, "RESET", "RESET pgveil.purpose")),
    ("\n\treset pgveil.purpose;\n", Declaration(None, False, "RESET", "RESET pgveil.purpose")),
]


@pytest.mark.parametrize("sql, expected", CASES)
def test_a_declaration_alone_is_read(sql, expected):
    assert read_declaration(sql) == expected
    assert mentions_purpose(sql)


NOT_ALONE = [
    "SET pgveil.purpose = 'a'; SELECT 1",
    "SELECT 1; SET pgveil.purpose = 'a'",
    "SET pgveil.purpose = 'a' -- why",
    "/* c */ SET pgveil.purpose = 'a'",
    "SET pgveil.purpose = 'a', 'b'",
    "SET pgveil.purpose = a",
    "SELECT set_config('pgveil.purpose', 'a', false)",
    "SET pgveil.purpose = 'unterminated",
    "RESET pgveil.purpose, search_path",
]


@pytest.mark.parametrize("sql", NOT_ALONE)
def test_anything_else_naming_the_purpose_is_not_a_declaration(sql):
    assert read_declaration(sql) is None
    assert mentions_purpose(sql)  # the session refuses it (Refusal.purpose_not_alone)


def test_texts_that_do_not_name_it():
    for sql in ("SELECT 1", "SET search_path = public", "SET pgveil.other = 'x'"):
        assert read_declaration(sql) is None and not mentions_purpose(sql)
