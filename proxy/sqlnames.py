"""SQL-level cursors and prepared statements of one session: a use must name one pgveil saw declared.

``DECLARE c CURSOR FOR ...`` and ``PREPARE p AS ...`` carry a statement that the policy analyses
like any other; ``FETCH``/``MOVE`` and ``EXECUTE`` then only name it.  So for a restricted tier a
use is allowed only when the name was declared through pgveil in this session (by a decision
that was not refused), or, for ``EXECUTE``, names a statement prepared with the protocol's Parse
message under the access in force now.  A name pgveil never saw declared was declared by a
statement it did not analyse.  Whether the access changed since a name pgveil did see was
declared is :mod:`proxy.opened`'s check.

Names that no longer exist on the server (closed, deallocated, ended with their transaction)
may stay here: a use of one fails on the server, and any new declaration goes through pgveil.

Pure.

>>> names = SqlNames()
>>> names.apply((("declare", "cursor", "c"),), {}, "a") is None
True
>>> names.apply((("use", "cursor", "c"),), {}, "a") is None
True
>>> names.apply((("use", "statement", "p"),), {}, "a")
'prepared statement "p" was not prepared through pgveil in this session'
"""

from __future__ import annotations

WHAT = {"cursor": ("cursor", "declared"), "statement": ("prepared statement", "prepared")}


class SqlNames:
    def __init__(self) -> None:
        self.declared: set[tuple[str, str]] = set()  # (what, name)

    def apply(self, names: tuple, protocol: dict, access) -> str | None:
        """Check a decision's uses and note its declarations, in order; the refusal's reason, or
        None.  ``protocol``: statements prepared with Parse, name -> (text, types, access)."""
        pending: set = set()
        for op, what, name in names:
            if op == "declare":
                pending.add((what, name))
                continue
            if (what, name) in pending or (what, name) in self.declared:
                continue
            label, verb = WHAT[what]
            if what == "statement" and name in protocol:
                if protocol[name][2] == access:
                    continue
                return f'{label} "{name}" was prepared under other access; prepare it again'
            return f'{label} "{name}" was not {verb} through pgveil in this session'
        self.declared |= pending
        return None
