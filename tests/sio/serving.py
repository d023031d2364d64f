"""Serve a :class:`SocketIOServer` with hypercorn on 127.0.0.1, port 0, in a test's nursery."""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from archon_chat.config import Settings, derive
from archon_chat.sio import ServerOptions, SocketIOServer
from archon_chat.sio.asgi import EngineIOApp
from archon_chat.transports import hypercorn_hooks


async def serve_sio(
    nursery: trio.Nursery, app: Any = None, **options: Any
) -> tuple[SocketIOServer, int]:
    """Start the server and hypercorn in ``nursery``; return the server and its port;
    ``app(engine_app)`` wraps the Engine.IO app when given.

    Hypercorn is configured as ``archon-chat serve`` configures it (permessage-deflate
    declined, process-wide), but without the other hooks: the app writes one frame per
    ``websocket.send``. :func:`serve_sio_hooked` serves it as ``archon-chat serve`` does.
    """
    hypercorn_hooks.refuse_permessage_deflate()
    sio = await _start(nursery, Settings().replace(**options))
    return sio, await serve_app(nursery, sio.asgi if app is None else app(sio.asgi))


async def serve_sio_hooked(
    nursery: trio.Nursery, app: Any = None, **options: Any
) -> tuple[SocketIOServer, int]:
    """As :func:`serve_sio`, with every hook of ``archon-chat serve`` installed (process-wide)
    and the app told it may send ``websocket.send_many``."""
    settings = Settings().replace(**options)
    hypercorn_hooks.refuse_permessage_deflate()
    sio = await _start(nursery, settings)
    engine = EngineIOApp(sio, send_many_bytes=settings.ws_write_bytes)
    config = _config()
    hypercorn_hooks.install(
        config,
        write_timeout_s=settings.write_timeout_s,
        read_timeout_s=settings.http_read_timeout_s,
        max_connections_per_address=0,
    )
    return sio, await serve_app(nursery, engine if app is None else app(engine), config)


async def _start(nursery: trio.Nursery, settings: Settings) -> SocketIOServer:
    sio = SocketIOServer(derive(ServerOptions, settings), settings.origin_policy())
    await nursery.start(sio.serve)
    return sio


def _config() -> Config:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 0.1
    return config


async def serve_app(nursery: trio.Nursery, app: Any, config: Config | None = None) -> int:
    """Serve ``app`` with hypercorn on 127.0.0.1 port 0 (``config`` if given); its port."""
    config = _config() if config is None else config
    binds: list[str] = await nursery.start(serve, app, config)
    return int(binds[0].rsplit(":", 1)[1])
