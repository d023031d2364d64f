"""A scripted agents service for end-to-end tests: a real HTTP/1.1 server (h11 on trio)
speaking the agents SSE contract, whose reply is chosen by the prompt.

Prompts (the first word decides):

``slow``     ten chunks ``w0 `` .. ``w9 ``, ``delay_s`` apart (default 0.05 s)
``endless``  a chunk every ``delay_s`` until the client goes away
``big``      16 KiB chunks every millisecond until the client goes away
``fail503``  HTTP 503
``garbage``  a non-JSON ``data:`` line
``truncated`` two chunks, then the stream ends without ``stream_complete``
``hang``     the headers, then silence
``agenterr`` an ``error`` event ``"the agent broke"``
otherwise    ``Echo: <prompt>`` in three chunks

Every request is recorded (its JSON body), and so is the moment the client closed its
connection (``disconnects``), so tests can assert that a cancel reached upstream;
``chunks_sent`` counts the chunks written so far, over all streams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import h11
import trio


@dataclass
class AgentsFake:
    delay_s: float = 0.05
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)  # session ids
    disconnected: trio.Event = field(default_factory=trio.Event)
    port: int = 0
    chunks_sent: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(conn, stream)
                if request is None:
                    return
                await self._respond(conn, stream, request, body)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the client went away: that is what disconnects records
        finally:
            await stream.aclose()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> tuple[h11.Request | None, bytes]:
        request = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None, b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes
    ) -> None:
        path = request.target.decode()
        if path == "/health":
            await self._send_full(conn, stream, 200, b'{"status":"ok"}')
            return
        try:
            payload = json.loads(body)
        except ValueError:
            await self._send_full(conn, stream, 400, b'{"detail":"bad json"}')
            return
        self.requests.append(payload)
        prompt = str(payload.get("prompt", ""))
        word = prompt.split(" ", 1)[0]
        if word == "fail503":
            await self._send_full(conn, stream, 503, b'{"detail":"down"}')
            return
        await stream.send_all(
            conn.send(
                h11.Response(
                    status_code=200,
                    headers=[("content-type", "text/event-stream"), ("connection", "close")],
                )
            )
            or b""
        )
        session_id = str(payload.get("session_id", ""))
        gone = trio.Event()

        async def watch_close() -> None:
            try:
                while await stream.receive_some(4096):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            gone.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_close)
            try:
                with trio.CancelScope() as scope:
                    nursery.start_soon(_cancel_when, gone, scope)
                    await self._script(conn, stream, word, prompt)
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone.set()
            finally:
                if gone.is_set():
                    self.disconnects.append(session_id)
                    self.disconnected.set()
                nursery.cancel_scope.cancel()

    async def _script(
        self, conn: h11.Connection, stream: trio.SocketStream, word: str, prompt: str
    ) -> None:
        async def event(obj: dict[str, Any]) -> None:
            await self._data(conn, stream, f"data: {json.dumps(obj)}\n\n".encode())
            if obj["type"] == "stream_chunk":
                self.chunks_sent += 1

        if word == "slow":
            for i in range(10):
                await event({"type": "stream_chunk", "content": f"w{i} "})
                await trio.sleep(self.delay_s)
            await event({"type": "stream_complete"})
        elif word == "endless":
            i = 0
            while True:
                await event({"type": "stream_chunk", "content": f"w{i} "})
                i += 1
                await trio.sleep(self.delay_s)
        elif word == "big":
            piece = "x" * 16384
            while True:
                await event({"type": "stream_chunk", "content": piece})
                await trio.sleep(0.001)
        elif word == "garbage":
            await event({"type": "stream_chunk", "content": "ok "})
            await self._data(conn, stream, b"data: {this is not json\n\n")
            await trio.sleep_forever()
        elif word == "truncated":
            await event({"type": "stream_chunk", "content": "half "})
            await event({"type": "stream_chunk", "content": "done"})
        elif word == "hang":
            await self._data(conn, stream, b": ping\n\n")
            await trio.sleep_forever()
        elif word == "agenterr":
            await event({"type": "stream_chunk", "content": "partial"})
            await event({"type": "error", "error": "the agent broke"})
        else:
            text = f"Echo: {prompt}"
            third = max(1, len(text) // 3)
            for piece in (text[:third], text[third : 2 * third], text[2 * third :]):
                await event({"type": "stream_chunk", "content": piece})
            await event({"type": "stream_complete"})

    async def _data(self, conn: h11.Connection, stream: trio.SocketStream, data: bytes) -> None:
        await stream.send_all(conn.send(h11.Data(data=data)) or b"")

    async def _send_full(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, body: bytes
    ) -> None:
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
