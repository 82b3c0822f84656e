"""The relay of an active session: splitting both streams, and watching RowDescription, rows, CommandComplete, errors and ReadyForQuery."""

from __future__ import annotations

from .. import codec, errors, searchpath
from ..codec import BE, FE, Field, ProtocolViolation, Target, TxStatus
from ..opened import QUERY as OPENED_QUERY, SYNC as OPENED_SYNC
from ..purpose import mentions_purpose
from ..sealing import MESSAGES as SEALED_MESSAGES
from .commands import Alert, Command, DecideApart, RefreshCatalog, SendToClient, SendToServer
from .events import DecidedApart
from .shared import ACTIVE_FRONTEND, OUTCOME_KINDS, PREPARE_WATCH, PREPARE_CLIENT


DONE = object()  # a message dealt with (see Relay._track_message)


class Edit:
    """The client's bytes as they go on to the server: messages replaced, inserted before or
    dropped, in order, without copying what is left as it came."""

    __slots__ = ("out", "pieces", "pos")

    def __init__(self, out: bytes, pos: int = 0) -> None:
        self.out, self.pieces, self.pos = out, [], pos

    def replace(self, start: int, end: int, data: bytes) -> None:
        self.pieces += (self.out[self.pos:start], data)
        self.pos = end

    def insert(self, start: int, data: bytes) -> None:
        self.pieces += (self.out[self.pos:start], data)
        self.pos = start

    def before(self, at: int) -> list:
        """The pieces that go before offset ``at``."""
        return self.pieces + [self.out[self.pos:at]]

    def result(self, edited: bool = False) -> bytes:
        if not self.pieces and not edited:
            return self.out
        return b"".join(self.before(len(self.out)))


