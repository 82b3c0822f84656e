"""A quick reading of the common statement: where its literals are, with a few regular expressions.

sqlglot's tokenizer is the authority on SQL text, but it costs 10-15 microseconds a statement,
which is most of what the proxy may spend on one.  Most statements an application sends are
plain: words, quoted names, ``$n`` parameters, operators, plain numbers and ``'...'`` strings.
:func:`quick` reads exactly those, and gives up (returns None) on anything else: comments,
dollar quotes, ``E''``/``B''``/``X''``/``U&''`` strings, backslashes in strings, exponents,
non-ASCII outside strings, a second statement, commands sqlglot reads as free text.  The
caller then uses sqlglot.

How: the text is split at its literals (strings and numbers) by one expression; everything
between them (the *code*) must then be made of plain tokens only, checked by a second one.  A
literal found where there is none (a quote inside a quoted name, digits inside one) always
leaves an unpaired quote or a bare digit in the code, which the second expression rejects.
All of it runs inside the regular-expression engine, with Python only once per literal.

What :func:`quick` returns is what the sqlglot-based code returns for the same text (the
shape of :func:`proxy.policy.shape_of` and the text of :func:`proxy.normalize.normalize`);
``tests/test_lexer.py`` holds it to that over the policy fixtures and generated statements.

>>> quick("SELECT abalance FROM pgbench_accounts WHERE aid = 42;")
('SELECT abalance FROM pgbench_accounts WHERE aid = $80000;', [('NUMBER', '42')], 'SELECT abalance FROM pgbench_accounts WHERE aid = ?;')
>>> quick("SELECT 1 -- a comment") is None
True
"""

from __future__ import annotations

import re

from .sql import DIALECT

_KEYWORDS = DIALECT.tokenizer_class.KEYWORDS
# words after which sqlglot reads the rest as a command's text
_COMMAND_WORDS = frozenset(w for w, kind in _KEYWORDS.items() if kind in DIALECT.tokenizer_class.COMMANDS)
# the first words of keywords made of two ("ORDER BY"): sqlglot keeps the client's whitespace
# inside them, so only a single space after them is read here
_PAIR_FIRST = sorted({w.split(" ")[0] for w in _KEYWORDS if " " in w})
# statements sqlglot tokenizes as written; others (SET, SHOW, LOCK ...) it reads as a command
# whose arguments are one string, so they are left to it
_FIRST_WORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "(", "INSERT", "UPDATE", "DELETE", "MERGE"})
_ALONE_WORDS = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK"})  # only as the whole statement

_GLUE = r"\w$\"'"  # what may not touch a name, number, parameter or string
# Every quantifier over client text below is possessive (``*+``, ``++``): what it took is never
# given back, so the engine cannot try a text two ways, and each expression runs in time linear in
# the text (tests/test_linear.py checks the patterns' structure and counts the work).  Within one
# repetition the alternatives start with different characters, or are operators of one or two
# characters, so a position is read once.  In _LITERAL each alternative starts with the character
# it needs, so the engine skips ahead to those; the look-behind then checks the character before
# it, which also keeps the scan from starting again inside a number or a run of quotes.
_LITERAL = re.compile(rf"""
    ('(?<![{_GLUE}]')(?:[^'\\]++|'')*+'(?![{_GLUE}])                 # a plain string, no prefix, no backslash
    |[0-9](?<![{_GLUE}.][0-9])[0-9]*+(?:\.[0-9]++)?+(?![{_GLUE}.]))  # a plain number
""", re.X)
# the code between literals; NUL stands for a literal (a Query's text cannot hold one)
_CODE = re.compile(rf"""(?:
    [ \t\r\n]++ | \x00
  | "(?:[^"]++|"")++"(?![{_GLUE}])
  | [A-Za-z_][A-Za-z0-9_]*+(?![{_GLUE}])
  | \$[0-9]{{1,5}}+(?![{_GLUE}])
  | ::|<=|>=|<>|!=|\|\||[=<>+*%,().;\[\]]|-(?!-)|/(?![*/])
)*+""", re.X)
_WORD = re.compile(r"[A-Z_][A-Z0-9_]*+")
_PARAM = re.compile(r"\$([0-9]++)")
_PAIR_ODD_SPACE = re.compile(rf"(?<![{_GLUE}])(?:{'|'.join(_PAIR_FIRST)})(?:[\t\r\n]|[ ][ \t\r\n])", re.I)
_SPACE = re.compile(r"[ \t\r\n]++")
_FIRST = re.compile(r"[ \t\r\n]*+(\(|[A-Za-z_][A-Za-z0-9_]*+)")
LIST = re.compile(r"\?(?:\s*+,\s*+\?)++")  # a list of literals, shown as one ? (the audit's text)
STRING_MARK, NUMBER_MARK = 70000, 80000  # a literal's marker: $70000 + its index (policy.MARKER_BASE)
_BLANK = " \t\r\n"


def quick(sql: str) -> tuple[str, list, str] | None:
    """``(shape, literals, normalized)``, or None when the text is not plain enough.

    ``shape`` is the text with the n-th literal replaced by ``$70000+n`` (a string) or
    ``$80000+n`` (a number), ``literals`` lists ``(kind, value)`` with strings unescaped, and
    ``normalized`` is the text with every literal as ``?``, lists of them as one ``?``, and each
    run of whitespace as one space.
    """
    first = _FIRST.match(sql)
    if first is None or "\x00" in sql:  # NUL stands for a literal below
        return None
    word = first.group(1).upper()
    pieces = _LITERAL.split(sql)  # code, literal, code, literal, ..., code
    codes = pieces[0::2]
    code = "\x00".join(codes)
    if _CODE.fullmatch(code) is None or not _COMMAND_WORDS.isdisjoint(_WORD.findall(code.upper())):
        return None
    if "$" in code:
        params = _PARAM.findall(code)
        if len(params) > 1 or int(params[0]) > 65535:
            # sqlglot reads "$1,$2" or "$1=$1" as a dollar-quoted string, and a "parameter" above
            # 65535 could be mistaken for a marker: left to sqlglot (exact texts are cached anyway)
            return None
    if ";" in code and ";" in code.rstrip(_BLANK + ";"):
        return None  # more than one statement
    if word not in _FIRST_WORDS:
        if word not in _ALONE_WORDS or code.strip(_BLANK + ";").upper() != word:
            return None
    odd_space = "\n" in code or "\t" in code or "\r" in code or "  " in code
    if odd_space and ('"' in code or _PAIR_ODD_SPACE.search(code) is not None):
        return None  # whitespace inside quoted names and two-word keywords is kept as written
    shape: list[str] = [codes[0]]
    literals: list[tuple[str, str]] = []
    for i in range(1, len(pieces), 2):
        text = pieces[i]
        n = len(literals)
        if text[0] == "'":
            if text.startswith("''") and "$" in code:
                return None  # sqlglot cannot tokenize a string opening with '' after a $n parameter
            if n and literals[-1][0] == "STRING" and not pieces[i - 1].strip(_BLANK):
                return None  # 'a' 'b': PostgreSQL joins strings split by a newline
            literals.append(("STRING", text[1:-1].replace("''", "'")))
            shape += (f"${STRING_MARK + n}", pieces[i + 1])
        else:
            literals.append(("NUMBER", text))
            shape += (f"${NUMBER_MARK + n}", pieces[i + 1])
    if len(literals) > 9999:
        return None
    if odd_space:
        codes = [_SPACE.sub(" ", c) for c in codes]
    normalized = "?".join(codes).strip(_BLANK)
    if literals:
        normalized = LIST.sub("?", normalized)
    return "".join(shape), literals, normalized
