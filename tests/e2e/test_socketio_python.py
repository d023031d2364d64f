"""python-socketio's own client against our server, over polling, websocket and upgrade.

A real hypercorn on 127.0.0.1 port 0; python-socketio's threaded ``Client`` runs in a
worker thread (``trio.to_thread``) with its own timeouts, and reaches back into trio with
``trio.from_thread``. Real clock, sub-second heartbeats. Ceiling: ``trio.fail_after(20)``
per test (threads are abandoned on cancellation; every client call has its own timeout).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import socketio
import trio

from archon_chat.sio import ConnectInfo, ConnectRefused, SocketIOServer
from tests.sio.serving import serve_sio

T = TypeVar("T")

TRANSPORTS = [
    pytest.param(["polling"], "polling", id="polling"),
    pytest.param(["websocket"], "websocket", id="websocket"),
    pytest.param(None, "websocket", id="upgrade"),
]


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


class App:
    """Server-side handlers recording what they see."""

    def __init__(self, sio: SocketIOServer) -> None:
        self.sio = sio
        self.connects: list[tuple[str, str, Any]] = []
        self.disconnects: list[tuple[str, str]] = []
        self.gone = trio.Event()

        @sio.on("connect")
        async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
            self.connects.append((sid, info.transport, auth))
            if not isinstance(auth, dict) or auth.get("token") != "secret":
                raise ConnectRefused({"message": "unauthorized", "code": "unauthorized"})

        @sio.on("disconnect")
        async def disconnect(sid: str, reason: str) -> None:
            self.disconnects.append((sid, reason))
            self.gone.set()

        @sio.on("echo")
        async def echo(sid: str, data: Any) -> Any:
            return data

        @sio.on("join")
        async def join(sid: str, room: str) -> str:
            sio.enter_room(sid, room)
            return sid

        @sio.on("shout")
        async def shout(sid: str, room: str, text: str) -> None:
            await sio.emit("heard", {"from": sid, "text": text}, room=room, skip_sid=sid)


def make_client(url: str, transports: list[str] | None) -> tuple[socketio.Client, queue.Queue[Any]]:
    client = socketio.Client(reconnection=False)
    received: queue.Queue[Any] = queue.Queue()
    client.on("heard", lambda data: received.put(("heard", data)))
    client.on("news", lambda *args: received.put(("news", args)))
    client.on("question", lambda data: {"double": data["n"] * 2})
    client.on("disconnect", lambda *args: received.put(("disconnect", args)))
    client.connect(url, transports=transports, auth={"token": "secret"}, wait_timeout=5)
    return client, received


@pytest.fixture
async def served(nursery: trio.Nursery) -> tuple[App, str]:
    sio, port = await serve_sio(nursery, ping_interval_s=0.3, ping_timeout_s=0.6)
    return App(sio), f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_emit_and_acks_both_ways(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    app, url = served
    with trio.fail_after(20):

        def script() -> dict[str, Any]:
            client, received = make_client(url, transports)
            try:
                out: dict[str, Any] = {"transport": client.transport(), "sid": client.get_sid()}
                out["echo"] = client.call("echo", {"a": [1, "é", None]}, timeout=5)
                sid = out["sid"]
                trio.from_thread.run(app.sio.emit, "news", (1, {"b": 2}), sid)
                out["news"] = received.get(timeout=5)
                out["answer"] = trio.from_thread.run(
                    lambda: app.sio.call("question", {"n": 21}, to=sid, timeout=5)
                )
                return out
            finally:
                client.disconnect()

        out = await in_thread(script)
        assert out["transport"] == final
        assert out["echo"] == {"a": [1, "é", None]}
        assert out["news"] == ("news", (1, {"b": 2}))
        assert out["answer"] == {"double": 42}
        await app.gone.wait()
        # python-socketio's client disconnects with abort=True: its DISCONNECT may go out,
        # or only the websocket close, or (polling) nothing at all, so the heartbeat tells.
        ((sid, reason),) = app.disconnects
        assert sid == out["sid"]
        assert reason in ("client namespace disconnect", "transport close", "ping timeout")


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_auth_refusal(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    app, url = served
    with trio.fail_after(20):

        def script() -> str:
            client = socketio.Client(reconnection=False)
            errors: list[Any] = []
            client.on("connect_error", lambda data: errors.append(data))
            try:
                client.connect(url, transports=transports, auth={"token": "wrong"}, wait_timeout=5)
            except socketio.exceptions.ConnectionError as exc:
                assert errors == [{"message": "unauthorized", "code": "unauthorized"}]
                return str(exc)
            finally:
                client.disconnect()
            return "connected"

        assert "failed to connect" in await in_thread(script)
        assert [auth for _, _, auth in app.connects] == [{"token": "wrong"}]

        def accepted() -> str:
            client, _ = make_client(url, transports)
            sid = str(client.get_sid())
            client.disconnect()
            return sid

        # A refused connect is owed no disconnect: the first disconnect the application
        # hears, after a later client's whole connect and disconnect, is that client's.
        sid = await in_thread(accepted)
        await app.gone.wait()
        assert [s for s, _ in app.disconnects] == [sid]


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_rooms(served: tuple[App, str], transports: list[str] | None, final: str) -> None:
    app, url = served
    with trio.fail_after(20):

        def script() -> list[Any]:
            clients = [make_client(url, transports) for _ in range(3)]
            try:
                sids = [c.call("join", "lobby", timeout=5) for c, _ in clients[:2]]
                clients[0][0].emit("shout", ("lobby", "hi"))
                heard = clients[1][1].get(timeout=5)
                trio.from_thread.run(lambda: app.sio.emit("news", "all", room="lobby"))
                news = [clients[i][1].get(timeout=5) for i in (0, 1)]
                trio.from_thread.run(lambda: app.sio.emit("news", "one", to=sids[1]))
                news.append(clients[1][1].get(timeout=5))
                leftovers = [q.qsize() for _, q in clients]
                return [sids, heard, news, leftovers]
            finally:
                for c, _ in clients:
                    c.disconnect()

        sids, heard, news, leftovers = await in_thread(script)
        assert heard == ("heard", {"from": sids[0], "text": "hi"})
        assert news == [("news", ("all",)), ("news", ("all",)), ("news", ("one",))]
        assert leftovers == [0, 0, 0]  # the shouter and the outsider heard nothing more


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_server_disconnect(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    app, url = served
    with trio.fail_after(20):

        def script() -> tuple[str, Any]:
            client, received = make_client(url, transports)
            try:
                sid = client.get_sid()
                trio.from_thread.run(app.sio.disconnect, sid)
                return sid, received.get(timeout=5)
            finally:
                client.disconnect()

        sid, event = await in_thread(script)
        assert event == ("disconnect", ("server disconnect",))
        assert app.disconnects == [(sid, "server namespace disconnect")]


@pytest.mark.slow
@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_ping_timeout_of_a_silent_client(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    app, url = served
    with trio.fail_after(20):

        def script() -> str:
            client, _ = make_client(url, transports)
            eio = client.eio
            answer = eio._receive_packet

            def deaf(pkt: Any) -> None:
                if pkt.packet_type != 2:  # drop pings: the client stops answering
                    answer(pkt)

            eio._receive_packet = deaf
            sid: str = client.get_sid()
            return sid

        sid = await in_thread(script)
        await app.gone.wait()
        assert app.disconnects == [(sid, "ping timeout")]