class Relay:
    """The relay of an active session: splitting both streams, and watching RowDescription, rows, CommandComplete, errors and ReadyForQuery (a part of :class:`~proxy.session.Session`)."""

    def _init_relay(self) -> None:
        """This part's state, set up by the session."""
        self._last_server_fatal = False
        self._suppressing = False  # a result was stopped: drop until ReadyForQuery
        self._apart_held: tuple | None = None  # (out, marks) waiting for a decision taken apart
        self._apart_ready: tuple | None = None  # (key, decision) of that decision, while it is used

    # ------------------------------------------------------------------ relay
    def _client_active(self, data: bytes) -> list[Command]:
        out, marks = self._from_client.feed(data)
        return self._client_messages(out, marks)

    def _decided_apart(self, event: DecidedApart) -> list[Command]:
        """The decision a :class:`DecideApart` asked for: go on with the messages held since,
        then with what the client sent meanwhile."""
        if self._apart_held is None:
            return []
        out, marks = self._apart_held
        self._apart_held = None
        self._apart_ready = (event.key, event.decision)
        try:
            commands = self._client_messages(out, marks, resumed=True)
        except ProtocolViolation as exc:
            return self.fail("08P01", str(exc))
        finally:
            self._apart_ready = None
        return self.waits.hold_for_durable(commands) + self._replay()

    def _apart(self, kind: int, out: bytes, start: int, end: int, sql: str | None) -> DecideApart | None:
        """A DecideApart for this Query or Parse when its cold decision belongs in a child process
        (see :mod:`proxy.limits`); None to decide it here."""
        engine = self.config.engine
        if engine is None or self.tier is None or kind == FE.FUNCTION_CALL:
            return None
        if sql is None:
            sql = codec.decode_message(codec.FRONTEND, out[start:end]).query if kind == FE.PARSE else \
                codec.query_text(out[start:end])
        if mentions_purpose(sql) or self._filtering and \
                self.server_params.get("standard_conforming_strings", "on") != "on":
            return None  # refused at once by _decide_message
        path = self._pending_path if self._pending_path is not None else self._search_path()
        tier, user = self.deciding_tier(), self.user or ""
        if path == searchpath.UNKNOWN:  # decided under the last path known, as _decide_sql does, then
            path = self._search_path()  # refused there if it reaches relations (restricted tiers)
        apart = getattr(engine, "apart", None)  # an engine that decides everything itself has none
        key = apart(sql, tier, path, user, self.access) if apart is not None else None
        return DecideApart(key, sql, tier, path, user, self.access) if key is not None else None

    def _hold(self, out: bytes, marks: list, index: int, pieces: list, audits: list,
              apart: DecideApart) -> list[Command]:
        """Send what precedes message ``index``, keep it and the rest until ``decided_apart``."""
        self._apart_held = (out, marks[index:])
        sent = b"".join(pieces)
        return audits + ([SendToServer(sent)] if sent else []) + [apart]

    def _client_messages(self, out: bytes, marks: list, resumed: bool = False) -> list[Command]:
        """The client's complete messages in ``out``.  ``resumed``: the first of them was held for
        a decision taken apart, after everything before its decision had been done."""
        edit = Edit(out, marks[0][1] if resumed else 0)
        audits: list[Command] = []
        decide = self.tier is not None or self.config.audit
        for index, (kind, start, end) in enumerate(marks):
            if resumed and index == 0 and kind != FE.BIND:  # (a held Bind goes the usual way, decided)
                ended = self._resume_held(out, marks, edit, audits)
                if ended is not None:
                    return ended
                continue
            if kind not in ACTIVE_FRONTEND:
                raise ProtocolViolation(f"invalid frontend message type {kind}")
            if kind == FE.QUERY or kind == FE.SYNC or kind == FE.FUNCTION_CALL:
                self.outstanding += 1
            elif kind == FE.TERMINATE:
                sent = b"".join(edit.before(end))
                return audits + self._client_leaves([SendToServer(sent)], "client terminated the session")
            engine = self.config.engine
            if engine is not None:
                step = self._track_message(kind, out, start, end, edit, audits)
                if step is DONE:
                    continue
                if isinstance(step, DecideApart):  # a Bind's statement is prepared again: decided apart
                    return self._hold(out, marks, index, edit.before(start), audits, step)
                if step is not None:
                    return audits + step
            sql = codec.query_text(out[start:end]) if kind == FE.QUERY and decide else None  # read once for both below
            if sql is not None and engine is not None and self.tier is not None:
                reply = self._declare_purpose(sql)
                if reply is not None:
                    audits.append(SendToClient(reply))
                    edit.replace(start, end, b"")
                    audits += self.recorder.purpose(self._who(), self.purpose, self._purpose_statement)
                    continue
            if decide and (kind == FE.QUERY or kind == FE.PARSE or kind == FE.FUNCTION_CALL):
                apart = self._apart(kind, out, start, end, sql)
                if apart is not None:  # the rest waits for the child's answer (decided_apart)
                    return self._hold(out, marks, index, edit.before(start), audits, apart)
                replacement = self._decide_message(kind, out[start:end], audits, sql)
                if replacement is not None:
                    edit.replace(start, end, replacement)
            elif self.config.audit:
                self._track_extended(kind, out, start, end)
                if kind == FE.EXECUTE and self.config.audit_strict:
                    audits += self._execution_record(self._portal_of(out, start, end))
                if self.recorder.seals is not None and kind in SEALED_MESSAGES:  # Bind values, COPY data
                    audits += self.recorder.sealed(self._who(), kind, out[start:end])
        self.recorder.batch_ended()  # a statement's record covers its executions in the same batch only
        out = edit.result(resumed)  # (resumed: what preceded the held message was sent before it was held)
        commands: list[Command] = audits + ([SendToServer(out)] if out else [])
        if self._ddl_seen:
            self._ddl_seen = False
            commands.append(RefreshCatalog())
        return commands

    def _resume_held(self, out: bytes, marks: list, edit: "Edit", audits: list) -> list[Command] | None:
        """The message held for a decision taken apart, now decided; commands that end the
        handling of these messages, or None to go on."""
        kind, start, end = marks[0]
        revoked = self._access_now(self.config.engine)  # a grant may have ended meanwhile
        if revoked:
            return audits + revoked
        sql = codec.query_text(out[start:end]) if kind == FE.QUERY else None
        apart = self._apart(kind, out, start, end, sql)
        if apart is not None and apart.key != self._apart_ready[0]:  # the rules changed meanwhile
            return self._hold(out, marks, 0, edit.before(start), audits, apart)
        replacement = self._decide_message(kind, out[start:end], audits, sql)
        if replacement is not None:
            edit.replace(start, end, replacement)
        return None

    def _track_message(self, kind: int, out: bytes, start: int, end: int, edit: "Edit", audits: list):
        """What a message changes of the prepared statements, portals and the access in force,
        under a policy.  Returns None to go on deciding it, DONE when it has been dealt with, a
        DecideApart to hold it for (a Bind whose statement is prepared again: :meth:`_prepare_apart`),
        or the commands that end the session."""
        if kind in PREPARE_CLIENT:
            self._prepared.client(kind)
        if kind == FE.QUERY or kind == FE.SYNC or kind == FE.FUNCTION_CALL:  # answered in order (proxy.opened)
            self._opened.client(OPENED_QUERY if kind == FE.QUERY else OPENED_SYNC)
        if kind == FE.QUERY or kind == FE.PARSE or kind == FE.FUNCTION_CALL or kind == FE.BIND or kind == FE.EXECUTE:
            # new rules, a grant that began or ended, a purpose: the access of this statement
            revoked = self._access_now(self.config.engine)
            if revoked:
                return revoked
        if kind == FE.BIND:
            apart = self._prepare_apart(out, start, end)
            if apart is not None:
                return apart
            again = self._prepare_again(out, start, end, audits)
            if again is not None:
                edit.insert(start, again)
            portal, statement = codec.bind_names(out[start + 5:end])
            self._opened.bind(portal, self.access, statement)
        elif kind == FE.EXECUTE:
            self._opened.executed(self._portal_of(out, start, end))
        if kind == FE.EXECUTE and self._opened.portals:
            refused = self._refuse_execute(out, start, end)
            if refused is not None:
                edit.replace(start, end, refused)
                if self.config.audit:
                    self._track_extended(kind, out, start, end)  # (refused: no execution record)
                return DONE
        elif kind == FE.CLOSE:
            target, name = codec.close_target(out[start + 5:end])
            if target == Target.STATEMENT:
                self._prepared.forget(name)
                self._opened.closed_statement(name)
        return None

    @staticmethod
    def _portal_of(out: bytes, start: int, end: int) -> str:
        """An Execute's portal name."""
        return codec.execute_target(out[start + 5:end])[0]

    def _server_active(self, data: bytes) -> list[Command]:
        out, marks = self._from_server.feed(data)
        if not self._filtering and not self.refusals.standing and not self._prepared.swallowing and not self._row_limits:
            audits = self._observe_server(out, marks) if marks else []
            return ([SendToClient(out)] if out else []) + audits
        return self._server_filtered(out, marks)

    def _observe_server(self, out: bytes, marks: list[tuple[int, int, int]],
                        prepared_seen: bool = False) -> list[Command]:
        audits: list[Command] = []
        for kind, start, end in marks:
            if not prepared_seen and kind in PREPARE_WATCH and self.config.engine is not None:
                self._prepared.server(kind)
            if kind == BE.READY_FOR_QUERY:
                self.transaction_status = codec.ready_status(out[start + 5:end])
                self._purpose.ready(self.transaction_status)
                if self.transaction_status == TxStatus.IDLE and self._opened.portals:
                    self._opened.portals.clear()  # no transaction: no portal is left open
                self._opened.ready(self.transaction_status)
                if self.outstanding:
                    self.outstanding -= 1
                if not self.outstanding:
                    self._pending_path = None  # all ran: the server's report is the path
            elif kind == BE.COMMAND_COMPLETE:
                if self._purpose.watching:
                    self._purpose.tag(codec.command_tag(out[start + 5:end]))
                self._opened.answered(codec.command_tag(out[start + 5:end]))
            elif kind == BE.PORTAL_SUSPENDED or kind == BE.EMPTY_QUERY_RESPONSE:
                self._opened.answered(None)
            elif kind == BE.ERROR:
                self._opened.error()
                self._note_error(out[start:end])
            elif kind == BE.PARAMETER_STATUS:
                self._note_parameter(out[start:end])
            if self.config.audit and len(self._tracker) and kind in OUTCOME_KINDS:
                audits += self._outcomes(kind, bytes(out[start + 5:end]))
        return audits

    def _server_filtered(self, out: bytes, marks: list) -> list[Command]:
        """Relay for a restricted tier: refusals put back, row values kept out of error details,
        and the second check on every RowDescription."""
        pieces: list[bytes] = []
        pos = 0
        commands: list[Command] = []
        for kind, start, end in marks:
            if self._suppressing:
                if kind != BE.READY_FOR_QUERY:
                    if kind == BE.ERROR:  # the server still runs the rest: what it opens counts
                        self._opened.error()
                    elif kind in (BE.COMMAND_COMPLETE, BE.PORTAL_SUSPENDED, BE.EMPTY_QUERY_RESPONSE):
                        self._opened.answered(codec.command_tag(out[start + 5:end]) if kind == BE.COMMAND_COMPLETE
                                             else None)
                    continue
                pos = start  # everything up to this ReadyForQuery is dropped
                self._suppressing = False
            message = out[start:end]
            replacement = None
            if kind in PREPARE_WATCH and self.config.engine is not None and self._prepared.server(kind):
                replacement = b""  # the reply to a Close or Parse the client never sent
            elif kind == BE.ERROR or kind == BE.NOTICE:
                replacement = self._filter_error(message)
            elif kind == BE.NOTIFICATION and self._filtering:
                note = codec.decode_message(codec.BACKEND, message)
                if note.payload:  # any session's pg_notify() can carry any value: the payload is dropped
                    replacement = codec.encode(codec.NotificationResponse(note.pid, note.channel, ""))
            elif (kind == BE.DATA_ROW or kind == BE.COPY_DATA) and self._row_limits:  # a row, or a COPY TO line
                replacement = self._count_row(commands)
            elif kind == BE.ROW_DESCRIPTION and self._filtering:
                leak = self._leaking_column(message)
                if leak:
                    replacement = codec.error_response(
                        "42501", f"pgveil stopped a result: column {leak} is not visible in clear to tier "
                                 f"{self.tier.name}")
                    self._suppressing = True
                    commands.append(Alert("second_layer_stop", f"RowDescription named {leak} for tier "
                                                               f"{self.tier.name}"))
            if kind in OUTCOME_KINDS or kind == BE.PARAMETER_STATUS:
                commands += self._observe_server(out, [(kind, start, end)], prepared_seen=True)
            if replacement is not None:
                pieces += (out[pos:start], replacement)
                pos = end
        if not self._suppressing:
            pieces.append(out[pos:])
        data = b"".join(pieces) if len(pieces) != 1 else pieces[0]
        if self.refusals.standing and self.outstanding == 0:
            self.refusals.settled()  # e.g. a refusal inside an aborted transaction got 25P02 instead
        return ([SendToClient(data)] if data else []) + commands

    def _count_row(self, commands: list) -> bytes | None:
        """A row of a statement with a row limit: past the limit, the result stops here."""
        result = self._tracker.running_result()
        limit = self._row_limits.row(result) if result is not None else None
        if limit is None:
            return None
        statement_id = result[0]
        self._suppressing = True
        self._tracker.stop(statement_id, limit, "54000")
        commands.append(Alert("max_rows_stop", f"tier {self.tier.name} reached max_rows {limit}"))
        return codec.error_response(
            "54000", f"pgveil: tier {self.tier.name} may read at most {limit} rows with sensitive columns in one "
                     f"statement; the result was stopped after them",
            hint="Narrow the statement, or ask for a grant.")

    def _filter_error(self, message: bytes) -> bytes | None:
        error = codec.decode_message(codec.BACKEND, message)
        text = next((value for code, value in error.fields if code == Field.MESSAGE), None) or ""  # a notice has no get()
        refusal = self.refusals.error(text)
        if refusal is not None:
            return refusal
        if self._filtering:  # errors can print values: see proxy/errors.py
            fields = errors.scrub(error.fields, self.tier.name)
            return codec.encode(type(error)(fields)) if fields != error.fields else None
        return None

    def _leaking_column(self, message: bytes) -> str | None:
        hidden = self.config.engine.hidden_columns(self.deciding_tier())
        if not hidden:
            return None
        for name, table_oid, column in codec.row_sources(message):
            if table_oid and (table_oid, column) in hidden:
                return f"{name} (table {table_oid}, column {column})"
        return None

    def _note_error(self, message: bytes) -> None:
        error = codec.decode_message(codec.BACKEND, message)
        self._last_server_fatal = error.get(Field.SEVERITY) in ("FATAL", "PANIC")

    def _note_parameter(self, message: bytes) -> None:
        status = codec.decode_message(codec.BACKEND, message)
        self.server_params[status.name] = status.value
