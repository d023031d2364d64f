"""Session actors against a real HTTP/1.1 SSE server on 127.0.0.1 (port 0) written here
in plain trio: a stop closes the upstream connection and the server sees it; garbage is
``agent_protocol_error``; silence is ``agent_timeout``; a closed port is
``agent_unavailable``.

Real sockets, so the real clock with sub-second settings; every test runs under
``trio.fail_after(5)``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from actors.chat.agents_client import open_agents_client
from actors.chat.hub import open_session_hub
from actors.chat.memory_store import MemoryStore
from actors.chat.messages import (
    CancelReason,
    CancelTurn,
    ChunkStreamed,
    ErrorCode,
    MessageStatus,
    SessionEvent,
    SubmitMessage,
    TurnEnded,
    TurnFailed,
)
from actors.chat.settings import AgentsClientSettings, HubSettings

from ..derived import derived
from .fakes import Recorder

CEILING_S = 5
SETTINGS = derived(
    HubSettings,
    agent_first_event_timeout_s=0.3,
    agent_idle_timeout_s=0.3,
    agent_turn_timeout_s=3,
)


@dataclass
class SSEServer:
    """Answers ``POST /agents/{type}/stream`` by the prompt: ``chunk-then-wait`` sends one
    chunk and waits for the client to go; ``garbage`` sends a malformed event;
    ``silence`` sends headers and nothing."""

    port: int = 0
    prompts: list[str] = field(default_factory=list)
    disconnected: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = await self._read_request(stream)
            prompt = request["prompt"]
            self.prompts.append(prompt)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\nconnection: close\r\n\r\n"
            )
            if prompt == "chunk-then-wait":
                payload = {"type": "stream_chunk", "content": "partial"}
                await stream.send_all(f"data: {json.dumps(payload)}\n\n".encode())
                await self._wait_for_close(stream)
            elif prompt == "garbage":
                await stream.send_all(b"data: {this is not json\n\n")
                await self._wait_for_close(stream)
            elif prompt == "silence":
                await self._wait_for_close(stream)

    async def _wait_for_close(self, stream: trio.SocketStream) -> None:
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
        self.disconnected.set()

    @staticmethod
    async def _read_request(stream: trio.SocketStream) -> dict[str, Any]:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += await stream.receive_some(65536)
        parsed: dict[str, Any] = json.loads(body)
        return parsed


@asynccontextmanager
async def running_server() -> AsyncIterator[SSEServer]:
    server = SSEServer()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def hub_for(base_url: str) -> AsyncIterator[tuple[Any, MemoryStore, Recorder]]:
    store = MemoryStore()
    recorder = Recorder()
    send, receive = trio.open_memory_channel[SessionEvent](256)
    async with (
        trio.open_nursery() as nursery,
        open_agents_client(
            base_url, derived(AgentsClientSettings, agent_connect_timeout_s=1)
        ) as agents,
    ):
        nursery.start_soon(recorder.run, receive)
        async with open_session_hub(store, agents, send, SETTINGS) as hub:
            yield hub, store, recorder
        nursery.cancel_scope.cancel()


async def test_stop_closes_the_upstream_connection() -> None:
    with trio.fail_after(CEILING_S):
        async with running_server() as server:
            async with hub_for(f"http://127.0.0.1:{server.port}") as (hub, store, recorder):
                sid = (await store.create_session()).session_id
                await hub.deliver(sid, SubmitMessage("chunk-then-wait"))
                await recorder.wait_for(
                    lambda events: any(isinstance(e, ChunkStreamed) for e in events)
                )
                assert not server.disconnected.is_set()
                reply, answer = trio.open_memory_channel[bool](1)
                await hub.deliver(sid, CancelTurn(CancelReason.STOP, reply))
                assert await answer.receive() is True
                with trio.fail_after(1):
                    await server.disconnected.wait()
                (ended,) = await recorder.turns_ended(1)
            assert ended.status is MessageStatus.CANCELLED
            agent = (await store.session_messages(sid))[-1]
            assert (agent.status, agent.content) == (MessageStatus.CANCELLED, "partial")


async def failure_of(prompt: str, base_url: str | None = None) -> tuple[TurnFailed, TurnEnded]:
    async with running_server() as server:
        url = base_url or f"http://127.0.0.1:{server.port}"
        async with hub_for(url) as (hub, store, recorder):
            sid = (await store.create_session()).session_id
            await hub.deliver(sid, SubmitMessage(prompt))
            (ended,) = await recorder.turns_ended(1)
        failed = next(e for e in recorder.events if isinstance(e, TurnFailed))
        if base_url is None:
            with trio.fail_after(1):
                await server.disconnected.wait()
        return failed, ended


async def test_garbage_is_a_protocol_error() -> None:
    with trio.fail_after(CEILING_S):
        failed, ended = await failure_of("garbage")
    assert failed.code is ErrorCode.AGENT_PROTOCOL_ERROR
    assert failed.error == "Agent sent an event that is not JSON"
    assert ended.status is MessageStatus.FAILED


async def test_silence_is_an_agent_timeout() -> None:
    with trio.fail_after(CEILING_S):
        start = trio.current_time()
        failed, _ = await failure_of("silence")
        assert trio.current_time() - start >= SETTINGS.agent_first_event_timeout_s
    assert (failed.code, failed.error) == (ErrorCode.AGENT_TIMEOUT, "Agent response timeout")


async def test_a_closed_port_is_agent_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(CEILING_S):
        failed, _ = await failure_of("anything", f"http://127.0.0.1:{port}")
    assert failed.code is ErrorCode.AGENT_UNAVAILABLE
    assert failed.error == "Agent service unreachable: connection refused or failed"
