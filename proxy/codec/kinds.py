"""Names for the bytes of the wire protocol: message kinds by direction, error fields, statuses.

The same type byte means different things in each direction (``D`` is Describe from a client
and DataRow from a server, ``E`` is Execute and ErrorResponse), so the kinds are kept in two
namespaces: :class:`FE` for what a client sends, :class:`BE` for what a server sends.  Their
values are plain ints equal to the type byte, so they compare with ``data[0]`` and live in the
``Splitter``'s watch sets at the cost of an int (no enum lookup on the relay's hot path).

>>> FE.EXECUTE == ord("E") == BE.ERROR
True
>>> FE.name(ord("D")), BE.name(ord("D"))
('DESCRIBE', 'DATA_ROW')
"""

from __future__ import annotations


class _Codes:
    """Constants of one namespace (upper-case class attributes), named back by :meth:`name`."""

    _NAMES: dict = {}

    def __init_subclass__(cls) -> None:
        cls._NAMES = {value: key for key, value in vars(cls).items()
                      if key.isupper() and not key.startswith("_")}

    @classmethod
    def name(cls, code) -> str:
        """The constant's name for ``code``; the code itself, quoted, when it has none."""
        return cls._NAMES.get(code) or repr(chr(code) if isinstance(code, int) else code)

    @classmethod
    def all(cls) -> frozenset:
        return frozenset(cls._NAMES)


class FE(_Codes):
    """Frontend (client to server) message kinds."""
    BIND = ord("B")
    CLOSE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_FAIL = ord("f")
    DESCRIBE = ord("D")
    EXECUTE = ord("E")
    FLUSH = ord("H")
    FUNCTION_CALL = ord("F")
    AUTH_RESPONSE = ord("p")  # PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse
    PARSE = ord("P")
    QUERY = ord("Q")
    SYNC = ord("S")
    TERMINATE = ord("X")


class BE(_Codes):
    """Backend (server to client) message kinds."""
    AUTHENTICATION = ord("R")
    BACKEND_KEY_DATA = ord("K")
    BIND_COMPLETE = ord("2")
    CLOSE_COMPLETE = ord("3")
    COMMAND_COMPLETE = ord("C")
    COPY_IN_RESPONSE = ord("G")
    COPY_OUT_RESPONSE = ord("H")
    COPY_BOTH_RESPONSE = ord("W")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    DATA_ROW = ord("D")
    EMPTY_QUERY_RESPONSE = ord("I")
    ERROR = ord("E")
    NOTICE = ord("N")
    FUNCTION_CALL_RESPONSE = ord("V")
    NEGOTIATE_PROTOCOL_VERSION = ord("v")
    NO_DATA = ord("n")
    NOTIFICATION = ord("A")
    PARAMETER_DESCRIPTION = ord("t")
    PARAMETER_STATUS = ord("S")
    PARSE_COMPLETE = ord("1")
    PORTAL_SUSPENDED = ord("s")
    READY_FOR_QUERY = ord("Z")
    ROW_DESCRIPTION = ord("T")


class Field(_Codes):
    """The field codes of ErrorResponse and NoticeResponse (bytes, as the fields hold them)."""
    SEVERITY = b"S"  # localized
    SEVERITY_NONLOCALIZED = b"V"
    SQLSTATE = b"C"
    MESSAGE = b"M"
    DETAIL = b"D"
    HINT = b"H"
    POSITION = b"P"
    INTERNAL_POSITION = b"p"
    INTERNAL_QUERY = b"q"
    WHERE = b"W"
    SCHEMA = b"s"
    TABLE = b"t"
    COLUMN = b"c"
    DATA_TYPE = b"d"
    CONSTRAINT = b"n"
    FILE = b"F"
    LINE = b"L"
    ROUTINE = b"R"


class Target(_Codes):
    """What a Close or Describe names."""
    STATEMENT = b"S"
    PORTAL = b"P"


class TxStatus(_Codes):
    """ReadyForQuery's transaction status."""
    IDLE = b"I"
    IN_BLOCK = b"T"
    FAILED = b"E"
