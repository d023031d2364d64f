"""Socket.IO v5 server state machine and encoders: literal wire strings.

Synchronous (no event loop, no clock): nothing here can hang, so there is no ceiling.
"""

from __future__ import annotations

import pytest

from archon_chat.config import Settings
from archon_chat.protocol.codecs import decode_sio, encode_payload
from archon_chat.protocol.errors import InvalidState, MalformedPacket
from archon_chat.protocol.socketio import (
    AckReceived,
    ConnectRequested,
    DisconnectRequested,
    EventReceived,
    NamespaceState,
    SocketIOConnection,
    ack_frames,
    connect_error_frame,
    connect_frame,
    disconnect_frame,
    event_frames,
    with_offset,
)


def connected(*namespaces: str) -> SocketIOConnection:
    conn = SocketIOConnection(max_attachments=2, max_attachment_bytes=1_000_000)
    for ns in namespaces or ("/",):
        conn.receive_message("0" if ns == "/" else f"0{ns},")
        conn.accept(ns)
    conn.events()
    return conn


def test_connect_default_namespace_with_auth() -> None:
    conn = SocketIOConnection(Settings().max_attachments, Settings().max_attachment_bytes)
    conn.receive_message('0{"token":"abc"}')
    assert conn.events() == [ConnectRequested("/", {"token": "abc"})]
    assert conn.namespaces == {"/": NamespaceState.CONNECTING}
    conn.accept("/")
    assert conn.namespaces == {"/": NamespaceState.CONNECTED}


def test_connect_custom_namespace() -> None:
    conn = SocketIOConnection(Settings().max_attachments, Settings().max_attachment_bytes)
    conn.receive_message("0/admin,")
    conn.receive_message('0/chat?x=1,{"a":1}')
    assert conn.events() == [ConnectRequested("/admin", None), ConnectRequested("/chat", {"a": 1})]


def test_second_connect_is_invalid() -> None:
    conn = connected()
    with pytest.raises(InvalidState):
        conn.receive_message("0")


def test_connect_payload_must_be_an_object() -> None:
    conn = SocketIOConnection(Settings().max_attachments, Settings().max_attachment_bytes)
    with pytest.raises(MalformedPacket):
        conn.receive_message('0["no"]')


def test_event_packets() -> None:
    conn = connected("/", "/admin")
    conn.receive_message('2["hello",1,{"a":[2]}]')
    conn.receive_message('212["question"]')
    conn.receive_message('2/admin,["x"]')
    conn.receive_message('37["answer",2]')
    conn.receive_message("3/admin,8")
    assert conn.events() == [
        EventReceived("/", "hello", (1, {"a": [2]}), None),
        EventReceived("/", "question", (), 12),
        EventReceived("/admin", "x", (), None),
        AckReceived("/", 7, ("answer", 2)),
        AckReceived("/admin", 8, ()),
    ]


def test_events_for_unconnected_namespace_are_dropped() -> None:
    conn = connected()
    conn.receive_message('2/other,["x"]')
    conn.receive_message('3/other,1["x"]')
    assert conn.events() == []


def test_disconnect() -> None:
    conn = connected("/", "/admin")
    conn.receive_message("1/admin,")
    conn.receive_message("1/nowhere,")
    assert conn.events() == [DisconnectRequested("/admin")]
    assert list(conn.namespaces) == ["/"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7",
        "9[]",
        "x",
        "2",  # event without data
        "2[]",  # event without a name
        "2[1]",  # name is not a string
        '2{"a":1}',
        "2[",  # bad JSON
        '2["a"]garbage',
        "3",  # ack without id
        '31{"a":1}',  # ack args not a list
        '4{"message":"x"}',  # CONNECT_ERROR from a client
        '21-["x"]',  # attachments on a plain event
        '53-["x"]',  # more attachments than allowed (2)
        "2" + "[" * 100_000,  # recursion
        '2²["x"]',  # non-ASCII digit as ack id
    ],
)
def test_malformed_packets(text: str) -> None:
    conn = connected()
    with pytest.raises(MalformedPacket):
        conn.receive_message(text)


