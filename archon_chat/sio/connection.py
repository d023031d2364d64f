"""The trio shell around one Engine.IO session, and the Socket.IO sockets on it.

A :class:`Connection` owns an :class:`~archon_chat.protocol.engineio.EngineSession` and a
:class:`~archon_chat.protocol.socketio.SocketIOConnection`. Transports feed it what arrives
(``receive_payload``, ``receive_frame``, probe frames) and take what is to be sent
(``poll`` for a pending GET, ``next_frames`` for the websocket writer). It is the only
place where a socket's outbox turns into frames, and it does so as late as possible: while
the writer is busy, queued events stay events, so an outbox merger can still combine them.

A :class:`Socket` is one namespace's connection (one ``sid``). It outlives its transport
when it opted in to connection state recovery: it then becomes a ghost (still a member of
its rooms, its events kept) until it resumes on a new connection or its grace ends.
Its inbox is drained, in order, by a dispatcher task that exists only while there is work.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from archon_chat.protocol.codecs import Frame
from archon_chat.protocol.engineio import (
    MAX_POLL_PACKETS,
    Closed,
    CloseReason,
    EngineSession,
    MessageReceived,
    PingSent,
    PongReceived,
    SessionState,
    Transport,
    UpgradeAborted,
    Upgraded,
)
from archon_chat.protocol.errors import MalformedPacket, ProtocolError
from archon_chat.protocol.socketio import (
    AckReceived,
    ConnectRequested,
    DisconnectRequested,
    EventReceived,
    SocketIOConnection,
)

from .outgoing import Outgoing, Packet

if TYPE_CHECKING:
    from collections import Counter

    from .asgi import RequestInfo
    from .options import ServerOptions
    from .timers import TimerWheel

__all__ = ["Connection", "Socket", "SocketHost", "SocketState"]

log = logging.getLogger("archon_chat.sio")


class SocketState(enum.Enum):
    CONNECTING = "connecting"  # the connect handler decides; outbox held
    CONNECTED = "connected"
    GHOST = "ghost"  # transport lost, waiting for recovery within the grace period
    GONE = "gone"


class SocketHost(Protocol):
    """What sockets and connections use of the server that owns them (the
    :class:`~archon_chat.sio.server.SocketIOServer`), and nothing else of it."""

    options: ServerOptions
    counters: Counter[str]
    timers: TimerWheel
    on_sent: Callable[[Outgoing], None] | None

    @property
    def serving(self) -> bool: ...

    def spawn(self, fn: Callable[[], Awaitable[None]], name: str) -> None: ...

    def merge(self, prev: Outgoing, new: Outgoing) -> Outgoing | None: ...

    def outbox_overflow(self, sock: Socket) -> None: ...

    async def run_job(self, sock: Socket, job: Job) -> None: ...

    def connect_requested(self, conn: Connection, namespace: str, auth: Any) -> None: ...

    def connect_settled(self, conn: Connection) -> None: ...

    def socket_lost(self, sock: Socket, reason: CloseReason) -> None: ...

    def remove_socket(self, sock: Socket, reason: CloseReason) -> None: ...

    def connection_closed(self, conn: Connection, reason: CloseReason) -> None: ...


@dataclass(slots=True)
class ConnectJob:
    auth: Any
    resume_from: int | None  # offset the client has, when this CONNECT recovers a socket
    # (pid, offset) of a socket another process may hand over; the socket is registered
    # only once that is settled
    adopt: tuple[str, str | None] | None = None
    opted_in: bool = False  # whether a socket that is not adopted gets recovery


@dataclass(slots=True)
class EventJob:
    event: str
    args: tuple[Any, ...]
    ack_id: int | None


@dataclass(slots=True)
class DisconnectJob:
    reason: CloseReason


Job = ConnectJob | EventJob | DisconnectJob


class PendingCall:
    __slots__ = ("done", "failed", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: tuple[Any, ...] = ()
        self.failed = False


class Socket:
    """One ``sid`` in one namespace (see the module docstring)."""

    __slots__ = (
        "accepted",
        "ack_seq",
        "calls",
        "conn",
        "connected_once",
        "dispatching",
        "floor",
        "foreign_offset",
        "ghost_deadline",
        "held",
        "inbox",
        "initial_offset",
        "log",
        "lost_reason",
        "namespace",
        "outbox",
        "pid",
        "ping_mark",
        "sent_offset",
        "server",
        "sid",
        "space",
        "state",
        "timer_at",
    )

    def __init__(
        self, server: SocketHost, sid: str, namespace: str, conn: Connection, offset: int
    ) -> None:
        self.server = server
        self.sid = sid
        self.namespace = namespace
        self.conn: Connection | None = conn
        self.state = SocketState.CONNECTING
        # accepted: the application was told "connect" and is owed a "disconnect".
        self.accepted = False
        self.connected_once = False
        self.held = True
        self.outbox: list[Outgoing | Packet] = []  # short; a deque costs 760 bytes empty
        self.inbox: deque[Job] | None = None
        self.dispatching = False
        self.space: trio.Event | None = None
        self.ack_seq = 0
        self.calls: dict[int, PendingCall] | None = None
        self.lost_reason: CloseReason | None = None
        self.ghost_deadline: float | None = None
        self.timer_at: float | None = None
        # Connection state recovery (only when pid is set): offsets are the server's emit
        # counter; every event logged here has been handed to a transport, oldest first.
        self.pid: str | None = None
        self.log: deque[Outgoing] | None = None
        self.initial_offset = offset
        self.floor = offset  # events up to this offset may be missing from the log
        self.sent_offset = offset  # offset of the newest logged event
        self.ping_mark = offset
        # The offset the client held when this process adopted the socket from another:
        # until it gets one of ours, it resumes from there with that one.
        self.foreign_offset: str | None = None

    @property
    def recoverable(self) -> bool:
        return self.pid is not None

    @property
    def connecting(self) -> bool:
        # A property, not an inline comparison: the state changes across handlers' awaits.
        return self.state is SocketState.CONNECTING

    # -- outbox ----------------------------------------------------------------------------

    def push(self, item: Outgoing | Packet) -> None:
        """Queue ``item``; merge it into the outbox tail when the server's merger says so.

        A ghost that cannot be recovered (it did not opt in) only keeps its room
        memberships for the grace period: what is emitted to it meanwhile is dropped.
        """
        state = self.state
        if state is SocketState.GONE or (state is SocketState.GHOST and self.pid is None):
            return
        box = self.outbox
        if box and isinstance(item, Outgoing):
            prev = box[-1]
            if isinstance(prev, Outgoing):
                merged = self.server.merge(prev, item)
                if merged is not None:
                    box[-1] = merged
                    return
        box.append(item)
        limit = (
            self.server.options.outbox_size
            if state is SocketState.CONNECTED
            else self.server.options.recovery_buffer
        )
        if len(box) > limit:
            self.server.outbox_overflow(self)
        elif self.conn is not None and not self.held:
            self.conn.wake()

    def drop_queued(self, unwanted: Callable[[Outgoing], bool]) -> int:
        """Remove the events not yet handed to the transport for which ``unwanted`` is
        true; how many were removed. Not a checkpoint."""
        box = self.outbox
        kept = [item for item in box if isinstance(item, Packet) or not unwanted(item)]
        dropped = len(box) - len(kept)
        if dropped:
            self.outbox = kept
        return dropped

    def log_sent(self, item: Outgoing) -> None:
        assert self.log is not None
        self.log.append(item)
        self.sent_offset = item.offset
        if len(self.log) > self.server.options.recovery_buffer:
            self.floor = self.log.popleft().offset

    def trim_acknowledged(self) -> None:
        """A pong came back: the client has everything sent before our ping."""
        log_ = self.log
        if log_ is None:
            return
        while log_ and log_[0].offset <= self.ping_mark:
            log_.popleft()
        if self.ping_mark > self.floor:
            self.floor = self.ping_mark

    def resume_offset(self, raw: Any) -> int | None:
        """The offset a recovery may resume from, or ``None`` if it cannot be honoured."""
        if self.state not in (SocketState.CONNECTED, SocketState.GHOST):
            return None
        if raw is None or raw == self.foreign_offset:
            offset = self.initial_offset
        elif isinstance(raw, str) and 0 < len(raw) <= 16:
            try:
                offset = int(raw, 16)
            except ValueError:
                return None
        else:
            return None
        if offset < self.floor or offset > self.sent_offset:
            return None
        return offset

    def take_replay(self, offset: int) -> list[Outgoing]:
        """Logged events after ``offset``, oldest first; they leave the log (resent, relogged)."""
        replay: list[Outgoing] = []
        log_ = self.log
        if log_ is not None:
            while log_ and log_[-1].offset > offset:
                replay.append(log_.pop())
            replay.reverse()
        self.sent_offset = offset
        self.ping_mark = min(self.ping_mark, offset)
        return replay

    # -- inbox -----------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        if not self.server.serving:
            return
        if self.inbox is None:
            self.inbox = deque()
        self.inbox.append(job)
        if not self.dispatching:
            self.dispatching = True
            self.server.spawn(self._dispatch, f"sio-socket-{self.sid}")

    async def _dispatch(self) -> None:
        try:
            inbox = self.inbox
            assert inbox is not None
            while inbox:
                job = inbox.popleft()
                if self.space is not None and len(inbox) <= self.server.options.inbox_size:
                    self.space.set()
                    self.space = None
                await self.server.run_job(self, job)
        finally:
            self.dispatching = False
            if self.space is not None:
                self.space.set()
                self.space = None
            if not self.inbox:
                self.inbox = None

    async def wait_for_space(self) -> None:
        while (
            self.inbox is not None
            and len(self.inbox) > self.server.options.inbox_size
            and self.dispatching
        ):
            if self.space is None:
                self.space = trio.Event()
            await self.space.wait()

    def next_ack_id(self) -> int:
        self.ack_seq += 1
        return self.ack_seq

    def fail_calls(self) -> None:
        if self.calls:
            for call in self.calls.values():
                call.failed = True
                call.done.set()
            self.calls = None

    # -- timer (grace of a ghost) ----------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.ghost_deadline if self.state is SocketState.GHOST else None

    def on_timer(self, now: float) -> None:
        if (
            self.state is SocketState.GHOST
            and self.ghost_deadline is not None
            and now >= self.ghost_deadline
        ):
            self.server.remove_socket(self, self.lost_reason or CloseReason.TRANSPORT_CLOSE)


class Connection:
    """One Engine.IO session and its sockets (see the module docstring)."""

    __slots__ = (
        "_probe_scope",
        "_wakeup",
        "address",
        "connect_deadline",
        "eio",
        "info",
        "server",
        "sid",
        "sio",
        "sockets",
        "timer_at",
        "ws_scope",
    )

    def __init__(
        self,
        server: SocketHost,
        eio: EngineSession,
        info: RequestInfo,
        address: str = "?",
    ) -> None:
        self.server = server
        self.sid = eio.sid
        self.eio = eio
        self.sio = SocketIOConnection(
            server.options.max_attachments, server.options.max_attachment_bytes
        )
        # Until a namespace is accepted (or the session closes): a peer that never
        # connects is closed then. The server counts such sessions per ``address``.
        self.connect_deadline: float | None = trio.current_time() + server.options.connect_timeout_s
        self.address = address
        self.info = info
        self.sockets: dict[str, Socket] = {}
        self.timer_at: float | None = None
        self.ws_scope: trio.CancelScope | None = None
        self._probe_scope: trio.CancelScope | None = None
        self._wakeup: trio.Event | None = None

    @property
    def closed(self) -> bool:
        return self.eio.state is SessionState.CLOSED

    @property
    def upgraded(self) -> bool:
        return self.eio.transport is Transport.WEBSOCKET

    # -- waking the writer -----------------------------------------------------------------

    def wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def _wait(self) -> None:
        if self._wakeup is None:
            self._wakeup = trio.Event()
        await self._wakeup.wait()

    # -- input -----------------------------------------------------------------------------

    async def receive_payload(self, body: bytes) -> None:
        """A polling POST body. Raises :class:`ProtocolError` (the session is then closed)."""
        try:
            self.eio.receive_payload(body, trio.current_time())
            self.process()
        except ProtocolError as exc:
            self.fault(exc)
            raise
        await self._backpressure()

    async def receive_frame(self, frame: Frame) -> None:
        """A websocket message. Raises :class:`ProtocolError` (the session is then closed)."""
        try:
            self.eio.receive_frame(frame, trio.current_time())
            self.process()
        except ProtocolError as exc:
            self.fault(exc)
            raise
        await self._backpressure()

    async def _backpressure(self) -> None:
        for sock in tuple(self.sockets.values()):
            await sock.wait_for_space()

    def fault(self, exc: ProtocolError) -> None:
        """Close after a peer fault, logged once per connection."""
        if self.closed:
            return
        exc.logged = True
        log.info("closing Engine.IO session %s: %s", self.sid, exc.detail)
        malformed = isinstance(exc, MalformedPacket)
        self.eio.fail(CloseReason.PARSE_ERROR if malformed else CloseReason.TRANSPORT_ERROR)
        self.process()

    def transport_lost(self, reason: CloseReason = CloseReason.TRANSPORT_CLOSE) -> None:
        """The websocket (or its TCP connection) is gone."""
        if not self.closed:
            self.eio.fail(reason)
            self.process()

    def close(self, reason: CloseReason) -> None:
        """Close from our side (the peer is told with a CLOSE packet)."""
        if not self.closed:
            self.eio.close(reason)
            self.process()

    def cut(self, reason: CloseReason) -> None:
        """Drop the transport at once, without flushing (a slow client)."""
        if not self.closed:
            self.eio.fail(reason)
            self.process()
        if self.ws_scope is not None:
            self.ws_scope.cancel()

    def process(self) -> None:
        """Handle what the Engine.IO session reported; wake the writer if needed.

        Raises :class:`ProtocolError` for a bad Socket.IO packet.
        """
        eio = self.eio
        while events := eio.events():
            for ev in events:
                if isinstance(ev, MessageReceived):
                    self._on_message(ev.data)
                elif isinstance(ev, PingSent):
                    # Its pong will acknowledge everything handed to the transport so far.
                    for sock in self.sockets.values():
                        sock.ping_mark = sock.sent_offset
                elif isinstance(ev, PongReceived):
                    for sock in self.sockets.values():
                        sock.trim_acknowledged()
                elif isinstance(ev, Upgraded):
                    self.wake()
                elif isinstance(ev, UpgradeAborted):
                    self.cancel_probe()
                elif isinstance(ev, Closed):
                    self.server.connection_closed(self, ev.reason)
                    self.cancel_probe()
        if eio.has_output or self.closed:
            self.wake()
        self.server.timers.schedule(self)

    def _on_message(self, data: Frame) -> None:
        sio = self.sio
        sio.receive_message(data)
        server = self.server
        for ev in sio.events():
            server.counters["packets_in"] += 1
            if isinstance(ev, EventReceived):
                sock = self.sockets.get(ev.namespace)
                if sock is not None:
                    sock.enqueue(EventJob(ev.event, ev.args, ev.ack_id))
            elif isinstance(ev, AckReceived):
                sock = self.sockets.get(ev.namespace)
                if sock is not None and sock.calls:
                    call = sock.calls.pop(ev.ack_id, None)
                    if call is not None:
                        call.result = ev.args
                        call.done.set()
            elif isinstance(ev, ConnectRequested):
                server.connect_requested(self, ev.namespace, ev.auth)
            elif isinstance(ev, DisconnectRequested):
                sock = self.sockets.get(ev.namespace)
                if sock is not None:
                    server.socket_lost(sock, CloseReason.CLIENT_NAMESPACE_DISCONNECT)

    # -- timer -----------------------------------------------------------------------------

    @property
    def has_connected(self) -> bool:
        """Whether a namespace of this session was ever accepted (or it is closed)."""
        return self.connect_deadline is None

    def next_deadline(self) -> float | None:
        deadline = self.eio.next_deadline()
        if self.connect_deadline is None:
            return deadline
        return self.connect_deadline if deadline is None else min(deadline, self.connect_deadline)

    def on_timer(self, now: float) -> None:
        if self.connect_deadline is not None and now >= self.connect_deadline:
            log.info("closing Engine.IO session %s: no Socket.IO CONNECT in time", self.sid)
            self.server.counters["connect_timeouts"] += 1
            self.server.connect_settled(self)
            self.close(CloseReason.CONNECT_TIMEOUT)
            return
        self.eio.handle_timeout(now)
        self.process()

    # -- output ----------------------------------------------------------------------------

    def send_now(self, frames: tuple[Frame, ...] | list[Frame]) -> None:
        """Queue protocol frames ahead of every outbox (CONNECT_ERROR, DISCONNECT)."""
        self.eio.send_frames(frames)
        self.wake()

    def flush_socket(self, sock: Socket) -> None:
        """Move everything ``sock`` has queued to the Engine.IO queue."""
        self._drain(sock, None)

    def _fill(self, limit: int | None) -> None:
        for sock in tuple(self.sockets.values()):
            if not sock.held and sock.outbox:
                self._drain(sock, limit)

    def _drain(self, sock: Socket, limit: int | None) -> None:
        eio = self.eio
        box = sock.outbox
        if limit is None:
            taken, sock.outbox = box, []
        else:
            taken = box[: max(0, limit - eio.queued)]
            del box[: len(taken)]
        counters = self.server.counters
        recoverable = sock.recoverable
        for item in taken:
            if isinstance(item, Packet):
                eio.send_frames(item.frames)
            else:
                try:
                    frames = item.frames_with_offset() if recoverable else item.frames()
                except (TypeError, ValueError):
                    log.exception("cannot encode %r for sid %s; dropped", item, sock.sid)
                    continue
                eio.send_frames(frames)
                if recoverable:
                    sock.log_sent(item)
                if not item.handed:
                    item.handed = True
                    on_sent = self.server.on_sent
                    if on_sent is not None:
                        on_sent(item)
            counters["packets_out"] += 1

    def take_handshake(self) -> bytes:
        """The body answering the polling handshake (the OPEN packet)."""
        body = self.eio.take_poll()
        assert body is not None
        return body

    async def poll(self) -> bytes:
        """Wait for the body of a GET poll.

        Raises :class:`ProtocolError` for an overlapping poll or a poll on a session that
        has moved to websocket. Cancellation leaves the session as it was.
        """
        try:
            self.eio.begin_poll()
        except ProtocolError:
            self.process()
            raise
        try:
            while True:
                if self.eio.transport is Transport.POLLING:
                    self._fill(MAX_POLL_PACKETS)
                body = self.eio.take_poll()
                if body is not None:
                    return body
                await self._wait()
        except BaseException:
            self.eio.cancel_poll()
            raise

    async def next_frames(self) -> list[Frame] | None:
        """Wait for frames for the websocket; ``None`` once the session is closed and flushed."""
        eio = self.eio
        while True:
            if eio.transport is Transport.WEBSOCKET:
                self._fill(None)
                frames = eio.take_frames()
                if frames:
                    return frames
            if eio.state is SessionState.CLOSED:
                return None
            await self._wait()

    # -- upgrade ---------------------------------------------------------------------------

    def begin_upgrade(self) -> None:
        """Raises :class:`ProtocolError` if this session cannot upgrade now."""
        self.eio.begin_upgrade(trio.current_time())
        self.server.timers.schedule(self)

    def open_probe(self) -> trio.CancelScope:
        """The cancel scope the probe runs in; cancelled if the upgrade is aborted."""
        self._probe_scope = trio.CancelScope()
        return self._probe_scope

    def cancel_probe(self) -> None:
        if self._probe_scope is not None:
            self._probe_scope.cancel()
            self._probe_scope = None

    def take_probe_frames(self) -> list[Frame]:
        return self.eio.take_probe_frames()

    def receive_probe_frame(self, frame: Frame) -> None:
        """Raises :class:`ProtocolError`; the caller then calls :meth:`abort_upgrade`."""
        self.eio.receive_probe_frame(frame, trio.current_time())
        self.process()

    def abort_upgrade(self) -> None:
        self.eio.abort_upgrade()
        self._probe_scope = None
        self.process()
