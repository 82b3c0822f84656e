"""Linear time on client text (issue 13): no expression that reads a client's text can backtrack
super-linearly, and the Python around them does work proportional to the text.

Two holds: the *structure* of every regular expression that reads client text (a repetition that
something follows, and that could give characters back to be tried another way, must be
possessive), and a *work count* (calls made, tests/workcount.py) that at most doubles when the
input doubles.  No timing: the machines are shared and noisy.  A pytest timeout stands for
"answered at all" on the inputs that used to take exponential time.
"""

from __future__ import annotations

import re
import re._constants as C
import re._parser as P

import pytest

from proxy import lexer
from proxy import normalize as normalizer
from proxy import purpose
from proxy.normalize import normalize
from proxy.session import readonly
from proxy.lexer import quick
from workcount import grows_linearly

# every compiled expression that runs over a client's text
CLIENT_TEXT_PATTERNS = {
    "lexer._LITERAL": lexer._LITERAL, "lexer._CODE": lexer._CODE, "lexer._WORD": lexer._WORD,
    "lexer._PARAM": lexer._PARAM, "lexer._PAIR_ODD_SPACE": lexer._PAIR_ODD_SPACE, "lexer._SPACE": lexer._SPACE,
    "lexer._FIRST": lexer._FIRST, "lexer.LIST": lexer.LIST, "normalize._ROUGH_VALUE": normalizer._ROUGH_VALUE,
    "normalize._ROUGH_NUMBER": normalizer._ROUGH_NUMBER,
    "purpose.PURPOSE_SET": purpose.PURPOSE_SET,
    "readonly._TOKENS": readonly._TOKENS, "readonly._OPERATOR_RUN": readonly._OPERATOR_RUN,
}
BOUNDED = 8  # a repetition of at most this many is a constant, whatever follows it


def hazards(seq, followed: bool, where: str = "") -> list[str]:
    """Repetitions that can give back what they took to something after them."""
    found = []
    items = list(seq)
    for i, (op, av) in enumerate(items):
        after = followed or i < len(items) - 1
        if op in (C.MAX_REPEAT, C.MIN_REPEAT):
            low, high, body = av
            if high > BOUNDED and after:
                found.append(f"{where}: a backtracking repetition {{{low},{high}}} with something after it")
            found += hazards(body, True, where)
        elif op is C.POSSESSIVE_REPEAT:
            found += hazards(av[2], True, where)
        elif op is C.SUBPATTERN:
            found += hazards(av[3], after, where)
        elif op is C.ATOMIC_GROUP:
            found += hazards(av, False, where)  # nothing outside can make it give back
        elif op is C.BRANCH:
            for alternative in av[1]:
                found += hazards(alternative, after, where)
        elif op in (C.ASSERT, C.ASSERT_NOT):
            found += hazards(av[1], False, where)
    return found


@pytest.mark.parametrize("name", sorted(CLIENT_TEXT_PATTERNS))
def test_no_expression_over_client_text_can_backtrack(name):
    pattern = CLIENT_TEXT_PATTERNS[name]
    assert hazards(P.parse(pattern.pattern, pattern.flags), False, name) == []


def test_the_structure_check_finds_the_old_lexer_expression():
    old = re.compile(r"""(?:[ \t\r\n]+ | \x00 | [A-Za-z_][A-Za-z0-9_]* | ::|<=|>=|[=<>])*""", re.X)
    assert hazards(P.parse(old.pattern, old.flags), False, "old")
    assert hazards(P.parse(r"\s*;?\s*$", 0), False, "old purpose")


FORMATTED = """SELECT id,
       name,
       phone,
       grade,
       created_at
  FROM customers
 WHERE grade = 'ordinary'
 ORDER BY id
 LIMIT 3; -- first customers"""


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text", [
    FORMATTED, FORMATTED.replace("\n", "\r\n"), "SELECT 1" + " " * 24 + "#", "SELECT x" + " " * 200_000 + "#",
    "SELECT x" + " <=" * 100_000 + " ~", 'SELECT "' + 'a""' * 100_000 + "x",
    "SELECT ab" + "\t\n  " * 50_000 + "/* note */", "SELECT '" + "a''" * 100_000 + "x",
    "SELECT 1.5" + ".5" * 100_000, "SELECT " + "1e" * 100_000 + "x",
])
def test_texts_that_took_exponential_time_are_read_at_once(text):
    quick(text)
    normalize.cache_clear()
    assert "first customers" not in normalize(text)


# inputs of size n that stress each path; each must cost at most twice as much at 2n
MAKERS = {
    "whitespace runs": lambda n: "SELECT x" + " " * n + "-- c",
    "formatted lines": lambda n: "SELECT id,\n" + "       name,\n" * (n // 14) + "  FROM customers -- c",
    "operators": lambda n: "SELECT a" + " <= b" * (n // 5) + " ~ c",
    "literals": lambda n: "SELECT " + ", ".join(["'x'"] * (n // 5)) + " #",
    "numbers": lambda n: "SELECT " + " + ".join(["1.5"] * (n // 6)),
    "quoted names": lambda n: "SELECT " + ", ".join(['"a""b"'] * (n // 8)) + " FROM t",
    "in list": lambda n: "SELECT * FROM t WHERE id IN (" + ",".join(["42"] * (n // 3)) + ")",
    "comments": lambda n: "SELECT 1 /* a */" * (n // 16),
    "commands": lambda n: "SHOW " * (n // 5),
    "unclosed": lambda n: "SELECT '" + "ab''" * (n // 4),
}


@pytest.mark.parametrize("path", sorted(MAKERS))
def test_the_quick_reading_does_linear_work(path):
    grows_linearly(quick, MAKERS[path])


@pytest.mark.parametrize("path", sorted(MAKERS))
def test_the_audit_normaliser_does_linear_work(path):
    def fresh(text):
        normalize.cache_clear()
        return normalize(text)
    grows_linearly(fresh, MAKERS[path])


def test_the_work_count_finds_quadratic_work():
    def quadratic(text):  # a word at a time, each time over the rest (as the old normaliser did)
        words = text.split()
        for i in range(len(words)):
            for word in words[i:]:
                word.upper()
    with pytest.raises(AssertionError):
        grows_linearly(quadratic, lambda n: "SHOW " * (n // 50))


@pytest.fixture(scope="module")
def guarded(pg, tier_users, tmp_path_factory):
    from conftest import RULES, start_with_rules
    proxy = start_with_rules(pg, tmp_path_factory.mktemp("linear") / "crm.yaml", RULES.read_text())
    yield proxy
    proxy.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("user", ["sales_li", "dba_sun"])
def test_the_formatted_statement_with_a_comment_is_answered_live(pg, guarded, psql_bin, user):
    """The report from the field: psql -c "$(cat q.sql)" as sales_li froze the worker."""
    from conftest import TIER_PASSWORD, run_psql
    got = run_psql(psql_bin, guarded, "-A", "-t", "-c", FORMATTED, user=user, password=TIER_PASSWORD, timeout=30)
    assert got.returncode == 0, got.stderr
    assert len(got.stdout.strip().splitlines()) == 3
    other = run_psql(psql_bin, guarded, "-A", "-t", "-c", "SELECT 1", user="dba_sun", password=TIER_PASSWORD)
    assert other.stdout.strip() == "1"