def test_binary_event_is_reassembled() -> None:
    conn = connected()
    conn.receive_message(
        '52-["upload",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
    )
    assert conn.events() == []
    conn.receive_message(b"\x01")
    assert conn.events() == []
    conn.receive_message(b"\x02\x03")
    assert conn.events() == [EventReceived("/", "upload", (b"\x01", b"\x02\x03"), None)]


def test_binary_ack_is_reassembled() -> None:
    conn = connected("/admin")
    conn.receive_message('61-/admin,5[{"_placeholder":true,"num":0}]')
    conn.receive_message(b"ok")
    assert conn.events() == [AckReceived("/admin", 5, (b"ok",))]


def test_text_while_attachments_are_due_is_a_lie() -> None:
    conn = connected()
    conn.receive_message('52-["x",{"_placeholder":true,"num":0}]')
    conn.receive_message(b"\x00")
    with pytest.raises(MalformedPacket):
        conn.receive_message('2["y"]')


def test_unannounced_binary_is_a_lie() -> None:
    conn = connected()
    with pytest.raises(MalformedPacket):
        conn.receive_message(b"\x00")


def test_placeholder_pointing_nowhere() -> None:
    conn = connected()
    conn.receive_message('51-["x",{"_placeholder":true,"num":3}]')
    with pytest.raises(MalformedPacket):
        conn.receive_message(b"\x00")


# --- encoders -------------------------------------------------------------------------------


def test_control_frames() -> None:
    assert connect_frame("/", {"sid": "abc"}) == '40{"sid":"abc"}'
    assert connect_frame("/admin", {"sid": "x"}) == '40/admin,{"sid":"x"}'
    assert connect_error_frame("/", {"message": "no"}) == '44{"message":"no"}'
    assert disconnect_frame("/") == "41"
    assert disconnect_frame("/admin") == "41/admin,"


def test_event_frames() -> None:
    assert event_frames("/", "hi", ()) == ('42["hi"]',)
    assert event_frames("/", "hi", ({"a": "é"}, 2)) == ('42["hi",{"a":"\\u00e9"},2]',)
    assert event_frames("/chat", "hi", (1,), ack_id=5) == ('42/chat,5["hi",1]',)
    assert ack_frames("/", 5, ()) == ("435[]",)
    assert ack_frames("/", 5, ("ok", 1)) == ('435["ok",1]',)


def test_binary_event_frames() -> None:
    assert event_frames("/", "file", (b"\x01\x02", {"b": b"\x03"})) == (
        '452-["file",{"_placeholder":true,"num":0},{"b":{"_placeholder":true,"num":1}}]',
        b"\x01\x02",
        b"\x03",
    )
    assert ack_frames("/x", 3, (b"!",)) == ('461-/x,3[{"_placeholder":true,"num":0}]', b"!")


def test_unserialisable_data_is_the_callers_bug() -> None:
    with pytest.raises(TypeError):
        event_frames("/", "x", (object(),))


def test_offset_is_spliced_as_last_argument() -> None:
    assert with_offset(('42["m",{"a":1}]',), "1f") == ('42["m",{"a":1},"1f"]',)
    assert with_offset(('42["m"]',), "0") == ('42["m","0"]',)
    frames = event_frames("/", "f", (b"\x00",))
    assert with_offset(frames, "a") == (
        '451-["f",{"_placeholder":true,"num":0},"a"]',
        b"\x00",
    )


def test_encoded_event_decodes_back() -> None:
    (frame,) = event_frames("/chat", "ev", ({"x": [1, None, "s"]},), ack_id=9)
    assert isinstance(frame, str)
    pkt = decode_sio(frame[1:], max_attachments=0)
    assert (pkt.type, pkt.namespace, pkt.id, pkt.data) == (
        2,
        "/chat",
        9,
        ["ev", {"x": [1, None, "s"]}],
    )
    assert encode_payload([frame]) == frame.encode()
