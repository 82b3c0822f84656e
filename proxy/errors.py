"""Errors and notices for a restricted tier: they carry nothing of the data.

PostgreSQL prints values in its errors: DETAIL (``Failing row contains (...)``, ``Key
(phone)=(...)``), CONTEXT (``JSON data, line 1: ...``), HINT, the internal query, and for many
error classes the message itself (``invalid input syntax for type integer: "4201..."``,
``relation "13912345678" does not exist`` from a ``::regclass`` cast).  For a tier that is not
all-clear, an ErrorResponse or NoticeResponse keeps its severity, SQLSTATE, position and the
names of the objects involved (schema, table, column, type, constraint); DETAIL, HINT, CONTEXT,
the internal query and its position, and the source location are dropped; and the message is
kept only for SQLSTATEs whose messages name objects and never quote a value.  Every other
message becomes a fixed text for its SQLSTATE or class, with the code, so the client still
knows what went wrong.

Pure: fields in, fields out.

>>> fields = ((b"S", "ERROR"), (b"C", "22P02"), (b"M", 'invalid input syntax for type integer: "4201"'),
...           (b"W", "SQL function"), (b"D", "x"))
>>> scrub(fields, "sales")
((b'S', 'ERROR'), (b'C', '22P02'), (b'M', 'invalid input syntax for a value (SQLSTATE 22P02; pgveil removed the rest for tier sales)'))
"""

from __future__ import annotations

from .codec import Field

# Fields kept as they are: severity (localized and not), SQLSTATE, position in the statement,
# and object names.  Everything else (D detail, H hint, W context, q internal query, p its
# position, F/L/R source location) is dropped.
KEPT_FIELDS = frozenset({Field.SEVERITY, Field.SEVERITY_NONLOCALIZED, Field.SQLSTATE, Field.POSITION, Field.SCHEMA,
                         Field.TABLE, Field.COLUMN, Field.DATA_TYPE, Field.CONSTRAINT})

# Messages kept verbatim: classes and codes whose messages name objects or states, never values.
KEPT_CLASSES = frozenset({"08", "0A", "0B", "23", "25", "28", "2B", "2D", "3B", "40", "53", "54", "55", "57", "58"})
KEPT_CODES = frozenset({
    "42501", "42703", "42702", "42803", "42804", "42809", "42P10", "42P18", "42725", "42846", "42P02",
    "42P07", "42710", "42701", "42P06", "42723", "42712", "42P03", "42P04", "42P05", "42830", "42P19",
    "42P16", "42P17", "42611", "42P20", "42P21", "42P22",
    "22012", "2200H", "22004", "22005", "22000", "2202E",
})
GENERIC = {
    "22P02": "invalid input syntax for a value",
    "22003": "a value is out of range for its type",
    "22007": "invalid date/time value",
    "22008": "date/time field value out of range",
    "22023": "invalid parameter value",
    "22001": "a value is too long for its type",
    "22021": "a character is not valid in the encoding",
    "22P05": "a character has no equivalent in the encoding",
    "42P01": "relation does not exist",
    "42883": "function or operator does not exist",
    "42704": "object does not exist",
    "42601": "syntax error",
    "42602": "invalid name",
    "42622": "name too long",
    "3F000": "schema does not exist",
    "00000": "notice",
    "01000": "warning",
}
GENERIC_CLASSES = {
    "22": "invalid data", "42": "invalid statement", "P0": "error raised by a function",
    "XX": "internal error", "2F": "error in a function", "38": "error in an external function",
    "39": "error in an external function", "01": "warning", "02": "no data", "03": "statement not complete",
    "09": "error in a trigger", "0L": "invalid grantor", "0P": "invalid role", "0Z": "diagnostics exception",
    "20": "case not found", "21": "cardinality violation", "24": "invalid cursor state",
    "26": "invalid statement name", "27": "triggered data change violation", "2F0": "error in a function",
    "34": "invalid cursor name", "3D": "invalid catalog name", "44": "WITH CHECK OPTION violation",
    "72": "snapshot too old", "F0": "configuration file error", "HV": "foreign data wrapper error",
}


def message_for(code: str, message: str, tier: str) -> str:
    """The message a restricted tier gets for an error of SQLSTATE ``code``."""
    if code[:2] in KEPT_CLASSES or code in KEPT_CODES:
        return message
    text = GENERIC.get(code) or GENERIC_CLASSES.get(code[:2]) or "error"
    return f"{text} (SQLSTATE {code}; pgveil removed the rest for tier {tier})"


def scrub(fields: tuple, tier: str) -> tuple:
    """ErrorResponse or NoticeResponse fields as a restricted tier may receive them."""
    code = next((value for key, value in fields if key == Field.SQLSTATE), "XX000")
    out = []
    for key, value in fields:
        if key == Field.MESSAGE:
            out.append((key, message_for(code, value, tier)))
        elif key in KEPT_FIELDS:
            out.append((key, value))
    return tuple(out)
