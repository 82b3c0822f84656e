"""Differential suite: what pgveil reads is what PostgreSQL reads, or pgveil refuses (issue 12).

Generated statements across string forms (plain '' with '' escapes, E'' with every kind of
backslash escape, U&'' with and without UESCAPE, dollar quotes with tags, B''/X''/N'', strings
continued over a newline, comments, several statements in one text) are decided for a
restricted tier; the text pgveil would send is run on the real server next to the client's
text.  Both must give the same results (or the same failure), or pgveil must refuse: a
literal or statement boundary that pgveil reads differently shows up as a different result.

The encodings pgveil reads are held to the server too: random bytes decode in pgveil's codec
exactly when PostgreSQL's ``convert_from`` accepts them, to the same text (pgveil may refuse
more, never read differently).
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import RULES, live_catalog
from proxy import encodings
from proxy.policy import Context, decide
from proxy.rules import load_rules

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(pg):
    conn = psycopg.connect(pg.dsn(database="crm"), autocommit=True)
    conn.execute("SET standard_conforming_strings = on")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def context(pg):
    rules = load_rules(RULES.read_text())
    return Context(rules.tier("sales"), rules, live_catalog(pg, "crm"))


def run(conn, sql: str):
    """Every result of a simple-protocol Query, or the error's SQLSTATE class."""
    cur = psycopg.ClientCursor(conn)
    try:
        cur.execute(sql)
        results = []
        while True:
            results.append(cur.fetchall() if cur.description is not None else cur.statusmessage)
            if not cur.nextset():
                return results
    except psycopg.Error as exc:
        return ("error", (exc.sqlstate or "")[:2])


# ----------------------------------------------------------------------------- string forms
CHARS = st.sampled_from(list("ab'\\\"$;-/*\n\t xu0123456789+!?&é王\u3000") + ["''", "\\'", "$$", "--", "/*", "*/"])
TEXT = st.lists(CHARS, max_size=12).map("".join)


def plain(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


ESCAPES = st.sampled_from(["\\\\", "\\'", "''", "\\n", "\\t", "\\b", "\\x41", "\\x4", "\\101", "\\1", "\\u0041",
                           "\\U00000041", "\\u00e9", "\\z", "\\", "\\x", "a", "é", "'", "\\\n"])


@st.composite
def e_string(draw) -> str:
    return draw(st.sampled_from(["E", "e"])) + "'" + "".join(draw(st.lists(ESCAPES, max_size=8))) + "'"


@st.composite
def u_string(draw) -> str:
    escape = draw(st.sampled_from(["\\", "!", "#", None]))
    mark = escape or "\\"
    parts = draw(st.lists(st.sampled_from(["a", "''", f"{mark}0041", f"{mark}+000041", f"{mark}{mark}", f"{mark}00e9",
                                           f"{mark}d83d{mark}de00", f"{mark}12", "é", "\\", "!"]), max_size=6))
    text = "U&'" + "".join(parts) + "'"
    return text + (f" UESCAPE '{escape}'" if escape is not None and escape != "\\" else "")


@st.composite
def dollar(draw) -> str:
    tag = draw(st.sampled_from(["", "a", "tag", "_x", "a1", "é", "A"]))
    body = draw(TEXT)
    return f"${tag}${body}${tag}$"


LITERAL = st.one_of(
    TEXT.map(plain),
    TEXT.map(lambda t: "'" + t + "'"),  # as written: may not even be one literal
    e_string(), u_string(), dollar(),
    st.tuples(TEXT, TEXT).map(lambda p: plain(p[0]) + "\n" + plain(p[1])),  # continued over a newline
    st.tuples(TEXT, TEXT).map(lambda p: plain(p[0]) + " " + plain(p[1])),  # not continued: an error
    st.sampled_from(["B'0101'", "X'1F'", "b'2'", "N'abc'", "n'é'", "'a' /* x */ 'b'", "1e3", "0x1F", "1_000",
                     ".5", "5.", "$1"]),
)
JOIN = st.sampled_from([", ", " || ", "; SELECT ", " -- x\n, ", " /* ; */ , ", "\n, "])


@st.composite
def statement(draw) -> str:
    literals = draw(st.lists(LITERAL, min_size=1, max_size=3))
    joins = [draw(JOIN) for _ in literals[1:]]
    body = literals[0] + "".join(j + lit for j, lit in zip(joins, literals[1:]))
    return "SELECT " + body + draw(st.sampled_from(["", ";", " -- end", "\n"]))


def test_generated_statements_read_as_postgres_reads_them(server, context):
    seen = {"refused": 0, "compared": 0}

    @SETTINGS
    @given(statement())
    def check(sql):
        decision = decide(sql, context)
        if decision.refused:
            seen["refused"] += 1
            return
        seen["compared"] += 1
        assert run(server, decision.sql) == run(server, sql), (sql, decision.sql)

    check()
    assert seen["compared"] > 100, seen  # the suite compares, it does not only watch refusals


@pytest.mark.parametrize("sql", [
    "SELECT E'\\\\', ' || (SELECT 1) -- '",
    "SELECT U&'d\\0061t\\+000061' , U&'d!0061t' UESCAPE '!'",
    "SELECT $a$ ' ; $$ $a$, $$x$$",
    "SELECT 'a'\n'b', E'\\x41\\101\\u0041'",
    "SELECT E'\\'' || ';' ; SELECT 2",
    "SELECT 'x' -- ;\n, 'y'",
    "SELECT $1$x$1$",
    "SELECT $é$a'b$é$, $a$x$a$y, $$a$$b$$",
    "SELECT 'a' --c\n 'b'",
    "SELECT E'a'\n'\\x41'",
    "SELECT 1.e3, 1..2, .1e-2x",
    "SELECT 1\x1c, 2",
])
def test_known_hard_forms(server, context, sql):
    decision = decide(sql, context)
    if not decision.refused:
        assert run(server, decision.sql) == run(server, sql), decision.sql


# ----------------------------------------------------------------------------- encodings
READ = sorted(encodings.CODECS)


@pytest.mark.parametrize("name", READ)
def test_encodings_decode_as_the_server_converts(server, name):
    codec = encodings.CODECS[name]

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(st.lists(st.one_of(st.integers(0x80, 0xFF), st.sampled_from(b"'\\a;$")), max_size=8).map(bytes))
    def check(raw):
        try:
            ours = encodings.decode(raw.decode("utf-8", "surrogateescape"), codec)
        except UnicodeError:
            ours = None
        try:
            theirs = server.execute("SELECT convert_from(%s::bytea, %s)", (raw, name)).fetchone()[0]
        except psycopg.Error:
            theirs = None
        if ours is not None:  # pgveil may refuse more; what it reads, the server reads the same
            assert ours == theirs, (raw, ours, theirs)

    check()
