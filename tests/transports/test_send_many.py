"""``websocket.send_many``: several websocket frames handed to hypercorn in one ASGI message
go to the peer in one write, with hypercorn's checks and our write deadline.

A real hypercorn on 127.0.0.1 port 0 with the hooks installed; trio-websocket or a raw TCP
client. Ceiling: ``trio.fail_after(10)`` (``20`` for the stalled reader).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.events import Event, RawData
from hypercorn.trio import serve
from hypercorn.utils import UnexpectedMessageError
from trio_websocket import open_websocket_url

from archon_chat.sio.asgi import SEND_MANY
from archon_chat.transports import hypercorn_hooks

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def serving(nursery: trio.Nursery, app: App, stop: trio.Event) -> int:
    async def routed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        else:
            await app(scope, receive, send)

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 0.5
    hypercorn_hooks.install(
        config, write_timeout_s=0.3, read_timeout_s=30.0, max_connections_per_address=0
    )
    binds = await nursery.start(
        lambda task_status: serve(
            routed, config, shutdown_trigger=stop.wait, task_status=task_status
        )
    )
    return int(binds[0].rsplit(":", 1)[1])


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the hooked server makes (recorded, then made as usual)."""
    made: list[bytes] = []
    original = hypercorn_hooks._GuardedTCPServer.protocol_send

    async def recorded(self: Any, event: Event) -> None:
        if isinstance(event, RawData):
            made.append(event.data)
        await original(self, event)

    monkeypatch.setattr(hypercorn_hooks._GuardedTCPServer, "protocol_send", recorded)
    return made


def test_the_app_and_the_hook_name_the_same_message() -> None:
    assert SEND_MANY == hypercorn_hooks.SEND_MANY == "websocket.send_many"


async def test_frames_of_one_message_go_in_one_write_in_order(writes: list[bytes]) -> None:
    errors: list[BaseException] = []
    done = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        try:
            await send({"type": SEND_MANY, "frames": ["early"]})
        except UnexpectedMessageError as exc:  # not accepted yet: refused as websocket.send
            errors.append(exc)
        await send({"type": "websocket.accept"})
        for bad in ({"frames": "abc"}, {"frames": ["ok", 3]}, {}):
            try:
                await send({"type": SEND_MANY, **bad})
            except TypeError as exc:
                errors.append(exc)
        before = len(writes)
        await send({"type": SEND_MANY, "frames": []})
        await send({"type": SEND_MANY, "frames": ["one", b"\x00two", "thr\u00e9e"]})
        assert len(writes) == before + 1
        await send({"type": "websocket.send", "text": "plain"})
        await receive()  # the client's close
        done.set()

    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serving(nursery, app, stop)
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                received = [await ws.get_message() for _ in range(4)]
            await done.wait()
            stop.set()
    assert received == ["one", b"\x00two", "thr\u00e9e", "plain"]
    assert [type(exc) for exc in errors] == [UnexpectedMessageError, *[TypeError] * 3]


async def test_a_stalled_reader_of_batches_is_aborted(caplog: pytest.LogCaptureFixture) -> None:
    """The write deadline holds for ``websocket.send_many``: a peer that never reads is
    aborted and the server's shutdown completes."""
    caplog.set_level(logging.INFO, logger="archon_chat.transports.hypercorn_hooks")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        frames = ["x" * 16_384] * 16
        while True:
            await send({"type": SEND_MANY, "frames": frames})
            await trio.lowlevel.checkpoint()

    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await serving(nursery, app, stop)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            while not any("connection aborted" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.02)
            stop.set()
        await client.aclose()
