"""The heads of statements that carry a statement or name one, read by token types.

A statement's kind and the names it declares or uses are read from sqlglot's tokens by their
*types* and their exact source text, never by comparing a token's text alone: a quoted name
(``"for"``, ``"as"``) has the text of a keyword but is never one.  Each reader follows
PostgreSQL's grammar for its statement and gives up (:class:`HeadError`) on anything else, so a
head that the server could read differently is refused rather than guessed.

Pure.

>>> from proxy.sql import tokenize
>>> text = '"for" CURSOR FOR SELECT 1'
>>> declare(tokenize(text), text)
('for', 3)
>>> text = 'c NO SCROLL CURSOR WITH HOLD FOR SELECT 1'
>>> declare(tokenize(text), text)
('c', 7)
"""

from __future__ import annotations

import re

from .sql import TokenType

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_LITERAL_TYPES = frozenset({"STRING", "NUMBER", "BYTE_STRING", "HEREDOC_STRING", "BIT_STRING", "HEX_STRING",
                            "NATIONAL_STRING", "RAW_STRING", "UNICODE_STRING", "IDENTIFIER"})
CURSOR_OPTIONS = frozenset({"NO", "SCROLL", "BINARY", "INSENSITIVE", "ASENSITIVE"})
FETCH_WORDS = frozenset({"NEXT", "PRIOR", "FIRST", "LAST", "ABSOLUTE", "RELATIVE", "ALL", "FORWARD", "BACKWARD",
                         "FROM", "IN"})


class HeadError(ValueError):
    """The head does not follow the grammar this module reads."""


def raw(token, text: str, offset: int = 0) -> str:
    """The token as written in ``text`` (which starts at ``offset`` of the tokenized text)."""
    return text[token.start - offset:token.end + 1 - offset]


def keyword(token, text: str, offset: int = 0) -> str | None:
    """The upper-cased word if ``token`` is an unquoted word, else None (a quoted name, a string,
    a number, punctuation, or a command's arguments that sqlglot keeps as one string).

    >>> from proxy.sql import tokenize
    >>> [keyword(t, 'for "for" For') for t in tokenize('for "for" For')]
    ['FOR', None, 'FOR']
    """
    if token.token_type.name in _LITERAL_TYPES:
        return None
    written = raw(token, text, offset)
    if written != token.text or _WORD.fullmatch(written) is None:
        return None
    return written.upper()


def name(token, text: str, offset: int = 0) -> str:
    """A name token as PostgreSQL folds it: a quoted name as written, a word lower-cased."""
    written = raw(token, text, offset)
    if token.token_type.name == "IDENTIFIER" and written == '"' + token.text.replace('"', '""') + '"':
        return token.text
    if keyword(token, text, offset) is not None:
        return written.lower()
    raise HeadError(f"{written[:40]!r} is not a name")


def _expect(tokens: list, i: int, text: str, offset: int, *words: str) -> int:
    if i >= len(tokens) or keyword(tokens[i], text, offset) not in words:
        raise HeadError(f"expected {' or '.join(words)}")
    return i + 1


def declare(tokens: list, text: str, offset: int = 0) -> tuple[str, int]:
    """``name [options] CURSOR [WITH|WITHOUT HOLD] FOR query`` (after DECLARE): the cursor's
    name and the index of the query's first token."""
    if not tokens:
        raise HeadError("DECLARE without a name")
    cursor = name(tokens[0], text, offset)
    i = 1
    while i < len(tokens) and keyword(tokens[i], text, offset) in CURSOR_OPTIONS:
        i += 1
    i = _expect(tokens, i, text, offset, "CURSOR")
    if i < len(tokens) and keyword(tokens[i], text, offset) in ("WITH", "WITHOUT"):
        i = _expect(tokens, i + 1, text, offset, "HOLD")
    i = _expect(tokens, i, text, offset, "FOR")
    if i >= len(tokens):
        raise HeadError("DECLARE without a query")
    return cursor, i


def _skip_parens(tokens: list, i: int) -> int:
    """Index after the parenthesised list starting at ``i`` (by token types)."""
    depth = 0
    while i < len(tokens):
        kind = tokens[i].token_type.name
        depth += kind == "L_PAREN"
        depth -= kind == "R_PAREN"
        i += 1
        if depth == 0:
            return i
    raise HeadError("unbalanced parentheses")


def prepare(tokens: list, text: str, offset: int = 0) -> tuple[str, int]:
    """``name [(type, ...)] AS statement`` (after PREPARE): the statement's name and the index of
    the statement's first token.  The type list may hold only names, numbers and punctuation."""
    if not tokens:
        raise HeadError("PREPARE without a name")
    statement = name(tokens[0], text, offset)
    i = 1
    if i < len(tokens) and tokens[i].token_type.name == "L_PAREN":
        end = _skip_parens(tokens, i)
        for token in tokens[i:end]:
            if token.token_type.name in _LITERAL_TYPES - {"IDENTIFIER", "NUMBER"} or ";" in token.text:
                raise HeadError("PREPARE's parameter types hold a literal")
        i = end
    i = _expect(tokens, i, text, offset, "AS")
    if i >= len(tokens):
        raise HeadError("PREPARE without a statement")
    return statement, i


def execute(tokens: list, text: str, offset: int = 0) -> tuple[str, int | None]:
    """``name [(expression, ...)]`` (after EXECUTE): the statement's name and the index of the
    opening parenthesis of its parameters (None without)."""
    if not tokens:
        raise HeadError("EXECUTE without a name")
    statement = name(tokens[0], text, offset)
    if len(tokens) == 1:
        return statement, None
    if tokens[1].token_type.name != "L_PAREN" or _skip_parens(tokens, 1) != len(tokens):
        raise HeadError("EXECUTE's parameters must be one parenthesised list")
    return statement, 1


