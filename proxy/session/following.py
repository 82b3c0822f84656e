"""Following the server's session state where it changes later than the client's message says:
what a Bind runs (the statement the server holds by then, :meth:`proxy.prepared.PreparedStatements.held`),
the transaction block a rollback restores the search_path of (:class:`proxy.searchpath.Block`).

A mixin of :class:`~proxy.session.Session`, reading the prepared statements, the opened names
and the access of the other parts.
"""

from __future__ import annotations

from .. import codec, searchpath
from ..opened import segments
from ..prepared import Kept
from ..searchpath import Block

CLOSED = Kept(None, (), None)  # what a Bind finds when the statement it names is gone


class Following:
    """See the module docstring (a part of :class:`~proxy.session.Session`)."""

    def _init_following(self) -> None:
        """This part's state, set up by the session."""
        self._block = Block()  # the transaction block as the statements sent leave it

    def _block_ends(self, sql: str, low: str, path) -> tuple:
        """For the policy: the path each ROLLBACK/ABORT/COMMIT/END of this text leaves, when one
        changes the path set earlier in the block, in this text or an earlier one (() otherwise)."""
        if not any(w in low for w in ("rollback", "abort", "commit", "end")):
            return ()
        if not self._block.moved(path) and not any(w in low for w in ("search_path", "set_config", "reset", "discard")):
            return ()  # nothing in force or in this text that a block's end would change
        restored: list = []
        changed = self._pending_path not in (None, self._search_path())
        searchpath.after(segments(sql), path, changed, self._block.copy(), restored)
        return tuple(restored) if any(r is not None for r in restored) else ()

    def _stale_at_bind(self, name: str) -> Kept | None:
        """Before a Bind of statement ``name``: None when every statement the server may hold
        under that name by then was decided under the access in force; otherwise the one it
        holds if everything sent before succeeds (:data:`CLOSED`: none), to prepare again."""
        expected, possible = self._prepared.held(name)
        # SQL PREPAREs of the name sent but not yet answered may hold it too: not Parsed again
        stale = [access for access in self._opened.pending_prepares(name) if access != self.access]
        if stale:
            return Kept(None, (), stale[0])
        if all(known is None or known.access == self.access for known in possible):
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
