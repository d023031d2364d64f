"""The load generator's pieces alone: Socket.IO packets, chunk markers, a turn's books.

Synchronous and pure (no sockets, no event loop), so no time ceiling is needed.
"""

from __future__ import annotations

import hashlib

import pytest

from bench.mock_agent import StreamSpec, chunk_content, markers, parse_spec, spec_prompt
from bench.scenarios import CUTS_METRICS, MERGES_METRICS, check_texts, metric_value
from bench.sio_client import Client, Turn, decode_packet, encode_event


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
    hashed = StreamSpec(n=2, token="r1-0-4", digest=True)
    assert parse_spec(spec_prompt(hashed)) == hashed
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


CURRENT_METRICS = """\
# HELP archon_chat_outbox_merges_total stream_chunk events merged
# TYPE archon_chat_outbox_merges_total counter
archon_chat_outbox_merges_total 42.0
# HELP archon_chat_slow_client_disconnects_total Sockets cut for falling too far behind
# TYPE archon_chat_slow_client_disconnects_total counter
archon_chat_slow_client_disconnects_total 3.0
"""
OLDER_METRICS = """\
# HELP archon_chat_slow_client_merges merges so far
# TYPE archon_chat_slow_client_merges gauge
archon_chat_slow_client_merges 7.0
"""


def test_merges_and_cuts_are_read_from_current_or_older_metric_names() -> None:
    assert metric_value(CURRENT_METRICS, MERGES_METRICS) == 42.0
    assert metric_value(CURRENT_METRICS, CUTS_METRICS) == 3.0
    assert metric_value(OLDER_METRICS, MERGES_METRICS) == 7.0
    assert metric_value(OLDER_METRICS, CUTS_METRICS) is None


def test_exposition_junk_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        metric_value("archon_chat_outbox_merges_total not-a-number\n", MERGES_METRICS)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_reply_is_whole_by_its_chunks_or_by_its_final_message() -> None:
    streams: dict[str, dict[str, str | None]] = {
        t: {"text_sha256": sha("abc")} for t in ("a", "b", "c", "d")
    }
    texts: dict[str, dict[str, str | bool | None]] = {
        "a": {"chunks_sha256": sha("abc"), "message_sha256": None, "cut": False},
        "b": {"chunks_sha256": sha("a"), "message_sha256": sha("abc"), "cut": True},
        "c": {"chunks_sha256": sha("ab"), "message_sha256": sha("ab"), "cut": True},
        "d": {"chunks_sha256": sha("abc"), "message_sha256": None, "cut": False},
    }
    streams["d"] = {"text_sha256": None}  # the agent kept no digest: never whole
    assert check_texts(texts, streams) == {"text_complete": 2, "cut_text_complete": 1}


def test_turn_hashes_the_text_it_received_and_the_agents_final_message() -> None:
    turn = Turn("tok", 2, "t1", keep_text=True)
    parts = [chunk_content(i, 1.0, 30, "t1") for i in range(2)]
    turn.on_chunk(parts[0] + parts[1], now=1.5)
    assert turn.text_sha256 == sha("".join(parts))
    client = Client("127.0.0.1", 1, "s")
    client.turn = turn
    client._on_event("message", {"seq": 5, "data": {"sender": "user", "content": "q"}}, 2.0)
    assert turn.message_sha256 is None
    message = {"seq": 6, "data": {"sender": "agent", "content": "".join(parts)}}
    client._on_event("message", message, 2.1)
    assert turn.message_sha256 == turn.text_sha256


def test_a_cut_turn_ends_when_the_rejoin_finds_it_over() -> None:
    turn = Turn("tok", 2, "t1", keep_text=True)
    turn.cut = True
    client = Client("127.0.0.1", 1, "s")
    client.turn = turn
    client._on_event("connection_confirmed", {"seq": 3, "turn": None}, 1.0)
    assert not turn.done.is_set()  # no final message yet: not over
    client._on_event("message", {"seq": 9, "data": {"sender": "agent", "content": "x"}}, 1.1)
    client._on_event("connection_confirmed", {"seq": 9, "turn": {"seq": 10}}, 1.2)
    assert not turn.done.is_set()  # a turn is still in progress
    client._on_event("connection_confirmed", {"seq": 9}, 1.3)
    assert turn.done.is_set()
