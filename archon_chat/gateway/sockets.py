"""Socket.IO event handlers of the gateway: validation errors become ``error`` events.

A refused request gets an ``error`` event to that one socket (no seq) and, if the client
asked for an acknowledgement, ``{"status": "error", "code", "error"}`` as the ack.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from archon_chat.sio import ConnectInfo, ConnectRefused, SocketIOServer

from . import wire
from .core import Gateway
from .errors import GatewayError, invalid

log = logging.getLogger(__name__)

Handler = Callable[[str, Any], Awaitable[dict[str, Any]]]


def install(sio: SocketIOServer, gateway: Gateway) -> None:
    """Register the gateway's handlers on the default namespace."""

    async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
        try:
            await gateway.on_connect(sid, info.recovered, auth, info.app)
        except GatewayError as exc:
            gateway.metrics.refusals.labels(code=exc.code.value).inc()
            code = exc.code.value
            raise ConnectRefused({"message": code, "code": code, "detail": exc.detail}) from None

    async def disconnect(sid: str, reason: str) -> None:
        await gateway.on_disconnect(sid, reason)

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)

    handlers: dict[str, Handler] = {
        "join_chat": gateway.on_join_chat,
        "chat_message": gateway.on_chat_message,
        "leave_chat": gateway.on_leave_chat,
        "stop_response": gateway.on_stop_response,
        "refresh_token": gateway.on_refresh_token,
    }
    for name, handler in handlers.items():
        sio.on(name, _guarded(sio, gateway, name, handler))


def _guarded(
    sio: SocketIOServer, gateway: Gateway, name: str, handler: Handler
) -> Callable[[str, Any], Awaitable[dict[str, Any]]]:
    async def run(sid: str, *args: Any) -> dict[str, Any]:
        data = args[0] if args else None
        try:
            if len(args) > 1:
                raise invalid(f"'{name}' takes one argument, not {len(args)}")
            return await handler(sid, data)
        except GatewayError as exc:
            session_id = data.get("session_id") if isinstance(data, dict) else None
            if not isinstance(session_id, str):
                session_id = None
            gateway.metrics.refusals.labels(code=exc.code.value).inc()
            sio.emit_nowait("error", wire.refusal(session_id, exc.code, exc.detail), to=sid)
            return {"status": "error", "code": exc.code.value, "error": exc.detail}

    run.__name__ = f"on_{name}"
    return run
