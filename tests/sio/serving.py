"""Serve a :class:`SocketIOServer` with hypercorn on 127.0.0.1, port 0, in a test's nursery."""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from archon_chat.config import Settings, derive
from archon_chat.sio import ServerOptions, SocketIOServer
from archon_chat.transports.hypercorn_hooks import refuse_permessage_deflate


async def serve_sio(nursery: trio.Nursery, **options: Any) -> tuple[SocketIOServer, int]:
    """Start the server and hypercorn in ``nursery``; return the server and its port.

    Hypercorn is configured as ``archon-chat serve`` configures it (permessage-deflate
    declined, process-wide).
    """
    refuse_permessage_deflate()
    settings = Settings().replace(**options)
    sio = SocketIOServer(derive(ServerOptions, settings), settings.origin_policy())
    await nursery.start(sio.serve)
    return sio, await serve_app(nursery, sio.asgi)


async def serve_app(nursery: trio.Nursery, app: Any) -> int:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 0.1
    binds: list[str] = await nursery.start(serve, app, config)
    return int(binds[0].rsplit(":", 1)[1])
