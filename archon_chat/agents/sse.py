"""Server-Sent Events out: the wire encoding and the response body that runs an agent.

Theory of operation: quart sends a streaming body as
``async with body as it: async for data in it: send(data)``, in the request's task, and
cancels that task when the client disconnects. :class:`EventStream` opens a nursery in
``__aenter__`` and closes it in ``__aexit__``, so the agent runs as a child task whose
lifetime is nested inside the response: a disconnect cancels the agent (and its LLM
request) at once, and the response cannot end while the agent still runs. No async
generator ever yields inside the nursery. The agent hands encoded events to the sender
through a small bounded channel, so a slow client slows the agent down instead of
buffering its whole answer. While no event is ready for ``ping_interval_s`` the sender
writes a ``: ping`` comment, so proxies and the gateway see a live stream while the
agent thinks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import trio
from quart.wrappers.response import ResponseBody

from archon_chat.agents.errors import AgentFailure

log = logging.getLogger("archon_chat.agents")

PING = b": ping\n\n"

Emit = Callable[[str], Awaitable[None]]
Producer = Callable[[Emit], Awaitable[None]]


def encode(event: dict[str, Any]) -> bytes:
    """One ``data:`` event. JSON escapes newlines, so one line always suffices."""
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


def chunk(content: str) -> bytes:
    return encode({"type": "stream_chunk", "content": content})


COMPLETE = encode({"type": "stream_complete"})


def error(text: str) -> bytes:
    return encode({"type": "error", "error": text})


class EventStream(ResponseBody):
    """A response body streaming what ``producer`` emits, then ``stream_complete``.

    ``producer(emit)`` awaits ``emit(delta)`` for each non-empty piece of its answer. If
    it raises :class:`AgentFailure` the stream ends with an ``error`` event carrying its
    text; any other exception is logged and ends the stream with a generic ``error``.
    ``on_open`` runs when the body starts streaming and ``on_close`` when it is closed,
    whatever the outcome (a response that is never sent calls neither).
    """

    def __init__(
        self,
        producer: Producer,
        *,
        ping_interval_s: float,
        buffer: int,
        label: str,
        on_open: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._producer = producer
        self._ping_interval_s = ping_interval_s
        self._label = label
        self._on_open = on_open
        self._on_close = on_close
        self._send, self._receive = trio.open_memory_channel[bytes](buffer)
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> EventStream:
        self._nursery_manager = manager = trio.open_nursery()
        self._nursery = await manager.__aenter__()
        if self._on_open is not None:
            self._on_open()
        self._nursery.start_soon(self._run)
        return self

    async def __aexit__(self, exc_type: type, exc_value: BaseException, tb: TracebackType) -> None:
        if self._nursery_manager is None or self._nursery is None:
            return
        try:
            self._nursery.cancel_scope.cancel()
            # The producer never raises (it turns failures into events), so the nursery
            # has nothing of its own to suppress: whatever the body raised propagates.
            await self._nursery_manager.__aexit__(exc_type, exc_value, tb)
        finally:
            self._receive.close()
            if self._on_close is not None:
                self._on_close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        with trio.move_on_after(self._ping_interval_s):
            try:
                return await self._receive.receive()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
        return PING

    async def _run(self) -> None:
        async with self._send:
            try:
                await self._producer(self._emit)
            except AgentFailure as exc:
                await self._send.send(error(str(exc)))
            except Exception:
                log.exception("%s failed", self._label)
                await self._send.send(error(f"Internal error in the {self._label}"))
            else:
                await self._send.send(COMPLETE)

    async def _emit(self, delta: str) -> None:
        if delta:
            await self._send.send(chunk(delta))
