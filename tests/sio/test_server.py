"""The Socket.IO server's application API, driven by an in-memory client.

Pure trio (no sockets, threads or subprocesses), so every test runs on the autojump clock
and asserts virtual times exactly. Ceiling: each test runs under ``trio.fail_after(60)``
of virtual time, which a hang reaches at once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from archon_chat.sio import (
    CallTimeout,
    ConnectInfo,
    ConnectRefused,
    NotConnected,
    ServerOptions,
    SocketIOServer,
)

from ..derived import derived
from .fakes import FakeClient, start_server


async def test_connect_reply_and_handler_info(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        seen: list[tuple[str, ConnectInfo, Any]] = []

        @sio.on("connect")
        async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
            seen.append((sid, info, auth))

        client = FakeClient(sio, nursery)
        hello = await client.handshake()
        assert hello["upgrades"] == []
        reply = await client.connect(auth={"token": "t"})
        assert list(reply) == ["sid"]
        ((sid, info, auth),) = seen
        assert sid == reply["sid"]
        assert auth == {"token": "t"}
        assert info.transport == "websocket"
        assert info.headers == {"user-agent": "fake", "x-twice": "1, 2"}
        assert info.remote_addr == "10.0.0.1"
        assert info.query["k"] == "v"
        assert info.recovered is False
        assert sio.stats()["connected"] == 1
        assert sio.rooms(sid) == {sid}


async def test_what_the_connect_handler_emits_follows_the_reply(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)

        @sio.on("connect")
        async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
            sio.enter_room(sid, "lobby")
            await sio.emit("welcome", sid, to=sid)
            await sio.emit("joined", sid, room="lobby")
            await trio.sleep(1)  # the reply waits for the handler

        client = FakeClient(sio, nursery)
        await client.handshake()
        t0 = trio.current_time()
        sid = (await client.connect())["sid"]
        assert trio.current_time() == t0 + 1
        assert [await client.recv() for _ in range(2)] == [
            f'42["welcome","{sid}"]',
            f'42["joined","{sid}"]',
        ]


async def test_refusal_sends_connect_error(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        disconnects: list[str] = []

        @sio.on("connect")
        async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
            raise ConnectRefused({"message": "unauthorized", "code": "unauthorized"})

        @sio.on("disconnect")
        async def disconnect(sid: str, reason: str) -> None:
            disconnects.append(reason)

        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.send("40")
        assert await client.recv() == '44{"message":"unauthorized","code":"unauthorized"}'
        await trio.sleep(1)
        assert disconnects == []  # never connected, so never disconnected
        assert sio.stats()["connected"] == 0
        assert not client.conn.closed  # the client may try again on the same transport


async def test_connect_handler_crash_refuses(
    autojump_clock: MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)

        @sio.on("connect")
        async def connect(sid: str, info: ConnectInfo) -> None:
            raise RuntimeError("boom")

        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.send("40")
        assert await client.recv() == '44{"message":"Connection refused"}'
        assert "connect handler failed" in caplog.text


async def test_unknown_namespace(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.send("40/nope,")
        assert await client.recv() == '44/nope,{"message":"Invalid namespace"}'


async def test_namespaces_have_their_own_handlers(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        calls: list[tuple[str, str]] = []

        @sio.on("ping", namespace="/admin")
        async def admin_ping(sid: str, data: Any) -> str:
            calls.append(("admin", sid))
            return "admin"

        @sio.on("ping")
        async def root_ping(sid: str, data: Any) -> str:
            calls.append(("root", sid))
            return "root"

        client = FakeClient(sio, nursery)
        await client.handshake()
        root_sid = (await client.connect())["sid"]
        admin_sid = (await client.connect("/admin"))["sid"]
        assert root_sid != admin_sid
        await client.send('42/admin,1["ping",null]')
        assert await client.recv() == '43/admin,1["admin"]'
        await client.send('422["ping",null]')
        assert await client.recv() == '432["root"]'
        assert calls == [("admin", admin_sid), ("root", root_sid)]
        await sio.emit("news", 1, namespace="/admin")
        assert await client.recv() == '42/admin,["news",1]'
        assert sio.rooms(admin_sid) == set()  # wrong namespace
        assert sio.rooms(admin_sid, namespace="/admin") == {admin_sid}


async def test_events_of_one_socket_run_in_order_one_at_a_time(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        log: list[tuple[str, float]] = []

        @sio.on("work")
        async def work(sid: str, n: int) -> None:
            log.append((f"start {n}", trio.current_time()))
            await trio.sleep(1)
            log.append((f"end {n}", trio.current_time()))

        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.connect()
        t0 = trio.current_time()
        for n in range(3):
            await client.emit("work", n)
        await trio.sleep(5)
        assert log == [
            ("start 0", t0),
            ("end 0", t0 + 1),
            ("start 1", t0 + 1),
            ("end 1", t0 + 2),
            ("start 2", t0 + 2),
            ("end 2", t0 + 3),
        ]


async def test_handler_return_value_is_the_ack(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)

        @sio.on("one")
        async def one(sid: str, x: int) -> int:
            return x + 1

        @sio.on("many")
        async def many(sid: str) -> tuple[int, str]:
            return 1, "two"

        @sio.on("none")
        async def none(sid: str, *args: Any) -> None:
            return None

        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.connect()
        await client.emit("one", 41, ack=1)
        await client.emit("many", ack=2)
        await client.emit("none", 1, 2, 3, ack=3)
        await client.emit("one", 1)  # no ack asked, none sent
        await client.emit("none", ack=4)
        assert [await client.recv() for _ in range(4)] == [
            "431[42]",
            '432[1,"two"]',
            "433[]",
            "434[]",
        ]


async def test_handler_errors_are_contained(
    autojump_clock: MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)

        @sio.on("bad")
        async def bad(sid: str, data: Any) -> None:
            raise ValueError("handler bug")

        @sio.on("good")
        async def good(sid: str, data: Any) -> str:
            return "fine"

        a = FakeClient(sio, nursery)
        b = FakeClient(sio, nursery)
        for c in (a, b):
            await c.handshake()
        sid = (await a.connect())["sid"]
        await b.connect()
        with caplog.at_level(logging.ERROR, logger="archon_chat.sio"):
            await a.emit("bad", None, ack=1)
            await a.emit("good", None, ack=2)
            assert await a.recv() == '432["fine"]'
        await b.emit("good", None, ack=7)
        assert await b.recv() == '437["fine"]'
        assert f"handler for 'bad' failed (sid {sid})" in caplog.text
        assert sio.stats()["handler_errors"] == 1


async def test_wrong_number_of_arguments_is_dropped(
    autojump_clock: MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        got: list[Any] = []

        @sio.on("two")
        async def two(sid: str, a: Any, b: Any = None) -> None:
            got.append((a, b))

        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.connect()
        await client.emit("two")
        await client.emit("two", 1, 2, 3)
        await client.emit("two", 1)
        await client.emit("unknown", 1)
        await trio.sleep(1)
        assert got == [(1, None)]
        assert "0 arguments" in caplog.text
        assert sio.stats()["handler_errors"] == 0


async def test_rooms_emit_and_skip(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        clients = [FakeClient(sio, nursery) for _ in range(3)]
        sids = []
        for c in clients:
            await c.handshake()
            sids.append((await c.connect())["sid"])
        a, b, c = sids
        sio.enter_room(a, "r")
        sio.enter_room(b, "r")
        assert sio.room_members("r") == {a, b}
        assert sio.rooms(a) == {a, "r"}
        await sio.emit("to_room", {"n": 1}, room="r", skip_sid=a)
        await sio.emit("to_sid", 2, to=c)
        await sio.emit("to_all", None)
        await sio.emit("to_rooms", 3, to=["r", c])
        sio.leave_room(b, "r")
        await sio.emit("after_leave", 4, room="r")
        await trio.sleep(1)
        frames = [client.pending() for client in clients]
        assert frames[0] == ['42["to_all"]', '42["to_rooms",3]', '42["after_leave",4]']
        assert frames[1] == ['42["to_room",{"n":1}]', '42["to_all"]', '42["to_rooms",3]']
        assert frames[2] == ['42["to_sid",2]', '42["to_all"]', '42["to_rooms",3]']
        sio.enter_room("no-such-sid", "r")  # a disconnect raced with the caller: no error
        assert sio.room_members("r") == {a}


async def test_broadcast_is_encoded_once(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        clients = [FakeClient(sio, nursery) for _ in range(2)]
        for c in clients:
            await c.handshake()
            await c.connect()
        await sio.emit("big", {"text": "x" * 1000})
        first, second = [await c.recv() for c in clients]
        assert first == second
        assert first is second  # the very same string object


async def test_emit_refuses_unserialisable_data(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        # Nobody targeted: nothing is encoded at all.
        sio.emit_nowait("x", {"bad": object()})
        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.connect()
        with pytest.raises(TypeError):
            sio.emit_nowait("x", {"bad": object()})
        with pytest.raises(ValueError, match="reserved"):
            sio.emit_nowait("connect", {})


async def test_call_gets_the_clients_ack(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        client = FakeClient(sio, nursery)
        await client.handshake()
        sid = (await client.connect())["sid"]
        results: list[Any] = []

        async def call() -> None:
            results.append(await sio.call("question", {"q": 1}, to=sid))

        nursery.start_soon(call)
        assert await client.recv() == '421["question",{"q":1}]'
        await client.send('431["answer"]')
        await trio.sleep(0.1)
        nursery.start_soon(call)
        assert await client.recv() == '422["question",{"q":1}]'
        await client.send('432["a",2]')
        await trio.sleep(0.1)
        assert results == ["answer", ("a", 2)]


async def test_call_timeout_and_disconnect(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        client = FakeClient(sio, nursery)
        await client.handshake()
        sid = (await client.connect())["sid"]
        t0 = trio.current_time()
        with pytest.raises(CallTimeout):
            await sio.call("q", None, to=sid, timeout=2.5)
        assert trio.current_time() == t0 + 2.5
        with pytest.raises(NotConnected):
            await sio.call("q", None, to="nobody")

        async def drop_later() -> None:
            await trio.sleep(1)
            client.conn.transport_lost()

        nursery.start_soon(drop_later)
        with pytest.raises(NotConnected):
            await sio.call("q", None, to=sid, timeout=10)
        assert trio.current_time() == t0 + 3.5


async def test_server_disconnect(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        reasons: list[tuple[str, str]] = []

        @sio.on("disconnect")
        async def disconnect(sid: str, reason: str) -> None:
            reasons.append((sid, reason))

        client = FakeClient(sio, nursery)
        await client.handshake()
        sid = (await client.connect())["sid"]
        await sio.emit("last", 1, to=sid)
        await sio.disconnect(sid)
        assert [await client.recv() for _ in range(2)] == ['42["last",1]', "41"]
        await trio.sleep(0.1)
        assert reasons == [(sid, "server namespace disconnect")]
        assert sio.stats()["connected"] == 0
        await client.send("1")  # the client closes the transport it no longer needs
        await client.closed.wait()
        assert sio.stats()["engine_connections"] == 0


async def test_client_disconnect_reason(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        reasons: list[str] = []

        @sio.on("disconnect")
        async def disconnect(sid: str, reason: str) -> None:
            reasons.append(reason)

        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.connect()
        await client.send("41")
        await trio.sleep(0.1)
        client.conn.transport_lost()
        await trio.sleep(0.1)
        assert reasons == ["client namespace disconnect"]


async def test_ping_timeout_is_detected(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, ping_interval_s=2, ping_timeout_s=3)
        gone: list[tuple[str, float]] = []

        @sio.on("disconnect")
        async def disconnect(sid: str, reason: str) -> None:
            gone.append((reason, trio.current_time()))

        alive = FakeClient(sio, nursery)
        silent = FakeClient(sio, nursery, answer_pings=False)
        t0 = trio.current_time()
        for c in (alive, silent):
            await c.handshake()
            await c.connect()
        assert await silent.recv() == "2"
        assert trio.current_time() == t0 + 2
        await silent.closed.wait()
        assert gone == [("ping timeout", t0 + 5)]
        await trio.sleep(20)
        assert not alive.conn.closed


async def test_slow_client_is_cut(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, outbox_size=3)
        reasons: list[str] = []

        @sio.on("disconnect")
        async def disconnect(sid: str, reason: str) -> None:
            reasons.append(reason)

        slow = FakeClient(sio, nursery)
        fast = FakeClient(sio, nursery)
        for c in (slow, fast):
            await c.handshake()
            await c.connect()
        slow.pause()
        await sio.emit("n", 0)  # the slow writer takes this one and blocks sending it
        await trio.sleep(0.1)
        for n in range(1, 5):  # 4 more overflow its outbox of 3
            await sio.emit("n", n)  # a checkpoint each: the fast client's writer keeps up
        await trio.sleep(0.1)
        assert reasons == ["slow client"]
        assert slow.conn.closed
        assert [await fast.recv() for _ in range(5)] == [f'42["n",{n}]' for n in range(5)]
        assert sio.stats()["slow_disconnects"] == 1


def merge_text(earlier: object, later: object) -> object | None:
    if isinstance(earlier, str) and isinstance(later, str):
        return earlier + later
    return None


async def test_outbox_merger_combines_what_waits(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        sio.set_outbox_merger(merge_text)
        behind = FakeClient(sio, nursery)
        await behind.handshake()
        await behind.connect()
        behind.pause()
        for part in ("a", "b", "c"):
            sio.emit_nowait("chunk", part)
        sio.emit_nowait("other", 1)
        sio.emit_nowait("chunk", "d")
        behind.resume()
        assert [await behind.recv() for _ in range(3)] == [
            '42["chunk","abc"]',
            '42["other",1]',
            '42["chunk","d"]',
        ]
        assert sio.stats()["merges"] == 2


async def test_merger_crash_keeps_the_event(
    autojump_clock: MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)

        def broken(earlier: object, later: object) -> object | None:
            raise RuntimeError("merger bug")

        sio.set_outbox_merger(broken)
        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.connect()
        client.pause()
        sio.emit_nowait("a", 1)
        sio.emit_nowait("a", 2)
        client.resume()
        assert [await client.recv() for _ in range(2)] == ['42["a",1]', '42["a",2]']
        assert "outbox merger failed" in caplog.text


async def test_binary_both_ways(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, max_attachments=2)

        @sio.on("upload")
        async def upload(sid: str, name: str, blob: bytes) -> tuple[str, bytes]:
            return name, blob[::-1]

        client = FakeClient(sio, nursery)
        await client.handshake()
        await client.connect()
        await client.send('451-3["upload","f",{"_placeholder":true,"num":0}]')
        await client.send(b"\x01\x02\x03")
        assert await client.recv() == '461-3["f",{"_placeholder":true,"num":0}]'
        assert await client.recv() == b"\x03\x02\x01"
        await sio.emit("file", {"data": b"\xff"})
        assert await client.recv() == '451-["file",{"data":{"_placeholder":true,"num":0}}]'
        assert await client.recv() == b"\xff"


async def test_lying_attachment_count_closes_only_that_connection(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, max_attachments=1)
        liar = FakeClient(sio, nursery)
        honest = FakeClient(sio, nursery)
        for c in (liar, honest):
            await c.handshake()
            await c.connect()
        await liar.send('451-["x",{"_placeholder":true,"num":0}]')
        with pytest.raises(Exception, match="text message while binary"):
            await liar.send('42["y"]')
        await liar.closed.wait()
        too_many = FakeClient(sio, nursery)
        await too_many.handshake()
        await too_many.connect()
        with pytest.raises(Exception, match="attachments announced"):
            await too_many.send('452-["x",{},{}]')
        assert too_many.conn.closed
        await sio.emit("still", "here")
        assert await honest.recv() == '42["still","here"]'


async def test_cancelling_serve_closes_everything(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = SocketIOServer(derived(ServerOptions))
        async with trio.open_nursery() as inner:
            await inner.start(sio.serve)
            client = FakeClient(sio, nursery)
            await client.handshake()
            await client.connect()
            inner.cancel_scope.cancel()
        assert await client.recv() == "1"
        await client.closed.wait()
        assert sio.stats()["connected"] == 0
        assert not sio.serving


def offsets(frames: list[Any]) -> list[str]:
    return [json.loads(f[2:])[-1] for f in frames]
