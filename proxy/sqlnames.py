"""SQL-level cursors and prepared statements of one session: decided when declared, checked when used.

``DECLARE c CURSOR FOR ...`` and ``PREPARE p AS ...`` carry a statement that the policy analyses
like any other; ``FETCH``/``MOVE`` and ``EXECUTE`` then only name it.  So the session keeps, for
each name a restricted tier declared, the access it was decided under (rules version, tier,
purpose, grants).  A use is allowed only when the name was declared through pgveil in this
session under the access in force now: a name pgveil never saw (declared by a statement it did
not analyse) or decided under other rules is refused.  Statements prepared with the protocol's
Parse message count too, under the rules version they were decided for.

Names that no longer exist on the server (closed, deallocated, ended with their transaction)
may stay here: a use of one fails on the server, and any new declaration replaces it.

Pure.

>>> names = SqlNames()
>>> names.apply((("declare", "cursor", "c"),), "v1", {}) is None
True
>>> names.apply((("use", "cursor", "c"),), "v1", {}) is None
True
>>> names.apply((("use", "cursor", "c"),), "v2", {})
'cursor "c" was declared under other rules or another access; declare it again'
>>> names.apply((("use", "statement", "p"),), "v1", {})
'prepared statement "p" was not prepared through pgveil in this session'
"""

from __future__ import annotations

WHAT = {"cursor": ("cursor", "declared"), "statement": ("prepared statement", "prepared")}


class SqlNames:
    def __init__(self) -> None:
        self.declared: dict[tuple[str, str], object] = {}  # (what, name) -> access key

    def apply(self, names: tuple, access, protocol: dict, protocol_access=None) -> str | None:
        """Check a decision's uses and note its declarations, in order; the refusal's reason, or
        None.  ``protocol``: statements prepared with Parse, name -> (..., rules version), usable
        when that version is ``protocol_access``."""
        pending: dict = {}
        for op, what, name in names:
            if op == "declare":
                pending[(what, name)] = access
                continue
            label, verb = WHAT[what]
            found = pending.get((what, name), self.declared.get((what, name)))
            if found is None and what == "statement" and name in protocol:
                if protocol_access is not None and protocol[name][2] == protocol_access:
                    continue
                return f'{label} "{name}" was prepared under other rules; prepare it again'
            if found is None:
                return f'{label} "{name}" was not {verb} through pgveil in this session'
            if found != access:
                return f'{label} "{name}" was {verb} under other rules or another access; {verb[:-1]} it again'
        self.declared.update(pending)
        return None
