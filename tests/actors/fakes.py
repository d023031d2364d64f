"""Fakes shared by the actor tests: a scripted agents upstream over httpx.MockTransport,
and helpers to run a hub and read what it emits."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio

from actors.chat.agents_client import AgentsClient
from actors.chat.hub import SessionHub, open_session_hub
from actors.chat.memory_store import MemoryStore
from actors.chat.messages import (
    CancelReason,
    CancelTurn,
    ChatMessage,
    ErrorCode,
    GetTurnState,
    SessionEvent,
    SessionRecord,
    SubmitMessage,
    SubmitReply,
    TurnEnded,
    TurnStarted,
    TurnState,
)
from actors.chat.settings import HubSettings
from actors.chat.store import Ownership
from archon_chat.config import Settings
from archon_chat.gateway import wire

from ..derived import derived

BASE_URL = "http://agents.test"


def sse(*payloads: dict[str, Any]) -> bytes:
    """``data:`` events, one per payload."""
    return b"".join(f"data: {json.dumps(p)}\n\n".encode() for p in payloads)


def chunk(text: str) -> bytes:
    return sse({"type": "stream_chunk", "content": text})


COMPLETE = sse({"type": "stream_complete"})
PING = b": ping\n\n"


def event_name(event: SessionEvent) -> str:
    """The wire name of ``event``, or ``_turn_started`` / ``_turn_ended`` for the markers."""
    name = wire.event_name(event)
    if name is not None:
        return name
    return "_turn_started" if isinstance(event, TurnStarted) else "_turn_ended"


class Hang:
    """Script step: never send anything more."""


@dataclass
class Sleep:
    seconds: float


Step = bytes | Sleep | Hang | BaseException


class ScriptedBody(httpx.AsyncByteStream):
    """A response body that plays a script; records whether the client closed it early."""

    def __init__(self, steps: Sequence[Step], on_close: Callable[[bool], None]) -> None:
        self._steps = list(steps)
        self._index = 0
        self._ended = False
        self._on_close = on_close

    def __aiter__(self) -> ScriptedBody:
        return self

    async def __anext__(self) -> bytes:
        while self._index < len(self._steps):
            step = self._steps[self._index]
            self._index += 1
            if isinstance(step, bytes):
                await trio.lowlevel.checkpoint()
                return step
            if isinstance(step, Sleep):
                await trio.sleep(step.seconds)
            elif isinstance(step, Hang):
                await trio.sleep_forever()
            else:
                raise step
        self._ended = True
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._on_close(not self._ended)


@dataclass
class Upstream:
    """The fake agents service. ``script(body) -> steps`` decides each reply; requests
    and early closes (the client going away mid-reply) are recorded."""

    script: Callable[[dict[str, Any]], Sequence[Step]] = lambda body: [chunk("hi"), COMPLETE]
    status: int = 200
    content_type: str = "text/event-stream"
    requests: list[dict[str, Any]] = field(default_factory=list)
    closed_early: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        steps = self.script(body)

        def on_close(early: bool) -> None:
            if early:
                self.closed_early.append(body)

        return httpx.Response(
            self.status,
            headers={"content-type": self.content_type},
            stream=ScriptedBody(steps, on_close),
        )

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


@asynccontextmanager
async def agents_over(upstream: Upstream) -> AsyncIterator[AgentsClient]:
    async with httpx.AsyncClient(transport=upstream.transport()) as client:
        yield AgentsClient(BASE_URL, client, max_event_chars=Settings().agent_max_event_chars)


class Recorder:
    """Reads the hub's events channel into a list."""

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []
        #: (trio time, event) of every event, as it was received
        self.timed: list[tuple[float, SessionEvent]] = []
        self._changed = trio.Event()

    async def run(self, receive: trio.MemoryReceiveChannel[SessionEvent]) -> None:
        async for event in receive:
            self.events.append(event)
            self.timed.append((trio.current_time(), event))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[list[SessionEvent]], bool]) -> None:
        while not predicate(self.events):
            await self._changed.wait()

    async def turns_ended(self, count: int, session_id: str | None = None) -> list[TurnEnded]:
        def ended() -> list[TurnEnded]:
            return [
                e
                for e in self.events
                if isinstance(e, TurnEnded) and session_id in (None, e.session_id)
            ]

        await self.wait_for(lambda _: len(ended()) >= count)
        return ended()

    def of(self, session_id: str) -> list[SessionEvent]:
        return [e for e in self.events if e.session_id == session_id]

    def wire(self, session_id: str) -> list[tuple[str, int]]:
        """(event name, seq) of the session's wire events."""
        return [
            (name, e.seq)
            for e in self.of(session_id)
            if not (name := event_name(e)).startswith("_")
        ]


