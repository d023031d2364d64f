"""The agents client over ``httpx.MockTransport``: the request it sends, incremental
events, and every failure mapped to our own exceptions (no httpx exception escapes); and
over a real local server, the connection bound it keeps.

Pure trio on ``autojump_clock``; every test runs under ``trio.fail_after(10)`` (virtual),
except the real-server test (real clock, ``trio.fail_after(60)`` for 1,000 streams).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import h11
import httpx
import pytest
import trio

from actors.chat.agents_client import (
    DRAIN_BYTES,
    DRAIN_TIMEOUT_S,
    AgentEvent,
    AgentProtocolError,
    AgentReportedError,
    AgentRequest,
    AgentsClient,
    AgentsError,
    AgentTimeout,
    AgentUnavailable,
    ChunkReceived,
    Heartbeat,
    HistoryEntry,
    StreamFinished,
    open_agents_client,
)
from actors.chat.messages import ErrorCode
from actors.chat.settings import AgentsClientSettings
from archon_chat.config import Settings

from ..derived import derived
from .fakes import COMPLETE, PING, Hang, Sleep, Step, Upstream, agents_over, chunk, sse

CEILING_S = 10
MAX_EVENT = Settings().agent_max_event_chars

REQUEST = AgentRequest(
    agent_type="document",
    prompt="Summarise it",
    session_id="s-1",
    context={"format": "markdown"},
    history=(HistoryEntry("user", "hi"), HistoryEntry("assistant", "hello")),
)


def scripted(steps: Sequence[Step]) -> Upstream:
    return Upstream(script=lambda body: steps)


async def read_all(upstream: Upstream) -> list[AgentEvent]:
    async with agents_over(upstream) as agents, agents.open_stream(REQUEST) as stream:
        return [event async for event in stream]


async def test_request_and_events(autojump_clock: object) -> None:
    seen: list[httpx.Request] = []
    upstream = scripted([chunk("Hel") + PING, chunk("lo") + chunk(""), COMPLETE, chunk("late")])

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return await upstream.handle(request)

    with trio.fail_after(CEILING_S):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            agents = AgentsClient("http://agents.test/base/", client, max_event_chars=MAX_EVENT)
            async with agents.open_stream(REQUEST) as stream:
                events = [event async for event in stream]
    assert events == [ChunkReceived("Hel"), Heartbeat(), ChunkReceived("lo"), Heartbeat(),
                      StreamFinished()]  # fmt: skip
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://agents.test/base/agents/document/stream"
    assert request.headers["accept"] == "text/event-stream"
    assert json.loads(request.content) == {
        "agent_type": "document",
        "prompt": "Summarise it",
        "context": {"format": "markdown"},
        "history": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ],
        "session_id": "s-1",
    }


async def test_reading_past_the_end_is_a_protocol_error(autojump_clock: object) -> None:
    with trio.fail_after(CEILING_S):
        async with agents_over(scripted([COMPLETE])) as agents:
            async with agents.open_stream(REQUEST) as stream:
                assert await stream.receive() == StreamFinished()
                with pytest.raises(AgentProtocolError, match="past stream_complete"):
                    await stream.receive()


@pytest.mark.parametrize(
    ("steps", "error", "text"),
    [
        ([chunk("partial")], AgentProtocolError, "Agent stream ended without stream_complete"),
        ([b"data: not json\n\n"], AgentProtocolError, "Agent sent an event that is not JSON"),
        ([b"data: [1, 2]\n\n"], AgentProtocolError, "not a JSON object"),
        ([sse({"type": "bonus"})], AgentProtocolError, "unknown type 'bonus'"),
        ([sse({"type": "stream_chunk", "content": 5})], AgentProtocolError, "without text"),
        ([b"data: \xff\xfe\n\n"], AgentProtocolError, "malformed stream"),
        ([b"data: caf\xc3"], AgentProtocolError, "malformed stream"),
        (
            [chunk("a"), sse({"type": "error", "error": "Model overloaded"})],
            AgentReportedError,
            "Model overloaded",
        ),
        ([sse({"type": "error"})], AgentReportedError, "Agent error"),
        (
            [chunk("a"), httpx.RemoteProtocolError("peer closed")],
            AgentProtocolError,
            "broke off",
        ),
        ([chunk("a"), httpx.ReadError("reset")], AgentUnavailable, "connection lost"),
        ([httpx.ReadTimeout("slow")], AgentTimeout, "Agent response timeout"),
    ],
)
async def test_stream_failures_are_mapped(
    autojump_clock: object, steps: list[Step], error: type[AgentsError], text: str
) -> None:
    with trio.fail_after(CEILING_S), pytest.raises(error, match=text) as info:
        await read_all(scripted(steps))
    assert not isinstance(info.value, httpx.HTTPError)
    assert (
        info.value.code
        is {
            AgentProtocolError: ErrorCode.AGENT_PROTOCOL_ERROR,
            AgentReportedError: ErrorCode.AGENT_ERROR,
            AgentUnavailable: ErrorCode.AGENT_UNAVAILABLE,
            AgentTimeout: ErrorCode.AGENT_TIMEOUT,
        }[error]
    )


async def test_non_2xx_is_agent_service_error(autojump_clock: object) -> None:
    upstream = scripted([b"busy"])
    upstream.status = 503
    upstream.content_type = "text/plain"
    with trio.fail_after(CEILING_S), pytest.raises(AgentUnavailable) as info:
        await read_all(upstream)
    assert str(info.value) == "Agent service error: 503"
    assert info.value.code is ErrorCode.AGENT_UNAVAILABLE


async def test_a_body_that_is_not_an_event_stream_is_a_protocol_error(
    autojump_clock: object,
) -> None:
    upstream = scripted([b"{}"])
    upstream.content_type = "application/json"
    with trio.fail_after(CEILING_S), pytest.raises(AgentProtocolError, match="not an event"):
        await read_all(upstream)


def failing_transport(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "error", "text"),
    [
        (httpx.ConnectError("[Errno 111] refused"), AgentUnavailable, "unreachable"),
        (httpx.ConnectTimeout("slow"), AgentUnavailable, "connect timeout"),
        (httpx.PoolTimeout("full"), AgentUnavailable, "no free connection"),
        (httpx.ReadError("reset"), AgentUnavailable, "connection lost"),
        (httpx.RemoteProtocolError("no response"), AgentUnavailable, "connection lost"),
        (httpx.ReadTimeout("slow"), AgentTimeout, "Agent response timeout"),
        (httpx.UnsupportedProtocol("ftp"), AgentUnavailable, "URL is invalid"),
    ],
)
async def test_request_failures_are_mapped(
    autojump_clock: object, exc: Exception, error: type[AgentsError], text: str
) -> None:
    with trio.fail_after(CEILING_S):
        async with httpx.AsyncClient(transport=httpx.MockTransport(failing_transport(exc))) as c:
            agents = AgentsClient("http://agents.test", c, max_event_chars=MAX_EVENT)
            with pytest.raises(error, match=text) as info:
                async with agents.open_stream(REQUEST):
                    pytest.fail("no stream expected")
    assert info.value.__cause__ is exc


async def test_cancelling_the_reader_closes_the_response(autojump_clock: object) -> None:
    upstream = scripted([chunk("a"), Hang()])
    with trio.fail_after(CEILING_S):
        async with agents_over(upstream) as agents:
            with trio.move_on_after(2):
                async with agents.open_stream(REQUEST) as stream:
                    assert await stream.receive() == ChunkReceived("a")
                    await stream.receive()
            assert trio.current_time() == 2
    assert len(upstream.closed_early) == 1


async def test_a_finished_reply_is_read_to_its_end(autojump_clock: object) -> None:
    """What follows stream_complete is read (not relayed) so the connection can be reused."""
    upstream = scripted([chunk("a"), COMPLETE, PING, chunk("late")])
    with trio.fail_after(CEILING_S):
        async with agents_over(upstream) as agents:
            async with agents.open_stream(REQUEST) as stream:
                assert [e async for e in stream] == [ChunkReceived("a"), StreamFinished()]
                assert stream.finished
    assert upstream.closed_early == []


async def test_a_long_tail_after_the_reply_closes_the_connection(autojump_clock: object) -> None:
    upstream = scripted([COMPLETE, b": " + b"x" * DRAIN_BYTES + b"\n", chunk("never read")])
    with trio.fail_after(CEILING_S):
        async with agents_over(upstream) as agents:
            async with agents.open_stream(REQUEST) as stream:
                assert [e async for e in stream] == [StreamFinished()]
    assert len(upstream.closed_early) == 1


@pytest.mark.parametrize(
    ("left_s", "waited_s"), [(10.0, DRAIN_TIMEOUT_S), (DRAIN_TIMEOUT_S, DRAIN_TIMEOUT_S / 2)]
)
async def test_a_silent_tail_is_given_up_before_the_caller_s_deadline(
    autojump_clock: object, left_s: float, waited_s: float
) -> None:
    """A reply that ends but whose response does not: the drain waits at most
    DRAIN_TIMEOUT_S or half the time left, so the turn's own deadline never fires on a
    complete reply; the connection is closed."""
    upstream = scripted([chunk("a"), COMPLETE, Hang()])
    with trio.fail_after(CEILING_S):
        async with agents_over(upstream) as agents:
            with trio.move_on_after(left_s) as turn:
                async with agents.open_stream(REQUEST) as stream:
                    assert [e async for e in stream] == [ChunkReceived("a"), StreamFinished()]
                    finished_at = trio.current_time()
            assert not turn.cancelled_caught
            assert trio.current_time() - finished_at == pytest.approx(waited_s)
    assert len(upstream.closed_early) == 1


async def test_a_stop_during_the_drain_closes_at_once(autojump_clock: object) -> None:
    upstream = scripted([COMPLETE, Hang()])

    async def stop_soon(scope: trio.CancelScope) -> None:
        await trio.sleep(DRAIN_TIMEOUT_S / 2)
        scope.cancel()

    with trio.fail_after(CEILING_S):
        async with agents_over(upstream) as agents:
            started = trio.current_time()
            with trio.CancelScope() as turn:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stop_soon, turn)
                    async with agents.open_stream(REQUEST) as stream:
                        assert [e async for e in stream] == [StreamFinished()]
            assert turn.cancelled_caught
            assert trio.current_time() - started == pytest.approx(DRAIN_TIMEOUT_S / 2)
    assert len(upstream.closed_early) == 1


async def test_body_exceptions_are_not_mapped(autojump_clock: object) -> None:
    upstream = scripted([chunk("a"), Sleep(1), COMPLETE])
    with trio.fail_after(CEILING_S), pytest.raises(KeyError):
        async with agents_over(upstream) as agents, agents.open_stream(REQUEST):
            raise KeyError("ours")
    assert len(upstream.closed_early) == 1


class CountingAgents:
    """A real HTTP/1.1 agents service on 127.0.0.1 port 0 (h11 on trio, keep-alive) that
    answers every stream with one chunk and ``stream_complete`` after ``delay_s``, and counts
    the TCP connections it accepts: in total, open now, and open at most at once."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.accepted = 0
        self.open = 0
        self.peak = 0
        self.streams = 0
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        conn = h11.Connection(h11.SERVER)
        body = chunk("x") + COMPLETE
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        return
                elif isinstance(event, h11.EndOfMessage):
                    self.streams += 1
                    if self.delay_s:
                        await trio.sleep(self.delay_s)
                    headers = [
                        ("content-type", "text/event-stream"),
                        ("content-length", str(len(body))),
                    ]
                    for out in (
                        h11.Response(status_code=200, headers=headers),
                        h11.Data(data=body),
                        h11.EndOfMessage(),
                    ):
                        await stream.send_all(conn.send(out) or b"")
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            self.open -= 1
            await stream.aclose()


