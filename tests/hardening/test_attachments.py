"""Binary attachments are held only for a namespace the application accepted, and within
a byte bound (the protocol object, without I/O)."""

from __future__ import annotations

import pytest

from archon_chat.protocol.errors import MalformedPacket
from archon_chat.protocol.socketio import EventReceived, SocketIOConnection

ANNOUNCE_TWO = '52-["upload",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'


def test_no_attachment_is_held_before_connect() -> None:
    conn = SocketIOConnection(max_attachments=10, max_attachment_bytes=1_000_000)
    with pytest.raises(MalformedPacket, match="not connected"):
        conn.receive_message(ANNOUNCE_TWO)


def test_no_attachment_is_held_while_the_connect_is_decided() -> None:
    conn = SocketIOConnection(max_attachments=10, max_attachment_bytes=1_000_000)
    conn.receive_message("0")
    with pytest.raises(MalformedPacket, match="not connected"):
        conn.receive_message(ANNOUNCE_TWO)


def test_attachments_are_bounded_in_bytes() -> None:
    conn = SocketIOConnection(max_attachments=10, max_attachment_bytes=100)
    conn.receive_message("0")
    conn.accept("/")
    conn.events()
    conn.receive_message(ANNOUNCE_TWO)
    conn.receive_message(b"x" * 60)
    with pytest.raises(MalformedPacket, match="over 100 bytes"):
        conn.receive_message(b"y" * 41)


def test_the_byte_bound_is_per_packet() -> None:
    conn = SocketIOConnection(max_attachments=10, max_attachment_bytes=100)
    conn.receive_message("0")
    conn.accept("/")
    conn.events()
    for _ in range(3):
        conn.receive_message(ANNOUNCE_TWO)
        conn.receive_message(b"x" * 50)
        conn.receive_message(b"y" * 50)
    assert conn.events() == [EventReceived("/", "upload", (b"x" * 50, b"y" * 50), None)] * 3
