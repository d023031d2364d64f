"""What a socket's outbox holds: events not yet encoded for it, and protocol packets."""

from __future__ import annotations

from typing import Any

from archon_chat.protocol.codecs import Frame
from archon_chat.protocol.socketio import event_frames, with_offset

__all__ = ["Outgoing", "Packet", "event_args"]


def event_args(data: Any) -> tuple[Any, ...]:
    """Arguments of an event from the ``data`` of an emit: ``None`` is none, a tuple several."""
    if data is None:
        return ()
    if isinstance(data, tuple):
        return data
    return (data,)


class Outgoing:
    """One event on its way to one or more sockets.

    ``event``, ``data`` and ``namespace`` are what the application emitted; an outbox
    merger builds a new ``Outgoing(event, data, namespace)`` and never changes one it was
    given (a room broadcast shares one object, and its encoding, among all its sockets).
    The encoding is made once, when first needed; a socket that opted in to connection
    state recovery gets it with the event's offset spliced in as the last argument.
    """

    __slots__ = ("_frames", "_offset", "_offset_frames", "data", "event", "namespace")

    def __init__(self, event: str, data: Any = None, namespace: str = "/") -> None:
        self.event = event
        self.data = data
        self.namespace = namespace
        self._frames: tuple[Frame, ...] | None = None
        self._offset_frames: tuple[Frame, ...] | None = None
        self._offset = 0

    def __repr__(self) -> str:
        return f"Outgoing({self.event!r}, {self.data!r}, {self.namespace!r})"

    def frames(self) -> tuple[Frame, ...]:
        """Engine.IO frames of this event (cached). Raises ``TypeError`` if not JSON-able."""
        if self._frames is None:
            self._frames = event_frames(self.namespace, self.event, event_args(self.data))
        return self._frames

    def frames_with_offset(self) -> tuple[Frame, ...]:
        """The frames with the recovery offset as last argument (cached)."""
        if self._offset_frames is None:
            self._offset_frames = with_offset(self.frames(), format(self._offset, "x"))
        return self._offset_frames


class Packet:
    """A protocol packet for one socket (CONNECT reply, ack, call): never merged or replayed."""

    __slots__ = ("frames",)

    def __init__(self, frames: tuple[Frame, ...]) -> None:
        self.frames = frames