def fetch(tokens: list, text: str, offset: int = 0) -> str:
    """``[direction] [FROM|IN] name`` (after FETCH or MOVE): the cursor's name."""
    if not tokens:
        raise HeadError("FETCH without a cursor")
    for token in tokens[:-1]:
        kind = token.token_type.name
        if kind not in ("NUMBER", "DASH", "PLUS") and keyword(token, text, offset) not in FETCH_WORDS:
            raise HeadError(f"unexpected {raw(token, text, offset)[:40]!r} in FETCH")
    return name(tokens[-1], text, offset)


# characters Python (and so sqlglot) takes for white space that PostgreSQL does not: it reads
# U+0080 and above as part of a name, and \x1c-\x1f as errors
_ODD_SPACE = re.compile("[\x1c-\x1f\x85\xa0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]")
_STRINGS = frozenset({"STRING", "BYTE_STRING", "HEREDOC_STRING", "BIT_STRING", "HEX_STRING", "NATIONAL_STRING",
                      "RAW_STRING", "UNICODE_STRING"})
_STRING_TYPES = frozenset(t for t in TokenType if t.name in _STRINGS)
_NEWLINE_SPACE = re.compile(r"[ \t\f\v]*[\n\r][ \t\n\r\f\v]*")


def odd_space(text: str, tokens: list, offset: int = 0) -> str | None:
    """A character between tokens that sqlglot took for white space (U+00A0, U+3000, U+2028,
    \x1c ...), where PostgreSQL reads it as part of a name or as an error; None if there is
    none.  Only ASCII white space separates tokens for PostgreSQL.

    >>> from proxy.sql import tokenize
    >>> odd_space("SELECT\u3000x", tokenize("SELECT\u3000x"))
    'U+3000'
    >>> odd_space("SELECT '\u3000'", tokenize("SELECT '\u3000'")) is None
    True
    """
    if _ODD_SPACE.search(text) is None:
        return None
    end = 0
    for token in tokens + [None]:
        start = token.start - offset if token is not None else len(text)
        found = _ODD_SPACE.search(text, end, start) if start > end else None
        if found is not None:
            return f"U+{ord(found.group()):04X}"
        if token is not None:
            end = max(end, token.end + 1 - offset)
    return None


def adjacent_strings(text: str, tokens: list, offset: int = 0) -> str | None:
    """Two string literals in a row, unless PostgreSQL reads them as sqlglot does: two plain
    ``'...'`` strings with only white space holding a newline between them (one string for
    both).  Without a newline PostgreSQL refuses them, across a comment it may or may not join
    them, and a continued ``E''`` string keeps its escapes, which sqlglot does not.

    >>> from proxy.sql import tokenize
    >>> adjacent_strings("SELECT 'a'\\n'b'", tokenize("SELECT 'a'\\n'b'")) is None
    True
    >>> adjacent_strings("SELECT 'a' 'b'", tokenize("SELECT 'a' 'b'"))
    "'a' 'b'"
    """
    previous = None
    for token in tokens:
        if token.token_type in _STRING_TYPES:
            if previous is not None:
                gap = text[previous.end + 1 - offset:token.start - offset]
                if not (raw(previous, text, offset).startswith("'") and raw(token, text, offset).startswith("'")
                        and _NEWLINE_SPACE.fullmatch(gap)):
                    return text[previous.start - offset:token.end + 1 - offset][:60]
            previous = token
        else:
            previous = None
    return None


def odd_number(text: str, tokens: list, offset: int = 0) -> str | None:
    """A number PostgreSQL reads otherwise than sqlglot: ``0x1F``, ``0o17``, ``0b101`` and
    ``1_000`` are integers for PostgreSQL 16 and later (sqlglot: a bit string, or a number and
    an alias), and ``123abc`` is an error there (sqlglot: ``123 AS abc``).

    >>> from proxy.sql import tokenize
    >>> [odd_number(t, tokenize(t)) for t in ("SELECT 0x1F", "SELECT 1_000", "SELECT 1e3, 5.")]
    ['0x1F', '1_000', None]
    """
    number = TokenType.NUMBER
    for i, token in enumerate(tokens):
        kind = token.token_type
        if kind in _STRING_TYPES and text[token.start - offset:token.start - offset + 1].isdigit():
            return raw(token, text, offset)[:40]
        if kind is number and i + 1 < len(tokens) and tokens[i + 1].start == token.end + 1:
            following = text[tokens[i + 1].start - offset:tokens[i + 1].start - offset + 1]
            if following.isalnum() or following in ("_", "$", '"') or not following.isascii():
                return text[token.start - offset:tokens[i + 1].end + 1 - offset][:40]
    return None


def misread(text: str, tokens: list, offset: int = 0) -> str | None:
    """Why PostgreSQL could read this statement otherwise than sqlglot's tokens say, or None.
    (Not for a statement sqlglot reads as a command: its arguments are one token whose position
    is unreliable; those are read on their own, see :meth:`proxy.policy.Statement.body`.)"""
    if tokens and tokens[0].token_type.name == "COMMAND":
        return None
    odd = odd_space(text, tokens, offset)
    if odd is not None:
        return f"{odd} between words is white space for pgveil but part of a name for PostgreSQL"
    joined = adjacent_strings(text, tokens, offset)
    if joined is not None:
        return f"string literals written one after the other ({joined}): write one string, or join them with ||"
    number = odd_number(text, tokens, offset)
    if number is not None:
        return f"the number {number} is read differently by PostgreSQL versions; write it in decimal"
    return None
