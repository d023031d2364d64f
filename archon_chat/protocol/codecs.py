"""The one typed door to the reused packet codecs, and the wire framing around them.

Socket.IO packets are decoded by python-socketio's :class:`socketio.packet.Packet` (namespace,
ack id, attachment count, JSON), and binary attachments are split out and put back by its
``deconstruct_binary`` / ``reconstruct_binary``. Its known traps are handled here and nowhere
else: ``encode()`` returns a list when the data holds binary; decoding accepts an attachment
count on any packet type, unknown packet types, ids spelled with non-ASCII digits, and raises
``RecursionError`` on deeply nested JSON. Every such case becomes a :class:`MalformedPacket`.

Engine.IO framing is one type digit followed by the data, which we read ourselves:
``engineio.packet.Packet`` JSON-decodes any MESSAGE whose text happens to be JSON, and
``engineio.payload.Payload`` refuses more than 16 packets per payload, a limit the npm client
does not observe when it writes (it only honours ``maxPayload``). The 16-packet cap applies to
what *we* send (python-engineio's client refuses more), so it lives in the encoder.

A :data:`Frame` is one Engine.IO packet as a websocket carries it: text starting with its type
digit, or ``bytes`` for a binary MESSAGE. Polling payloads carry binary as ``b<base64>``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from socketio import packet as _sio_packet

from .errors import MalformedPacket

__all__ = [
    "ACK",
    "BINARY_ACK",
    "BINARY_EVENT",
    "CONNECT",
    "CONNECT_ERROR",
    "DISCONNECT",
    "EVENT",
    "RECORD_SEPARATOR",
    "Frame",
    "SioPacket",
    "decode_payload",
    "decode_sio",
    "dumps",
    "encode_payload",
    "encode_sio",
    "reconstruct_binary",
]

Frame = str | bytes

# Socket.IO v5 packet types.
CONNECT: Final = 0
DISCONNECT: Final = 1
EVENT: Final = 2
ACK: Final = 3
CONNECT_ERROR: Final = 4
BINARY_EVENT: Final = 5
BINARY_ACK: Final = 6

RECORD_SEPARATOR: Final = "\x1e"
_ENGINE_TYPES: Final = frozenset("0123456")
_SEPARATORS: Final = (",", ":")


# One encoder for every frame: json.dumps with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(separators=_SEPARATORS)


def dumps(value: Any) -> str:
    """Compact JSON, ASCII only (so a frame's length in characters is its length in bytes)."""
    return _ENCODER.encode(value)


# --- Engine.IO payloads (long-polling bodies) ---------------------------------------------


def decode_payload(body: bytes) -> list[Frame]:
    """Split a polling request body into frames.

    Raises :class:`MalformedPacket` for a body that is not UTF-8, an empty packet, an
    unknown packet type or bad base64.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("payload is not UTF-8") from None
    frames: list[Frame] = []
    for part in text.split(RECORD_SEPARATOR):
        if not part:
            raise MalformedPacket("empty packet in payload")
        if part[0] == "b":
            try:
                frames.append(base64.b64decode(part[1:], validate=True))
            except (binascii.Error, ValueError):
                raise MalformedPacket("bad base64 in binary packet") from None
        elif part[0] in _ENGINE_TYPES:
            frames.append(part)
        else:
            raise MalformedPacket(f"unknown Engine.IO packet type {part[0]!r}")
    return frames


def encode_payload(frames: Iterable[Frame]) -> bytes:
    """Join frames into a polling response body (binary frames as ``b<base64>``)."""
    parts = [f if isinstance(f, str) else "b" + base64.b64encode(f).decode("ascii") for f in frames]
    return RECORD_SEPARATOR.join(parts).encode("utf-8")


def payload_length(frame: Frame) -> int:
    """Bytes ``frame`` takes in a polling payload (before its separator)."""
    if isinstance(frame, str):
        return len(frame)
    return 1 + 4 * ((len(frame) + 2) // 3)


# --- Socket.IO packets --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SioPacket:
    """A decoded Socket.IO packet; ``attachments`` binary frames are still to come."""

    type: int
    namespace: str
    id: int | None
    data: Any
    attachments: int


def decode_sio(text: str, max_attachments: int) -> SioPacket:
    """Decode the text of one Socket.IO packet (the Engine.IO MESSAGE data).

    Raises :class:`MalformedPacket` for anything the codec refuses or should have refused.
    """
    if not text or text[0] not in "0123456":
        raise MalformedPacket("unknown Socket.IO packet type")
    try:
        pkt = _sio_packet.Packet(encoded_packet=text)
    except (ValueError, TypeError, IndexError, RecursionError) as exc:
        raise MalformedPacket(f"undecodable Socket.IO packet: {type(exc).__name__}") from None
    count = int(pkt.attachment_count)
    if count and pkt.packet_type not in (BINARY_EVENT, BINARY_ACK):
        raise MalformedPacket("attachments announced on a packet that cannot carry them")
    if count > max_attachments:
        raise MalformedPacket(f"{count} attachments announced, at most {max_attachments}")
    namespace = pkt.namespace or "/"
    if not namespace.startswith("/"):
        raise MalformedPacket("bad namespace")
    type_ = int(pkt.packet_type)
    if type_ in (CONNECT, DISCONNECT, CONNECT_ERROR) and pkt.id is not None:
        # The codec reads digits after the type as an ack id even where none may stand
        # ("00-0"): such a packet means nothing a client can send.
        raise MalformedPacket("ack id on a packet that cannot carry one")
    if type_ == CONNECT and pkt.data is not None and not isinstance(pkt.data, dict):
        raise MalformedPacket("CONNECT payload must be an object")
    if type_ == DISCONNECT and pkt.data is not None:
        raise MalformedPacket("DISCONNECT carries no payload")
    if type_ in (EVENT, BINARY_EVENT) and not (isinstance(pkt.data, list) and pkt.data):
        # The codec also reads "20-0" as an EVENT whose payload is the number 0.
        raise MalformedPacket("an EVENT payload is an array naming the event")
    if type_ in (ACK, BINARY_ACK) and pkt.data is not None and not isinstance(pkt.data, list):
        raise MalformedPacket("an ACK payload is an array")
    return SioPacket(type_, namespace, pkt.id, pkt.data, count)


def reconstruct_binary(data: Any, attachments: Sequence[bytes]) -> Any:
    """Put binary attachments back in place of their placeholders.

    Raises :class:`MalformedPacket` for a placeholder that points nowhere.
    """
    try:
        return _sio_packet.Packet.reconstruct_binary(data, list(attachments))
    except (IndexError, TypeError, KeyError, RecursionError):
        raise MalformedPacket("bad binary placeholder") from None


def encode_sio(type_: int, namespace: str, data: Any, id_: int | None = None) -> tuple[Frame, ...]:
    """Encode one Socket.IO packet as Engine.IO MESSAGE frames.

    Returns one text frame (``"4..."``), followed by one binary frame per attachment when
    ``data`` holds ``bytes``. Raises ``TypeError``/``ValueError`` when ``data`` is not JSON
    serialisable (a bug of the caller, not of the peer).
    """
    head = "4" + str(type_)
    if namespace != "/":
        head += namespace + ","
    if id_ is not None:
        head += str(id_)
    if data is None:
        return (head,)
    try:
        return (head + dumps(data),)
    except TypeError:
        if type_ not in (EVENT, ACK) or not _sio_packet.Packet.data_is_binary(data):
            raise
    # Binary: the codec returns [text, *attachments]; the text keeps its own type digit.
    pkt = _sio_packet.Packet(type_, data=data, namespace=namespace, id=id_)
    parts = pkt.encode()
    return ("4" + parts[0], *(bytes(p) for p in parts[1:]))
