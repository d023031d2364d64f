"""``hypercorn_hooks.serve_connections``: hypercorn's trio server on connections from any
listener (a worker's come from its parent). It rebuilds what ``hypercorn.trio.run.
worker_serve`` does around its listeners, so an upgrade of hypercorn that changes that must
fail here. A real hypercorn on loopback, real clock; ceiling ``trio.fail_after(10)``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext

from archon_chat.sio.options import SID_PREFIX
from archon_chat.transports import hypercorn_hooks


def test_worker_serve_still_has_the_shape_serve_connections_copies() -> None:
    source = re.sub(r"\s+", " ", inspect.getsource(hypercorn_run.worker_serve))
    for piece in (
        "lifespan = Lifespan(app, config, lifespan_state)",
        "context = WorkerContext(max_requests)",
        "await lifespan_nursery.start(lifespan.handle_lifespan)",
        "await lifespan.wait_for_startup()",
        "partial( TCPServer, app, config, context, ConnectionState(lifespan_state.copy()), )",
        "handler_nursery=server_nursery",
        "await context.terminated.set()",
        "server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout",
        "await lifespan.wait_for_shutdown()",
    ):
        assert piece in source, piece
    assert list(inspect.signature(Lifespan.__init__).parameters) == [
        "self",
        "app",
        "config",
        "state",
    ]
    assert list(inspect.signature(WorkerContext.__init__).parameters) == [
        "self",
        "max_requests",
    ]
    context = WorkerContext(None)
    assert hasattr(context, "terminate") and hasattr(context.terminated, "set")


async def test_serves_the_listener_s_connections_and_stops_on_the_trigger() -> None:
    started: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                started.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    config = Config()
    config.graceful_timeout = 1.0
    stop = trio.Event()
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: hypercorn_hooks.serve_connections(
                    app, config, listeners[0], shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            assert started == ["lifespan.startup"]
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/hello")
            assert (response.status_code, response.text) == (200, "/hello")
            stop.set()
        assert started == ["lifespan.startup", "lifespan.shutdown"]
        await listeners[0].aclose()


def test_sid_prefixes_need_no_escaping() -> None:
    assert SID_PREFIX.fullmatch("w12.")
    assert not SID_PREFIX.fullmatch("w/1")
    assert not SID_PREFIX.fullmatch("w" * 17)
