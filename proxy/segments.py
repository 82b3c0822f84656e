"""A Query's text as statements, and the leading words that say what kind each one is.

:func:`split_statements` cuts a text where the server will (sqlglot's tokenizer, semicolons
outside strings and comments); a :class:`Segment` is one statement with its tokens, and its
leading keyword (:attr:`Segment.word`) is what the policy classifies it by, never sqlglot's
guess at what it parsed.

Pure: no I/O.

>>> [s.word for s in split_statements("BEGIN; select 1; (SELECT 2)")]
['BEGIN', 'SELECT', '(']
"""

from __future__ import annotations

from dataclasses import dataclass

from . import heads
from .sql import tokenize

# statement kinds by leading keyword (proxy.statement and the all-clear gate of proxy.pipeline)
TRANSACTION_WORDS = frozenset({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"})
CURSOR_WORDS = frozenset({"FETCH", "MOVE", "CLOSE"})
SESSION_WORDS = frozenset({"LISTEN", "UNLISTEN", "NOTIFY", "EXECUTE"})
HARMLESS_WORDS = frozenset({"DISCARD", "DEALLOCATE"})
QUERY_WORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
WRITE_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})
DDL_WORDS = frozenset({"CREATE", "ALTER", "DROP", "COMMENT"})


@dataclass
class Segment:
    text: str
    tokens: list
    offset: int  # position of text in the whole statement

    @property
    def word(self) -> str:
        """The statement's leading keyword ("(" for a parenthesised query); "" when it does not
        start with an unquoted word: a quoted name is never a keyword."""
        first = self.tokens[0]
        if first.token_type.name == "L_PAREN":
            return "("
        return heads.keyword(first, self.text, self.offset) or ""

    def words(self, n: int) -> list[str]:
        """The first ``n`` tokens as keywords ("" for a token that is not an unquoted word)."""
        return [heads.keyword(t, self.text, self.offset) or "" for t in self.tokens[:n]]

    def keyword(self, i: int) -> str | None:
        return heads.keyword(self.tokens[i], self.text, self.offset) if i < len(self.tokens) else None


def split_statements(sql: str, tokens: list | None = None) -> list[Segment]:
    """Statements of a Query message, as the server will see them (empty ones dropped).
    ``tokens``: the text's tokens, when the caller has them already."""
    if tokens is None:
        tokens = tokenize(sql)
    segments, current = [], []
    for token in tokens + [None]:
        if token is None or token.token_type.name == "SEMICOLON":
            if current:
                start, end = current[0].start, current[-1].end + 1
                segments.append(Segment(sql[start:end], current, start))
            current = []
        else:
            current.append(token)
    return segments
