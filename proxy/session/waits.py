"""Strict audit's waits, as states of the session: nothing is seen or changed without a durable record.

- **Changes wait for their record.**  An event whose durable records include one that is not
  ``answer_only`` returns only its records; everything else it would do (above all the bytes
  for the server) waits until ``AuditDurable`` has come for each of them.  The client's bytes
  arriving meanwhile are queued, and handled in order afterwards; past the high-water mark the
  server is asked to stop reading from the client.  A decision taken apart holds the client
  the same way (see :mod:`.relay`).
- **Reads go at once, results wait.**  When all of an event's durable records are
  ``answer_only`` (statements proven read-only, :mod:`.readonly`), its commands go at once,
  and from then on nothing reaches the client (no RowDescription, DataRow, CommandComplete or
  ErrorResponse, nor anything after them) until those records are durable.  The held answer
  is bounded the same way, by pausing the server.
- ``AuditFailed`` ends the session with 58030, and what was held is never sent.
"""

from __future__ import annotations

from collections import deque

from .commands import (Command, PauseClientReading, PauseServerReading, ResumeClientReading, ResumeServerReading,
                       SendToClient, WriteAudit)
from .events import AuditDurable, AuditFailed, ClientData
from .shared import Phase


class Waits:
    """The session's waits for durable records and decisions (a part of :class:`~proxy.session.Session`)."""

    def _init_waits(self) -> None:
        """This part's state, set up by the session."""
        self._durable_tokens: set[int] = set()  # records a change waits for
        self._durable_held: list[Command] = []  # what waits for them
        self._answer_tokens: set[int] = set()  # records a read's answer waits for
        self._answers: list[Command] = []  # what the client is not sent before them
        self._answer_bytes = 0
        self._server_paused = False
        self._token = 0
        self._queued: deque[bytes] = deque()  # client bytes that arrived while a change waits
        self._queued_bytes = 0
        self._reading_paused = False

    @property
    def waiting(self) -> bool:
        """A statement waits for its durable record or its decision, or client bytes are queued."""
        return bool(self._durable_tokens or self._answer_tokens or self._apart_held is not None or self._queued)

    def _hold_for_durable(self, commands: list[Command]) -> list[Command]:
        """Give this event's new durable records their tokens, and hold what must wait for them."""
        if not any(type(c) is WriteAudit and c.durable and not c.token for c in commands):
            return commands  # (a token: already held, by the handler itself)
        if all(c.answer_only for c in commands if type(c) is WriteAudit and c.durable and not c.token):
            out: list[Command] = []
            for command in commands:
                if type(command) is WriteAudit and command.durable and not command.token:
                    self._token += 1
                    self._answer_tokens.add(self._token)
                    command = WriteAudit(command.record, True, self._token, True)
                out.append(command)
            return out
        audits: list[Command] = []
        for command in commands:
            if type(command) is not WriteAudit:
                self._durable_held.append(command)
            elif command.durable and not command.token:
                self._token += 1
                self._durable_tokens.add(self._token)
                audits.append(WriteAudit(command.record, True, self._token, command.answer_only))
            else:
                audits.append(command)
        return audits

    def _hold_answers(self, commands: list[Command]) -> list[Command]:
        """While a read's record is not durable, what would reach the client waits, in order."""
        if self.phase is Phase.CLOSED:  # ended: what was held is never shown
            self._answers, self._answer_bytes = [], 0
            return commands
        out: list[Command] = []
        for command in commands:
            if type(command) is SendToClient:
                self._answers.append(command)
                self._answer_bytes += len(command.data)
            else:
                out.append(command)
        if self._answer_bytes > self.config.backlog_high_water and not self._server_paused:
            self._server_paused = True
            out.append(PauseServerReading())
        return out

    def _queue_client(self, data: bytes) -> list[Command]:
        """Client bytes that arrived while a change waits; past the high-water mark the server
        stops reading from the client."""
        self._queued.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes > self.config.backlog_high_water and not self._reading_paused:
            self._reading_paused = True
            return [PauseClientReading()]
        return []

    def _replay(self) -> list[Command]:
        """The wait is over: handle what the client sent meanwhile, in order, until the next wait."""
        commands: list[Command] = []
        while self._queued and not self._durable_tokens and self._apart_held is None \
                and self.phase is not Phase.CLOSED:
            data = self._queued.popleft()
            self._queued_bytes -= len(data)
            commands += self._step(ClientData(data))
        if self._reading_paused and not self._queued and not self._durable_tokens and self._apart_held is None \
                and self.phase is not Phase.CLOSED:
            self._reading_paused = False
            commands.append(ResumeClientReading())
        return commands

    def _audit_durable(self, event: AuditDurable) -> list[Command]:
        if event.token in self._answer_tokens:
            self._answer_tokens.discard(event.token)
            if self._answer_tokens:
                return []
            released, self._answers, self._answer_bytes = self._answers, [], 0
            if self._server_paused:
                self._server_paused = False
                released.append(ResumeServerReading())
            return released
        self._durable_tokens.discard(event.token)
        if self._durable_tokens:
            return []
        held, self._durable_held = self._durable_held, []
        return held + self._replay()

    def _audit_failed(self, event: AuditFailed) -> list[Command]:
        if event.token in self._answer_tokens:
            message = "pgveil cannot write its audit journal; the statement's result was withheld"
        elif event.token in self._durable_tokens:
            message = "pgveil cannot write its audit journal; the statement was not sent"
        else:
            return []
        self._durable_tokens.clear()
        self._durable_held = []
        self._answer_tokens.clear()
        self._answers, self._answer_bytes = [], 0
        return self.fail("58030", message)
