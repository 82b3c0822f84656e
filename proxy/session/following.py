"""Following the server's session state where it changes later than the client's message says:
what a Bind runs (the statement the server holds by then, :meth:`proxy.prepared.PreparedStatements.held`),
the transaction block a rollback restores the search_path of (:class:`proxy.searchpath.Block`),
and a purpose declared with the extended protocol.

``SET pgveil.purpose = '...'`` sent as Parse/Bind/Execute (psycopg's ``prepare=True`` and
pipelines, asyncpg's ``fetch``, pgjdbc's default extended mode) is a prepared statement like any
other: it may be executed never, once or many times, inside or outside a transaction block.  So
the Parse goes upstream as ``SET [LOCAL] pgveil.declared TO DEFAULT`` (or ``RESET
pgveil.declared``: the same replies and tag, the same warning for ``SET LOCAL`` outside a block,
the value never reaches the database), and the declaration is the statement's effect
(:mod:`proxy.opened`): a purpose cleared counts from the moment its Execute is sent (that only
masks more); a purpose set counts once the server has confirmed the Execute and answered its
Sync without an error or a rollback (statements sent before that are decided without it).

A mixin of :class:`~proxy.session.Session`, reading the prepared statements, the opened names
and the access of the other parts.
"""

from __future__ import annotations

from dataclasses import replace

from .. import codec, state_after
from ..codec import BE, TxStatus
from ..limits import decided_apart
from ..prepared import Kept
from ..purpose import read_declaration
from ..searchpath import Block
from ..verdicts import Reason, Refusal

CLOSED = Kept(None, (), None)  # what a Bind finds when the statement it names is gone


