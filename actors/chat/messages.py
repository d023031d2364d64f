"""What crosses the boundary between the gateway and the session actors.

The gateway and the actors talk only through bounded memory channels carrying the frozen
dataclasses of this module (design.md, layering rule 4):

* **Commands** go into one session actor's mailbox: :class:`SubmitMessage`,
  :class:`CancelTurn`, :class:`GetTurnState`. Commands that need an answer carry a
  one-shot ``reply`` channel (buffer 1, so the actor's ``send_nowait`` never blocks);
  the actor closes it after answering.
* **Events** come out of every actor on one shared bounded channel to the gateway, which
  renders them (their wire shape lives in ``archon_chat.gateway.wire``, the one place that
  knows it) and emits them to the session's room. The actors know neither payload dicts nor
  room names.

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
    #: still ``STREAMING`` whose writer is gone (a crash, or its owner lost the session)
    #: becomes ``FAILED`` (see :mod:`actors.chat.store`).
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
    TOKEN_EXPIRED = "token_expired"
    AGENT_UNAVAILABLE = "agent_unavailable"
    AGENT_TIMEOUT = "agent_timeout"
    AGENT_PROTOCOL_ERROR = "agent_protocol_error"
    AGENT_ERROR = "agent_error"
    INTERNAL_ERROR = "internal_error"
    #: the server answering a reply stopped; the partial reply is kept, send again
    OWNER_LOST = "owner_lost"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One stored message (the contract's ``ChatMessage``, design.md section 3)."""

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
    #: the user who created it (a token's ``sub``); ``None``: made without user mode
    owner: str | None = None


# ---------------------------------------------------------------------------------------
# Events: actor -> gateway (one shared bounded channel), rendered and emitted by the gateway.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Base of every event a session emits."""

    session_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class MessageEmitted(SessionEvent):
    """A user message accepted, or an agent message at the end of its turn."""

    message: ChatMessage


@dataclass(frozen=True, slots=True)
class ChunkStreamed(SessionEvent):
    """A delta of the agent reply ``message_id``.

    Consecutive chunks of one reply may be merged by anyone holding them unsent, with
    :meth:`merge` (the one merge rule): content concatenated, the later seq.
    """

    message_id: str
    content: str
    #: ``trio.current_time()`` when the agent's delta was read (relay latency metric);
    #: a merged chunk keeps the earlier one's
    read_at: float = field(default=0.0, compare=False)

    def merge(self, later: ChunkStreamed, max_chars: int) -> ChunkStreamed | None:
        """This chunk followed by ``later`` as one chunk, or ``None`` if they belong to
        different replies or the merged content would exceed ``max_chars``. Not a
        checkpoint; neither chunk is changed."""
        if later.message_id != self.message_id or later.session_id != self.session_id:
            return None
        if len(self.content) + len(later.content) > max_chars:
            return None
        return ChunkStreamed(
            self.session_id, later.seq, self.message_id, self.content + later.content, self.read_at
        )


@dataclass(frozen=True, slots=True)
class StreamCompleted(SessionEvent):
    message_id: str
    status: MessageStatus


@dataclass(frozen=True, slots=True)
class TypingChanged(SessionEvent):
    is_typing: bool


@dataclass(frozen=True, slots=True)
class TurnFailed(SessionEvent):
    """A turn's failure, emitted to the room before the failed agent message."""

    message_id: str
    code: ErrorCode
    error: str


@dataclass(frozen=True, slots=True)
class TurnStarted(SessionEvent):
    """Internal marker (not sent to clients): a turn began; ``seq`` is its typing event's."""

    message_id: str


@dataclass(frozen=True, slots=True)
class TurnEnded(SessionEvent):
    """Internal marker (not sent to clients): the turn ``message_id`` ended with
    ``status`` (``code`` when it failed). Sent after its last wire event, for metrics and
    for the gateway's bookkeeping."""

    message_id: str
    status: MessageStatus
    code: ErrorCode | None = None
    first_chunk_latency_s: float | None = None


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
    #: events of the turn in progress with seq > after_seq, in order: the text missed as
    #: one chunk (the newest chunk's seq) and, once the turn's end is decided, its end
    #: events
    events: tuple[SessionEvent, ...]


@dataclass(frozen=True, slots=True)
class GetTurnState:
    """Ask the actor for its state and the turn-in-progress events after ``after_seq``
    (``None``: the whole turn in progress)."""

    after_seq: int | None
    reply: trio.MemorySendChannel[TurnState]


Command = SubmitMessage | CancelTurn | GetTurnState
