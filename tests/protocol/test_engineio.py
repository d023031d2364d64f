"""Engine.IO v4 server state machine: literal wire strings, time passed as ``now``.

Synchronous (no event loop, no clock): nothing here can hang, so there is no ceiling.
"""

from __future__ import annotations

import json

import pytest

from archon_chat.protocol.engineio import (
    Closed,
    CloseReason,
    EngineConfig,
    EngineSession,
    MessageReceived,
    PingSent,
    PongReceived,
    SessionState,
    Transport,
    UpgradeAborted,
    Upgraded,
    parse_request,
)
from archon_chat.protocol.errors import (
    AlreadyUpgraded,
    BadHandshakeMethod,
    BadRequest,
    InvalidState,
    MalformedPacket,
    PayloadTooLarge,
    UnknownTransport,
    UnsupportedProtocolVersion,
)

from ..derived import derived

CONFIG = EngineConfig(
    ping_interval_s=25, ping_timeout_s=20, max_http_buffer_size=1000, upgrade_timeout_s=10
)


def polling(now: float = 0.0, config: EngineConfig = CONFIG) -> EngineSession:
    session = EngineSession("SID", config, Transport.POLLING, now)
    session.begin_poll()
    assert session.take_poll() is not None  # the handshake
    return session


def poll(session: EngineSession) -> bytes | None:
    session.begin_poll()
    body = session.take_poll()
    if body is None:
        session.cancel_poll()
    return body


# --- requests ---------------------------------------------------------------------------


def test_handshake_request() -> None:
    req = parse_request("GET", b"EIO=4&transport=polling&t=N8hyd6w", websocket=False)
    assert req.transport is Transport.POLLING
    assert req.sid is None
    assert req.query["t"] == "N8hyd6w"


def test_request_with_sid() -> None:
    req = parse_request("POST", b"EIO=4&transport=polling&sid=abc", websocket=False)
    assert req.sid == "abc"


@pytest.mark.parametrize(
    ("method", "query", "websocket", "error", "code"),
    [
        ("GET", b"EIO=4&transport=carrier-pigeon", False, UnknownTransport, 0),
        ("GET", b"EIO=4", False, UnknownTransport, 0),
        ("GET", b"EIO=3&transport=polling", False, UnsupportedProtocolVersion, 5),
        ("GET", b"transport=polling", False, UnsupportedProtocolVersion, 5),
        ("POST", b"EIO=4&transport=polling", False, BadHandshakeMethod, 2),
        ("PUT", b"EIO=4&transport=polling&sid=x", False, BadRequest, 3),
        ("GET", b"EIO=4&transport=websocket", False, BadRequest, 3),
        ("GET", b"EIO=4&transport=polling", True, BadRequest, 3),
    ],
)
def test_bad_requests(
    method: str, query: bytes, websocket: bool, error: type[Exception], code: int
) -> None:
    with pytest.raises(error) as info:
        parse_request(method, query, websocket=websocket)
    assert info.value.body()["code"] == code  # type: ignore[attr-defined]
    assert info.value.status_hint == 400  # type: ignore[attr-defined]


# --- handshake and polling ------------------------------------------------------------------


def test_handshake_packet() -> None:
    config = derived(
        EngineConfig, ping_interval_s=0.25, ping_timeout_s=0.5, max_http_buffer_size=1_000_000
    )
    session = EngineSession("abc", config, Transport.POLLING, 0.0)
    session.begin_poll()
    body = session.take_poll()
    assert body is not None
    assert body[:1] == b"0"
    assert json.loads(body[1:]) == {
        "sid": "abc",
        "upgrades": ["websocket"],
        "pingInterval": 250,
        "pingTimeout": 500,
        "maxPayload": 1_000_000,
    }


def test_websocket_handshake_offers_no_upgrade() -> None:
    session = EngineSession("abc", CONFIG, Transport.WEBSOCKET, 0.0)
    (frame,) = session.take_frames()
    assert isinstance(frame, str)
    assert json.loads(frame[1:])["upgrades"] == []
    assert session.take_frames() == []


def test_poll_waits_then_gets_queued_messages() -> None:
    session = polling()
    session.begin_poll()
    assert session.take_poll() is None
    session.send_frames(['42["a"]', '42["b"]'])
    assert session.take_poll() == b'42["a"]\x1e42["b"]'


def test_post_payload_with_binary() -> None:
    session = polling()
    session.receive_payload(b"4hello\x1e4\xc3\xa9t\xc3\xa9\x1ebAQID\x1e6", now=1.0)
    assert session.events() == [
        MessageReceived("hello"),
        MessageReceived("été"),
        MessageReceived(b"\x01\x02\x03"),
    ]


