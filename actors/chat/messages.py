"""What crosses the boundary between the gateway and the session actors.

The gateway and the actors talk only through bounded memory channels carrying the frozen
dataclasses of this module (design.md, layering rule 4):

* **Commands** go into one session actor's mailbox: :class:`SubmitMessage`,
  :class:`CancelTurn`, :class:`GetTurnState`. Commands that need an answer carry a
  one-shot ``reply`` channel (buffer 1, so the actor's ``send_nowait`` never blocks);
  the actor closes it after answering.
* **Events** come out of every actor on one shared bounded channel to the gateway, which
  fans them out to the room ``chat_{session_id}``. Each event knows its wire name and
  payload (design.md section 3), so the gateway never rebuilds a payload.

Every event a session emits carries ``session_id`` and ``seq``: a per-session monotonic
integer starting at 1, allocated by the actor and persisted through the store, so it
survives passivation and restarts. ``seq`` numbers may skip (after a crash the actor
resumes past the last reserved number) but never repeat or go backwards.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

Sender = Literal["user", "agent"]
AgentType = Literal["rag", "document", "task"]
AGENT_TYPES: tuple[AgentType, ...] = ("rag", "document", "task")


class MessageStatus(enum.Enum):
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    FAILED = "failed"
    #: Only in the store: an agent reply being streamed. Never on the wire; a reply
    #: still ``STREAMING`` when the store opens was interrupted by a crash and
    #: becomes ``FAILED``.
    STREAMING = "streaming"


class ErrorCode(enum.Enum):
    """The contract's error codes (design.md section 3)."""

    INVALID_REQUEST = "invalid_request"
    SESSION_NOT_FOUND = "session_not_found"
    MESSAGE_TOO_LARGE = "message_too_large"
    RATE_LIMITED = "rate_limited"
    SESSION_FULL = "session_full"
    SESSION_BUSY = "session_busy"
    UNAUTHORIZED = "unauthorized"
    AGENT_UNAVAILABLE = "agent_unavailable"
    AGENT_TIMEOUT = "agent_timeout"
    AGENT_PROTOCOL_ERROR = "agent_protocol_error"
    AGENT_ERROR = "agent_error"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One stored message; ``to_wire()`` is the contract's ``ChatMessage``."""

    id: str
    session_id: str
    seq: int
    content: str
    sender: Sender
    timestamp: str  # ISO 8601 UTC with offset, e.g. 2026-11-25T17:20:53.123456+00:00
    agent_type: AgentType
    status: MessageStatus = MessageStatus.COMPLETE
    error: tuple[str, str] | None = None  # (code, text)
    client_message_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "session_id": self.session_id,
            "seq": self.seq,
            "content": self.content,
            "sender": self.sender,
            "timestamp": self.timestamp,
            "agent_type": self.agent_type,
            "status": self.status.value,
        }
        if self.error is not None:
            out["error"] = {"code": self.error[0], "error": self.error[1]}
        return out


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored session (what ``GET /sessions/{id}`` shows, without its messages)."""

    session_id: str
    agent_type: AgentType
    project_id: str | None
    created_at: str
    updated_at: str
    last_seq: int  # last seq emitted (or reserved, after a crash)
    message_count: int


# ---------------------------------------------------------------------------------------
# Events: actor -> gateway (one shared bounded channel), fanned out to the room.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Base of every event a session emits to its room."""

    session_id: str
    seq: int

    @property
    def name(self) -> str:  # the Socket.IO event name
        raise NotImplementedError

    def payload(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def room(self) -> str:
        return f"chat_{self.session_id}"


@dataclass(frozen=True, slots=True)
class MessageEmitted(SessionEvent):
    """A user message accepted, or an agent message at the end of its turn."""

    message: ChatMessage

    @property
    def name(self) -> str:
        return "message"

    def payload(self) -> dict[str, Any]:
        return {
            "type": "message",
            "session_id": self.session_id,
            "seq": self.seq,
            "data": self.message.to_wire(),
        }


@dataclass(frozen=True, slots=True)
class ChunkStreamed(SessionEvent):
    """A delta of the agent reply ``message_id``. Consecutive chunks of one turn may be
    merged (content concatenated, the later seq) by anyone holding them unsent."""

    message_id: str
    content: str

    @property
    def name(self) -> str:
        return "stream_chunk"

    def payload(self) -> dict[str, Any]:
        return {
            "type": "stream_chunk",
            "session_id": self.session_id,
            "seq": self.seq,
            "message_id": self.message_id,
            "content": self.content,
        }

    def merged(self, later: ChunkStreamed) -> ChunkStreamed:
        return ChunkStreamed(
            self.session_id, later.seq, self.message_id, self.content + later.content
        )


@dataclass(frozen=True, slots=True)
class StreamCompleted(SessionEvent):
    message_id: str
    status: MessageStatus

    @property
    def name(self) -> str:
        return "stream_complete"

    def payload(self) -> dict[str, Any]:
        return {
            "type": "stream_complete",
            "session_id": self.session_id,
            "seq": self.seq,
            "message_id": self.message_id,
            "status": self.status.value,
        }


@dataclass(frozen=True, slots=True)
class TypingChanged(SessionEvent):
    is_typing: bool

    @property
    def name(self) -> str:
        return "typing"

    def payload(self) -> dict[str, Any]:
        return {
            "type": "typing",
            "session_id": self.session_id,
            "seq": self.seq,
            "is_typing": self.is_typing,
        }


@dataclass(frozen=True, slots=True)
class TurnFailed(SessionEvent):
    """A turn's failure, emitted to the room before the failed agent message."""

    message_id: str
    code: ErrorCode
    error: str

    @property
    def name(self) -> str:
        return "error"

    def payload(self) -> dict[str, Any]:
        return {
            "type": "error",
            "session_id": self.session_id,
            "seq": self.seq,
            "message_id": self.message_id,
            "error": self.error,
            "code": self.code.value,
        }


@dataclass(frozen=True, slots=True)
class TurnStarted(SessionEvent):
    """Internal marker (not sent to clients): a turn began; ``seq`` is its typing event's."""

    message_id: str

    @property
    def name(self) -> str:
        return "_turn_started"

    def payload(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "seq": self.seq, "message_id": self.message_id}


@dataclass(frozen=True, slots=True)
class TurnEnded(SessionEvent):
    """Internal marker (not sent to clients): the turn ``message_id`` ended with
    ``status`` (``code`` when it failed). Sent after its last wire event, for metrics and
    for the gateway's bookkeeping."""

    message_id: str
    status: MessageStatus
    code: ErrorCode | None = None
    first_chunk_latency_s: float | None = None

    @property
    def name(self) -> str:
        return "_turn_ended"

    def payload(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "seq": self.seq, "message_id": self.message_id}


# ---------------------------------------------------------------------------------------
# Commands: gateway -> one actor's mailbox.
# ---------------------------------------------------------------------------------------


class SubmitOutcome(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # same client_message_id as an earlier send: no new turn
    SESSION_FULL = "session_full"
    SESSION_BUSY = "session_busy"
    SESSION_NOT_FOUND = "session_not_found"


@dataclass(frozen=True, slots=True)
class SubmitReply:
    outcome: SubmitOutcome
    message_id: str | None = None  # the user message's id (ACCEPTED, DUPLICATE)


@dataclass(frozen=True, slots=True)
class SubmitMessage:
    """A user message. The actor stores and emits it at once (its ``message`` event),
    then runs its turn when the turns before it are done."""

    content: str
    context: dict[str, Any] = field(default_factory=dict)
    client_message_id: str | None = None
    reply: trio.MemorySendChannel[SubmitReply] | None = None


class CancelReason(enum.Enum):
    STOP = "stop"  # stop_response
    LEFT = "left"  # the last member left (leave_chat, or disconnect grace ran out)
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class CancelTurn:
    """Cancel the turn in flight, if any (and, for LEFT/SHUTDOWN, drop queued turns:
    their user messages stay stored). Answered with ``True`` if a turn was cancelled."""

    reason: CancelReason
    reply: trio.MemorySendChannel[bool] | None = None


@dataclass(frozen=True, slots=True)
class TurnState:
    """Answer to :class:`GetTurnState`."""

    last_seq: int
    typing: bool
    #: (message_id, seq of the turn's first event) of the turn in progress, if any
    turn: tuple[str, int] | None
    #: wire events of the turn in progress with seq > after_seq, in order; consecutive
    #: chunks may be merged (their concatenation is exactly the text they carried)
    events: tuple[SessionEvent, ...]


@dataclass(frozen=True, slots=True)
class GetTurnState:
    """Ask the actor for its state and the turn-in-progress events after ``after_seq``
    (``None``: the whole turn in progress)."""

    after_seq: int | None
    reply: trio.MemorySendChannel[TurnState]


Command = SubmitMessage | CancelTurn | GetTurnState
