"""Socket.IO v5, server side, without I/O.

Theory of operation
-------------------
One :class:`SocketIOConnection` per Engine.IO session. Each Engine.IO MESSAGE is fed to
:meth:`~SocketIOConnection.receive_message`; complete packets come out of
:meth:`~SocketIOConnection.events` as :class:`ConnectRequested`, :class:`EventReceived`,
:class:`AckReceived` and :class:`DisconnectRequested`. A ``BINARY_EVENT``/``BINARY_ACK``
announces ``N`` attachments: the next ``N`` messages must be binary and are put back in place
of their placeholders before the event comes out. A text message while attachments are
still due, a binary one when none is, more attachments than ``max_attachments``, more than
``max_attachment_bytes`` of them, or a binary packet for a namespace not ``CONNECTED`` (so
nothing is held for a peer the application has not accepted) is a lying peer:
:class:`~archon_chat.protocol.errors.MalformedPacket`, and the shell closes that connection
only.

Per namespace the connection is absent -> ``CONNECTING`` (CONNECT received, the application
decides) -> ``CONNECTED`` (:meth:`accept`) -> absent (:meth:`forget`, or the peer's
DISCONNECT). A second CONNECT for a namespace that is not absent is
:class:`~archon_chat.protocol.errors.InvalidState`. Events and acks for a namespace that is
absent are dropped, as they race with a server-side disconnect; events for a ``CONNECTING``
namespace are delivered (in order, after the connect decision).

Outgoing packets are encoded by the module functions (:func:`event_frames` and friends) into
Engine.IO frames ready for :meth:`EngineSession.send_frames`, so one encoding can be shared
by every socket an event goes to.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .codecs import (
    ACK,
    BINARY_ACK,
    BINARY_EVENT,
    CONNECT,
    CONNECT_ERROR,
    DISCONNECT,
    EVENT,
    Frame,
    SioPacket,
    decode_sio,
    encode_sio,
    reconstruct_binary,
)
from .errors import InvalidState, MalformedPacket

__all__ = [
    "AckReceived",
    "ConnectRequested",
    "DisconnectRequested",
    "EventReceived",
    "NamespaceState",
    "SioEvent",
    "SocketIOConnection",
    "ack_frames",
    "connect_error_frame",
    "connect_frame",
    "disconnect_frame",
    "event_frames",
    "with_offset",
]


class NamespaceState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """CONNECT for ``namespace``; ``auth`` is the client's payload (a dict) or ``None``."""

    namespace: str
    auth: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EventReceived:
    """An event; ``ack_id`` is set when the client waits for an acknowledgement."""

    namespace: str
    event: str
    args: tuple[Any, ...]
    ack_id: int | None


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The client acknowledged our event ``ack_id`` with ``args``."""

    namespace: str
    ack_id: int
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class DisconnectRequested:
    """The client left ``namespace`` (``"client namespace disconnect"``)."""

    namespace: str


SioEvent = ConnectRequested | EventReceived | AckReceived | DisconnectRequested


class SocketIOConnection:
    """Socket.IO packets over one Engine.IO session (see the module docstring)."""

    __slots__ = (
        "_attachment_bytes",
        "_attachments",
        "_events",
        "_pending",
        "max_attachment_bytes",
        "max_attachments",
        "namespaces",
    )

    def __init__(self, max_attachments: int, max_attachment_bytes: int) -> None:
        self.max_attachments = max_attachments
        self.max_attachment_bytes = max_attachment_bytes
        self.namespaces: dict[str, NamespaceState] = {}
        self._events: list[SioEvent] = []
        self._pending: SioPacket | None = None
        self._attachments: list[bytes] = []
        self._attachment_bytes = 0

    def receive_message(self, data: Frame) -> None:
        """Feed one Engine.IO MESSAGE.

        Raises :class:`MalformedPacket` or :class:`InvalidState`; after either, the
        connection is unusable and must be closed.
        """
        if isinstance(data, bytes):
            if self._pending is None:
                raise MalformedPacket("binary message without a packet announcing it")
            self._attachment_bytes += len(data)
            if self._attachment_bytes > self.max_attachment_bytes:
                raise MalformedPacket(f"attachments over {self.max_attachment_bytes} bytes")
            self._attachments.append(data)
            if len(self._attachments) == self._pending.attachments:
                pkt = self._pending
                payload = reconstruct_binary(pkt.data, self._attachments)
                self._pending = None
                self._attachments = []
                self._attachment_bytes = 0
                self._dispatch(pkt, payload)
            return
        if self._pending is not None:
            raise MalformedPacket("text message while binary attachments are due")
        pkt = decode_sio(data, self.max_attachments)
        if pkt.attachments:
            if self.namespaces.get(pkt.namespace) is not NamespaceState.CONNECTED:
                raise MalformedPacket("binary packet for a namespace not connected")
            self._pending = pkt
            return
        self._dispatch(pkt, pkt.data)

    def _dispatch(self, pkt: SioPacket, data: Any) -> None:
        ns = pkt.namespace
        kind = pkt.type
        if kind in (EVENT, BINARY_EVENT):
            if not isinstance(data, list) or not data or not isinstance(data[0], str):
                raise MalformedPacket("event without a name")
            if ns in self.namespaces:
                self._events.append(EventReceived(ns, data[0], tuple(data[1:]), pkt.id))
        elif kind in (ACK, BINARY_ACK):
            if pkt.id is None:
                raise MalformedPacket("ack without an id")
            if data is None:
                data = []
            if not isinstance(data, list):
                raise MalformedPacket("ack arguments are not a list")
            if ns in self.namespaces:
                self._events.append(AckReceived(ns, pkt.id, tuple(data)))
        elif kind == CONNECT:
            if data is not None and not isinstance(data, dict):
                raise MalformedPacket("CONNECT payload is not an object")
            if ns in self.namespaces:
                raise InvalidState(f"second CONNECT for {ns}")
            self.namespaces[ns] = NamespaceState.CONNECTING
            self._events.append(ConnectRequested(ns, data))
        elif kind == DISCONNECT:
            if self.namespaces.pop(ns, None) is not None:
                self._events.append(DisconnectRequested(ns))
        else:
            # CONNECT_ERROR only ever goes from server to client.
            raise MalformedPacket(f"packet type {kind} from a client")

    def accept(self, namespace: str) -> None:
        """The application accepted the CONNECT for ``namespace``."""
        if namespace in self.namespaces:
            self.namespaces[namespace] = NamespaceState.CONNECTED

    def forget(self, namespace: str) -> None:
        """``namespace`` is no longer connected (refused, or disconnected by the server)."""
        self.namespaces.pop(namespace, None)

    def events(self) -> list[SioEvent]:
        """Complete packets since the last call, oldest first."""
        events, self._events = self._events, []
        return events


# --- encoders -----------------------------------------------------------------------------


def connect_frame(namespace: str, data: dict[str, Any]) -> Frame:
    """The CONNECT reply (``data`` holds at least ``sid``)."""
    return encode_sio(CONNECT, namespace, data)[0]


def connect_error_frame(namespace: str, data: dict[str, Any]) -> Frame:
    """CONNECT_ERROR (``data`` holds at least ``message``)."""
    return encode_sio(CONNECT_ERROR, namespace, data)[0]


def disconnect_frame(namespace: str) -> Frame:
    """DISCONNECT from the server."""
    return encode_sio(DISCONNECT, namespace, None)[0]


def event_frames(
    namespace: str, event: str, args: Sequence[Any], ack_id: int | None = None
) -> tuple[Frame, ...]:
    """An EVENT (or BINARY_EVENT when ``args`` hold bytes).

    Raises ``TypeError``/``ValueError`` if ``args`` are not JSON serialisable.
    """
    return encode_sio(EVENT, namespace, [event, *args], ack_id)


def ack_frames(namespace: str, ack_id: int, args: Sequence[Any]) -> tuple[Frame, ...]:
    """An ACK (or BINARY_ACK when ``args`` hold bytes)."""
    return encode_sio(ACK, namespace, list(args), ack_id)


def with_offset(frames: tuple[Frame, ...], offset: str) -> tuple[Frame, ...]:
    """The same event with ``offset`` appended as its last argument.

    The event's text frame always ends with the ``]`` of its argument array, and the
    placeholders of binary attachments do not move, so this is a string splice, not a
    second JSON encoding. ``offset`` must not need JSON escaping (ours are hex digits).
    """
    head = frames[0]
    assert isinstance(head, str) and head.endswith("]"), head
    return (f'{head[:-1]},"{offset}"]', *frames[1:])