def test_message_text_that_is_json_stays_text() -> None:
    session = polling()
    session.receive_payload(b'4{"a":1}\x1e4123', now=1.0)
    assert session.events() == [MessageReceived('{"a":1}'), MessageReceived("123")]


def test_binary_goes_out_as_base64_when_polling() -> None:
    session = polling()
    session.send_frames(['451-["x",{"_placeholder":true,"num":0}]', b"\xff\x00"])
    assert poll(session) == b'451-["x",{"_placeholder":true,"num":0}]\x1eb/wA='


def test_poll_response_caps_packet_count_at_16() -> None:
    session = polling()
    session.send_frames([f"4{i}" for i in range(20)])
    first = poll(session)
    assert first is not None
    assert first.split(b"\x1e") == [f"4{i}".encode() for i in range(16)]
    assert poll(session) == b"416\x1e417\x1e418\x1e419"


def test_poll_response_caps_bytes_at_max_payload() -> None:
    session = polling(config=derived(EngineConfig, max_http_buffer_size=10))
    session.send_frames(["4aaaa", "4bbbb", "4cccccccccccccc"])
    assert poll(session) == b"4aaaa"  # 5 + 1 + 5 > 10
    assert poll(session) == b"4bbbb"
    assert poll(session) == b"4cccccccccccccc"  # a single oversized packet still goes


def test_overlapping_poll_is_refused_and_closes() -> None:
    session = polling()
    session.begin_poll()
    assert session.take_poll() is None
    with pytest.raises(BadRequest):
        session.begin_poll()
    assert session.state is SessionState.CLOSED
    assert session.events() == [Closed(CloseReason.TRANSPORT_ERROR)]
    assert session.take_poll() == b"1"  # the first poll learns it is over


@pytest.mark.parametrize(
    "body",
    [b"", b"4a\x1e\x1e4b", b"x", b"\xff\xfe", b"b!!!", b"4a\x1e9"],
)
def test_malformed_payloads(body: bytes) -> None:
    session = polling()
    with pytest.raises(MalformedPacket):
        session.receive_payload(body, now=1.0)
    assert session.events() == []


def test_oversized_payload() -> None:
    session = polling(config=derived(EngineConfig, max_http_buffer_size=4))
    with pytest.raises(PayloadTooLarge) as info:
        session.receive_payload(b"4hello", now=1.0)
    assert info.value.status_hint == 413


def test_client_close_packet() -> None:
    session = polling()
    session.receive_payload(b"1", now=1.0)
    assert session.events() == [Closed(CloseReason.TRANSPORT_CLOSE)]
    assert session.next_deadline() is None


def test_client_close_releases_the_pending_poll_with_a_noop() -> None:
    # As the reference server: the client closed, so its pending GET just ends with a noop.
    session = polling()
    session.send_frames(['42["unsent"]'])
    session.begin_poll()
    session.receive_payload(b"1", now=1.0)
    assert session.poll_pending
    assert session.take_poll() == b"6"
    assert not session.poll_pending
    assert session.events() == [Closed(CloseReason.TRANSPORT_CLOSE)]


def test_server_close_while_polling_tells_the_pending_poll() -> None:
    session = polling()
    session.begin_poll()
    assert session.take_poll() is None
    session.close()
    assert session.take_poll() == b"1"
    assert session.events() == [Closed(CloseReason.FORCED_SERVER_CLOSE)]


def test_server_close_tells_the_client() -> None:
    session = EngineSession("s", CONFIG, Transport.WEBSOCKET, 0.0)
    session.take_frames()
    session.close(CloseReason.SERVER_NAMESPACE_DISCONNECT)
    assert session.take_frames() == ["1"]
    assert session.events() == [Closed(CloseReason.SERVER_NAMESPACE_DISCONNECT)]
    session.send_frames(["4late"])
    assert session.take_frames() == []


def test_open_packet_from_client_is_invalid() -> None:
    session = EngineSession("s", CONFIG, Transport.WEBSOCKET, 0.0)
    with pytest.raises(InvalidState):
        session.receive_frame("0", now=1.0)
    with pytest.raises(MalformedPacket):
        session.receive_frame("", now=1.0)


# --- heartbeat ----------------------------------------------------------------------------


