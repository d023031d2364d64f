"""Connection state recovery, server half, driven by an in-memory client.

Pure trio, on the autojump clock. Ceiling: ``trio.fail_after(60)`` of virtual time per test.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from trio.testing import MockClock

from archon_chat.sio import ConnectInfo, SocketIOServer

from .fakes import FakeClient, start_server

RECOVER = {"recover": True}


class Recorder:
    def __init__(self, sio: SocketIOServer) -> None:
        self.connects: list[tuple[str, bool, Any]] = []
        self.disconnects: list[tuple[str, str, float]] = []

        @sio.on("connect")
        async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
            self.connects.append((sid, info.recovered, auth))

        @sio.on("disconnect")
        async def disconnect(sid: str, reason: str) -> None:
            self.disconnects.append((sid, reason, trio.current_time()))


async def opened(sio: SocketIOServer, nursery: trio.Nursery, **kw: Any) -> FakeClient:
    client = FakeClient(sio, nursery, **kw)
    await client.handshake()
    return client


def event(frame: Any) -> list[Any]:
    assert isinstance(frame, str) and frame.startswith("42"), frame
    return list(json.loads(frame[2:]))


async def test_opted_in_socket_gets_pid_and_offsets(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        plain = await opened(sio, nursery)
        keen = await opened(sio, nursery)
        assert list(await plain.connect()) == ["sid"]
        reply = await keen.connect(auth=RECOVER)
        assert set(reply) == {"sid", "pid", "offset"}
        await sio.emit("a", 1)
        await sio.emit("b", {"x": 2})
        assert [await plain.recv() for _ in range(2)] == ['42["a",1]', '42["b",{"x":2}]']
        a, b = event(await keen.recv()), event(await keen.recv())
        assert a[:2] == ["a", 1] and b[:2] == ["b", {"x": 2}]
        assert int(reply["offset"], 16) < int(a[2], 16) < int(b[2], 16)


async def test_drop_emit_reconnect_replays_in_order_once(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, grace_s=10)
        rec = Recorder(sio)
        first = await opened(sio, nursery)
        reply = await first.connect(auth=RECOVER)
        sid, pid = reply["sid"], reply["pid"]
        sio.enter_room(sid, "chat")
        await sio.emit("m", 1, room="chat")
        last = event(await first.recv())[-1]
        t_drop = trio.current_time()
        first.conn.transport_lost()
        await first.closed.wait()
        assert sio.room_members("chat") == {sid}  # a ghost stays a member
        assert sio.stats()["ghosts"] == 1
        await sio.emit("m", 2, room="chat")
        await sio.emit("m", 3, to=sid)
        await sio.emit("m", 4, room="chat")

        second = await opened(sio, nursery)
        again = await second.connect(auth={**RECOVER, "pid": pid, "offset": last, "token": "t"})
        assert again["sid"] == sid
        assert again["pid"] == pid
        assert again["offset"] == last
        replay = [event(await second.recv()) for _ in range(3)]
        assert [e[1] for e in replay] == [2, 3, 4]
        await sio.emit("m", 5, room="chat")
        assert event(await second.recv())[1] == 5
        assert second.pending() == []
        assert rec.connects[-1] == (sid, True, {"recover": True, "token": "t"})
        assert rec.disconnects == [(sid, "transport close", t_drop)]  # paired with connects
        assert sio.rooms(sid) == {sid, "chat"}
        assert sio.stats()["recoveries"] == 1


async def test_recovery_before_the_first_event(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        for with_offset in (True, False):  # ours sends the CONNECT offset; npm's sends none
            first = await opened(sio, nursery)
            reply = await first.connect(auth=RECOVER)
            first.conn.transport_lost()
            await sio.emit("missed", with_offset, to=reply["sid"])
            auth: dict[str, Any] = {**RECOVER, "pid": reply["pid"]}
            if with_offset:
                auth["offset"] = reply["offset"]
            second = await opened(sio, nursery)
            assert (await second.connect(auth=auth))["sid"] == reply["sid"]
            assert event(await second.recv())[:2] == ["missed", with_offset]


async def test_events_lost_in_flight_are_replayed(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        first = await opened(sio, nursery)
        reply = await first.connect(auth=RECOVER)
        for n in range(3):
            await sio.emit("m", n)
        frames = [event(await first.recv()) for _ in range(3)]
        # Only the first reached the application before the network died.
        first.conn.transport_lost()
        second = await opened(sio, nursery)
        auth = {**RECOVER, "pid": reply["pid"], "offset": frames[0][-1]}
        await second.connect(auth=auth)
        assert [event(await second.recv())[1] for _ in range(2)] == [1, 2]


async def test_ping_timeout_racing_the_reconnect_loses_nothing(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, ping_interval_s=5, ping_timeout_s=5)
        rec = Recorder(sio)
        old = await opened(sio, nursery, answer_pings=False)
        reply = await old.connect(auth=RECOVER)
        await sio.emit("m", 1)
        got = event(await old.recv())
        await sio.emit("m", 2)  # written to a transport that is already dead
        assert event(await old.recv())[1] == 2
        # The client is back before the server noticed the old transport had died.
        new = await opened(sio, nursery)
        await sio.emit("m", 3)
        again = await new.connect(auth={**RECOVER, "pid": reply["pid"], "offset": got[-1]})
        assert again["sid"] == reply["sid"]
        await sio.emit("m", 4)
        assert [event(await new.recv())[1] for _ in range(3)] == [2, 3, 4]
        await old.closed.wait()
        await trio.sleep(30)
        # The application saw the old transport go, then the same sid come back.
        assert [(sid, reason) for sid, reason, _ in rec.disconnects] == [
            (reply["sid"], "transport close")
        ]
        assert [(sid, recovered) for sid, recovered, _ in rec.connects] == [
            (reply["sid"], False),
            (reply["sid"], True),
        ]
        assert not new.conn.closed
        assert sio.stats()["engine_connections"] == 1


async def test_after_the_grace_recovery_falls_back(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, grace_s=10)
        rec = Recorder(sio)
        first = await opened(sio, nursery)
        reply = await first.connect(auth=RECOVER)
        sio.enter_room(reply["sid"], "chat")
        t0 = trio.current_time()
        first.conn.transport_lost()
        await trio.sleep(9.5)
        assert sio.room_members("chat") == {reply["sid"]}
        await trio.sleep(1)
        assert sio.room_members("chat") == set()  # the grace is over: it left silently
        assert rec.disconnects == [(reply["sid"], "transport close", t0)]
        second = await opened(sio, nursery)
        fresh = await second.connect(auth={**RECOVER, "pid": reply["pid"], "offset": "0"})
        assert fresh["sid"] != reply["sid"]
        assert fresh["pid"] != reply["pid"]
        assert rec.connects[-1][1] is False
        assert sio.stats()["recovery_misses"] == 1


async def test_unusable_offsets_fall_back_to_a_fresh_connection(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        rec = Recorder(sio)
        for bad in ("zz", "ffffffffff", 12, "", "1" * 40):
            first = await opened(sio, nursery)
            reply = await first.connect(auth=RECOVER)
            await sio.emit("m", 1, to=reply["sid"])
            await first.recv()
            first.conn.transport_lost()
            second = await opened(sio, nursery)
            fresh = await second.connect(auth={"pid": reply["pid"], "offset": bad})
            assert fresh["sid"] != reply["sid"], bad
            assert "pid" not in fresh  # this one did not opt in again
        await trio.sleep(0.1)
        # Each abandoned ghost was let go at once, not after its grace.
        assert [reason for _, reason, _ in rec.disconnects] == ["transport close"] * 5


async def test_acknowledged_events_leave_the_buffer(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, ping_interval_s=1, ping_timeout_s=5)
        first = await opened(sio, nursery)
        reply = await first.connect(auth=RECOVER)
        await sio.emit("m", 1)
        await first.recv()
        await trio.sleep(1.5)  # a ping went after the event and its pong came back
        first.conn.transport_lost()
        second = await opened(sio, nursery)
        # Resuming from before the acknowledged event cannot be honoured any more.
        fresh = await second.connect(auth={**RECOVER, "pid": reply["pid"]})
        assert fresh["sid"] != reply["sid"]


async def test_buffer_overflow_while_away_ends_the_ghost(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, recovery_buffer=3, grace_s=30)
        rec = Recorder(sio)
        first = await opened(sio, nursery)
        reply = await first.connect(auth=RECOVER)
        first.conn.transport_lost()
        for n in range(4):
            sio.emit_nowait("m", n)
        await trio.sleep(0.1)
        assert [(sid, reason) for sid, reason, _ in rec.disconnects] == [
            (reply["sid"], "transport close")
        ]


async def test_slow_client_resumes_with_everything(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery, outbox_size=2, recovery_buffer=10)
        rec = Recorder(sio)
        first = await opened(sio, nursery)
        reply = await first.connect(auth=RECOVER)
        first.pause()
        await sio.emit("m", 0)  # taken by the writer, which then blocks sending it
        await trio.sleep(0.1)
        for n in range(1, 4):
            sio.emit_nowait("m", n)
        await trio.sleep(0.1)
        assert first.conn.closed
        second = await opened(sio, nursery)
        again = await second.connect(auth={**RECOVER, "pid": reply["pid"]})
        assert again["sid"] == reply["sid"]
        assert [event(await second.recv())[1] for _ in range(4)] == [0, 1, 2, 3]
        assert [(sid, reason) for sid, reason, _ in rec.disconnects] == [
            (reply["sid"], "slow client")
        ]
        assert sio.stats()["slow_disconnects"] == 1


async def test_merged_events_replay_merged(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)

        def merge(earlier: str, later: str) -> str:
            return earlier + later

        sio.set_outbox_merger(merge)
        first = await opened(sio, nursery)
        reply = await first.connect(auth=RECOVER)
        first.conn.transport_lost()
        for part in "abc":
            sio.emit_nowait("chunk", part)
        second = await opened(sio, nursery)
        await second.connect(auth={**RECOVER, "pid": reply["pid"], "offset": reply["offset"]})
        merged = event(await second.recv())
        assert merged[:2] == ["chunk", "abc"]
        await sio.emit("chunk", "d")
        following = event(await second.recv())
        assert int(merged[2], 16) < int(following[2], 16)


async def test_connects_and_disconnects_pair_up_when_the_transport_dies_early(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        sio = await start_server(nursery)
        log: list[tuple[str, str]] = []

        @sio.on("connect")
        async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
            log.append(("connect", sid))
            await trio.sleep(1)

        @sio.on("disconnect")
        async def disconnect(sid: str, reason: str) -> None:
            log.append((reason, sid))

        for auth in (None, RECOVER):
            client = await opened(sio, nursery)
            await client.send("40" + json.dumps(auth) if auth else "40")
            await trio.sleep(0.5)
            client.conn.transport_lost()
            await trio.sleep(1)
        first, second = log[0][1], log[2][1]
        assert log == [
            ("connect", first),
            ("transport close", first),
            ("connect", second),
            ("transport close", second),
        ]
        assert sio.stats()["connected"] == sio.stats()["ghosts"] == 0
