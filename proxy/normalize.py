"""SQL with every literal replaced by ``?``: the audit never stores a customer's value.

Built from tokens, so comments (which can hold anything) are dropped too, and a statement
the tokenizer cannot read keeps only its shape.  Part of the SQL text layer, beside
:mod:`proxy.lexer` and :mod:`proxy.sql`: the policy engine and the audit records both read it,
and it reads neither.

>>> normalize("SELECT * FROM customers WHERE id_number = '110105194912310021' -- 110105")
'SELECT * FROM customers WHERE id_number = ?'
>>> normalize("SELECT 1 WHERE x IN (1, 2, 3)")
'SELECT ? WHERE x IN (?)'
"""

from __future__ import annotations

import functools
import re

from .lexer import LIST as _LIST, quick
from .sql import SqlglotError, tokenize

LITERALS = frozenset({"STRING", "NUMBER", "BYTE_STRING", "HEREDOC_STRING", "BIT_STRING", "HEX_STRING",
                      "NATIONAL_STRING", "RAW_STRING", "UNICODE_STRING"})


@functools.lru_cache(maxsize=8192)
def normalize(sql: str, limit: int = 4000) -> str:
    return _read(sql, limit)


def _read(sql: str, limit: int, nested: bool = False) -> str:
    read = quick(sql)  # the common statement, without sqlglot's tokenizer (the same text)
    if read is not None:
        return read[2][:limit]
    try:
        tokens = tokenize(sql)
    except (SqlglotError, ValueError, IndexError):
        return _rough(sql, limit)
    return from_tokens(sql, tokens, limit, nested)


def from_tokens(sql: str, tokens: list, limit: int = 4000, nested: bool = False) -> str:
    """:func:`normalize` for text already tokenized (the policy engine's tokens, reused).

    A command's arguments (one string token) are tokenized and normalised once more; within them
    a further command's arguments get the rough reading, so ``SHOW SHOW SHOW ...`` costs two
    passes over the text, not one per word (and no recursion as deep as the text is long).
    """
    parts: list[str] = []
    previous_end = None
    for i, token in enumerate(tokens):
        kind = token.token_type.name
        start = token.start
        if kind == "STRING" and i and tokens[i - 1].token_type.name in ("COMMAND", "SHOW", "FETCH", "EXECUTE"):
            # a command's arguments arrive as one string token: normalise them on their own
            start = tokens[i - 1].end + 1
            rest = sql[start:token.end + 1]
            if rest.strip() == sql.strip():
                text = "?"
            elif nested:
                text = _rough(rest, limit, "")
            else:
                text = _read(rest, limit, nested=True)
        elif kind == "NUMBER" and token.start > 0 and sql[token.start - 1] == "$":
            text = sql[token.start:token.end + 1]  # $1: a parameter, not a value
        elif kind in LITERALS:
            text = "?"
        else:
            text = sql[token.start:token.end + 1]
        if previous_end is not None and (start > previous_end + 1 or kind == "STRING" and start != token.start):
            parts.append(" ")  # the client had whitespace or a comment here
        parts.append(text)
        previous_end = token.end
    return _LIST.sub("?", "".join(parts))[:limit]


# Linear over any text: a quote run is taken possessively and never retried inside itself; a
# dollar tag, a comment or an unclosed quote swallows the rest of the text at once; a number is
# taken whole, so the scan goes on after it.
_ROUGH_VALUE = re.compile(r"'(?:[^']++|'')*+'?+|\$[A-Za-z_0-9]*+\$.*|--.*|/\*.*", re.S)
_ROUGH_NUMBER = re.compile(r"\b\d[\d.eE+-]*+")


def _rough(sql: str, limit: int, prefix: str = "unreadable: ") -> str:
    """No tokens: keep words and punctuation, drop everything that could be a value."""
    text = _ROUGH_NUMBER.sub("?", _ROUGH_VALUE.sub("?", sql))
    return (prefix + " ".join(text.split()))[:limit]