def test_ping_pong_cycle() -> None:
    session = EngineSession("s", CONFIG, Transport.WEBSOCKET, 100.0)
    session.take_frames()
    assert session.next_deadline() == 125.0
    session.handle_timeout(124.9)
    assert session.take_frames() == []
    assert session.events() == []
    session.handle_timeout(125.0)
    assert session.take_frames() == ["2"]
    assert session.events() == [PingSent()]
    assert session.next_deadline() == 145.0  # the pong deadline
    session.receive_frame("3", now=130.0)
    assert session.events() == [PongReceived()]
    assert session.next_deadline() == 155.0  # interval counted from the pong


def test_missed_pong_closes_with_ping_timeout() -> None:
    session = EngineSession("s", CONFIG, Transport.WEBSOCKET, 0.0)
    session.take_frames()
    session.handle_timeout(25.0)
    assert session.take_frames() == ["2"]
    session.handle_timeout(44.9)
    assert session.state is SessionState.OPEN
    session.handle_timeout(45.0)
    assert session.events() == [PingSent(), Closed(CloseReason.PING_TIMEOUT)]
    assert session.next_deadline() is None


def test_unsolicited_pong_changes_nothing() -> None:
    session = EngineSession("s", CONFIG, Transport.WEBSOCKET, 0.0)
    session.receive_frame("3", now=5.0)
    assert session.events() == []
    assert session.next_deadline() == 25.0


def test_fractional_intervals() -> None:
    config = derived(EngineConfig, ping_interval_s=0.2, ping_timeout_s=0.1)
    session = EngineSession("s", config, Transport.WEBSOCKET, 0.0)
    assert session.next_deadline() == pytest.approx(0.2)


# --- upgrade ------------------------------------------------------------------------------


def test_upgrade_sequence() -> None:
    session = polling()
    session.begin_poll()
    assert session.take_poll() is None  # a poll is pending
    session.begin_upgrade(now=1.0)
    session.receive_probe_frame("2probe", now=1.1)
    assert session.take_probe_frames() == ["3probe"]
    assert session.take_poll() == b"6"  # the pending poll is released with a noop
    session.send_frames(['42["during"]'])
    session.receive_probe_frame("5", now=1.2)
    assert session.events() == [Upgraded()]
    assert session.transport is Transport.WEBSOCKET
    assert session.take_frames() == ['42["during"]']
    with pytest.raises(BadRequest):
        session.begin_poll()
    with pytest.raises(BadRequest):
        session.receive_payload(b"4x", now=2.0)


def test_upgrade_without_probe_is_refused() -> None:
    session = polling()
    session.begin_upgrade(now=1.0)
    with pytest.raises(InvalidState):
        session.receive_probe_frame("5", now=1.1)


def test_second_upgrade_is_refused() -> None:
    session = polling()
    session.begin_upgrade(now=1.0)
    with pytest.raises(AlreadyUpgraded):
        session.begin_upgrade(now=1.0)
    assert session.state is SessionState.UPGRADING  # the first probe carries on
    ws = EngineSession("w", CONFIG, Transport.WEBSOCKET, 0.0)
    with pytest.raises(AlreadyUpgraded):
        ws.begin_upgrade(now=1.0)
    assert (ws.state, ws.transport) == (SessionState.OPEN, Transport.WEBSOCKET)
    ws.send_frames(["4still"])
    assert ws.take_frames()[-1] == "4still"


def test_upgrade_of_a_closed_session_is_a_bad_request() -> None:
    session = polling()
    session.close()
    with pytest.raises(BadRequest) as info:
        session.begin_upgrade(now=1.0)
    assert not isinstance(info.value, AlreadyUpgraded)


def test_stalled_upgrade_is_aborted() -> None:
    session = polling()
    session.begin_upgrade(now=1.0)
    assert session.next_deadline() == 11.0
    session.handle_timeout(11.0)
    assert session.events() == [UpgradeAborted()]
    assert session.state is SessionState.OPEN
    assert session.transport is Transport.POLLING
    session.begin_upgrade(now=12.0)  # may try again


def test_aborted_probe_keeps_polling() -> None:
    session = polling()
    session.begin_upgrade(now=1.0)
    session.receive_probe_frame("2probe", now=1.0)
    session.abort_upgrade()
    assert poll(session) is None  # no more noops: back to long polling


def test_failure_drops_what_is_queued() -> None:
    ws = EngineSession("s", CONFIG, Transport.WEBSOCKET, 0.0)
    ws.send_frames(["4a", "4b"])
    ws.fail(CloseReason.TRANSPORT_CLOSE)
    assert ws.take_frames() == []
    polling_session = polling()
    polling_session.send_frames(["4a"])
    polling_session.fail(CloseReason.TRANSPORT_ERROR)
    assert polling_session.take_poll() == b"1"
