"""The incremental event-stream decoder, fed literal wire bytes (synchronous, no I/O)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.chat.sse import ServerSentEvent, SSEComment, SSEDecodeError, SSEDecoder

MAX_CHARS = 4096  # far above any event below

WIRE = (
    b"\xef\xbb\xbf: ping\r\n"
    b"\r\n"
    b"event: update\n"
    b"id: 7\n"
    b"data: first line\n"
    b"data:second line\n"
    b"retry: 1000\n"
    b"\n"
    b'data: {"type": "stream_chunk", "content": "caf\xc3\xa9"}\r'
    b"\r"
    b"data\n"
    b"\n"
    b"event: nothing\n"
    b"\n"
    b"data: unterminated"
)

EXPECTED = [
    SSEComment("ping"),
    ServerSentEvent("first line\nsecond line", "update", "7"),
    ServerSentEvent('{"type": "stream_chunk", "content": "café"}', "message", "7"),
    ServerSentEvent("", "message", "7"),
]


def test_whole_stream_in_one_feed() -> None:
    decoder = SSEDecoder(MAX_CHARS)
    assert decoder.feed(WIRE) == EXPECTED
    decoder.close()


def test_byte_by_byte_gives_the_same_events() -> None:
    decoder = SSEDecoder(MAX_CHARS)
    out = []
    for i in range(len(WIRE)):
        out += decoder.feed(WIRE[i : i + 1])
    assert out == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(WIRE)]
    decoder = SSEDecoder(MAX_CHARS)
    out = []
    for start, end in itertools.pairwise(bounds):
        out += decoder.feed(WIRE[start:end])
    assert out == EXPECTED


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    decoder = SSEDecoder(MAX_CHARS)
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [ServerSentEvent("a")]


def test_comment_without_space_and_empty_comment() -> None:
    assert SSEDecoder(MAX_CHARS).feed(b":keepalive\n:\n") == [
        SSEComment("keepalive"),
        SSEComment(""),
    ]


def test_id_with_nul_is_ignored() -> None:
    assert SSEDecoder(MAX_CHARS).feed(b"id: a\x00b\ndata: x\n\n") == [ServerSentEvent("x")]


def test_invalid_utf8_is_an_error() -> None:
    with pytest.raises(SSEDecodeError, match="UTF-8"):
        SSEDecoder(MAX_CHARS).feed(b"data: \xff\n\n")


def test_stream_ending_inside_a_character_is_an_error() -> None:
    decoder = SSEDecoder(MAX_CHARS)
    assert decoder.feed(b"data: caf\xc3") == []
    with pytest.raises(SSEDecodeError, match="UTF-8"):
        decoder.close()


def test_a_line_past_the_bound_is_an_error() -> None:
    decoder = SSEDecoder(max_chars=16)
    assert decoder.feed(b"data: 0123456789") == []
    with pytest.raises(SSEDecodeError, match="longer than 16"):
        decoder.feed(b"abcdef")


def test_event_data_past_the_bound_is_an_error() -> None:
    decoder = SSEDecoder(max_chars=16)
    decoder.feed(b"data: 01234567\n")
    with pytest.raises(SSEDecodeError, match="data longer than 16"):
        decoder.feed(b"data: 01234567\n")
