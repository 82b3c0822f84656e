"""Backend (B) messages: what a server sends.  See :mod:`proxy.codec.messages`.

Pure: standard library only.
"""

from __future__ import annotations

from typing import ClassVar

from .fields import CSTR, CSTRLIST, FIELDLIST, INT8, INT16, INT32, NBYTES, REST, _Reader, _write
from .kinds import BE, Field
from .messages import ARR16_INT16, ARR16_INT32, ARR16_NBYTES, CopyData, CopyDone, Message, _message


@_message(BE.AUTHENTICATION, (("code", INT32), ("data", REST)))
class Authentication(Message):
    """Authentication* (B).  ``code``: 0 Ok, 2 KerberosV5, 3 CleartextPassword, 5 MD5Password
    (data: 4-byte salt), 7 GSS, 8 GSSContinue, 9 SSPI, 10 SASL (data: mechanism list),
    11 SASLContinue, 12 SASLFinal."""
    code: int
    data: bytes

    OK: ClassVar[int] = 0
    CLEARTEXT: ClassVar[int] = 3
    MD5: ClassVar[int] = 5
    SASL: ClassVar[int] = 10
    SASL_CONTINUE: ClassVar[int] = 11
    SASL_FINAL: ClassVar[int] = 12

    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms of an AuthenticationSASL message."""
        reader = _Reader(self.data)
        return reader.read(CSTRLIST)

    @classmethod
    def sasl(cls, mechanisms: tuple[str, ...]) -> "Authentication":
        out = bytearray()
        _write(out, CSTRLIST, mechanisms)
        return cls(cls.SASL, bytes(out))


@_message(BE.BACKEND_KEY_DATA, (("pid", INT32), ("key", REST)))
class BackendKeyData(Message):
    """BackendKeyData (B): 4-byte key in protocol 3.0, up to 256 bytes in 3.2."""
    pid: int
    key: bytes


@_message(BE.BIND_COMPLETE)
class BindComplete(Message):
    """BindComplete (B)."""


@_message(BE.CLOSE_COMPLETE)
class CloseComplete(Message):
    """CloseComplete (B)."""


@_message(BE.COMMAND_COMPLETE, (("tag", CSTR),))
class CommandComplete(Message):
    """CommandComplete (B)."""
    tag: str


@_message(BE.COPY_IN_RESPONSE, (("format", INT8), ("column_formats", ARR16_INT16)))
class CopyInResponse(Message):
    """CopyInResponse (B)."""
    format: bytes
    column_formats: tuple


@_message(BE.COPY_OUT_RESPONSE, (("format", INT8), ("column_formats", ARR16_INT16)))
class CopyOutResponse(Message):
    """CopyOutResponse (B)."""
    format: bytes
    column_formats: tuple


@_message(BE.COPY_BOTH_RESPONSE, (("format", INT8), ("column_formats", ARR16_INT16)))
class CopyBothResponse(Message):
    """CopyBothResponse (B)."""
    format: bytes
    column_formats: tuple


@_message(BE.DATA_ROW, (("values", ARR16_NBYTES),))
class DataRow(Message):
    """DataRow (B)."""
    values: tuple


@_message(BE.EMPTY_QUERY_RESPONSE)
class EmptyQueryResponse(Message):
    """EmptyQueryResponse (B)."""


@_message(BE.ERROR, (("fields", FIELDLIST),))
class ErrorResponse(Message):
    """ErrorResponse (B): fields are (code, text) pairs, e.g. (b'C', '42501')."""
    fields: tuple

    def get(self, code: bytes) -> str | None:
        """The text of the field ``code`` (a :class:`Field`), None when absent."""
        for c, text in self.fields:
            if c == code:
                return text
        return None

    @property
    def sqlstate(self) -> str | None:
        return self.get(Field.SQLSTATE)

    @property
    def message(self) -> str | None:
        return self.get(Field.MESSAGE)

    @property
    def severity(self) -> str | None:
        """The severity not localized (``V``, protocol 3.0 servers from 9.6), else the localized one."""
        return self.get(Field.SEVERITY_NONLOCALIZED) or self.get(Field.SEVERITY)


@_message(BE.NOTICE, (("fields", FIELDLIST),))
class NoticeResponse(Message):
    """NoticeResponse (B): fields as in ErrorResponse (a WARNING, NOTICE, INFO ...)."""
    fields: tuple

    get = ErrorResponse.get
    sqlstate = ErrorResponse.sqlstate
    message = ErrorResponse.message
    severity = ErrorResponse.severity


@_message(BE.FUNCTION_CALL_RESPONSE, (("value", NBYTES),))
class FunctionCallResponse(Message):
    """FunctionCallResponse (B)."""
    value: bytes | None


@_message(BE.NEGOTIATE_PROTOCOL_VERSION, (("newest_minor", INT32), ("unrecognized", ("array32", CSTR))))
class NegotiateProtocolVersion(Message):
    """NegotiateProtocolVersion (B)."""
    newest_minor: int
    unrecognized: tuple


@_message(BE.NO_DATA)
class NoData(Message):
    """NoData (B)."""


@_message(BE.NOTIFICATION, (("pid", INT32), ("channel", CSTR), ("payload", CSTR)))
class NotificationResponse(Message):
    """NotificationResponse (B)."""
    pid: int
    channel: str
    payload: str


@_message(BE.PARAMETER_DESCRIPTION, (("type_oids", ARR16_INT32),))
class ParameterDescription(Message):
    """ParameterDescription (B)."""
    type_oids: tuple


@_message(BE.PARAMETER_STATUS, (("name", CSTR), ("value", CSTR)))
class ParameterStatus(Message):
    """ParameterStatus (B)."""
    name: str
    value: str


@_message(BE.PARSE_COMPLETE)
class ParseComplete(Message):
    """ParseComplete (B)."""


@_message(BE.PORTAL_SUSPENDED)
class PortalSuspended(Message):
    """PortalSuspended (B)."""


@_message(BE.READY_FOR_QUERY, (("status", INT8),))
class ReadyForQuery(Message):
    """ReadyForQuery (B): status b'I' idle, b'T' in a transaction, b'E' failed transaction."""
    status: bytes


FIELD_SPEC = (("name", CSTR), ("table_oid", INT32), ("column", INT16), ("type_oid", INT32),
              ("type_size", INT16), ("type_mod", INT32), ("format", INT16))


@_message(BE.ROW_DESCRIPTION, (("columns", ("array16", ("record", FIELD_SPEC))),))
class RowDescription(Message):
    """RowDescription (B): each column is (name, table_oid, column, type_oid, type_size,
    type_mod, format)."""
    columns: tuple


BACKEND_MESSAGES = (Authentication, BackendKeyData, BindComplete, CloseComplete, CommandComplete,
                    CopyInResponse, CopyOutResponse, CopyBothResponse, CopyData, CopyDone,
                    DataRow, EmptyQueryResponse, ErrorResponse, NoticeResponse,
                    FunctionCallResponse, NegotiateProtocolVersion, NoData,
                    NotificationResponse, ParameterDescription, ParameterStatus, ParseComplete,
                    PortalSuspended, ReadyForQuery, RowDescription)
BACKEND: dict[int, type[Message]] = {m.TYPE[0]: m for m in BACKEND_MESSAGES}
assert len(BACKEND) == len(BACKEND_MESSAGES)
