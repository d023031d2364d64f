"""A lean Socket.IO v5 client over Engine.IO v4 websocket, for the load generator.

It speaks just what the benchmark needs, by hand, so that a generator process can carry
thousands of clients: the websocket transport only (no polling, no upgrade), the default
namespace, text packets. The Engine.IO OPEN packet ``0{...}`` comes first; the client
answers with a Socket.IO CONNECT ``40`` and waits for the server's ``40{"sid"}``; pings
``2`` are answered ``3`` at once by the reader; events ``42[name, data]`` (and acks
``43<id>[...]``) go to the client's :class:`Turn` when one runs. Both payload shapes are
handled: ours (with ``session_id`` and ``seq``; events whose seq was already seen are
dropped, as design.md section 3 asks of clients) and the seed's (no seq).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any, cast

import trio
import trio_websocket

from bench.mock_agent import MARKER

RESOURCE = "/socket.io/?EIO=4&transport=websocket"
#: a merged frame of a long reply can be large; the server's maxPayload bounds it anyway
MAX_MESSAGE = 64 * 1024 * 1024


def encode_event(name: str, data: Any, ack_id: int | None = None) -> str:
    ack = "" if ack_id is None else str(ack_id)
    return f"42{ack}{json.dumps([name, data], separators=(',', ':'))}"


def decode_packet(message: str) -> tuple[str, int | None, list[Any]]:
    """Socket.IO packet type (``"event"``, ``"ack"``, ``"connect"``, ``"connect_error"``,
    ``"disconnect"``), ack id and arguments of one Engine.IO MESSAGE (``4...``)."""
    kind = message[1:2]
    rest = message[2:]
    if kind in ("2", "3"):
        digits = 0
        while digits < len(rest) and rest[digits].isdigit():
            digits += 1
        ack_id = int(rest[:digits]) if digits else None
        args = json.loads(rest[digits:])
        return ("event" if kind == "2" else "ack"), ack_id, args
    if kind == "0":
        return "connect", None, [json.loads(rest)] if rest else []
    if kind == "4":
        return "connect_error", None, [json.loads(rest)] if rest else []
    if kind == "1":
        return "disconnect", None, []
    return "unknown", None, []


@dataclass
class Turn:
    """What one client saw of one agent reply."""

    token: str
    n: int
    tag: str = "x"
    #: stop when this many distinct chunks arrived (stop / leave / drop modes)
    threshold: int = 0
    sent_at: float = 0.0
    first_chunk_at: float | None = None
    completed_at: float | None = None
    status: str | None = None
    counts: bytearray = field(default_factory=bytearray)
    distinct: int = 0
    duplicates: int = 0
    frames: int = 0
    stale_events: int = 0
    #: chunks of another reply (a late one) seen during this one
    foreign: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    #: set once the stop was acknowledged; chunks after it are counted in after_stop
    stop_acked: bool = False
    stop_ack_id: int | None = None
    slow: bool = False
    #: a session of the watched share (slow in one run, reading at full speed in the other)
    heavy: bool = False
    #: the reply's text as received (chunk contents after seq de-duplication), hashed;
    #: only kept when asked (``keep_text``), since hashing costs the generator CPU
    keep_text: bool = False
    text: Any = None
    #: SHA-256 of the content of the agent's final ``message`` (live or replayed)
    message_sha256: str | None = None
    #: the server cut the connection during the reply; then whether the rejoin confirmed
    cut: bool = False
    resumed: bool = False
    after_stop: int = 0
    after_request: int = 0
    stop_at: float | None = None
    done: trio.Event = field(default_factory=trio.Event)
    reached: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.counts = bytearray(self.n)
        if self.keep_text:
            self.text = hashlib.sha256()

    @property
    def text_sha256(self) -> str | None:
        return None if self.text is None else str(self.text.hexdigest())

    def on_chunk(self, content: str, now: float) -> None:
        self.frames += 1
        if self.text is not None:
            self.text.update(content.encode())
        if self.first_chunk_at is None:
            self.first_chunk_at = now
        for tag, index_text, sent_text in MARKER.findall(content):
            index = int(index_text)
            if tag != self.tag or not 0 <= index < self.n:
                self.foreign += 1
                continue
            if self.counts[index]:
                self.duplicates += 1
                self.counts[index] = min(255, self.counts[index] + 1)
                continue
            self.counts[index] = 1
            self.distinct += 1
            self.latencies.append(now - float(sent_text))
            if self.stop_at is not None:
                self.after_request += 1
            if self.stop_acked:
                self.after_stop += 1
        if self.threshold and self.distinct >= self.threshold:
            self.reached.set()

    @property
    def missing(self) -> int:
        return self.n - self.distinct


class ThrottledStream(trio.abc.Stream):
    """A client that reads at most ``rate`` bytes a second (a slow reader), until
    ``until`` (``trio.current_time()``) if set: then its link has recovered."""

    def __init__(self, inner: trio.SocketStream, rate: float) -> None:
        self.inner = inner
        self.rate = rate
        self.until: float | None = None
        self._next = 0.0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.until is not None and trio.current_time() >= self.until:
            return await self.inner.receive_some(max_bytes)
        data = await self.inner.receive_some(min(max_bytes or 4096, 4096))
        self._next = max(self._next, trio.current_time()) + len(data) / self.rate
        await trio.sleep_until(self._next if self.until is None else min(self._next, self.until))
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class Client:
    """One Socket.IO connection for one chat session."""

    def __init__(self, host: str, port: int, session_id: str, slow_rate: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.session_id = session_id
        self.slow_rate = slow_rate
        #: one of the watched share of sessions (see :attr:`Turn.heavy`)
        self.heavy = False
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.stream: trio.SocketStream | None = None
        #: the slow reader in front of the socket, while a slow client is connected
        self.throttle: ThrottledStream | None = None
        self.connected = trio.Event()
        self.confirmed = trio.Event()
        self.closed = trio.Event()
        self.confirmed_at: float | None = None
        self.last_seq = 0
        self.turn: Turn | None = None
        self.errors: list[str] = []
        self.acks: dict[int, trio.Event] = {}
        #: the arguments of each acknowledgement received, by ack id (read by the caller)
        self.ack_args: dict[int, list[Any]] = {}
        #: ``error`` events with code ``owner_lost`` (a cluster node died with the turn)
        self.owner_lost = 0
        #: ... of which carried a seq this client had already seen (dropped as stale)
        self.owner_lost_stale = 0
        #: the status of every ``stream_complete`` this client saw, in order
        self.completions: list[str] = []
        #: the session's second member, on another process (scenario 7's cross-node points)
        self.peer: Client | None = None
        self._next_ack = 1
        self.scope = trio.CancelScope()
        self.connected_ok = False
        #: bumped per connection, so a finished reader never touches its successor's state
        self.generation = 0

    @property
    def peek_ack_id(self) -> int:
        """The ack id the next :meth:`emit_with_ack` will use."""
        return self._next_ack

    async def connect(self, nursery: trio.Nursery, *, throttled: bool = True) -> None:
        """Open the websocket and start the reader; returns once Socket.IO connected.
        A slow client reads slowly unless ``throttled`` is false (a link that recovered).

        Raises ``OSError`` / ``trio_websocket.HandshakeError`` / ``ConnectionError``."""
        self.connected = trio.Event()
        self.confirmed = trio.Event()
        self.closed = trio.Event()
        self.scope = trio.CancelScope()
        self.connected_ok = False
        stream = await trio.open_tcp_stream(self.host, self.port)
        self.stream = stream
        transport: trio.abc.Stream = stream
        self.throttle = None
        if self.slow_rate and throttled:
            # A small receive window, so the slowness reaches the server at once.
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            transport = self.throttle = ThrottledStream(stream, self.slow_rate)
        try:
            self.ws = await trio_websocket.wrap_client_stream(
                nursery,
                # Any trio stream works; the annotation names only the stdlib ones.
                cast(trio.SocketStream, transport),
                self.host,
                RESOURCE,
                message_queue_size=1,
                max_message_size=MAX_MESSAGE,
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        self.generation += 1
        nursery.start_soon(self._reader, self.ws, self.generation)
        await self.connected.wait()
        if not self.connected_ok:
            raise ConnectionError(self.errors[-1] if self.errors else "connection closed")

    async def emit(self, name: str, data: Any) -> None:
        assert self.ws is not None
        await self.ws.send_message(encode_event(name, data))

    async def emit_with_ack(self, name: str, data: Any) -> tuple[int, trio.Event]:
        """Emit asking for an acknowledgement; the event is set when it arrives."""
        assert self.ws is not None
        ack_id = self._next_ack
        self._next_ack += 1
        event = self.acks[ack_id] = trio.Event()
        await self.ws.send_message(encode_event(name, data, ack_id))
        return ack_id, event

    async def join(self, last_seq: int | None = None) -> None:
        payload: dict[str, Any] = {"session_id": self.session_id}
        if last_seq is not None:
            payload["last_seq"] = last_seq
        await self.emit("join_chat", payload)
        await self.confirmed.wait()

    async def drop(self) -> None:
        """Lose the connection abruptly (no Socket.IO or websocket goodbye)."""
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
        self.scope.cancel()

    async def close(self) -> None:
        """Disconnect politely at the Socket.IO level (DISCONNECT), then close the TCP
        connection. No websocket closing handshake: trio-websocket answers a server ping
        that arrives while it is closing with a pong wsproto refuses, and that error ends
        the load generator (seen with uvicorn's websockets implementation)."""
        ws = self.ws
        if ws is None:
            return
        with trio.move_on_after(2):
            try:
                await ws.send_message("41")
            except trio_websocket.ConnectionClosed:
                pass
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
        self.scope.cancel()

    async def _reader(self, ws: trio_websocket.WebSocketConnection, generation: int) -> None:
        with self.scope:
            try:
                while True:
                    message = await ws.get_message()
                    if isinstance(message, str):
                        await self._on_message(ws, message)
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                if generation == self.generation:
                    self._lost()

    def _lost(self) -> None:
        self.closed.set()
        self.connected.set()
        self.confirmed.set()
        if self.turn is not None:
            self.turn.done.set()
            self.turn.reached.set()

    async def _on_message(self, ws: trio_websocket.WebSocketConnection, message: str) -> None:
        now = time.monotonic()
        head = message[:1]
        if head == "4":
            kind, ack_id, args = decode_packet(message)
            if kind == "event" and args:
                self._on_event(str(args[0]), args[1] if len(args) > 1 else None, now)
            elif kind == "ack" and ack_id is not None:
                done = self.acks.pop(ack_id, None)
                if done is not None:
                    self.ack_args[ack_id] = args
                if self.turn is not None and self.turn.stop_ack_id == ack_id:
                    self.turn.stop_acked = True
                if done is not None:
                    done.set()
            elif kind == "connect":
                self.connected_ok = True
                self.connected.set()
            elif kind == "connect_error":
                self.errors.append(f"connect_error {args}")
                self.connected.set()
            elif kind == "disconnect":
                self.errors.append("disconnected by server")
                await ws.aclose()
        elif head == "2":
            await ws.send_message("3")
        elif head == "0":
            await ws.send_message("40")
        elif head == "1":
            await ws.aclose()

    def _on_event(self, name: str, data: Any, now: float) -> None:
        payload: dict[str, Any] = data if isinstance(data, dict) else {}
        seq = payload.get("seq")
        turn = self.turn
        if name == "error" and payload.get("code") == "owner_lost":
            self.owner_lost += 1
            if isinstance(seq, int) and seq <= self.last_seq:
                self.owner_lost_stale += 1
        if isinstance(seq, int):
            if seq <= self.last_seq and name != "connection_confirmed":
                if turn is not None:
                    turn.stale_events += 1
                return
            if name != "connection_confirmed":
                self.last_seq = seq
        if name == "stream_chunk":
            if turn is not None:
                turn.on_chunk(str(payload.get("content", "")), now)
        elif name == "message":
            message = payload.get("data")
            if turn is not None and isinstance(message, dict) and message.get("sender") == "agent":
                content = str(message.get("content", ""))
                turn.message_sha256 = hashlib.sha256(content.encode()).hexdigest()
        elif name == "connection_confirmed":
            self.confirmed_at = now
            self.confirmed.set()
            if (
                turn is not None
                and turn.cut
                and turn.message_sha256 is not None
                and not payload.get("turn")
            ):
                # Resumed after the reply ended: the replay carried its final message
                # (stream events are not stored) and no turn is in progress: it is over.
                turn.done.set()
        elif name == "stream_complete":
            self.completions.append(str(payload.get("status", "complete")))
            if turn is not None:
                turn.completed_at = now
                turn.status = str(payload.get("status", "complete"))
                if turn.stop_at is not None:
                    turn.stop_acked = True
                turn.done.set()
        elif name == "error":
            code = payload.get("code") or payload.get("error") or "error"
            if turn is not None:
                turn.errors.append(str(code))
            else:
                self.errors.append(str(code))
