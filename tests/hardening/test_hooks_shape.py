"""The hypercorn internals that archon_chat/transports/hypercorn_hooks.py replaces or calls
still exist with the shape the hooks expect: an upgrade of hypercorn that changes one of
them fails here rather than silently dropping a protection."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import hypercorn.protocol
import hypercorn.trio.task_group
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

from archon_chat.transports import hypercorn_hooks


def test_hypercorn_is_in_the_pinned_range() -> None:
    major, minor = (int(part) for part in version("hypercorn").split(".")[:2])
    assert (major, minor) == (0, 18)


def test_every_hooked_name_exists_with_its_attributes() -> None:
    for module, name, attributes in hypercorn_hooks.HOOKED:
        target = getattr(module, name)
        for attribute in attributes:
            assert hasattr(target, attribute), (module.__name__, name, attribute)


def test_the_replaced_callables_keep_their_signatures() -> None:
    assert list(inspect.signature(TCPServer.__init__).parameters) == [
        "self",
        "app",
        "config",
        "context",
        "state",
        "stream",
    ]
    assert list(inspect.signature(hypercorn_hooks._handle_app).parameters) == list(
        inspect.signature(hypercorn_hooks.ORIGINALS["_handle"]).parameters
    )
    buffer = hypercorn_hooks.ORIGINALS["WebsocketBuffer"](10)
    assert (buffer.value, buffer.length, buffer.max_length) == (None, 0, 10)
    assert "_handle," in inspect.getsource(hypercorn.trio.task_group.TaskGroup.spawn_app)
    assert "self._read_data()" in inspect.getsource(TCPServer.run)
    # the close the hooks shield is hypercorn's whole handling of Closed
    send = inspect.getsource(TCPServer.protocol_send)
    closed = send[send.index("elif isinstance(event, Closed):") :]
    assert closed.split("\n")[1:3] == [
        " " * 12 + "await self._close()",
        " " * 12 + "await self.protocol.handle(Closed())",
    ], closed
    assert "self.idle_task = TrioSingleTask()" in inspect.getsource(TCPServer.__init__)
    assert "WebsocketBuffer(config.websocket_max_message_size)" in inspect.getsource(
        hypercorn.protocol.ws_stream.WSStream.__init__
    )
    assert "except FrameTooLargeError" in inspect.getsource(
        hypercorn.protocol.ws_stream.WSStream._handle_events
    )


def test_http2_is_chosen_where_the_hook_expects() -> None:
    original = hypercorn_hooks.ORIGINALS["H11Protocol"]
    source = inspect.getsource(original._check_protocol)
    assert 'upgrade_value.lower() == "h2c"' in source and 'event.method == b"PRI"' in source
    assert "self.protocol = H11Protocol(" in inspect.getsource(
        hypercorn.protocol.ProtocolWrapper.__init__
    )


def test_the_read_deadline_reads_h11_protocol_state() -> None:
    init = inspect.getsource(H11Protocol.__init__)
    assert "self.connection" in init and "self.keep_alive_requests = 0" in init


def test_send_many_rests_on_hypercorn_s_websocket_stream() -> None:
    original = hypercorn_hooks.ORIGINALS["WSStream"]
    assert "self.stream = WSStream(" in inspect.getsource(H11Protocol._create_stream)
    init = inspect.getsource(original.__init__)
    assert "self.closed = False" in init and "self.state = ASGIWebsocketState.HANDSHAKE" in init
    assert "self.stream_id = stream_id" in init and "self.send = send" in init
    app_send = inspect.getsource(original.app_send)
    assert 'message["type"] == "websocket.send" and self.state == ASGIWebsocketState' in app_send
    assert "if self.closed:" in app_send and "UnexpectedMessageError" in app_send
    sending = inspect.getsource(original._send_wsproto_event)
    assert "self.connection.send(event)" in sending and "except LocalProtocolError" in sending
    assert "await self.send(Data(stream_id=self.stream_id, data=data))" in sending
    assert list(inspect.signature(hypercorn_hooks._BatchingWSStream.app_send).parameters) == list(
        inspect.signature(original.app_send).parameters
    )
