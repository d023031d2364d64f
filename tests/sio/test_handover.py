"""Connection state recovery across processes: one server hands a socket over, another adopts it.

Two servers, each served by hypercorn on 127.0.0.1 port 0, stand for two processes; the
adopting one's recovery source calls the other's ``hand_over`` directly, through a JSON round
trip. The client speaks Engine.IO/Socket.IO over a real websocket on a TCP stream the test
owns, keeping ``pid`` and the last offset as socket.io-client does (python-socketio's client
has no connection state recovery); cutting that stream is the transport loss. Real clock,
sub-second deadlines. Ceiling: ``trio.fail_after(10)`` per test.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from archon_chat.sio import ConnectInfo, SocketIOServer
from archon_chat.sio.handover import HandOver

from .serving import serve_sio

RECOVER = {"recover": True}


class Client:
    """One Engine.IO session over a websocket; remembers ``pid`` and the last offset."""

    def __init__(self, stream: trio.SocketStream, ws: WebSocketConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.pid: str | None = None
        self.offset: str | None = None

    @classmethod
    async def open(cls, nursery: trio.Nursery, port: int) -> Client:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        ws = await wrap_client_stream(
            nursery, stream, "127.0.0.1", "/socket.io/?EIO=4&transport=websocket"
        )
        hello = await ws.get_message()
        assert isinstance(hello, str) and hello.startswith("0{"), hello
        return cls(stream, ws)

    async def recv(self) -> str | bytes:
        while True:
            frame = await self.ws.get_message()
            if frame == "2":
                await self.ws.send_message("3")
                continue
            return frame

    async def connect(self, auth: dict[str, Any]) -> dict[str, Any]:
        """CONNECT (with ``pid`` and ``offset`` if known) and return the reply's data."""
        if self.pid is not None:
            auth = {**auth, "pid": self.pid}
            if self.offset is not None:
                auth["offset"] = self.offset
        await self.ws.send_message("40" + json.dumps(auth))
        reply = await self.recv()
        assert isinstance(reply, str) and reply.startswith("40{"), reply
        data: dict[str, Any] = json.loads(reply[2:])
        self.pid = data.get("pid")
        return data

    async def event(self) -> list[Any]:
        """The next event's arguments, its binary attachments put back in place; the offset
        (last argument) is remembered and left in."""
        head = await self.recv()
        assert isinstance(head, str), head
        if head.startswith("42"):
            args: list[Any] = json.loads(head[2:])
        else:
            assert head.startswith("45"), head
            count, _, body = head[2:].partition("-")
            blobs = [await self.recv() for _ in range(int(count))]
            args = _placed(json.loads(body), blobs)
        self.offset = args[-1]
        return args

    async def call(self, event: str, *args: Any) -> list[Any]:
        await self.ws.send_message("421" + json.dumps([event, *args]))
        reply = await self.recv()
        assert isinstance(reply, str) and reply.startswith("431"), reply
        return list(json.loads(reply[3:]))

    async def cut(self) -> None:
        """Drop the TCP connection under the websocket, without a close handshake."""
        await self.stream.aclose()


