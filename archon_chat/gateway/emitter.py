"""The one door through which the gateway emits to rooms and sockets.

Today it is the in-process Socket.IO server; a cross-node emitter (design.md section 8)
implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from archon_chat.sio import SocketIOServer


class RoomEmitter(Protocol):
    def emit(
        self,
        event: str,
        data: Any,
        *,
        room: str | None = None,
        to: str | None = None,
        skip: Collection[str] = (),
    ) -> None:
        """Queue ``event`` for the room's members (or one socket); never blocks."""
        ...

    def enter_room(self, sid: str, room: str) -> None: ...

    def leave_room(self, sid: str, room: str) -> None: ...


class LocalEmitter:
    """Rooms of this process's Socket.IO server."""

    def __init__(self, sio: SocketIOServer) -> None:
        self._sio = sio

    def emit(
        self,
        event: str,
        data: Any,
        *,
        room: str | None = None,
        to: str | None = None,
        skip: Collection[str] = (),
    ) -> None:
        self._sio.emit_nowait(event, data, to=to, room=room, skip_sid=list(skip) or None)

    def enter_room(self, sid: str, room: str) -> None:
        self._sio.enter_room(sid, room)

    def leave_room(self, sid: str, room: str) -> None:
        self._sio.leave_room(sid, room)
