"""Random frames at the trio server, through the in-memory client.

Whatever a client sends (random packets, CONNECT payloads with odd ``pid``/``offset``
values, events for any namespace), only a ProtocolError reaches the transport, the server
keeps serving, and a well-behaved neighbour is unaffected. Each example runs its own
``trio.run`` on an autojump clock, under ``trio.fail_after(60)`` of virtual time.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archon_chat.protocol.errors import ProtocolError
from archon_chat.sio import ConnectInfo, SocketIOServer

from .fakes import FakeClient, start_server

odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
auths = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={"recover": odd, "pid": odd, "offset": odd, "token": odd}),
)


def connect_frame(namespace: str, auth: Any) -> str:
    prefix = "" if namespace == "/" else f"{namespace},"
    return "40" + prefix + ("" if auth is None else json.dumps(auth))


frames = st.one_of(
    st.builds(connect_frame, st.sampled_from(["/", "/admin", "/nope"]), auths),
    st.builds(
        lambda ns, ack, args: f"42{ns}{ack}" + json.dumps(["echo", *args]),
        st.sampled_from(["", "/admin,"]),
        st.sampled_from(["", "1", "99"]),
        st.lists(odd, max_size=3),
    ),
    st.sampled_from(["41", "41/admin,", "3", "2", "1", "6", "431[1]", '451-["echo",{}]']),
    st.text(max_size=30).map(lambda t: "4" + t),
    st.binary(max_size=8),
)


async def scenario(sent: list[Any]) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sio = await start_server(nursery, ping_interval_s=1, ping_timeout_s=1, grace_s=2)
            install(sio)
            neighbour = FakeClient(sio, nursery)
            await neighbour.handshake()
            await neighbour.connect()
            fuzzer = FakeClient(sio, nursery)
            await fuzzer.handshake()
            for frame in sent:
                if fuzzer.conn.closed:
                    break
                try:
                    await fuzzer.send(frame)
                except ProtocolError:
                    assert fuzzer.conn.closed
            await trio.sleep(5)  # heartbeats, graces and handlers all run their course
            await neighbour.emit("echo", "still", ack=7)
            while not isinstance(frame := await neighbour.recv(), str) or frame[:2] != "43":
                pass  # pings, and what the fuzzer's echoes broadcast to the room
            assert frame == '437["still"]'
            nursery.cancel_scope.cancel()


def install(sio: SocketIOServer) -> None:
    sio.register_namespace("/admin")

    @sio.on("connect")
    async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
        sio.enter_room(sid, "all")

    @sio.on("echo")
    async def echo(sid: str, *args: Any) -> Any:
        await sio.emit("seen", list(args), room="all", skip_sid=sid)
        return args


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(frames, max_size=25))
def test_random_frames_never_hurt_the_server(sent: list[Any]) -> None:
    trio.run(scenario, sent, clock=trio.testing.MockClock(autojump_threshold=0))