def _placed(value: Any, blobs: list[str | bytes]) -> Any:
    if isinstance(value, dict):
        if value.get("_placeholder") is True:
            return blobs[value["num"]]
        return {k: _placed(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [_placed(v, blobs) for v in value]
    return value


@dataclass
class Node:
    """One server and what its application saw."""

    sio: SocketIOServer
    port: int
    connects: list[tuple[str, bool, Any]]
    disconnects: list[tuple[str, str]]
    vacated: list[tuple[str, str]]
    moved: list[tuple[str, list[str]]]
    gone: trio.Event


async def node(nursery: trio.Nursery, **options: Any) -> Node:
    sio, port = await serve_sio(nursery, recovery="opt-in", grace_s=5.0, **options)
    n = Node(sio, port, [], [], [], [], trio.Event())
    users: dict[str, str] = {}

    @sio.on("connect")
    async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
        n.connects.append((sid, info.recovered, info.app))
        users[sid] = info.app["user"] if info.app else auth.get("user", "?")

    @sio.on("disconnect")
    async def disconnect(sid: str, reason: str) -> None:
        n.disconnects.append((sid, reason))
        n.gone.set()

    @sio.on("join")
    async def join(sid: str, room: str) -> str:
        sio.enter_room(sid, room)
        return users[sid]

    sio.set_room_listener(lambda ns, room: n.vacated.append((ns, room)))
    sio.set_hand_over_hooks(
        lambda sid: {"user": users[sid]},
        lambda ns, rooms: n.moved.append((ns, rooms)),
        max_app_bytes=4096,
    )
    return n


Fetch = Callable[[str, str | None, str], Awaitable[HandOver | None]]


def from_node(a: Node, calls: list[tuple[str, str | None, str]] | None = None) -> Fetch:
    """A recovery source asking ``a``, the hand-over carried as JSON text."""

    async def fetch(pid: str, offset: str | None, namespace: str) -> HandOver | None:
        if calls is not None:
            calls.append((pid, offset, namespace))
        handed = a.sio.hand_over(pid, offset, namespace)
        await trio.lowlevel.checkpoint()
        if handed is None:
            return None
        return HandOver.from_json(json.loads(json.dumps(handed.to_json())))

    return fetch


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.01)


class Item:
    """An application object emitted with a renderer (only the server that emits has it)."""

    def __init__(self, n: int) -> None:
        self.n = n


def render(item: Item) -> dict[str, int]:
    return {"rendered": item.n}


async def test_a_socket_dropped_on_one_server_is_recovered_on_another(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        a, b = await node(nursery), await node(nursery)
        b.sio.set_recovery_source(from_node(a), timeout_s=2)
        client = await Client.open(nursery, a.port)
        first = await client.connect({**RECOVER, "user": "ann"})
        sid, pid = first["sid"], first["pid"]
        assert await client.call("join", "chat") == ["ann"]
        await a.sio.emit("m", 1, room="chat")
        assert (await client.event())[:2] == ["m", 1]

        await client.cut()
        await a.gone.wait()
        assert a.sio.stats()["ghosts"] == 1
        await a.sio.emit("m", 2, room="chat")
        await a.sio.emit("m", {"blob": b"\x00\xff"}, room="chat")
        a.sio.emit_nowait("m", Item(4), room="chat", render=render)
        await a.sio.emit("other", 0, room="elsewhere")  # nobody there: not for this socket

        again = await Client.open(nursery, b.port)
        again.pid, again.offset = client.pid, client.offset
        reply = await again.connect(RECOVER)
        assert reply["sid"] == sid
        assert reply["pid"] == pid  # socket.io-client counts itself recovered
        missed = [await again.event() for _ in range(3)]
        assert [args[:2] for args in missed] == [
            ["m", 2],
            ["m", {"blob": b"\x00\xff"}],
            ["m", {"rendered": 4}],
        ]
        offsets = [int(args[-1], 16) for args in missed]
        assert int(reply["offset"], 16) < offsets[0] < offsets[1] < offsets[2]
        assert b.connects == [(sid, True, {"user": "ann"})]
        assert b.sio.rooms(sid) == {sid, "chat"}
        await b.sio.emit("m", 5, room="chat")
        assert (await again.event())[:2] == ["m", 5]
        assert await again.call("join", "more") == ["ann"]  # its handlers know the user

        # The first server let it go without calling its room abandoned.
        assert a.sio.rooms(sid) == set()
        assert a.sio.room_members("chat") == set()
        assert a.vacated == []
        assert a.moved == [("/", ["chat"])]
        assert a.disconnects == [(sid, "transport close")]
        assert a.sio.stats()["ghosts"] == a.sio.stats()["connected"] == 0
        assert a.sio.stats()["hand_overs"] == 1
        stats = b.sio.stats()
        assert (stats["recoveries"], stats["adoptions"], stats["recovery_misses"]) == (1, 1, 0)


async def test_an_adopted_socket_recovers_again_from_the_offset_it_came_with(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        a, b = await node(nursery), await node(nursery)
        b.sio.set_recovery_source(from_node(a), timeout_s=2)
        client = await Client.open(nursery, a.port)
        first = await client.connect({**RECOVER, "user": "ann"})
        await a.sio.emit("m", 1, to=first["sid"])
        await client.event()
        await client.cut()
        await a.gone.wait()

        # Nothing was missed, and the next drop comes before any event from the new server:
        # the client still holds the first server's offset.
        second = await Client.open(nursery, b.port)
        second.pid, second.offset = client.pid, client.offset
        assert (await second.connect(RECOVER))["sid"] == first["sid"]
        await second.cut()
        await b.gone.wait()
        await b.sio.emit("m", 2, to=first["sid"])
        third = await Client.open(nursery, b.port)
        third.pid, third.offset = second.pid, client.offset
        assert (await third.connect(RECOVER))["sid"] == first["sid"]
        assert (await third.event())[:2] == ["m", 2]
        assert b.sio.stats()["recoveries"] == 2
        assert [recovered for _, recovered, _ in b.connects] == [True, True]


async def test_a_client_back_before_its_old_transport_was_noticed_dead(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        a, b = await node(nursery), await node(nursery)
        b.sio.set_recovery_source(from_node(a), timeout_s=2)
        old = await Client.open(nursery, a.port)
        first = await old.connect({**RECOVER, "user": "ann"})
        await old.call("join", "chat")
        await a.sio.emit("m", 1, room="chat")
        await old.event()
        await a.sio.emit("m", 2, room="chat")  # sent, or queued: either way missed

        new = await Client.open(nursery, b.port)
        new.pid, new.offset = old.pid, old.offset
        assert (await new.connect(RECOVER))["sid"] == first["sid"]
        assert (await new.event())[:2] == ["m", 2]
        await a.gone.wait()
        assert a.disconnects == [(first["sid"], "transport close")]
        assert a.sio.stats()["engine_connections"] == 0  # its old transport was closed
        assert a.vacated == [] and a.moved == [("/", ["chat"])]


async def new_socket_instead(
    nursery: trio.Nursery, b: Node, pid: str, offset: str | None
) -> dict[str, Any]:
    client = await Client.open(nursery, b.port)
    client.pid, client.offset = pid, offset
    reply = await client.connect({**RECOVER, "user": "bob"})
    assert reply["pid"] != pid
    assert b.connects[-1] == (reply["sid"], False, None)
    return reply


async def test_unknown_pid_is_a_miss(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        a, b = await node(nursery), await node(nursery)
        calls: list[tuple[str, str | None, str]] = []
        b.sio.set_recovery_source(from_node(a, calls), timeout_s=2)
        await new_socket_instead(nursery, b, "nobody", "1f")
        assert calls == [("nobody", "1f", "/")]
        assert b.sio.stats()["recovery_misses"] == 1
        assert b.sio.stats()["adoptions"] == 0


async def test_stale_offset_is_a_miss_and_lets_the_ghost_go(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        a, b = await node(nursery), await node(nursery)
        b.sio.set_recovery_source(from_node(a), timeout_s=2)
        client = await Client.open(nursery, a.port)
        first = await client.connect({**RECOVER, "user": "ann"})
        await client.call("join", "chat")
        await client.cut()
        await a.gone.wait()
        assert a.sio.hand_over(first["pid"], None, "/admin") is None  # not that namespace
        assert a.sio.stats()["ghosts"] == 1
        await new_socket_instead(nursery, b, first["pid"], "1")  # older than anything kept
        assert a.sio.stats()["ghosts"] == 0
        assert a.vacated == [("/", "chat")]  # abandoned, as after a local miss
        assert a.moved == []
        assert b.sio.stats()["recovery_misses"] == 1


async def test_state_over_its_bound_keeps_the_socket_where_it_is(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        a, b = await node(nursery), await node(nursery)
        a.sio.set_hand_over_hooks(lambda sid: {"blob": "x" * 100}, max_app_bytes=64)
        b.sio.set_recovery_source(from_node(a), timeout_s=2)
        client = await Client.open(nursery, a.port)
        first = await client.connect({**RECOVER, "user": "ann"})
        await client.cut()
        await a.gone.wait()
        await new_socket_instead(nursery, b, first["pid"], None)
        assert a.sio.stats()["ghosts"] == 1  # it waits for its grace to end, as before
        assert a.sio.stats()["hand_overs"] == 0


async def test_sid_collision_refuses_the_hand_over(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        b = await node(nursery)
        resident = await Client.open(nursery, b.port)
        here = await resident.connect({**RECOVER, "user": "cat"})
        await resident.call("join", "chat")
        clash = HandOver(
            sid=here["sid"],
            pid="other-pid",
            namespace="/",
            rooms=("intruded",),
            packets=(('42["m","forged"]',),),
            offset="a",
            app={"user": "eve"},
        )

        async def fetch(pid: str, offset: str | None, namespace: str) -> HandOver | None:
            return clash

        b.sio.set_recovery_source(fetch, timeout_s=2)
        reply = await new_socket_instead(nursery, b, "other-pid", None)
        assert reply["sid"] != here["sid"]
        assert b.sio.rooms(here["sid"]) == {here["sid"], "chat"}
        assert b.sio.room_members("intruded") == set()
        await b.sio.emit("m", "still here", room="chat")
        assert (await resident.event())[:2] == ["m", "still here"]
        assert b.sio.stats()["recovery_misses"] == 1


@pytest.mark.parametrize("failure", ["raises", "hangs", "wrong type"])
async def test_a_failing_recovery_source_is_a_miss_within_the_deadline(
    nursery: trio.Nursery, failure: str
) -> None:
    with trio.fail_after(10):
        b = await node(nursery)

        async def fetch(pid: str, offset: str | None, namespace: str) -> Any:
            if failure == "raises":
                raise ConnectionError("the cluster is unreachable")
            if failure == "hangs":
                await trio.sleep_forever()
            return {"sid": "not a HandOver"}

        b.sio.set_recovery_source(fetch, timeout_s=0.3)
        t0 = trio.current_time()
        await new_socket_instead(nursery, b, "somebody", "1")
        elapsed = trio.current_time() - t0
        assert elapsed < 2
        if failure == "hangs":
            assert elapsed >= 0.3
        assert b.sio.stats()["recovery_misses"] == 1


def test_json_round_trip_with_binary_attachments() -> None:
    handed = HandOver(
        sid="s",
        pid="p",
        namespace="/admin",
        rooms=("r1", "r2"),
        packets=(
            ('42/admin,["m",1]',),
            ('451-/admin,["m",{"_placeholder":true,"num":0}]', b"\0"),
        ),
        offset="1f",
        app={"user": "ann", "n": [1, 2]},
    )
    raw = handed.to_json()
    assert raw["packets"][1][1] == {"b": "AA=="}
    assert HandOver.from_json(json.loads(json.dumps(raw))) == handed


GOOD: dict[str, Any] = {
    "sid": "s",
    "pid": "p",
    "namespace": "/",
    "rooms": ["r"],
    "packets": [['42["m",1]'], ['451-["m",{"_placeholder":true,"num":0}]', {"b": "AA=="}]],
    "offset": "1f",
    "app": {},
}


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {**GOOD, "extra": 1},
        {k: v for k, v in GOOD.items() if k != "app"},
        {**GOOD, "sid": ""},
        {**GOOD, "sid": 5},
        {**GOOD, "pid": "p" * 65},
        {**GOOD, "namespace": "admin"},
        {**GOOD, "rooms": "r"},
        {**GOOD, "rooms": [1]},
        {**GOOD, "offset": "xyz"},
        {**GOOD, "offset": "1F"},
        {**GOOD, "offset": ""},
        {**GOOD, "offset": 31},
        {**GOOD, "app": []},
        {**GOOD, "app": {1: 2}},
        {**GOOD, "packets": {}},
        {**GOOD, "packets": [[]]},
        {**GOOD, "packets": ["42[]"]},
        {**GOOD, "packets": [[{"b": "AA=="}]]},
        {**GOOD, "packets": [["451-[]", "text"]]},
        {**GOOD, "packets": [["451-[]", {"b": "not base64!"}]]},
        {**GOOD, "packets": [["451-[]", {"b": "AA==", "c": 1}]]},
    ],
)
def test_from_json_refuses_other_shapes(bad: Any) -> None:
    HandOver.from_json(GOOD)
    with pytest.raises(ValueError):
        HandOver.from_json(bad)
