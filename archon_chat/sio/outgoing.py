"""What a socket's outbox holds: events not yet encoded for it, and protocol packets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from archon_chat.protocol.codecs import Frame
from archon_chat.protocol.socketio import event_frames, with_offset

__all__ = ["Outgoing", "Packet", "Render", "event_args"]

#: Turns an emitted ``data`` into what goes on the wire, at encoding time.
Render = Callable[[Any], Any]


def event_args(data: Any) -> tuple[Any, ...]:
    """Arguments of an event from the ``data`` of an emit: ``None`` is none, a tuple several."""
    if data is None:
        return ()
    if isinstance(data, tuple):
        return data
    return (data,)


class Outgoing:
    """One event on its way to one or more sockets.

    ``event``, ``data`` and ``namespace`` are what the application emitted, ``offset`` its
    place in the server's emit order (connection state recovery). When ``render`` is given,
    ``data`` is an application object and ``render(data)`` its wire payload, made only when
    the event is encoded: an outbox merger works on the application's objects. An
    ``Outgoing`` is never changed once queued (a room broadcast shares one object, and its
    encoding, among all its sockets); merging builds a new one. The encoding is made once,
    when first needed; a socket that opted in to connection state recovery gets it with the
    offset spliced in as the last argument.
    """

    __slots__ = (
        "_frames",
        "_offset_frames",
        "data",
        "event",
        "handed",
        "namespace",
        "offset",
        "render",
    )

    def __init__(
        self,
        event: str,
        data: Any = None,
        namespace: str = "/",
        *,
        offset: int = 0,
        render: Render | None = None,
    ) -> None:
        self.event = event
        self.data = data
        self.namespace = namespace
        self.offset = offset
        self.render = render
        #: handed to a transport at least once (for the server's ``on_sent`` hook)
        self.handed = False
        self._frames: tuple[Frame, ...] | None = None
        self._offset_frames: tuple[Frame, ...] | None = None

    @classmethod
    def encoded(cls, frames: tuple[Frame, ...], namespace: str, offset: int) -> Outgoing:
        """An event that arrives already encoded (handed over by another process): it is
        sent and replayed as it is, never merged, and not reported to ``on_sent`` again. Its
        ``data`` is ``None``: the application object stayed where it was emitted."""
        item = cls("", None, namespace, offset=offset, render=_as_encoded)
        item._frames = frames
        item.handed = True
        return item

    def __repr__(self) -> str:
        return f"Outgoing({self.event!r}, {self.data!r}, {self.namespace!r})"

    def frames(self) -> tuple[Frame, ...]:
        """Engine.IO frames of this event (cached). Raises ``TypeError`` if not JSON-able."""
        if self._frames is None:
            data = self.data if self.render is None else self.render(self.data)
            self._frames = event_frames(self.namespace, self.event, event_args(data))
        return self._frames

    def frames_with_offset(self) -> tuple[Frame, ...]:
        """The frames with the recovery offset as last argument (cached)."""
        if self._offset_frames is None:
            self._offset_frames = with_offset(self.frames(), format(self.offset, "x"))
        return self._offset_frames


def _as_encoded(data: Any) -> Any:
    # The renderer of encoded events: never called (their frames are set), and no
    # application's renderer, so a merger is never asked to combine them.
    raise AssertionError("an encoded event is not rendered")


class Packet:
    """A protocol packet for one socket (CONNECT reply, ack, call): never merged or replayed."""

    __slots__ = ("frames",)

    def __init__(self, frames: tuple[Frame, ...]) -> None:
        self.frames = frames
