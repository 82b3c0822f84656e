"""What is sealed for the investigators: the values of statements that reach a protected relation.

A relation is *protected* when any of its columns maps to a class in the rules (through
inheritance and views too), whether or not a statement reads that column: ``SELECT name FROM
customers WHERE id = 42`` must be findable by 42.  For such a statement the audit record gets a
``sealed`` field holding the statement's text (so its literals, and the ``$n`` the parameters
are compared with); each Bind of it gets a ``bind`` record with the parameter values, and
``COPY ... FROM STDIN`` into it gets ``copy_data`` records with the data, in parts of at most
:data:`COPY_PART` bytes (never more held at once).  All of it sealed with
:mod:`proxy.audit.seal`; the literals are read out at investigation time, not here.

Which relations a statement reaches: the policy's decision names them for restricted tiers.
An all-clear tier's statements are not analysed, so for them (and for refusals, which may stop
before the analysis does) a statement is taken to reach a protected relation when any word of
its text is the name of one (more is sealed than needed, never less); ``EXECUTE`` of an SQL
prepared statement counts as reaching one.

Pure: the sealer is given (the server makes it, with the journal writer to send its key records to).
"""

from __future__ import annotations

import base64
import re

import orjson

from . import codec

COPY_PART = 64 << 10  # bytes of COPY data per copy_data record
_WORD = re.compile(r"[a-z_][a-z0-9_$]*+")
_FROM_STDIN = re.compile(r"\bfrom\s++stdin\b", re.I)
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
MESSAGES = frozenset((codec.FE.BIND, codec.FE.COPY_DATA, codec.FE.COPY_DONE, codec.FE.COPY_FAIL))  # the client messages :meth:`SessionSeals.message` wants


def protected_relations(rules, catalog) -> frozenset:
    """Qualified names of the relations with a column of some class."""
    if catalog is None:
        return frozenset()
    return frozenset(rel.qualified for rel in catalog.by_oid.values() if rel.schema not in SYSTEM_SCHEMAS
                     and any(_class_of(rules, catalog, rel, col.name) for col in rel.columns))


def _class_of(rules, catalog, rel, column: str, depth: int = 0) -> str | None:
    cls = rules.class_of(rel.schema, rel.name, column)
    if cls is None:
        for parent in catalog.ancestors(rel):
            cls = rules.class_of(parent.schema, parent.name, column)
            if cls is not None:
                return cls
    if cls is None and rel.sources and depth < 8:
        for oid, attnum in rel.sources.get(column, ()):
            base_rel = catalog.by_oid.get(oid)
            base_col = next((c for c in base_rel.columns if c.attnum == attnum), None) if base_rel else None
            if base_col is not None:
                cls = _class_of(rules, catalog, base_rel, base_col.name, depth + 1)
                if cls is not None:
                    return cls
    return cls


class Sealing:
    """Shared by a worker's sessions: the engine (rules and catalog in force) and the sealer."""

    def __init__(self, engine, sealer) -> None:
        self.engine = engine
        self.sealer = sealer
        self._key = None
        self._qualified: frozenset = frozenset()
        self._words: frozenset = frozenset()

    def session(self) -> "SessionSeals":
        return SessionSeals(self)

    def _protected(self) -> tuple[frozenset, frozenset]:
        engine = self.engine
        key = (engine.rules.version, getattr(engine.catalog, "version", None))
        if key != self._key:
            self._qualified = protected_relations(engine.rules, engine.catalog)
            words = {name.split(".", 1)[1].lower() for name in self._qualified}
            self._words = frozenset(words | {"execute"}) if words else frozenset()
            self._key = key
        return self._qualified, self._words

    def reaches(self, sql: str, decision, tier) -> bool:
        """Whether a statement reaches a protected relation (see the module docstring)."""
        if decision is None:
            return False
        qualified, words = self._protected()
        if not qualified:
            return False
        relations = decision.relations
        if relations and not qualified.isdisjoint(relations):
            return True
        if relations and not decision.refused and tier is not None and not tier.all_clear:
            return False
        return not words.isdisjoint(_WORD.findall(sql.lower()))

    def seal_text(self, field: str, text: str) -> dict:
        try:
            return self.sealer.seal({field: text})
        except orjson.JSONEncodeError:  # not UTF-8 (a client_encoding's bytes): kept as bytes
            raw = text.encode("utf-8", "surrogateescape")
            return self.sealer.seal({field + "64": base64.b64encode(raw).decode("ascii")})


def _value(raw: bytes | None, binary: bool):
    """A parameter as sealed: None (NULL), text, or ``{"b": base64}`` (binary format, or text
    that is not UTF-8)."""
    if raw is None:
        return None
    if not binary:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b": base64.b64encode(raw).decode("ascii")}


def bind_values(bind) -> list:
    formats = bind.param_formats
    return [_value(raw, bool(formats[i] if len(formats) > 1 else formats[0] if formats else 0))
            for i, raw in enumerate(bind.params)]


class SessionSeals:
    """One session's sealing: which prepared statements are protected, and the COPY under way."""

    def __init__(self, sealing: Sealing) -> None:
        self.sealing = sealing
        self._statements: dict[str, str] = {}  # prepared statement name -> its statement id, when sealed
        self._copy: str | None = None  # statement id of a COPY FROM STDIN into a protected relation
        self._copy_data = bytearray()
        self._copy_parts = 0

    def statement(self, name: str | None, statement_id: str, sql: str, decision, tier) -> dict | None:
        """The ``sealed`` field of a statement record (``name``: the Parse's statement name, None
        for a Query), or None when the statement reaches no protected relation."""
        reaches = self.sealing.reaches(sql, decision, tier)
        if name is not None:
            if reaches:
                self._statements[name] = statement_id
            else:
                self._statements.pop(name, None)
        if reaches and "copy" in decision.kinds and _FROM_STDIN.search(sql):
            self._copy, self._copy_data, self._copy_parts = statement_id, bytearray(), 0
        return self.sealing.seal_text("sql", sql) if reaches else None

    def message(self, kind: int, message: bytes, who: dict) -> list[dict]:
        """Records for a client's Bind, CopyData, CopyDone or CopyFail (usually none)."""
        from .audit.records import base
        if kind == codec.FE.BIND:
            bind = codec.decode_message(codec.FRONTEND, bytes(message))
            statement_id = self._statements.get(bind.statement)
            if statement_id is None:
                return []
            sealed = self.sealing.sealer.seal({"params": bind_values(bind)})
            return [dict(base("bind", who), statement=statement_id, portal=bind.portal, sealed=sealed)]
        if self._copy is None:
            return []
        out = []
        if kind == codec.FE.COPY_DATA:
            self._copy_data += message[5:]
            while len(self._copy_data) >= COPY_PART:
                out.append(self._copy_part(who, bytes(self._copy_data[:COPY_PART])))
                del self._copy_data[:COPY_PART]
        else:  # CopyDone or CopyFail: the rest, and the COPY is over
            if self._copy_data:
                out.append(self._copy_part(who, bytes(self._copy_data)))
            self._copy, self._copy_data = None, bytearray()
        return out

    def _copy_part(self, who: dict, data: bytes) -> dict:
        from .audit.records import base
        self._copy_parts += 1
        payload = {"b": base64.b64encode(data).decode("ascii")}
        sealed = self.sealing.sealer.seal(payload)
        return dict(base("copy_data", who), statement=self._copy, part=self._copy_parts, sealed=sealed)
