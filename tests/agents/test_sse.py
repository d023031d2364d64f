"""The SSE response body on its own, driven the way quart drives it
(``async with body as it: async for data in it``). Pure trio, so virtual time
(``autojump_clock``) with exact times.

Ceiling: every test runs under ``trio.fail_after(60)`` (virtual seconds).
"""

from __future__ import annotations

import json
import logging

import pytest
import trio
import trio.testing

from archon_chat.agents.errors import AgentFailure
from archon_chat.agents.sse import PING, Emit, EventStream

CEILING = 60
#: events encoded ahead of the writer (the agents service uses its setting, 8 by default)
BUFFER = 8


def decode(frames: list[bytes]) -> list[object]:
    out: list[object] = []
    for frame in frames:
        assert frame.endswith(b"\n\n")
        if frame == PING:
            out.append("ping")
        else:
            assert frame.startswith(b"data: ")
            out.append(json.loads(frame[6:]))
    return out


async def drain(body: EventStream) -> list[bytes]:
    frames = []
    async with body as events:
        async for frame in events:
            frames.append(frame)
    return frames


async def test_deltas_then_complete(autojump_clock: trio.testing.MockClock) -> None:
    async def agent(emit: Emit) -> None:
        for piece in ("Hello", "", " world"):
            await emit(piece)

    with trio.fail_after(CEILING):
        frames = await drain(
            EventStream(agent, ping_interval_s=1.0, buffer=BUFFER, label="test agent")
        )
    assert decode(frames) == [
        {"type": "stream_chunk", "content": "Hello"},
        {"type": "stream_chunk", "content": " world"},
        {"type": "stream_complete"},
    ]
    assert trio.current_time() == 0


async def test_pings_while_thinking(autojump_clock: trio.testing.MockClock) -> None:
    async def agent(emit: Emit) -> None:
        await trio.sleep(2.5)
        await emit("late")

    with trio.fail_after(CEILING):
        frames = await drain(
            EventStream(agent, ping_interval_s=1.0, buffer=BUFFER, label="test agent")
        )
    assert decode(frames) == [
        "ping",
        "ping",
        {"type": "stream_chunk", "content": "late"},
        {"type": "stream_complete"},
    ]
    assert trio.current_time() == 2.5


async def test_an_agent_failure_is_an_error_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(emit: Emit) -> None:
        await emit("partial")
        raise AgentFailure("the knowledge base is unavailable")

    with trio.fail_after(CEILING):
        frames = await drain(
            EventStream(agent, ping_interval_s=1.0, buffer=BUFFER, label="test agent")
        )
    assert decode(frames) == [
        {"type": "stream_chunk", "content": "partial"},
        {"type": "error", "error": "the knowledge base is unavailable"},
    ]


async def test_a_bug_is_logged_and_reported_without_details(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def agent(emit: Emit) -> None:
        raise KeyError("secret internals")

    with trio.fail_after(CEILING), caplog.at_level(logging.ERROR, "archon_chat.agents"):
        frames = await drain(
            EventStream(agent, ping_interval_s=1.0, buffer=BUFFER, label="test agent")
        )
    assert decode(frames) == [{"type": "error", "error": "Internal error in the test agent"}]
    assert "test agent failed" in caplog.text
    assert "secret internals" in caplog.text


async def test_leaving_early_cancels_the_agent(autojump_clock: trio.testing.MockClock) -> None:
    finished = []
    opened: list[str] = []

    async def agent(emit: Emit) -> None:
        try:
            for n in range(100):
                await emit(f"{n} ")
                await trio.sleep(1)
        finally:
            finished.append(trio.current_time())

    body = EventStream(
        agent,
        ping_interval_s=10.0,
        buffer=BUFFER,
        label="test agent",
        on_open=lambda: opened.append("open"),
        on_close=lambda: opened.append("close"),
    )
    with trio.fail_after(CEILING):
        with trio.move_on_after(3.5):  # the client goes away
            await drain(body)
    assert finished == [3.5]  # stopped at once, not after 100 s
    assert opened == ["open", "close"]


async def test_a_slow_reader_holds_the_agent_back(autojump_clock: trio.testing.MockClock) -> None:
    sent = []

    async def agent(emit: Emit) -> None:
        for n in range(50):
            await emit(str(n))
            sent.append(n)

    with trio.fail_after(CEILING):
        async with EventStream(
            agent, ping_interval_s=100.0, buffer=BUFFER, label="test agent"
        ) as events:
            first = await events.__anext__()
            await trio.sleep(5)
            # The bounded channel lets the agent run only a few events ahead.
            assert len(sent) < 12
            rest = [first] + [frame async for frame in events]
    assert len(decode(rest)) == 51


def test_a_body_never_sent_counts_nothing() -> None:
    calls: list[str] = []

    async def agent(emit: Emit) -> None:
        raise AssertionError("never runs")

    EventStream(
        agent,
        ping_interval_s=1.0,
        buffer=BUFFER,
        label="test agent",
        on_open=lambda: calls.append("open"),
        on_close=lambda: calls.append("close"),
    )
    assert calls == []
