"""PostgreSQL's encoding names, and the ones pgveil reads statements in.

PostgreSQL converts a statement from the client encoding to the server's before it lexes it.
pgveil must read the same characters, so it decodes a statement's bytes strictly in the
session's client encoding.  It reads only *server-safe* encodings: those in which every byte
below 0x80 is the ASCII character and no multibyte character contains one, so that ``'``,
``\\``, ``"``, ``$`` and ``;`` are where both readers see them.  SJIS, BIG5, GBK, GB18030,
UHC and JOHAB are not safe (PostgreSQL refuses them as server encodings for this reason);
EUC_TW and MULE_INTERNAL are safe but Python has no codec for them, so they are refused too.

Names are matched as PostgreSQL matches them (``pg_char_to_encoding``: case and punctuation
ignored, with its aliases).

Pure.

>>> canonical("utf-8"), canonical("Unicode"), canonical("ISO-8859-1"), canonical("Shift_JIS")
('UTF8', 'UTF8', 'LATIN1', 'SJIS')
"""

from __future__ import annotations

import re

# canonical name -> Python codec, for the server-safe encodings pgveil reads
CODECS = {
    "UTF8": "utf-8",
    "LATIN1": "iso8859-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3", "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9", "LATIN6": "iso8859-10", "LATIN7": "iso8859-13", "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15", "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6", "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866", "WIN874": "cp874", "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252",
    "WIN1253": "cp1253", "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r", "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp", "EUC_CN": "gb2312", "EUC_KR": "euc_kr", "EUC_JIS_2004": "euc_jis_2004",
}
# what "SQL_ASCII" means as a client encoding: no conversion, the bytes are the server's
SQL_ASCII = "SQL_ASCII"
READABLE = frozenset(CODECS) | {SQL_ASCII}

# pg_encname_tbl (src/common/encnames.c): cleaned alias -> canonical name
_ALIASES = {
    "abc": "WIN1258", "alt": "WIN866", "big5": "BIG5", "euccn": "EUC_CN", "eucjis2004": "EUC_JIS_2004",
    "eucjp": "EUC_JP", "euckr": "EUC_KR", "euctw": "EUC_TW", "gb18030": "GB18030", "gbk": "GBK",
    "iso88591": "LATIN1", "iso885910": "LATIN6", "iso885913": "LATIN7", "iso885914": "LATIN8",
    "iso885915": "LATIN9", "iso885916": "LATIN10", "iso88592": "LATIN2", "iso88593": "LATIN3",
    "iso88594": "LATIN4", "iso88595": "ISO_8859_5", "iso88596": "ISO_8859_6", "iso88597": "ISO_8859_7",
    "iso88598": "ISO_8859_8", "iso88599": "LATIN5", "johab": "JOHAB", "koi8": "KOI8R", "koi8r": "KOI8R",
    "koi8u": "KOI8U", "latin1": "LATIN1", "latin10": "LATIN10", "latin2": "LATIN2", "latin3": "LATIN3",
    "latin4": "LATIN4", "latin5": "LATIN5", "latin6": "LATIN6", "latin7": "LATIN7", "latin8": "LATIN8",
    "latin9": "LATIN9", "mskanji": "SJIS", "muleinternal": "MULE_INTERNAL", "shiftjis": "SJIS",
    "shiftjis2004": "SHIFT_JIS_2004", "sjis": "SJIS", "sqlascii": "SQL_ASCII", "tcvn": "WIN1258",
    "tcvn5712": "WIN1258", "uhc": "UHC", "unicode": "UTF8", "utf8": "UTF8", "vscii": "WIN1258",
    "win": "WIN1251", "win1250": "WIN1250", "win1251": "WIN1251", "win1252": "WIN1252", "win1253": "WIN1253",
    "win1254": "WIN1254", "win1255": "WIN1255", "win1256": "WIN1256", "win1257": "WIN1257",
    "win1258": "WIN1258", "win866": "WIN866", "win874": "WIN874", "win932": "SJIS", "win936": "GBK",
    "win949": "UHC", "win950": "BIG5", "windows1250": "WIN1250", "windows1251": "WIN1251",
    "windows1252": "WIN1252", "windows1253": "WIN1253", "windows1254": "WIN1254", "windows1255": "WIN1255",
    "windows1256": "WIN1256", "windows1257": "WIN1257", "windows1258": "WIN1258", "windows866": "WIN866",
    "windows874": "WIN874", "windows932": "SJIS", "windows936": "GBK", "windows949": "UHC",
    "windows950": "BIG5",
}
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def canonical(name: str) -> str | None:
    """PostgreSQL's name for an encoding name as a client may spell it; None if unknown."""
    return _ALIASES.get(_NOT_ALNUM.sub("", name.lower()))


def listed() -> str:
    return "UTF8, SQL_ASCII, LATIN1-10, ISO_8859_5-8, WIN866, WIN874, WIN1250-1258, KOI8R, KOI8U and EUC_JP/CN/KR"


def reader(client_encoding: str | None, server_encoding: str | None) -> tuple[str | None, str | None]:
    """The Python codec in which PostgreSQL reads a statement sent in ``client_encoding`` (as
    the server reports it), or None and why pgveil cannot follow it.  SQL_ASCII as a client
    encoding means no conversion: the bytes are read in the server's encoding (bytes of an
    SQL_ASCII server are taken one by one, as latin-1 does).

    >>> reader("UTF8", "UTF8"), reader("SQL_ASCII", "UTF8"), reader("SQL_ASCII", "SQL_ASCII")
    (('utf-8', None), ('utf-8', None), ('iso8859-1', None))
    >>> reader("SJIS", "UTF8")[1][:50]
    'the client encoding SJIS is not one pgveil reads ('
    """
    name = canonical(client_encoding or "UTF8")
    if name == SQL_ASCII:
        name = canonical(server_encoding or "UTF8")
        if name == SQL_ASCII:
            return "iso8859-1", None
    if name in CODECS:
        return CODECS[name], None
    return None, f"the client encoding {client_encoding} is not one pgveil reads (it reads {listed()})"


def decode(wire: str, codec: str) -> str:
    """A statement's text as PostgreSQL reads it, from the text the wire codec gave (its bytes
    as UTF-8 with surrogate escapes); UnicodeError when the bytes are not valid in ``codec``,
    or a character would hide an ASCII byte (never for the encodings read here, checked anyway).

    >>> decode(b"SELECT 'caf\\xe9'".decode("utf-8", "surrogateescape"), "iso8859-1")
    "SELECT 'café'"
    """
    if codec == "utf-8":
        if not wire.isascii():
            wire.encode("utf-8")  # surrogates stand for bytes that are not UTF-8: refused
        return wire
    raw = wire.encode("utf-8", "surrogateescape")
    text = raw.decode(codec)
    if raw.translate(None, _HIGH) != text.encode("ascii", "ignore"):
        raise UnicodeDecodeError(codec, raw, 0, len(raw), "a character holds an ASCII byte")
    return text


def to_wire(text: str, codec: str) -> str:
    """``text`` as the wire codec writes it, so that its bytes are ``text`` in ``codec``;
    UnicodeError when a character has no byte sequence in it."""
    if codec == "utf-8":
        return text
    return text.encode(codec).decode("utf-8", "surrogateescape")


_HIGH = bytes(range(128, 256))
