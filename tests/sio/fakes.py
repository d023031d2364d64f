"""An in-memory Socket.IO client that drives the server's connections without sockets.

It plays the part of the websocket transport: one task takes what the server's writer
would send (``next_frames``) and files it, and the test feeds frames in with ``send``.
Pure trio, so tests using it may run on the autojump clock.
"""

from __future__ import annotations

import json
import math
from typing import Any

import trio

from archon_chat.protocol.codecs import Frame
from archon_chat.protocol.engineio import Transport
from archon_chat.sio import ServerOptions, SocketIOServer
from archon_chat.sio.asgi import RequestInfo
from archon_chat.sio.connection import Connection

from ..derived import derived


async def start_server(nursery: trio.Nursery, **options: Any) -> SocketIOServer:
    sio = SocketIOServer(derived(ServerOptions, **options))
    await nursery.start(sio.serve)
    return sio


class FakeClient:
    """One Engine.IO session over a pretend websocket."""

    def __init__(self, sio: SocketIOServer, nursery: trio.Nursery, *, answer_pings: bool = True):
        self.sio = sio
        self.answer_pings = answer_pings
        info = RequestInfo(
            raw_headers=[(b"user-agent", b"fake"), (b"x-twice", b"1"), (b"x-twice", b"2")],
            query={"EIO": "4", "k": "v"},
            remote_addr="10.0.0.1",
        )
        self.conn: Connection = sio.open_connection(Transport.WEBSOCKET, info)
        self._inbox_send, self._inbox = trio.open_memory_channel[Frame](math.inf)
        self._flowing = trio.Event()
        self._flowing.set()
        self.closed = trio.Event()
        nursery.start_soon(self._writer)

    def pause(self) -> None:
        """Stop the pretend network: the writer's next batch blocks as in a full send."""
        self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    async def _writer(self) -> None:
        while True:
            frames = await self.conn.next_frames()
            if frames is None:
                break
            await self._flowing.wait()
            for frame in frames:
                if frame == "2" and self.answer_pings:
                    await self.conn.receive_frame("3")
                    continue
                self._inbox_send.send_nowait(frame)
        self.closed.set()
        self._inbox_send.close()

    async def send(self, frame: Frame) -> None:
        await self.conn.receive_frame(frame)

    async def recv(self) -> Frame:
        return await self._inbox.receive()

    def pending(self) -> list[Frame]:
        out: list[Frame] = []
        while True:
            try:
                out.append(self._inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return out

    async def handshake(self) -> dict[str, Any]:
        frame = await self.recv()
        assert isinstance(frame, str) and frame[0] == "0"
        return dict(json.loads(frame[1:]))

    async def connect(self, namespace: str = "/", auth: Any = None) -> dict[str, Any]:
        """CONNECT and return the reply's data (raises AssertionError on CONNECT_ERROR)."""
        prefix = "" if namespace == "/" else f"{namespace},"
        await self.send("40" + prefix + ("" if auth is None else json.dumps(auth)))
        reply = await self.recv()
        assert isinstance(reply, str)
        assert reply.startswith("40" + prefix), reply
        return dict(json.loads(reply[2 + len(prefix) :]))

    async def emit(self, event: str, *args: Any, ack: int | None = None) -> None:
        ack_part = "" if ack is None else str(ack)
        await self.send("42" + ack_part + json.dumps([event, *args], separators=(",", ":")))

    async def recv_event(self) -> list[Any]:
        frame = await self.recv()
        assert isinstance(frame, str) and frame.startswith("42"), frame
        return list(json.loads(frame[2:]))
