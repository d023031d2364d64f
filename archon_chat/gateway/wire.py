"""The wire shape of every session event and stored message (design.md section 3).

The one module that knows payload dicts and room names: the actors emit typed events
(:mod:`actors.chat.messages`), and everything a client receives about a session is rendered
here. Every payload repeats its event name in ``type``, as in the seed.
"""

from __future__ import annotations

from typing import Any, Final

from actors.chat.messages import (
    ChatMessage,
    ChunkStreamed,
    ErrorCode,
    MessageEmitted,
    SessionEvent,
    StreamCompleted,
    TurnFailed,
    TurnState,
    TypingChanged,
)

__all__ = [
    "ROOM_PREFIX",
    "confirmed",
    "event_name",
    "message_wire",
    "payload",
    "refusal",
    "room_of",
    "session_of",
]

ROOM_PREFIX: Final = "chat_"

_NAMES: Final[dict[type[SessionEvent], str]] = {
    MessageEmitted: "message",
    ChunkStreamed: "stream_chunk",
    StreamCompleted: "stream_complete",
    TypingChanged: "typing",
    TurnFailed: "error",
}


def room_of(session_id: str) -> str:
    """The Socket.IO room of a session's members."""
    return ROOM_PREFIX + session_id


def session_of(room: str) -> str | None:
    """The session a room belongs to, or ``None`` for any other room."""
    return room[len(ROOM_PREFIX) :] if room.startswith(ROOM_PREFIX) else None


def event_name(event: SessionEvent) -> str | None:
    """The Socket.IO event name of ``event``; ``None`` for internal markers (turn start and
    end), which are never sent to clients."""
    return _NAMES.get(type(event))


def message_wire(message: ChatMessage) -> dict[str, Any]:
    """The contract's ``ChatMessage``."""
    out: dict[str, Any] = {
        "id": message.id,
        "session_id": message.session_id,
        "seq": message.seq,
        "content": message.content,
        "sender": message.sender,
        "timestamp": message.timestamp,
        "agent_type": message.agent_type,
        "status": message.status.value,
    }
    if message.error is not None:
        out["error"] = {"code": message.error[0], "error": message.error[1]}
    return out


def confirmed(session_id: str, state: TurnState, *, reload: bool) -> dict[str, Any]:
    """``connection_confirmed`` for a socket that joined ``session_id`` in ``state``;
    ``reload``: the replay left messages out, to be loaded over REST."""
    out: dict[str, Any] = {
        "type": "connection_confirmed",
        "session_id": session_id,
        "last_seq": state.last_seq,
        "typing": state.typing,
    }
    if state.turn is not None:
        out["turn"] = {"message_id": state.turn[0], "seq": state.turn[1]}
    if reload:
        out["reload"] = True
    return out


def refusal(session_id: str | None, code: ErrorCode, detail: str) -> dict[str, Any]:
    """The ``error`` event telling one socket its request was refused (no seq: it is not
    part of the session's history)."""
    return {"type": "error", "session_id": session_id, "error": detail, "code": code.value}


def payload(event: SessionEvent) -> dict[str, Any]:
    """The payload of a wire event (see :func:`event_name`). Raises ``TypeError`` for an
    internal marker."""
    if isinstance(event, ChunkStreamed):
        return {
            "type": "stream_chunk",
            "session_id": event.session_id,
            "seq": event.seq,
            "message_id": event.message_id,
            "content": event.content,
        }
    if isinstance(event, MessageEmitted):
        return {
            "type": "message",
            "session_id": event.session_id,
            "seq": event.seq,
            "data": message_wire(event.message),
        }
    if isinstance(event, StreamCompleted):
        return {
            "type": "stream_complete",
            "session_id": event.session_id,
            "seq": event.seq,
            "message_id": event.message_id,
            "status": event.status.value,
        }
    if isinstance(event, TypingChanged):
        return {
            "type": "typing",
            "session_id": event.session_id,
            "seq": event.seq,
            "is_typing": event.is_typing,
        }
    if isinstance(event, TurnFailed):
        return {
            "type": "error",
            "session_id": event.session_id,
            "seq": event.seq,
            "message_id": event.message_id,
            "error": event.error,
            "code": event.code.value,
        }
    raise TypeError(f"{type(event).__name__} is not sent to clients")