@pytest.mark.slow
async def test_concurrent_streams_open_at_most_the_configured_connections() -> None:
    """1,000 concurrent streams over 4 pools sharing 8 connections: every reply arrives,
    the agents service never sees more than 8 connections open at once, and no more than 8
    in all: each reply is read to its end, so its connection goes back to the pool."""
    service = CountingAgents(delay_s=0.001)
    results: list[list[AgentEvent]] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.serve)
            settings = derived(
                AgentsClientSettings, agent_pool_size=8, agent_keepalive=8, agent_pools=4
            )
            async with open_agents_client(service.url, settings) as agents:

                async def one() -> None:
                    async with agents.open_stream(REQUEST) as stream:
                        results.append([e async for e in stream])

                async with trio.open_nursery() as streams:
                    for _ in range(1000):
                        streams.start_soon(one)
            while service.open:  # closing the client closed its kept-alive connections
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert results == [[ChunkReceived("x"), StreamFinished()]] * 1000
    assert service.streams == 1000
    assert service.peak <= 8
    assert service.accepted <= 8


async def test_the_shared_client_streams_through_a_transport() -> None:
    with trio.fail_after(CEILING_S):
        upstream = scripted([COMPLETE])
        settings = derived(AgentsClientSettings, agent_pools=4, agent_keepalive=9)
        async with open_agents_client(
            "http://agents.test", settings, transport=upstream.transport()
        ) as agents:
            async with agents.open_stream(REQUEST) as stream:
                assert [e async for e in stream] == [StreamFinished()]
            assert agents.base_url == "http://agents.test"
            assert len(agents._clients) == 4


async def test_requests_go_round_robin_over_the_pools(autojump_clock: object) -> None:
    served: list[int] = []

    def transport(n: int) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            served.append(n)
            return await scripted([COMPLETE]).handle(request)

        return httpx.MockTransport(handler)

    with trio.fail_after(CEILING_S):
        async with (
            httpx.AsyncClient(transport=transport(0)) as first,
            httpx.AsyncClient(transport=transport(1)) as second,
        ):
            agents = AgentsClient("http://agents.test", [first, second], max_event_chars=MAX_EVENT)
            for _ in range(5):
                async with agents.open_stream(REQUEST) as stream:
                    assert [e async for e in stream] == [StreamFinished()]
    assert served == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="at least one"):
        AgentsClient("http://agents.test", [], max_event_chars=MAX_EVENT)
