"""The quick lexer gives what sqlglot's tokens give, or nothing (proxy/lexer.py).

Whenever :func:`proxy.lexer.quick` answers, its shape and literals must be those of
:func:`proxy.policy.shape_of` over sqlglot's tokens (a wrong shape would put a cached
decision on the wrong statement), and its normalized text that of the audit's normalizer
(a literal left in it would reach the journal).
"""

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from proxy import policy
from proxy.normalize import from_tokens
from proxy.lexer import quick
from proxy.sql import SqlglotError, tokenize

FIXTURES = Path(__file__).parent / "fixtures" / "policy_cases.txt"
PGBENCH = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    "UPDATE pgbench_accounts SET abalance = abalance + -4351 WHERE aid = 923;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + 12 WHERE tid = 7;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 48213, -4351, CURRENT_TIMESTAMP);",
    "BEGIN;", "END;", "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
]
# pieces a statement is made of, the awkward ones included
PIECES = ["SELECT", "FROM", "WHERE", "customers", "c.phone", '"Odd ""name"""', "id", "=", "<>", "!=", ">=", "::",
          "int", "||", "-", "+", "*", "/", "%", "(", ")", ",", ".", "[", "]", ";", "42", "1.50", "0", "5.", ".5",
          "1e5", "0x1F", "1_000", "'x'", "'it''s'", "''", "'a\\b'", "E'a'", "e'a'", "N'a'", "B'01'", "X'ff'",
          "U&'d'", "$1", "$65535", "$99999", "$$x$$", "$q$y$q$", "-- note", "/* c */", "#", "@>", "?", ":x",
          "'中文'", "名前", "\t", "\n", "  ", "AND", "IN", "LIMIT", "x'a'", "'a' 'b'", "'a'\n'b'", "$", "\\", "~",
          "'multi\nline'", "1.", "a$b", "ORDER BY", "ORDER  BY", "GROUP\nBY", "DO", "SHOW", "Lock", "CAST(", "AS"]
FIRST = ["SELECT", "UPDATE", "INSERT INTO t VALUES", "DELETE FROM t WHERE", "WITH", "(", "VALUES", "BEGIN", "SET",
         "SHOW", "FETCH", "EXECUTE", "COPY", ""]


def fixture_statements() -> list[str]:
    return [line[5:] for line in FIXTURES.read_text().splitlines() if line.startswith("sql: ")]


def check(sql: str) -> bool:
    """Assert agreement; True when quick answered."""
    got = quick(sql)
    if got is None:
        return False
    shape, literals, normalized = got
    try:
        tokens = tokenize(sql)
    except SqlglotError:
        pytest.fail(f"quick read what sqlglot cannot: {sql!r}")
    assert normalized == from_tokens(sql, tokens), sql
    words = policy.QUERY_WORDS | policy.WRITE_WORDS
    if tokens and tokens[0].text.upper() in words:
        assert policy.shape_of(sql, tokens) == (shape, literals), sql
    for kind, value in literals:  # and nothing of a literal is left in the audit's text
        assert kind in ("STRING", "NUMBER")
    return True


def test_policy_fixtures_and_pgbench_agree():
    statements = fixture_statements() + PGBENCH
    answered = sum(check(sql) for sql in statements)
    assert len(statements) > 150
    assert answered > len(statements) // 2, "the quick path should take most statements"


@pytest.mark.parametrize("sql", ["SELECT 1 -- 2", "SELECT E'a'", "SELECT 'a' 'b'", "SELECT 'a\\b'", "SELECT 1e5",
                                 "SELECT 5.", "SELECT 1; SELECT 2", "SELECT $$x$$", "SELECT x'ff'", "SELECT 名前",
                                 "SELECT $99999", "SELECT 'open", "SELECT /* c */ 1", "SELECT U&'d'", "SELECT 0x1F",
                                 "SELECT $1, ''", "SELECT $1 = ''''", "SELECT $1=$1", "SELECT $1,$2"])
def test_gives_up_on_what_it_does_not_know(sql):
    assert quick(sql) is None


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(FIRST), st.lists(st.sampled_from(PIECES), max_size=12),
       st.lists(st.sampled_from([" ", "", "\n"]), min_size=13, max_size=13))
def test_generated_statements_agree(first, pieces, gaps):
    sql = first + "".join(gap + piece for gap, piece in zip(gaps, pieces))
    check(sql)


@settings(max_examples=2000, deadline=None)
@given(st.text(min_size=0, max_size=20))
def test_any_string_literal_agrees(value):
    check("SELECT * FROM customers WHERE name = '" + value.replace("'", "''") + "'")


PLAIN = ["customers", "c.phone", '"Odd ""name"""', "=", "<>", ">=", "::", "int", "||", "-", "+", "*", "(", ")",
         ",", ".", "42", "1.50", "0", "'x'", "'it''s'", "''", "'中文'", "$1", "AND", "OR", "IN", "LIMIT", "ORDER BY",
         "GROUP BY", "FROM", "WHERE", "JOIN", "ON", "AS", "NOT", "NULL", "IS", "CASE", "WHEN", "THEN", "END", ";"]


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["SELECT", "UPDATE", "INSERT INTO t VALUES", "DELETE FROM t WHERE", "WITH", "("]),
       st.lists(st.sampled_from(PLAIN), max_size=14), st.lists(st.sampled_from([" ", "", "  "]), min_size=15,
                                                               max_size=15))
def test_generated_plain_statements_agree(first, pieces, gaps):
    check(first + "".join(gap + piece for gap, piece in zip(gaps, pieces)))


def _generator_renders(kind: str, text: str) -> str:
    from proxy.sql import exp, to_sql
    return to_sql(exp.Literal.string(text) if kind == "STRING" else exp.Literal.number(text))


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.tuples(st.just("STRING"), st.text(max_size=30)),
                 st.tuples(st.just("NUMBER"), st.from_regex(r"[0-9]{1,25}(\.[0-9]{1,10})?", fullmatch=True))))
def test_literals_are_put_back_as_the_generator_writes_them(literal):
    """A shape's decision gets each statement's literals back as sqlglot would have written
    them; the short cut in policy._render must agree with the generator."""
    assert policy._render(*literal) == _generator_renders(*literal)