class FaultyStore(MemoryStore):
    """A MemoryStore that crashes or stalls where a test says so."""

    def __init__(self) -> None:
        super().__init__()
        #: sessions whose next history() read raises (crashing their actor)
        self.crash_history: set[str] = set()
        #: sessions whose every get_session() raises
        self.broken: set[str] = set()
        #: sessions that become broken when their history() read crashes
        self.break_on_crash: set[str] = set()
        #: method name -> event the method waits for before doing its work
        self.gates: dict[str, trio.Event] = {}

    async def _gate(self, name: str) -> None:
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()

    async def get_session(self, session_id: str) -> SessionRecord | None:
        if session_id in self.broken:
            await trio.lowlevel.checkpoint()
            raise RuntimeError("store is broken for this session")
        record = await super().get_session(session_id)
        if record is not None and session_id in self.crash_history:
            # An actor reads its history from the store only when the session has
            # messages it did not see itself.
            record = dataclasses.replace(record, message_count=max(1, record.message_count))
        return record

    async def acquire(
        self, session_id: str, *, interrupted: ErrorCode = ErrorCode.INTERNAL_ERROR
    ) -> Ownership | None:
        owned = await super().acquire(session_id, interrupted=interrupted)
        if owned is not None and session_id in self.crash_history:
            record = owned.session
            record = dataclasses.replace(record, message_count=max(1, record.message_count))
            owned = dataclasses.replace(owned, session=record)
        return owned

    async def history(self, session_id: str, max_turns: int) -> list[ChatMessage]:
        if session_id in self.crash_history:
            self.crash_history.discard(session_id)
            if session_id in self.break_on_crash:
                self.broken.add(session_id)
            await trio.lowlevel.checkpoint()
            raise RuntimeError("disk on fire")
        return await super().history(session_id, max_turns)

    async def add_user_message(self, message: ChatMessage, *, fence: int) -> None:
        await self._gate("add_user_message")
        await super().add_user_message(message, fence=fence)

    async def finish_turn(self, message: ChatMessage, *, fence: int) -> None:
        await self._gate("finish_turn")
        await super().finish_turn(message, fence=fence)

    async def checkpoint_turn(
        self,
        session_id: str,
        agent_message_id: str,
        content: str,
        *,
        fence: int,
        offset: int = 0,
    ) -> None:
        await self._gate("checkpoint_turn")
        await super().checkpoint_turn(
            session_id, agent_message_id, content, fence=fence, offset=offset
        )


def assert_wire_order(events: Sequence[SessionEvent]) -> None:
    """Per session, wire events leave in strictly increasing seq order, and each marker
    shares the seq of the wire event it goes with."""
    last: dict[str, int] = {}
    for event in events:
        previous = last.get(event.session_id, 0)
        if isinstance(event, TurnStarted):
            assert event.seq > previous, (event, previous)
            last[event.session_id] = event.seq - 1  # its typing event comes next
            continue
        if isinstance(event, TurnEnded):
            assert event.seq == previous, (event, previous)  # typing off's seq
            continue
        assert event.seq > previous, (event, previous)
        last[event.session_id] = event.seq


@dataclass
class Harness:
    hub: SessionHub
    store: MemoryStore
    upstream: Upstream
    recorder: Recorder

    async def submit(
        self,
        session_id: str,
        content: str,
        *,
        client_message_id: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> SubmitReply:
        send, receive = trio.open_memory_channel[SubmitReply](1)
        await self.hub.deliver(
            session_id,
            SubmitMessage(content, context or {}, client_message_id, reply=send),
        )
        async with receive:
            return await receive.receive()

    async def cancel(self, session_id: str, reason: CancelReason = CancelReason.STOP) -> bool:
        send, receive = trio.open_memory_channel[bool](1)
        await self.hub.deliver(session_id, CancelTurn(reason, reply=send))
        async with receive:
            return await receive.receive()

    async def turn_state(self, session_id: str, after_seq: int | None = None) -> TurnState:
        send, receive = trio.open_memory_channel[TurnState](1)
        await self.hub.deliver(session_id, GetTurnState(after_seq, reply=send))
        async with receive:
            return await receive.receive()


@asynccontextmanager
async def open_harness(
    upstream: Upstream | None = None,
    settings: HubSettings | None = None,
    store: MemoryStore | None = None,
    events_size: int = 1024,
) -> AsyncIterator[Harness]:
    upstream = upstream or Upstream()
    store = store or MemoryStore()
    recorder = Recorder()
    send, receive = trio.open_memory_channel[SessionEvent](events_size)
    async with trio.open_nursery() as nursery, agents_over(upstream) as agents:
        nursery.start_soon(recorder.run, receive)
        async with open_session_hub(store, agents, send, settings or derived(HubSettings)) as hub:
            yield Harness(hub, store, upstream, recorder)
        nursery.cancel_scope.cancel()


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()
