"""Replayable session scripts in mitmproxy's ``Playbook`` style: events in, expected commands out.

    assert (Playbook(session)
            >> ClientData(query)
            << Audit(durable=True, token=1)
            >> AuditDurable(1)
            << SendToServer(query))

Each ``>> event`` is handled by the session in turn; the ``<< command`` entries after it are
exactly the commands it must return, in order (no more, no fewer).  An expected entry is a
command (compared with ``==``), a command class (any instance matches) or a matcher below.
No network, no clock: the scripts run in milliseconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from proxy import codec
from proxy.catalog import Catalog
from proxy.policy import Engine
from proxy.rules import load_rules
from proxy.session import (ClientData, OpenUpstream, SendToClient, SendToServer, ServerData, Session, SessionConfig,
                           SessionStarted, UpstreamConnected, WriteAudit)


class Playbook:
    def __init__(self, session) -> None:
        self.session = session
        self.steps: list[tuple[object, list]] = []

    def __rshift__(self, event) -> "Playbook":
        self.steps.append((event, []))
        return self

    def __lshift__(self, expected) -> "Playbook":
        """One expected command (or a list of them, in order)."""
        assert self.steps, "an expected command before any event"
        self.steps[-1][1].extend(expected if isinstance(expected, list) else [expected])
        return self

    def __bool__(self) -> bool:
        steps, self.steps = self.steps, []
        for number, (event, expected) in enumerate(steps, 1):
            actual = self.session.handle(event)
            ok = len(actual) == len(expected) and all(matches(e, a) for e, a in zip(expected, actual))
            if not ok:
                lines = [f"step {number}: {event!r}", "  expected:"] + [f"    {e!r}" for e in expected]
                lines += ["  actual:"] + [f"    {short(a)}" for a in actual]
                raise AssertionError("\n".join(lines))
        return True


def matches(expected, actual) -> bool:
    if isinstance(expected, type):
        return isinstance(actual, expected)
    if isinstance(expected, Matcher):
        return expected.matches(actual)
    return expected == actual


def short(command) -> str:
    if type(command) is WriteAudit:
        r = command.record
        return f"WriteAudit({r.get('type')}, {r.get('sql') or r.get('result') or r.get('status')!r}, " \
               f"durable={command.durable}, token={command.token}, answer_only={command.answer_only})"
    return repr(command)[:300]


class Matcher:
    def matches(self, actual) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


class Audit(Matcher):
    """A WriteAudit with these fields in its record (and ``durable``, ``token``, ``answer_only``
    when given)."""

    def __init__(self, durable: bool | None = None, token: int | None = None, answer_only: bool | None = None,
                 **fields) -> None:
        self.durable, self.token, self.answer_only, self.fields = durable, token, answer_only, fields

    def matches(self, actual) -> bool:
        return (type(actual) is WriteAudit and (self.durable is None or actual.durable == self.durable)
                and (self.token is None or actual.token == self.token)
                and (self.answer_only is None or actual.answer_only == self.answer_only)
                and all(actual.record.get(k) == v for k, v in self.fields.items()))

    def __repr__(self) -> str:
        return f"Audit(durable={self.durable}, token={self.token}, answer_only={self.answer_only}, {self.fields})"


def messages(data: bytes) -> list:
    _, marks = codec.Splitter(frozenset(range(256))).feed(data)
    return [codec.decode_message(codec.BACKEND, data[start:end]) for _, start, end in marks]


class ToClient(Matcher):
    """A SendToClient whose messages are of these types, in order; ``code`` and ``text``: the
    SQLSTATE and a part of the message of its (one) ErrorResponse."""

    def __init__(self, *kinds: type, code: str | None = None, text: str = "", severity: str | None = None) -> None:
        self.kinds, self.code, self.text, self.severity = kinds, code, text, severity

    def matches(self, actual) -> bool:
        if type(actual) is not SendToClient:
            return False
        found = messages(actual.data)
        if tuple(type(m) for m in found) != self.kinds:
            return False
        errors = [m for m in found if isinstance(m, codec.ErrorResponse)]
        if self.code is not None:
            if len(errors) != 1 or errors[0].get(b"C") != self.code or self.text not in (errors[0].get(b"M") or ""):
                return False
            if self.severity is not None and errors[0].get(b"S") != self.severity:
                return False
        return True

    def __repr__(self) -> str:
        return f"ToClient({[k.__name__ for k in self.kinds]}, code={self.code}, text={self.text!r})"


def fatal(code: str, text: str = "") -> ToClient:
    return ToClient(codec.ErrorResponse, code=code, text=text, severity="FATAL")


class ToServer(Matcher):
    """A SendToServer whose text contains each of ``present`` and none of ``absent``."""

    def __init__(self, *present: str, absent: tuple[str, ...] = ()) -> None:
        self.present, self.absent = present, absent

    def matches(self, actual) -> bool:
        if type(actual) is not SendToServer:
            return False
        text = actual.data.decode("utf-8", "replace")
        return all(p in text for p in self.present) and not any(a in text for a in self.absent)

    def __repr__(self) -> str:
        return f"ToServer(contains {self.present}, not {self.absent})"


def q(sql: str) -> bytes:
    return codec.encode(codec.Query(sql))


def extended(sql: str, name: str = "") -> bytes:
    return (codec.encode(codec.Parse(name, sql, ())) + codec.encode(codec.Bind("", name, (), (), ()))
            + codec.encode(codec.Execute("", 0)))


SYNC = codec.encode(codec.Sync())


def ready(status: bytes = b"I") -> bytes:
    return codec.encode(codec.ReadyForQuery(status))


def complete(tag: str) -> bytes:
    return codec.encode(codec.CommandComplete(tag))


def server_error(text: str, code: str = "22P02") -> bytes:
    return codec.error_response(code, text)


def refused_by_server(token: int) -> bytes:
    """What PostgreSQL answers to the failing statement sent in place of refusal ``token``."""
    return server_error(f'invalid input syntax for type integer: "pgveil-refused-{token}"')


# ----------------------------------------------------------------------------- the scene: rules, a catalog, users
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
RULES = f"""
version: 1
classes:
  id_number: {{mask: {{fn: partial, keep_first: 3, keep_last: 4}}}}
