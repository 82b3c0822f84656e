"""PostgreSQL wire protocol 3.0 and 3.2: bytes in, typed messages out, and back.

Theory of operation
-------------------
Every message after start-up is ``type byte + int32 length (counting itself) + body``.
The same type byte means different things in each direction (``D`` is Describe from a
client and DataRow from a server), so message kinds are named by direction: :class:`FE`
(``FE.EXECUTE``, ``FE.DESCRIBE``) and :class:`BE` (``BE.ERROR``, ``BE.DATA_ROW``), plain ints
equal to the type byte.  ``FRONTEND`` and ``BACKEND`` map a kind to its message class.

Start-up packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) carry no
type byte; :func:`decode_startup` tells them apart by their request code.

Each message class declares its fields as ``(name, kind)`` pairs; one generic reader and
writer handle every class, so a new message is one declaration.  Decoding never raises
anything but :class:`ProtocolViolation`: a truncated body, a missing terminator or trailing
bytes are all the peer's fault and reported as such.

The hot relay path does not decode at all: :class:`Splitter` finds message boundaries in a
byte stream, hands back only the messages the caller watches, and passes the rest through
as bytes (even a message larger than the buffer is streamed, never held whole).  Where the
session must know a name or a status, the readers (:func:`bind_names`, :func:`close_target`,
:func:`execute_target`, :func:`command_tag`, :func:`ready_status` ...) read just that.

The parts: :mod:`.kinds` (names), :mod:`.fields` (field kinds, the generic reader and
writer), :mod:`.messages` (frontend messages, encode and decode), :mod:`.backend` (backend
messages), :mod:`.readers`, :mod:`.startup`, :mod:`.splitter`.  Everything is re-exported
here: ``from proxy import codec`` and ``codec.Query`` as before.

This package is pure: standard library only, no I/O.

>>> decode_message(BACKEND, encode(ReadyForQuery(status=TxStatus.IDLE)))
ReadyForQuery(status=b'I')
"""

from .kinds import BE, FE, Field, Target, TxStatus
from .fields import (CSTR, CSTRLIST, FIELDLIST, INT8, INT16, INT32, MAX_MESSAGE_SIZE, NBYTES, REST,
                     ProtocolError, ProtocolViolation, _raw, _Reader, _text, _write)
from .messages import (ARR16_INT16, ARR16_INT32, ARR16_NBYTES, FRONTEND, FRONTEND_MESSAGES, AuthResponse, Bind,
                       Close, CopyData, CopyDone, CopyFail, Describe, Execute, Flush, FunctionCall, Message, Parse,
                       PasswordMessage, Query, SASLInitialResponse, SASLResponse, Sync, Terminate, decode_as,
                       decode_message, encode)
from .backend import (BACKEND, BACKEND_MESSAGES, FIELD_SPEC, Authentication, BackendKeyData, BindComplete,
                      CloseComplete, CommandComplete, CopyBothResponse, CopyInResponse, CopyOutResponse, DataRow,
                      EmptyQueryResponse, ErrorResponse, FunctionCallResponse, NegotiateProtocolVersion, NoData,
                      NoticeResponse, NotificationResponse, ParameterDescription, ParameterStatus, ParseComplete,
                      PortalSuspended, ReadyForQuery, RowDescription)
from .readers import (bind_names, close_target, command_tag, describe_target, error_fields, error_response,
                      execute_target, notice_response, parameter_status, parse_fields, query_text, ready_for_query,
                      ready_status, row_sources)
from .startup import (CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_CANCEL_KEY, MAX_STARTUP_PACKET, PROTOCOL_3_0,
                      PROTOCOL_3_2, SSL_ACCEPTED, SSL_REFUSED, SSL_REQUEST_CODE, CancelRequest, GSSENCRequest,
                      SSLRequest, StartupMessage, StartupPacket, decode_startup, encode_startup, startup_length)
from .splitter import Splitter

__all__ = [name for name in dir() if not name.startswith("__") and name not in ("kinds", "fields", "messages",
                                                                               "backend", "readers", "startup",
                                                                               "splitter")]
