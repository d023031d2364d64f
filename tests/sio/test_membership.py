"""Room membership as the single record of who watches: sockets in their grace period,
explicit leaves, and the room listener. Pure trio, on the autojump clock.
Ceiling: ``trio.fail_after(600)`` of virtual time per test.
"""

from __future__ import annotations

import trio
from trio.testing import MockClock

from archon_chat.sio import SocketIOServer

from .fakes import FakeClient, start_server


async def joined(sio: SocketIOServer, nursery: trio.Nursery, room: str) -> tuple[FakeClient, str]:
    client = FakeClient(sio, nursery)
    await client.handshake()
    sid = (await client.connect())["sid"]
    sio.enter_room(sid, room)
    return client, sid


def recording(sio: SocketIOServer) -> list[tuple[str, float]]:
    vacated: list[tuple[str, float]] = []
    sio.set_room_listener(lambda namespace, room: vacated.append((room, trio.current_time())))
    return vacated


async def test_a_dropped_socket_stays_a_member_for_its_grace(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(600):
        sio = await start_server(nursery, grace_s=30, ping_interval_s=100, ping_timeout_s=100)
        vacated = recording(sio)
        client, sid = await joined(sio, nursery, "r")
        start = trio.current_time()
        client.conn.transport_lost()
        await trio.sleep(29.999)
        assert sio.room_members("r") == {sid}
        assert sio.stats()["ghosts"] == 1
        await sio.emit("while_away", 1, room="r")  # dropped: this socket cannot be recovered
        await trio.sleep(0.002)
        assert sio.room_members("r") == set()
        assert vacated == [("r", start + 30)]


async def test_leave_reports_the_last_connected_member_even_with_members_in_grace(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(600):
        sio = await start_server(nursery, grace_s=30, ping_interval_s=100, ping_timeout_s=100)
        vacated = recording(sio)
        away, away_sid = await joined(sio, nursery, "r")
        _, a = await joined(sio, nursery, "r")
        _, b = await joined(sio, nursery, "r")
        away.conn.transport_lost()
        assert sio.leave_room(a, "r") is False  # b is still connected
        assert sio.leave_room(a, "r") is False  # not a member any more
        assert sio.leave_room(b, "r") is True  # only a socket in its grace is left
        assert sio.room_members("r") == {away_sid}
        await trio.sleep(31)
        # The room emptied when the grace ended: the listener hears it once.
        assert [room for room, _ in vacated] == ["r"]


async def test_server_disconnect_ends_memberships_at_once(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(600):
        sio = await start_server(nursery, grace_s=30)
        vacated = recording(sio)
        _, sid = await joined(sio, nursery, "r")
        await sio.disconnect(sid)
        assert vacated == [("r", trio.current_time())]
        assert sio.room_members("r") == set()


async def test_a_drop_while_an_expiry_is_handled_is_not_lost(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    """The listener of one expiry drops another socket: its grace still runs out on time."""
    with trio.fail_after(600):
        sio = await start_server(nursery, grace_s=10, ping_interval_s=100, ping_timeout_s=100)
        first, _ = await joined(sio, nursery, "one")
        second, _ = await joined(sio, nursery, "two")
        vacated: list[tuple[str, float]] = []

        def listener(namespace: str, room: str) -> None:
            vacated.append((room, trio.current_time()))
            if room == "one":
                second.conn.transport_lost()

        sio.set_room_listener(listener)
        start = trio.current_time()
        first.conn.transport_lost()
        await trio.sleep(25)
        assert vacated == [("one", start + 10), ("two", start + 20)]


async def test_a_thousand_drops_expire_together_in_one_grace(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(600):
        sio = await start_server(
            nursery, grace_s=10, ping_interval_s=500, ping_timeout_s=500, handshakes_per_minute=0
        )
        vacated = recording(sio)
        clients = [await joined(sio, nursery, f"room-{n}") for n in range(1000)]
        start = trio.current_time()
        for client, _ in clients:
            client.conn.transport_lost()
        # One timer entry per ghost (and per connection): no rescans.
        assert len(sio.timers) <= 2 * len(clients)
        assert sio.stats()["ghosts"] == 1000
        await trio.sleep(10.5)
        assert len(vacated) == 1000
        assert {at for _, at in vacated} == {start + 10}
        assert sio.stats()["ghosts"] == 0


async def test_drop_queued_removes_only_unsent_matching_events(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    with trio.fail_after(600):
        sio = await start_server(nursery)
        client, _ = await joined(sio, nursery, "r")
        client.pause()
        for n in range(3):
            sio.emit_nowait("chunk", n, room="r")
        sio.emit_nowait("other", 9, room="r")
        assert sio.drop_queued("r", lambda item: item.event == "chunk") == 3
        client.resume()
        assert await client.recv() == '42["other",9]'