columns:
  public.customers.id_number: id_number
tiers:
  sales:
    see: {{id_number: mask}}
    statements: [read]
    max_rows: 2
  support:
    see: {{id_number: {{clear: {{purpose: required}}}}}}
  clerk:
    see: {{id_number: mask}}
    statements: [read, write, session]
identities:
  - {{user: sales_li, tier: sales}}
  - {{user: sup_wu, tier: support}}
  - {{user: clerk_wu, tier: clerk}}
grants:
  - {{user: sales_li, see: {{id_number: clear}}, from: "{(T0 + timedelta(seconds=10)).isoformat()}",
     until: "{(T0 + timedelta(seconds=20)).isoformat()}", reason: CS-1, approved_by: [li_na]}}
default: deny
"""
CATALOG = Catalog.from_spec({"public.customers": {"id": "integer", "id_number": "text"}})
SELECT_ID = "SELECT id_number FROM customers"
MASKED = 'CASE WHEN "id_number" IS NULL'
ROW = codec.encode(codec.DataRow((b"110***0021",)))
DESCRIPTION = codec.encode(codec.RowDescription((("id_number", 0, 0, 25, -1, -1, 0),)))
AUTH_OK = codec.encode(codec.Authentication(0, b""))


def startup(user: str) -> bytes:
    return codec.encode_startup(codec.StartupMessage(codec.PROTOCOL_3_0, (("user", user), ("database", "crm"))))


def active(user: str, now=None, **config) -> Session:
    """A session of ``user`` through start-up and authentication, at the clock ``now()``."""
    engine = Engine(load_rules(RULES), CATALOG)
    s = Session(SessionConfig(engine=engine, clock=now or (lambda: T0), **config), ("10.1.2.3", 5000))
    audited = [Audit(type="connection", result="accepted")] if config.get("audit") else []
    assert (Playbook(s)
            >> ClientData(startup(user))
            << OpenUpstream
            >> UpstreamConnected(False)
            << SendToServer(startup(user))
            >> ServerData(AUTH_OK + ready())
            << audited + [SendToClient(AUTH_OK), SendToClient(ready()), SessionStarted()])
    return s
