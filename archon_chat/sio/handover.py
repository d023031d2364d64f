"""A recoverable socket's state as it moves from one process to another.

A client whose transport was cut may reconnect to another process of the cluster, carrying
the ``pid`` and ``offset`` its first server gave it. The process that holds the socket gives
it up as a :class:`HandOver` (:meth:`SocketIOServer.hand_over`), the cluster layer carries it
as JSON, and the receiving process adopts it (:meth:`SocketIOServer.set_recovery_source`):
same ``sid`` and ``pid``, same rooms, the missed events replayed.

Events travel already encoded, without their recovery offset: offsets are each process's
own emit counter, so the adopting process stamps its own on them. Of the application's
state only the JSON-able ``app`` dict travels: what its export hook made of the socket in
the process it leaves, handed to its connect handler (``info.app``) in the one it reaches.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from archon_chat.protocol.codecs import Frame

__all__ = ["Export", "HandOver", "RecoverySource", "RoomsMoved", "app_state"]

#: ``export(sid)``: the application's state of a socket leaving this process (JSON-able)
Export = Callable[[str], dict[str, Any]]
#: ``listener(namespace, rooms)``: rooms this process no longer has a member in, because
#: their last member moved to another process
RoomsMoved = Callable[[str, list[str]], None]

_KEYS: Final = frozenset({"sid", "pid", "namespace", "rooms", "packets", "offset", "app"})
_MAX_ID: Final = 64  # sids and pids are ours: 22 characters
_HEX: Final = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class HandOver:
    """A recoverable socket leaving its process.

    ``packets``: the events the client missed, oldest first, each as the frames the writer
    sends (a text frame, then its binary attachments), without the recovery offset.
    ``offset``: the offset (hex) the last of them carried where they were emitted, or the
    one the client resumed from when there are none. ``rooms``: the rooms it had entered, its own
    room (named after its sid) not included. ``app``: what the application exported.
    """

    sid: str
    pid: str
    namespace: str
    rooms: tuple[str, ...]
    packets: tuple[tuple[Frame, ...], ...]
    offset: str
    app: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (binary frames as ``{"b": base64}``); :meth:`from_json` reverses it."""
        return {
            "sid": self.sid,
            "pid": self.pid,
            "namespace": self.namespace,
            "rooms": list(self.rooms),
            "packets": [[_frame_out(f) for f in packet] for packet in self.packets],
            "offset": self.offset,
            "app": dict(self.app),
        }

    @classmethod
    def from_json(cls, raw: Any) -> HandOver:
        """The hand-over ``raw`` (as :meth:`to_json` made it) describes; raises
        ``ValueError`` for anything of another shape."""
        if not isinstance(raw, dict) or set(raw) != _KEYS:
            raise ValueError("a hand-over is a dict of sid, pid, namespace, rooms, packets, ...")
        sid, pid, namespace = raw["sid"], raw["pid"], raw["namespace"]
        for name, value in (("sid", sid), ("pid", pid)):
            if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID:
                raise ValueError(f"{name} must be a string of 1 to {_MAX_ID} characters")
        if not isinstance(namespace, str) or not namespace.startswith("/"):
            raise ValueError("namespace must be a string starting with /")
        rooms = raw["rooms"]
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise ValueError("rooms must be a list of strings")
        offset = raw["offset"]
        if not isinstance(offset, str) or not 0 < len(offset) <= 16 or not set(offset) <= _HEX:
            raise ValueError("offset must be 1 to 16 lowercase hex digits")
        app = raw["app"]
        if not isinstance(app, dict) or not all(isinstance(k, str) for k in app):
            raise ValueError("app must be a dict with string keys")
        packets = raw["packets"]
        if not isinstance(packets, list):
            raise ValueError("packets must be a list")
        return cls(
            sid=sid,
            pid=pid,
            namespace=namespace,
            rooms=tuple(rooms),
            packets=tuple(_packet_in(p) for p in packets),
            offset=offset,
            app=app,
        )


#: ``fetch(pid, offset, namespace)``: the socket another process gives up, or ``None``
RecoverySource = Callable[[str, str | None, str], Awaitable[HandOver | None]]


def _frame_out(frame: Frame) -> Any:
    if isinstance(frame, bytes):
        return {"b": base64.b64encode(frame).decode("ascii")}
    return frame


def _packet_in(raw: Any) -> tuple[Frame, ...]:
    # As the encoder makes them: a text frame, then binary attachments only.
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str) or not raw[0]:
        raise ValueError("a packet is a non-empty list starting with its text frame")
    frames: list[Frame] = [raw[0]]
    for item in raw[1:]:
        if not isinstance(item, dict) or set(item) != {"b"} or not isinstance(item["b"], str):
            raise ValueError('a binary attachment is {"b": base64}')
        try:
            frames.append(base64.b64decode(item["b"], validate=True))
        except binascii.Error as exc:
            raise ValueError(f"bad base64 in an attachment: {exc}") from None
    return tuple(frames)


def app_state(state: Any, limit: int) -> dict[str, Any]:
    """``state`` checked as an ``app`` dict: JSON-able and at most ``limit`` bytes encoded.
    Raises ``TypeError`` or ``ValueError`` otherwise."""
    if not isinstance(state, dict):
        raise TypeError(f"the exported state must be a dict, not {type(state).__name__}")
    size = len(json.dumps(state, separators=(",", ":")).encode())
    if size > limit:
        raise ValueError(f"the exported state takes {size} bytes, over the limit of {limit}")
    return state