class Following:
    """See the module docstring (a part of :class:`~proxy.session.Session`)."""

    def _init_following(self) -> None:
        """This part's state, set up by the session."""
        self._block = Block()  # the transaction block as the statements sent leave it
        self._declared: list = []  # purpose declarations confirmed by the server, until its ReadyForQuery

    def _under_block_ends(self, sql: str, low: str, path, decision, tier):
        """A text of several statements where a ROLLBACK, ABORT, COMMIT or END changes the path
        set earlier in the block (in this text or an earlier one): decided again, the policy
        told the path each of them leaves (``Context.block_ends``), so the statements after them
        are decided as PostgreSQL runs them.  Read from the decision's :class:`proxy.state_after.After`
        (read once, in the analysing child for a large text)."""
        if (decision.refused and decision.code is not Reason.SEARCH_PATH) or ";" not in sql or \
                not ("end" in low or "rollback" in low or "commit" in low or "abort" in low):
            return decision  # (plain tests: this runs for every statement; a refusal of another kind stands)
        if not self._block.moved(path) and not ("search_path" in low or "set_config" in low or "reset" in low
                                                or "discard" in low):
            return decision  # nothing in force or in this text that a block's end would change
        after = decision.after if decision.after is not None else state_after.read(sql, low)
        ends: list = []
        changed = self._pending_path not in (None, self._search_path())
        state_after.follow(after.paths, path, changed, self._block.copy(), ends)
        if any(left is not None for left in ends):
            if decided_apart(sql) and not tier.all_clear:  # deciding it again here would hold the loop
                return Refusal.analysis_failed("a large text whose transaction block ends change the search_path; "
                                               "send the statements after the block's end apart").decision()
            decision = self.config.engine.decide(sql, tier, path, self.user or "", self.access, block_ends=tuple(ends))
        return decision if decision.after is not None else replace(decision, after=after)  # read once

    def _stale_at_bind(self, name: str) -> Kept | None:
        """Before a Bind of statement ``name``: None when every statement the server may hold
        under that name by then was decided under the access in force; otherwise the one it
        holds if everything sent before succeeds (:data:`CLOSED`: none), to prepare again."""
        expected, possible = self._prepared.held(name)
        # SQL PREPAREs of the name sent but not yet answered may hold it too: not Parsed again
        stale = [access for access in self._opened.pending_prepares(name) if access != self.access]
        if stale:
            return Kept(None, (), stale[0])
        if all(known is None or known.access == self.access or _declares(known) for known in possible):
            return None
        return expected if expected is not None else CLOSED

    def _bind_unprepared(self, name: str, known: Kept) -> bytes | None:
        """What goes before a Bind of a stale statement pgveil cannot Parse again: a Close when
        the server should hold none by then (the Bind then fails as the client expects), a
        failing statement (the refusal) when it was prepared with SQL PREPARE under other
        access and the tier is restricted."""
        if known is CLOSED:
            self._prepared.inject(parse=False)
            return codec.encode(codec.Close(codec.Target.STATEMENT, name))
        if self.tier is None or self.tier.all_clear:
            return None
        reason = (f"prepared statement {name} was prepared under other access ({known.access.describe()}); "
                  f"prepare it again: DEALLOCATE {name}, then PREPARE {name}")
        return self.refusals.stand_in(reason, "42501", parse=codec.Parse("pgveil_refused", "", ()))

    def _bound(self, portal: str, name: str) -> None:
        """A Bind of ``portal`` from statement ``name`` went upstream: the portal runs what the
        server holds by then (its effects, its audit record)."""
        known = self._prepared.held(name)[0]
        self._opened.bind(portal, self.access, known.effects if known is not None else ())
        if self.config.audit and known is not None and known.statement_id:
            self._tracker.parse(name, known.statement_id)

    # ------------------------------------------------------------------ a purpose declared with Parse/Bind/Execute
    def _declare_parse(self, message: bytes, audits: list) -> bytes | None:
        """A Parse of ``SET pgveil.purpose``: the Parse to send in its place (see the module
        docstring), or None for any other Parse."""
        if b"purpose" not in message and b"PURPOSE" not in message:
            return None
        decoded = codec.decode_message(codec.FRONTEND, message)
        declared = read_declaration(decoded.query)
        if declared is None:
            return None  # refused as any other statement naming it
        scope = "LOCAL " if declared.local else ""
        text = "RESET pgveil.declared" if declared.tag == "RESET" else f"SET {scope}pgveil.declared TO DEFAULT"
        effect = ("purpose_reset" if declared.tag == "RESET" else "purpose", declared.value, declared.local,
                  declared.audit_text)
        records = self.recorder.purpose(self._who(), declared.value, declared.audit_text)
        statement_id = records[0].record["id"] if records else None
        audits += records
        if statement_id:
            self._tracker.parse(decoded.name, statement_id)
        self._prepared.remember(decoded.name, decoded.query, decoded.param_types, self.access)
        self._prepared.noted(statement_id, [effect])
        return codec.encode(codec.Parse(decoded.name, text, decoded.param_types))

    def _executing(self, portal: str) -> None:
        """An Execute went upstream: a purpose it clears is cleared now (with any set before it
        and not yet in force)."""
        for effect in self._opened.bound(portal):
            if effect[0] in ("purpose", "purpose_reset") and effect[1] is None:
                self._declared.clear()
                in_block = self.transaction_status != TxStatus.IDLE or self._block.marks is not None
                self._purpose.set(None, local=effect[2], in_block=in_block)

    def _follow_server(self, kind: int, body: bytes) -> None:
        """A server message the session follows for the purpose and the transaction block
        (after the relay noted it)."""
        if kind == BE.COMMAND_COMPLETE:
            if self._opened.confirmed:
                self._declared += [e for e in self._opened.confirmed if e[1] is not None]
                self._opened.confirmed.clear()
            if self._declared:
                tag = codec.command_tag(body)
                if tag == "ROLLBACK":
                    self._declared.clear()
                elif tag == "COMMIT":  # a SET LOCAL ends with its block
                    self._declared = [e for e in self._declared if not e[2]]
        elif kind == BE.ERROR:
            self._declared.clear()  # an error undoes the implicit block, and aborts an explicit one
            self._block.error()
        elif kind == BE.READY_FOR_QUERY:
            if self._declared:
                in_block = self.transaction_status != TxStatus.IDLE
                for _, value, local, statement in self._declared:
                    self._purpose.set(value, local=local, in_block=in_block)
                    self._purpose_statement = statement
                self._declared.clear()
            block = self._block
            if not self.outstanding and (block.marks is not None or block.touched or block.failed
                                         or self.transaction_status != TxStatus.IDLE):
                block.ready(self.transaction_status)


def _declares(known: Kept) -> bool:
    """Is this prepared statement a purpose declaration (decided under no access)?"""
    return any(e is not None and e[0] in ("purpose", "purpose_reset") for e in known.effects)
