"""The one door through which the gateway emits to rooms and learns who watches a session.

:class:`RoomEmitter` is the emitter and membership interface: today the in-process
Socket.IO server (:class:`LocalEmitter`), whose rooms (with sockets in their disconnect
grace period) are the single record of who watches a session; a cross-node implementation
(design.md section 8) replaces it behind the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol

from archon_chat.sio import Outgoing, SocketIOServer

__all__ = ["LocalEmitter", "RoomEmitter"]

Render = Callable[[Any], Any]


class RoomEmitter(Protocol):
    def emit(
        self,
        event: str,
        data: Any,
        *,
        room: str | None = None,
        to: str | None = None,
        skip: Collection[str] = (),
        render: Render | None = None,
    ) -> None:
        """Queue ``event`` for the room's members (or one socket); never blocks. With
        ``render``, ``data`` is an application object rendered when encoded."""
        ...

    def drop_queued(self, room: str, unwanted: Callable[[Any], bool]) -> int:
        """Drop events whose ``data`` is ``unwanted`` from the room members' outboxes,
        where they wait unsent; how many were dropped."""
        ...

    def enter_room(self, sid: str, room: str) -> None: ...

    def leave_room(self, sid: str, room: str) -> bool:
        """True when ``sid`` was a member and no connected member is left."""
        ...

    def in_room(self, sid: str, room: str) -> bool: ...

    def has_members(self, room: str) -> bool:
        """Whether the room has members here, connected or in their grace period."""
        ...

    def room_count(self, sid: str) -> int:
        """How many rooms the socket has entered."""
        ...

    def rooms_of(self, sid: str) -> list[str]:
        """The rooms the socket has entered."""
        ...

    def on_vacated(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(room)`` when a room's last member is gone for good (its grace
        period over, or removed by the server); never for :meth:`leave_room`, which
        reports its own case."""
        ...


class LocalEmitter:
    """Rooms of this process's Socket.IO server (default namespace)."""

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
        render: Render | None = None,
    ) -> None:
        self._sio.emit_nowait(event, data, to=to, room=room, skip_sid=skip or None, render=render)

    def drop_queued(self, room: str, unwanted: Callable[[Any], bool]) -> int:
        def match(item: Outgoing) -> bool:
            return unwanted(item.data)

        return self._sio.drop_queued(room, match)

    def enter_room(self, sid: str, room: str) -> None:
        self._sio.enter_room(sid, room)

    def leave_room(self, sid: str, room: str) -> bool:
        return self._sio.leave_room(sid, room)

    def in_room(self, sid: str, room: str) -> bool:
        return room in self._sio.rooms(sid)

    def has_members(self, room: str) -> bool:
        return bool(self._sio.room_members(room))

    def room_count(self, sid: str) -> int:
        return self._sio.room_count(sid)

    def rooms_of(self, sid: str) -> list[str]:
        return sorted(self._sio.rooms(sid))

    def on_vacated(self, listener: Callable[[str], None]) -> None:
        def vacated(namespace: str, room: str) -> None:
            if namespace == "/":
                listener(room)

        self._sio.set_room_listener(vacated)
