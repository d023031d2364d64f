"""The Socket.IO server on trio, and its application API.

::

    sio = SocketIOServer(derive(ServerOptions, settings))

    @sio.on("connect")
    async def connect(sid: str, info: ConnectInfo, auth: Any) -> None: ...

    await nursery.start(sio.serve)      # heartbeats and handlers live in its nursery
    app = sio.asgi                       # raw ASGI app for /socket.io/
    await sio.emit("message", data, room="chat_1")
"""

from __future__ import annotations

from .errors import CallTimeout, ConnectRefused, NotConnected, SocketIOError
from .options import Recovery, ServerOptions
from .outgoing import Outgoing
from .server import ConnectInfo, OutboxMerger, SocketIOServer

__all__ = [
    "CallTimeout",
    "ConnectInfo",
    "ConnectRefused",
    "NotConnected",
    "OutboxMerger",
    "Outgoing",
    "Recovery",
    "ServerOptions",
    "SocketIOError",
    "SocketIOServer",
]
