"""The load generator's pieces alone: Socket.IO packets, chunk markers, a turn's books.

Synchronous and pure (no sockets, no event loop), so no time ceiling is needed.
"""

from __future__ import annotations

import pytest

from bench.mock_agent import StreamSpec, chunk_content, markers, parse_spec, spec_prompt
from bench.sio_client import Turn, decode_packet, encode_event


def test_event_encodes_with_and_without_ack() -> None:
    assert encode_event("join_chat", {"session_id": "s"}) == '42["join_chat",{"session_id":"s"}]'
    assert encode_event("leave_chat", {}, ack_id=7) == '427["leave_chat",{}]'


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ('42["stream_chunk",{"content":"x"}]', ("event", None, ["stream_chunk", {"content": "x"}])),
        ("4312[]", ("ack", 12, [])),
        ('40{"sid":"abc"}', ("connect", None, [{"sid": "abc"}])),
        ('44{"message":"no"}', ("connect_error", None, [{"message": "no"}])),
        ("41", ("disconnect", None, [])),
    ],
)
def test_packets_decode(wire: str, expected: tuple[str, int | None, list[object]]) -> None:
    assert decode_packet(wire) == expected


def test_prompt_round_trips_and_junk_gets_defaults() -> None:
    spec = StreamSpec(n=7, size=64, pace=0.02, first=1.0, token="r1-0-3", tag="r1ab")
    assert parse_spec(spec_prompt(spec)) == spec
    assert parse_spec("What is Archon?") == StreamSpec()
    assert parse_spec("bench n=3 tag=bad-tag").tag == "x"


def test_chunk_is_padded_to_size_and_carries_its_marker() -> None:
    content = chunk_content(4, 123.25, 48, "t1")
    assert len(content) == 48
    assert markers(content) == [("t1", 4, 123.25)]


def test_turn_counts_each_chunk_once_even_when_merged() -> None:
    turn = Turn("tok", 3, "t1", threshold=2)
    first, second, third = (chunk_content(i, 10.0, 20, "t1") for i in range(3))
    turn.on_chunk(first + second, now=10.5)  # a merged frame carries two chunks
    assert (turn.distinct, turn.frames, turn.reached.is_set()) == (2, 1, True)
    turn.on_chunk(second, now=10.6)
    turn.on_chunk(chunk_content(2, 9.0, 20, "old"), now=10.7)  # a late chunk of another reply
    assert (turn.duplicates, turn.foreign, turn.missing) == (1, 1, 1)
    turn.on_chunk(third, now=11.0)
    assert turn.missing == 0
    assert turn.latencies == [0.5, 0.5, 1.0]


def test_chunks_after_the_acknowledged_stop_are_counted() -> None:
    turn = Turn("tok", 4, "t1")
    turn.on_chunk(chunk_content(0, 1.0, 20, "t1"), now=1.0)
    turn.stop_at = 1.1
    turn.on_chunk(chunk_content(1, 1.0, 20, "t1"), now=1.2)
    turn.stop_acked = True
    turn.on_chunk(chunk_content(2, 1.0, 20, "t1"), now=1.3)
    assert (turn.after_request, turn.after_stop) == (2, 1)
