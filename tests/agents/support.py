"""Helpers of the agents service tests: settings, the service on a real port, an SSE
reader, a small knowledge base, and a fake OpenAI-compatible LLM server.

The fake LLM is a real HTTP/1.1 server (h11 on trio, 127.0.0.1 port 0). Its behaviour
is set per test (``mode``):

``ok``         the ``tokens`` as streamed chunks, a ``finish_reason`` chunk, ``[DONE]``
``status``     HTTP ``status`` with an OpenAI-style JSON error body
``hang``       reads the request, then never answers
``garbage``    a 200 event stream whose lines are not server-sent events
``badjson``    a 200 event stream with a ``data:`` line that is not JSON
``truncated``  the first token, then the response ends cleanly but without ``[DONE]``
``cut``        the first token, then the connection drops mid-response
``json``       a non-streamed JSON completion of the joined tokens
``hold``       the first token, then waits for the client to close the connection

Every request is recorded (headers and JSON body); ``closed`` is set when the client
closes a connection the server was still holding open (``hold``). With ``keep_alive`` the
server answers any number of requests per connection (as real servers do) instead of one;
``connections`` counts the TCP connections accepted and ``open_connections`` those not
closed yet.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h11
import httpx
import trio

from archon_chat.agents import serve_agents
from archon_chat.config import Settings

KB_FILES = {
    "trio.md": """# Trio

Trio is a library for async concurrency in Python.

## Installing trio

To install trio, run pip install trio. The install needs Python 3.9 or newer; install it
in a virtual environment.

## Nurseries

A nursery supervises child tasks: it waits for every child, and if one child raises, it
cancels the others. Nurseries make structured concurrency possible.
""",
    "sqlite.md": """# SQLite

SQLite is an embedded SQL database engine. It keeps a whole database in one file.

## Installing SQLite

SQLite comes with Python's standard library, so there is nothing to install.

## Full-text search

The FTS5 extension builds full-text indexes and ranks matches with bm25.
""",
    "gardening.md": """---
title: Growing tomatoes
source: garden.example.com/tomatoes
---

Tomatoes need sun, warmth and steady watering. Water tomatoes at the base in the morning.

## Pruning

Remove the side shoots of cordon tomatoes every week.
""",
    "notes/cooking.txt": """Pasta needs plenty of salted boiling water.

Stir the pasta in the first minute so it does not stick.
""",
}


def write_kb(root: Path, files: dict[str, str] | None = None) -> Path:
    for name, body in (KB_FILES if files is None else files).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return root


def agents_settings(tmp_path: Path, **changes: Any) -> Settings:
    """Settings for a test: the index in ``tmp_path``, sub-second timeouts."""
    base = {
        "kb_index_path": str(tmp_path / "kb-index.db"),
        "agent_ping_interval_s": 5.0,
        "llm_timeout_s": 5.0,
        "shutdown_grace_s": 0.5,
    }
    base.update(changes)
    return Settings().replace(**base)


@asynccontextmanager
async def running_service(settings: Settings, pacing_s: float = 0.0) -> AsyncIterator[str]:
    """The agents service on 127.0.0.1, port 0; yields its base URL."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(serve_agents, settings, "127.0.0.1", 0, pacing_s=pacing_s)
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            nursery.cancel_scope.cancel()


@dataclass
class Stream:
    """A stream response: its status and every event, in order (pings counted)."""

    status: int
    events: list[dict[str, Any]]
    pings: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def chunks(self) -> list[str]:
        return [e["content"] for e in self.events if e.get("type") == "stream_chunk"]

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]

    def check_shape(self) -> None:
        """Chunks only, then exactly one terminal event, last."""
        assert self.status == 200
        assert self.events, "no events"
        *body, end = self.events
        assert all(e["type"] == "stream_chunk" and e["content"] for e in body), body
        assert end["type"] in ("stream_complete", "error"), end


async def read_stream(response: httpx.Response) -> Stream:
    if response.status_code != 200:
        await response.aread()
        return Stream(response.status_code, [response.json()])
    out = Stream(200, [], headers=dict(response.headers))
    async for line in response.aiter_lines():
        if not line:
            continue
        if line == ": ping":
            out.pings += 1
        elif line.startswith("data: "):
            out.events.append(json.loads(line[6:]))
        else:
            raise AssertionError(f"unexpected SSE line {line!r}")
    return out


