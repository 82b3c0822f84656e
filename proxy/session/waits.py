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

:class:`Waits` is a composed object, not a mixin: the session owns one (``session.waits``),
gives it the commands an event produced, the client's bytes that must wait, and the tokens
that became durable or failed, and gets back the commands to carry out now (or the bytes to
handle next, or the message to end with).  It keeps only its own state (tokens, what is held,
what is queued, whether reading is paused) and never calls back into the session: replaying
the queued bytes, and a decision taken apart, are the session's (:mod:`.machine`, :mod:`.relay`).
"""

from __future__ import annotations

from collections import deque

from .commands import (Command, PauseClientReading, PauseServerReading, ResumeClientReading, ResumeServerReading,
                       SendToClient, WriteAudit)


class Waits:
    """One session's waits for durable records (see the module docstring)."""

    def __init__(self, high_water: int) -> None:
        self._high_water = high_water  # bytes queued or held before reading from that side pauses
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
    def changes(self) -> bool:
        """A change waits for its durable records: the client's bytes must be queued."""
        return bool(self._durable_tokens)

    @property
    def answers(self) -> bool:
        """A read's answer waits for its durable records: what reaches the client is held."""
        return bool(self._answer_tokens)

    @property
    def busy(self) -> bool:
        """Records are awaited, or client bytes are queued."""
        return bool(self._durable_tokens or self._answer_tokens or self._queued)

    def hold_for_durable(self, commands: list[Command]) -> list[Command]:
        """Give this event's new durable records their tokens; the commands to carry out now
        (the rest is held until they are durable)."""
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

    def hold_answers(self, commands: list[Command], closed: bool) -> list[Command]:
        """While a read's record is not durable, what would reach the client waits, in order;
        the commands to carry out now.  ``closed``: the session ended, what was held is dropped."""
        if closed:  # ended: what was held is never shown
            self._answers, self._answer_bytes = [], 0
            return commands
        out: list[Command] = []
        for command in commands:
            if type(command) is SendToClient:
                self._answers.append(command)
                self._answer_bytes += len(command.data)
            else:
                out.append(command)
        if self._answer_bytes > self._high_water and not self._server_paused:
            self._server_paused = True
            out.append(PauseServerReading())
        return out

    def queue_client(self, data: bytes) -> list[Command]:
        """Client bytes that arrived while a change waits; past the high-water mark the server
        stops reading from the client."""
        self._queued.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes > self._high_water and not self._reading_paused:
            self._reading_paused = True
            return [PauseClientReading()]
        return []

    def next_queued(self) -> bytes | None:
        """The oldest client bytes queued, taken off the queue (None: nothing queued)."""
        if not self._queued:
            return None
        data = self._queued.popleft()
        self._queued_bytes -= len(data)
        return data

    def resume_reading(self) -> list[Command]:
        """The queue is drained and nothing waits: reading from the client resumes if paused."""
        if self._reading_paused and not self._queued and not self._durable_tokens:
            self._reading_paused = False
            return [ResumeClientReading()]
        return []

    def durable(self, token: int) -> tuple[list[Command], bool]:
        """A record is durable: the commands released by it, and whether the change's wait is
        over (then the queued client bytes are to be handled)."""
        if token in self._answer_tokens:
            self._answer_tokens.discard(token)
            if self._answer_tokens:
                return [], False
            released, self._answers, self._answer_bytes = self._answers, [], 0
            if self._server_paused:
                self._server_paused = False
                released.append(ResumeServerReading())
            return released, False
        self._durable_tokens.discard(token)
        if self._durable_tokens:
            return [], False
        held, self._durable_held = self._durable_held, []
        return held, True

    def failed(self, token: int) -> str | None:
        """A record could not be written: the message to end the session with (58030), or None
        for a record nothing waits for.  What was held is dropped."""
        if token in self._answer_tokens:
            message = "pgveil cannot write its audit journal; the statement's result was withheld"
        elif token in self._durable_tokens:
            message = "pgveil cannot write its audit journal; the statement was not sent"
        else:
            return None
        self._durable_tokens.clear()
        self._durable_held = []
        self._answer_tokens.clear()
        self._answers, self._answer_bytes = [], 0
        return message
