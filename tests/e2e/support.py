"""Running the real gateway in-process and driving it with python-socketio's own client.

The gateway runs in the test's trio loop (``serve`` in a nursery, bound to 127.0.0.1
port 0, with a real SQLite file). python-socketio's threaded ``socketio.Client`` runs in
worker threads (``trio.to_thread``), with its own timeouts; every event it receives is
recorded in order.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import socketio
import trio

from archon_chat.config import Settings, load_settings
from archon_chat.server import Running, serve

from .agents_fake import AgentsFake

TURN_EVENTS = ("message", "stream_chunk", "stream_complete", "typing", "error")


def gateway_settings(tmp_path: Path, agents_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "port": 0,
        "db_path": str(tmp_path / "chat.db"),
        "kb_index_path": str(tmp_path / "kb.db"),
        "agent_service_url": agents_url,
        "ping_interval_s": 0.5,
        "ping_timeout_s": 1.0,
        "grace_s": 0.3,
        "agent_first_event_timeout_s": 2.0,
        "agent_idle_timeout_s": 2.0,
        "shutdown_grace_s": 1.0,
        "write_timeout_s": 2.0,
        "save_timeout_s": 1.0,
        "log_level": "WARNING",
    }
    base.update(overrides)
    return load_settings({}, base)


@asynccontextmanager
async def world(
    tmp_path: Path, delay_s: float = 0.05, **overrides: Any
) -> AsyncIterator[tuple[AgentsFake, Running]]:
    """The scripted agents service and a gateway in front of it (``overrides``: settings)."""
    agents = AgentsFake(delay_s=delay_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(agents.serve)
        async with running_gateway(gateway_settings(tmp_path, agents.url, **overrides)) as gw:
            yield agents, gw
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Running]:
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(partial(serve, settings, handle_signals=False))
        try:
            yield running
        finally:
            running.stop()


class Client:
    """python-socketio's threaded client; ``events`` holds (name, data) in arrival order."""

    def __init__(self, url: str, *, transports: list[str] | None = None) -> None:
        self.url = url
        self.transports = transports
        self.sio = socketio.Client(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._arrived: queue.Queue[None] = queue.Queue()
        self.sio.on("*", self._record)

    def _record(self, event: str, *args: Any) -> None:
        with self._lock:
            self.events.append((event, args[0] if args else None))
        self._arrived.put(None)

    async def connect(self, auth: Any = None, headers: dict[str, str] | None = None) -> None:
        await trio.to_thread.run_sync(
            partial(
                self.sio.connect,
                self.url,
                transports=self.transports,
                auth=auth,
                headers=headers or {},
                wait_timeout=5,
            )
        )

    async def call(self, event: str, data: Any) -> Any:
        return await trio.to_thread.run_sync(partial(self.sio.call, event, data, timeout=5))

    async def emit(self, event: str, data: Any) -> None:
        await trio.to_thread.run_sync(partial(self.sio.emit, event, data))

    async def disconnect(self) -> None:
        await trio.to_thread.run_sync(self.sio.disconnect)

    def snapshot(self, names: tuple[str, ...] = TURN_EVENTS) -> list[tuple[str, Any]]:
        with self._lock:
            return [(n, d) for n, d in self.events if n in names]

    async def wait_for(
        self, predicate: Callable[[list[tuple[str, Any]]], bool], timeout: float = 5.0
    ) -> list[tuple[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                events = list(self.events)
            if predicate(events):
                return events
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; events so far: {json.dumps(events)[:4000]}")
            try:
                await trio.to_thread.run_sync(partial(self._arrived.get, True, min(left, 0.2)))
            except queue.Empty:
                pass

    async def wait_event(
        self, name: str, where: Callable[[Any], bool] = lambda d: True, timeout: float = 5.0
    ) -> Any:
        events = await self.wait_for(
            lambda evs: any(n == name and where(d) for n, d in evs), timeout
        )
        return next(d for n, d in events if n == name and where(d))


async def joined_client(url: str, session_id: str, transports: list[str] | None = None) -> Client:
    """A connected client (websocket unless told) that joined ``session_id``."""
    client = Client(url, transports=["websocket"] if transports is None else transports)
    await client.connect()
    ack = await client.call("join_chat", {"session_id": session_id})
    assert ack["status"] == "joined", ack
    return client


def chunks_at_least(n: int) -> Callable[[list[tuple[str, Any]]], bool]:
    return lambda events: sum(name == "stream_chunk" for name, _ in events) >= n


def agent_said(text: str) -> Callable[[list[tuple[str, Any]]], bool]:
    return lambda events: any(
        name == "message" and data["data"]["content"] == text for name, data in events
    )


def turn_done(events: list[tuple[str, Any]]) -> bool:
    return any(n == "typing" and d.get("is_typing") is False for n, d in events)


async def create_session(url: str, agent_type: str = "rag", **headers: str) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{url}/api/agent-chat/sessions", json={"agent_type": agent_type}, headers=headers
        )
    assert response.status_code == 201, response.text
    session_id: str = response.json()["session_id"]
    return session_id


async def get_session(url: str, session_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/api/agent-chat/sessions/{session_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