async def ask(
    client: httpx.AsyncClient,
    agent: str,
    prompt: str,
    context: dict[str, Any] | None = None,
    history: list[dict[str, str]] | None = None,
) -> Stream:
    body: dict[str, Any] = {"agent_type": agent, "prompt": prompt, "session_id": "s-1"}
    if context is not None:
        body["context"] = context
    if history is not None:
        body["history"] = history
    async with client.stream("POST", f"/agents/{agent}/stream", json=body) as response:
        return await read_stream(response)


async def wait_idle(client: httpx.AsyncClient) -> None:
    """Until the service reports no stream in progress (the caller sets a deadline)."""
    while (await client.get("/health")).json()["active_streams"]:
        await trio.sleep(0.02)


def sources_of(text: str) -> list[str]:
    """The file names of an answer's source list, in order."""
    _, _, tail = text.partition("**Sources**")
    return [line.rsplit("(`", 1)[1].split("`")[0] for line in tail.splitlines() if "(`" in line]


@dataclass
class FakeLLM:
    mode: str = "ok"
    tokens: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    status: int = 500
    first_delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)
    port: int = 0
    keep_alive: bool = False
    connections: int = 0
    open_connections: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        self.connections += 1
        self.open_connections += 1
        try:
            while True:
                request, body = await self._read(conn, stream)
                if request is None:
                    break
                self.requests.append(
                    {
                        "path": request.target.decode(),
                        "headers": {k.decode(): v.decode() for k, v in request.headers},
                        "body": json.loads(body),
                    }
                )
                await self._respond(conn, stream)
                if not self.keep_alive or conn.our_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            self.open_connections -= 1
            await stream.aclose()

    async def _read(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> tuple[h11.Request | None, bytes]:
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None, b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, body

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        async def send(*events: Any) -> None:
            for event in events:
                data = conn.send(event)
                if data:
                    await stream.send_all(data)

        def start(status: int, ctype: str) -> h11.Response:
            headers = [("content-type", ctype)]
            if not self.keep_alive:
                headers.append(("connection", "close"))
            return h11.Response(status_code=status, headers=headers)

        def chunk(content: str | None, finish: str | None = None) -> h11.Data:
            delta = {} if content is None else {"content": content}
            event = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return h11.Data(data=f"data: {json.dumps(event)}\n\n".encode())

        if self.mode == "hang":
            await trio.sleep_forever()
        if self.mode == "status":
            body = json.dumps({"error": {"message": "model overloaded", "type": "server"}})
            await send(start(self.status, "application/json"), h11.Data(data=body.encode()))
            await send(h11.EndOfMessage())
            return
        if self.mode == "json":
            body = json.dumps(
                {
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(self.tokens)},
                        }
                    ]
                }
            )
            await send(start(200, "application/json"), h11.Data(data=body.encode()))
            await send(h11.EndOfMessage())
            return
        await send(start(200, "text/event-stream"))
        if self.first_delay_s:
            await trio.sleep(self.first_delay_s)
        if self.mode == "garbage":
            await send(h11.Data(data=b"this is not a server-sent event stream\n\n"))
            await send(h11.EndOfMessage())
            return
        if self.mode == "badjson":
            await send(chunk(self.tokens[0]), h11.Data(data=b"data: {not json\n\n"))
            await send(h11.EndOfMessage())
            return
        if self.mode in ("truncated", "cut", "hold"):
            await send(chunk(self.tokens[0]))
            if self.mode == "truncated":
                await send(h11.EndOfMessage())
            if self.mode == "hold":
                try:
                    while await stream.receive_some(4096):
                        pass
                except trio.BrokenResourceError:
                    pass  # a reset is a close too
                self.closed.set()
            return
        await send(chunk(None))  # the role-only opening chunk real servers send
        for token in self.tokens:
            await send(chunk(token))
        await send(chunk(None, "stop"), h11.Data(data=b"data: [DONE]\n\n"), h11.EndOfMessage())


@asynccontextmanager
async def running_llm(fake: FakeLLM) -> AsyncIterator[FakeLLM]:
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
