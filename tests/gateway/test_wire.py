"""The one chunk merge rule and the wire shape of every event (pure functions)."""

from __future__ import annotations

import pytest

from actors.chat.messages import (
    ChatMessage,
    ChunkStreamed,
    ErrorCode,
    MessageEmitted,
    MessageStatus,
    StreamCompleted,
    TurnEnded,
    TurnFailed,
    TurnStarted,
    TypingChanged,
)
from archon_chat.gateway import wire


def chunk(seq: int, content: str, message_id: str = "m", session_id: str = "s") -> ChunkStreamed:
    return ChunkStreamed(session_id, seq, message_id, content, read_at=float(seq))


def test_merge_concatenates_keeps_the_later_seq_and_the_earlier_read_time() -> None:
    merged = chunk(3, "ab").merge(chunk(4, "cd"), max_chars=100)
    assert merged == ChunkStreamed("s", 4, "m", "abcd")
    assert merged is not None and merged.read_at == 3.0


def test_merge_refuses_other_replies_other_sessions_and_oversize() -> None:
    assert chunk(3, "a").merge(chunk(4, "b", message_id="n"), max_chars=100) is None
    assert chunk(3, "a").merge(chunk(4, "b", session_id="t"), max_chars=100) is None
    assert chunk(3, "abc").merge(chunk(4, "de"), max_chars=4) is None
    assert chunk(3, "ab").merge(chunk(4, "cd"), max_chars=4) is not None


def test_payloads_repeat_their_event_name_and_carry_seq() -> None:
    message = ChatMessage(
        id="a1",
        session_id="s",
        seq=9,
        content="partial",
        sender="agent",
        timestamp="2026-12-02T00:00:00+00:00",
        agent_type="rag",
        status=MessageStatus.FAILED,
        error=("agent_error", "boom"),
    )
    cases = [
        (chunk(5, "x"), "stream_chunk", {"message_id": "m", "content": "x"}),
        (TypingChanged("s", 6, True), "typing", {"is_typing": True}),
        (
            TurnFailed("s", 7, "a1", ErrorCode.AGENT_ERROR, "boom"),
            "error",
            {"message_id": "a1", "error": "boom", "code": "agent_error"},
        ),
        (
            MessageEmitted("s", 9, message),
            "message",
            {"data": {**wire.message_wire(message)}},
        ),
        (
            StreamCompleted("s", 10, "a1", MessageStatus.FAILED),
            "stream_complete",
            {"message_id": "a1", "status": "failed"},
        ),
    ]
    for event, name, extra in cases:
        assert wire.event_name(event) == name
        assert wire.payload(event) == {
            "type": name,
            "session_id": "s",
            "seq": event.seq,
            **extra,
        }
    assert wire.message_wire(message)["error"] == {"code": "agent_error", "error": "boom"}


def test_internal_markers_have_no_wire_shape() -> None:
    for marker in (TurnStarted("s", 1, "m"), TurnEnded("s", 2, "m", MessageStatus.COMPLETE)):
        assert wire.event_name(marker) is None
        with pytest.raises(TypeError):
            wire.payload(marker)


def test_rooms_and_sessions() -> None:
    assert wire.room_of("abc") == "chat_abc"
    assert wire.session_of("chat_abc") == "abc"
    assert wire.session_of("abc") is None
