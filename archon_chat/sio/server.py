"""The Socket.IO server on trio: handlers, rooms, emit, acks, connection state recovery.

Handlers run in the server's own nursery (:meth:`SocketIOServer.serve`), one dispatcher task
per socket while it has work, so the events of one socket are handled in order, one at a
time. Emitting never blocks on a client: the event goes into each target socket's bounded
outbox, encoded once for all of them; a connected socket whose outbox overflows is cut as a
slow client (:attr:`CloseReason.SLOW_CLIENT`) and, if it opted in to recovery, may resume.

Every connect the application accepted is matched by exactly one disconnect, with the
reason as Socket.IO names it. Rooms are the one record of who watches: a connected socket
that goes away (its transport lost, or its client disconnecting) is reported disconnected
at once but stays a member of its rooms for the grace period (a *ghost*), unless the server
itself disconnected it. A ghost with recovery (``ServerOptions.recovery``: those whose
client sent ``auth: {"recover": true}``, every one, or none) that was lost the way
Socket.IO recovers from keeps its events; if its client comes back in time, the connect
handler runs again for the same sid with ``info.recovered`` set (and its rooms are as they
were). Other ghosts keep only their memberships. When a ghost's grace ends it leaves its
rooms silently, and the room listener hears of each room left empty.

A client may also come back to another process of a cluster: that process asks its recovery
source (:meth:`SocketIOServer.set_recovery_source`) for the socket, which the process holding
it gives up with :meth:`SocketIOServer.hand_over` (see :mod:`archon_chat.sio.handover`).
Offsets start at a random point in each process, so one process's offsets are not
mistaken for another's.
"""

from __future__ import annotations

import inspect
import logging
import math
import secrets
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, overload

import trio

from archon_chat.config import derive
from archon_chat.limits import RateLimiter, client_address
from archon_chat.origins import OriginPolicy, OriginRequest, Verdict
from archon_chat.protocol.codecs import Frame
from archon_chat.protocol.engineio import CloseReason, EngineConfig, EngineSession, Transport
from archon_chat.protocol.errors import TooManyRequests, UnknownSid
from archon_chat.protocol.socketio import (
    ack_frames,
    connect_error_frame,
    connect_frame,
    disconnect_frame,
    event_frames,
)

from .asgi import EngineIOApp, RequestInfo
from .connection import (
    Connection,
    ConnectJob,
    DisconnectJob,
    EventJob,
    Job,
    PendingCall,
    Socket,
    SocketState,
)
from .errors import CallTimeout, ConnectRefused, NotConnected
from .handover import Export, HandOver, RecoverySource, RoomsMoved, app_state
from .options import Recovery, ServerOptions
from .outgoing import Outgoing, Packet, Render, event_args
from .rooms import Rooms
from .timers import TimerWheel

__all__ = ["ConnectInfo", "OutboxMerger", "SocketIOServer"]

log = logging.getLogger("archon_chat.sio")

Handler = Callable[..., Awaitable[Any]]
H = TypeVar("H", bound=Handler)
#: ``merger(earlier, later)``: the ``data`` of two queued events as one, or ``None``
OutboxMerger = Callable[[Any, Any], Any | None]
#: ``listener(namespace, room)``: the room's last member is gone
RoomListener = Callable[[str, str], None]

# Disconnects the server decided: they end a socket's memberships at once. After any other
# loss a socket that was connected stays a member of its rooms for the grace period.
_SERVER_SIDE: Final = frozenset(
    {CloseReason.SERVER_NAMESPACE_DISCONNECT, CloseReason.SERVER_SHUTTING_DOWN}
)

# Transport losses after which an opted-in socket waits for its client to recover it.
RECOVERABLE: Final = frozenset(
    {
        CloseReason.TRANSPORT_CLOSE,
        CloseReason.TRANSPORT_ERROR,
        CloseReason.PING_TIMEOUT,
        CloseReason.SLOW_CLIENT,
        CloseReason.FORCED_SERVER_CLOSE,
    }
)
_RESERVED: Final = frozenset({"connect", "disconnect"})


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    """What a connect handler knows about the client."""

    transport: str
    headers: Mapping[str, str]
    remote_addr: str | None
    query: Mapping[str, str]
    recovered: bool = False
    namespace: str = "/"
    #: what the application exported for this socket in the process it was handed over
    #: from (``None`` unless adopted that way)
    app: Mapping[str, Any] | None = None


@dataclass(slots=True)
class _Registered:
    fn: Handler
    min_args: int
    max_args: float
    by_name: dict[str, bool] = field(default_factory=dict)


def _arity(fn: Handler) -> tuple[int, float]:
    """How many positional arguments ``fn`` takes (``sid`` included)."""
    low = 0
    high: float = 0
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            if p.default is p.empty:
                low += 1
        elif p.kind is p.VAR_POSITIONAL:
            high = math.inf
    return low, high


def _new_id() -> str:
    return secrets.token_urlsafe(16)


# Where a process's offsets start: random, so the offsets of two processes do not overlap
# in practice, within the 16 hex digits a client's offset may have.
_OFFSET_BASE_BITS: Final = 52


_MAX_PID: Final = 64  # a longer pid is none of ours: not worth asking other processes


def _adoptable(pid: Any, offset: Any) -> tuple[str, str | None] | None:
    """``(pid, offset)`` of a CONNECT worth asking other processes about, or ``None``."""
    if not isinstance(pid, str) or not 0 < len(pid) <= _MAX_PID:
        return None
    if offset is not None and not isinstance(offset, str):
        return None
    return pid, offset


class SocketIOServer:
    """Engine.IO v4 / Socket.IO v5 server; see the module docstring."""

    def __init__(self, options: ServerOptions, origin_policy: OriginPolicy | None = None) -> None:
        self.options = options
        #: which origins may connect: the policy REST applies too (the gateway passes its
        #: own; the default is loopback hosts and same-origin pages only)
        self.origin_policy = origin_policy or OriginPolicy()
        self.engine_config = derive(EngineConfig, options)
        self._handlers: dict[str, dict[str, _Registered]] = {"/": {}}
        self._conns: dict[str, Connection] = {}
        self._sockets: dict[str, Socket] = {}
        self._by_pid: dict[str, Socket] = {}
        self._rooms = Rooms()
        self.timers = TimerWheel()
        self._nursery: trio.Nursery | None = None
        self._merger: OutboxMerger | None = None
        self._room_listener: RoomListener | None = None
        self._rooms_moved: RoomsMoved | None = None
        self._recovery_source: RecoverySource | None = None
        self._fetch_timeout_s = 1.0
        self._export: Export | None = None
        self._max_app_bytes = 4096
        #: called once per event when it is first handed to a transport (metrics)
        self.on_sent: Callable[[Outgoing], None] | None = None
        self._offset = secrets.randbits(_OFFSET_BASE_BITS)
        self.counters: Counter[str] = Counter()
        # Engine.IO sessions awaiting their first CONNECT, per client address and in all.
        self._unconnected: Counter[str] = Counter()
        self._unconnected_total = 0
        self._handshakes = RateLimiter(
            self.options.handshakes_per_minute, self.options.rate_limit_addresses
        )
        self._asgi: EngineIOApp | None = None

    # -- registration ----------------------------------------------------------------------

    @overload
    def on(self, event: str, handler: None = None, *, namespace: str = "/") -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H, *, namespace: str = "/") -> H: ...

    def on(
        self, event: str, handler: H | None = None, *, namespace: str = "/"
    ) -> Callable[[H], H] | H:
        """Register ``handler`` for ``event`` in ``namespace`` (also usable as a decorator).

        ``connect(sid, info, auth)`` may raise :class:`ConnectRefused`;
        ``disconnect(sid, reason)``; any other event: ``handler(sid, *args)``, its return
        value being the acknowledgement (``None``: no arguments, a tuple: several).
        Registering anything in a namespace makes the namespace exist.
        """

        def register(fn: H) -> H:
            low, high = _arity(fn)
            self._handlers.setdefault(namespace, {})[event] = _Registered(fn, low, high)
            return fn

        if handler is not None:
            return register(handler)
        return register

    def register_namespace(self, namespace: str) -> None:
        """Let clients connect to ``namespace`` even without handlers."""
        if not namespace.startswith("/"):
            raise ValueError("a namespace starts with /")
        self._handlers.setdefault(namespace, {})

    def set_outbox_merger(self, merger: OutboxMerger | None) -> None:
        """Install ``merger(earlier, later) -> data | None``.

        Called when an event is queued for a socket whose outbox tail is an event of the
        same name, namespace and renderer not yet sent, with the ``data`` of both; a
        returned value replaces the tail (carrying the later event's offset) and the new
        event is not queued. It must not modify its arguments, which other sockets share.
        """
        self._merger = merger

    def set_room_listener(self, listener: RoomListener | None) -> None:
        """Install ``listener(namespace, room)``, called (synchronously, never a checkpoint)
        when a room loses its last member because a socket went away for good: a
        disconnect the server decided, or the grace period of a socket that dropped
        without leaving ran out. :meth:`leave_room` reports its own case by its result."""
        self._room_listener = listener

    def set_recovery_source(self, fetch: RecoverySource | None, *, timeout_s: float) -> None:
        """Install ``fetch(pid, offset, namespace) -> HandOver | None``, asked (in the
        socket's connect job, before the connect handler) for a socket a CONNECT wants to
        recover that this process does not hold. A :class:`HandOver` is adopted: the new
        socket takes its sid and pid, enters its rooms, and gets its events replayed; the
        connect handler sees ``info.recovered`` and ``info.app``. ``None``, an exception,
        ``timeout_s`` seconds without an answer, or a hand-over this process cannot take
        (its sid or pid exist here, it holds too many events) make it a new socket.
        """
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._recovery_source = fetch
        self._fetch_timeout_s = timeout_s

    def set_hand_over_hooks(
        self,
        export: Export | None,
        rooms_moved: RoomsMoved | None = None,
        *,
        max_app_bytes: int,
    ) -> None:
        """Install the hooks of :meth:`hand_over`: ``export(sid) -> dict``, the application's
        state of a socket leaving (JSON-able, at most ``max_app_bytes`` encoded; it reaches
        the adopting process's connect handler as ``info.app``), and
        ``rooms_moved(namespace, rooms)``, the rooms that lost their last member here
        because it moved away (the room listener is not told of those)."""
        if max_app_bytes < 2:
            raise ValueError("max_app_bytes must leave room for {}")
        self._export = export
        self._rooms_moved = rooms_moved
        self._max_app_bytes = max_app_bytes

    @property
    def asgi(self) -> EngineIOApp:
        """The raw ASGI application serving ``/socket.io/`` (http and websocket scopes).

        Whether its websockets may use permessage-deflate is the HTTP server's business
        (``archon_chat.server`` configures hypercorn at start-up).
        """
        if self._asgi is None:
            self._asgi = EngineIOApp(self)
        return self._asgi

    # -- lifetime --------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run heartbeats and handlers until cancelled; cancelling closes every connection."""
        if self._nursery is not None:
            raise RuntimeError("this server is already serving")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.timers.run)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                # Before the nursery waits for its children: from here on no handler task
                # is started, whatever the transports still report while they wind down.
                self._nursery = None
                for conn in list(self._conns.values()):
                    conn.close(CloseReason.SERVER_SHUTTING_DOWN)
                for sock in list(self._sockets.values()):
                    self.remove_socket(sock, CloseReason.SERVER_SHUTTING_DOWN)

    @property
    def serving(self) -> bool:
        return self._nursery is not None

    # -- what this server's connections and sockets call -----------------------------------
    # (they hold the server as a SocketHost: see archon_chat.sio.connection)

    def spawn(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``fn`` in the server's nursery (a socket's dispatcher). Call while serving."""
        assert self._nursery is not None
        self._nursery.start_soon(fn, name=name)

    # -- the application API ---------------------------------------------------------------

    def emit_nowait(
        self,
        event: str,
        data: Any = None,
        to: str | Iterable[str] | None = None,
        room: str | Iterable[str] | None = None,
        skip_sid: str | Iterable[str] | None = None,
        namespace: str = "/",
        render: Render | None = None,
    ) -> None:
        """Queue ``event`` for every socket of ``to``/``room`` (a sid or room, or several;
        ``None``: the whole namespace), except ``skip_sid``. Never blocks, no checkpoint.

        With ``render``, ``data`` is an application object and ``render(data)`` its payload,
        made when the event is first encoded (and mergers see ``data``). Nothing is encoded
        when no socket is targeted. Without ``render``, raises ``TypeError``/``ValueError``
        if ``data`` is not JSON serialisable (bytes are fine: they travel as binary
        attachments).
        """
        if event in _RESERVED:
            raise ValueError(f"{event!r} is a reserved event name")
        target = to if to is not None else room
        skip: frozenset[str] = (
            frozenset()
            if skip_sid is None
            else frozenset((skip_sid,) if isinstance(skip_sid, str) else skip_sid)
        )
        sids = self._rooms.targets(namespace, target, skip)
        if not sids:
            return
        self._offset += 1
        item = Outgoing(event, data, namespace, offset=self._offset, render=render)
        if render is None:
            item.frames()
        sockets = self._sockets
        for sid in sids:
            sock = sockets.get(sid)
            if sock is not None:
                sock.push(item)

    def drop_queued(
        self, room: str, unwanted: Callable[[Outgoing], bool], namespace: str = "/"
    ) -> int:
        """Remove, from the outboxes of ``room``'s members, the events not yet handed to a
        transport for which ``unwanted`` is true; how many were removed. Not a checkpoint."""
        dropped = 0
        for sid in self._rooms.members(namespace, room):
            sock = self._sockets.get(sid)
            if sock is not None and sock.outbox:
                dropped += sock.drop_queued(unwanted)
        return dropped

    async def emit(
        self,
        event: str,
        data: Any = None,
        to: str | Iterable[str] | None = None,
        room: str | Iterable[str] | None = None,
        skip_sid: str | Iterable[str] | None = None,
        namespace: str = "/",
    ) -> None:
        """:meth:`emit_nowait`, then a checkpoint."""
        self.emit_nowait(event, data, to=to, room=room, skip_sid=skip_sid, namespace=namespace)
        await trio.lowlevel.checkpoint()

    async def call(
        self,
        event: str,
        data: Any = None,
        *,
        to: str,
        timeout: float = 5.0,  # noqa: ASYNC109 (python-socketio's signature, kept on purpose)
        namespace: str = "/",
    ) -> Any:
        """Emit ``event`` to the socket ``to`` and wait for its acknowledgement.

        Returns the client's single ack argument, a tuple of several, or ``None``. Raises
        :class:`NotConnected` if the socket is not connected or goes away first, and
        :class:`CallTimeout` after ``timeout`` seconds.
        """
        sock = self._sockets.get(to)
        if sock is None or sock.namespace != namespace or sock.state is not SocketState.CONNECTED:
            raise NotConnected(to)
        ack_id = sock.next_ack_id()
        frames = event_frames(namespace, event, event_args(data), ack_id)
        pending = PendingCall()
        if sock.calls is None:
            sock.calls = {}
        sock.calls[ack_id] = pending
        sock.push(Packet(frames))
        with trio.move_on_after(timeout):
            await pending.done.wait()
        if sock.calls is not None:
            sock.calls.pop(ack_id, None)
        if pending.failed:
            raise NotConnected(to)
        if not pending.done.is_set():
            raise CallTimeout(f"no acknowledgement of {event!r} from {to} in {timeout} s")
        result = pending.result
        if not result:
            return None
        return result[0] if len(result) == 1 else result

    def enter_room(self, sid: str, room: str, namespace: str = "/") -> None:
        """Add ``sid`` to ``room``; nothing happens for a sid that no longer exists (a
        disconnect may race with the handler calling this)."""
        sock = self._sockets.get(sid)
        if sock is not None and sock.namespace == namespace:
            self._rooms.join(namespace, room, sid)

    def leave_room(self, sid: str, room: str, namespace: str = "/") -> bool:
        """Remove ``sid`` from ``room``. True when it was a member and no connected member
        is left (sockets in their grace period do not count: the last connected member
        chose to leave)."""
        if not self._rooms.leave(namespace, room, sid):
            return False
        sockets = self._sockets
        for member in self._rooms.members(namespace, room):
            sock = sockets.get(member)
            if sock is not None and sock.state is not SocketState.GHOST:
                return False
        return True

    def room_count(self, sid: str) -> int:
        """How many rooms ``sid`` has entered (its own room not counted)."""
        return max(0, len(self._rooms.rooms_of(sid)) - 1)

    def rooms(self, sid: str, namespace: str = "/") -> set[str]:
        """The rooms of ``sid``, its own room (named ``sid``) included."""
        sock = self._sockets.get(sid)
        if sock is None or sock.namespace != namespace:
            return set()
        return set(self._rooms.rooms_of(sid))

    def room_members(self, room: str, namespace: str = "/") -> set[str]:
        """The sids in ``room``, including sockets waiting to be recovered."""
        return set(self._rooms.members(namespace, room))

    async def disconnect(self, sid: str, namespace: str = "/") -> None:
        """Disconnect ``sid`` from ``namespace`` (the client is told; it will not recover).

        The Engine.IO session stays open, as with the reference servers: the client closes
        it once it has no namespace left (closing it here races the DISCONNECT packet in
        clients that handle packets on several threads).
        """
        sock = self._sockets.get(sid)
        if sock is not None and sock.namespace == namespace:
            conn = sock.conn
            if conn is not None and sock.state is SocketState.CONNECTED:
                conn.flush_socket(sock)
                conn.send_now([disconnect_frame(namespace)])
            self.remove_socket(sock, CloseReason.SERVER_NAMESPACE_DISCONNECT)
        await trio.lowlevel.checkpoint()

    def stats(self) -> dict[str, int]:
        """Counters for metrics: ``connected`` sockets, ``ghosts`` (waiting for recovery),
        ``engine_connections`` (``unconnected``: of them, those with no namespace accepted
        yet; ``connect_timeouts``: closed for that), outbox ``merges``,
        ``slow_disconnects``, ``recoveries`` served (``adoptions``: of them, sockets handed
        over by another process) and ``recovery_misses``, ``hand_overs`` to other
        processes, Socket.IO ``packets_in``/``packets_out``, ``handler_errors``."""
        states = Counter(sock.state for sock in self._sockets.values())
        counters = self.counters
        return {
            "connected": states[SocketState.CONNECTED],
            "ghosts": states[SocketState.GHOST],
            "engine_connections": len(self._conns),
            "unconnected": self._unconnected_total,
            "connect_timeouts": counters["connect_timeouts"],
            "merges": counters["merges"],
            "slow_disconnects": counters["slow_disconnects"],
            "recoveries": counters["recoveries"],
            "recovery_misses": counters["recovery_misses"],
            "adoptions": counters["adoptions"],
            "hand_overs": counters["hand_overs"],
            "packets_in": counters["packets_in"],
            "packets_out": counters["packets_out"],
            "handler_errors": counters["handler_errors"],
        }

    def hand_over(self, pid: str, offset: str | None, namespace: str) -> HandOver | None:
        """Give up the recoverable socket ``pid`` of ``namespace`` to another process, whose
        client resumes from ``offset``. Not a checkpoint.

        ``None`` when this process cannot hand it over: no such socket, or ``offset``
        cannot be honoured (the socket is then let go, as a local recovery miss does), or
        the export hook failed (the socket stays). Otherwise the socket leaves this process:
        its disconnect is reported to the application if it was not yet (a client back
        before its old transport was noticed dead), its rooms are left without telling the
        room listener (the rooms-moved hook hears of those left empty), and its missed
        events are encoded as the writer would, for the :class:`HandOver`.
        """
        sock = self._by_pid.get(pid)
        if sock is None or sock.namespace != namespace:
            return None
        resume = sock.resume_offset(offset)
        if resume is None:
            self.remove_socket(sock, sock.lost_reason or CloseReason.TRANSPORT_CLOSE)
            return None
        assert sock.log is not None
        missed = [item for item in sock.log if item.offset > resume]
        missed += [item for item in sock.outbox if isinstance(item, Outgoing)]
        packets: list[tuple[Frame, ...]] = []
        last = resume
        for item in missed:
            try:
                packets.append(item.frames())
            except (TypeError, ValueError):
                log.exception("cannot encode %r for sid %s; dropped", item, sock.sid)
                continue
            last = item.offset
        app: dict[str, Any] = {}
        if self._export is not None:
            try:
                app = app_state(self._export(sock.sid), self._max_app_bytes)
            except Exception:
                log.exception("cannot export sid %s; it stays here", sock.sid)
                return None
        handed = HandOver(
            sid=sock.sid,
            pid=pid,
            namespace=namespace,
            rooms=tuple(sorted(r for r in self._rooms.rooms_of(sock.sid) if r != sock.sid)),
            packets=tuple(packets),
            offset=format(last, "x"),
            app=app,
        )
        conn = sock.conn
        emptied = self._forget(sock, sock.lost_reason or CloseReason.TRANSPORT_CLOSE)
        if conn is not None and not conn.sockets:
            # The client is back elsewhere before its old transport was noticed dead.
            conn.cut(CloseReason.TRANSPORT_CLOSE)
        self.counters["hand_overs"] += 1
        moved = self._rooms_moved
        if moved is not None and emptied:
            try:
                moved(namespace, emptied)
            except Exception:
                log.exception("rooms-moved hook failed for %r", emptied)
        return handed

    # -- what the transports call ----------------------------------------------------------

    @property
    def max_http_buffer_size(self) -> int:
        return self.options.max_http_buffer_size

    def check_origin(self, request: OriginRequest) -> Verdict:
        """The gateway's one origin check (:mod:`archon_chat.origins`)."""
        return self.origin_policy.check(request)

    def open_connection(self, transport: Transport, info: RequestInfo) -> Connection:
        """A new Engine.IO session (the handshake). Raises :class:`TooManyRequests` when
        the client's address is over its handshake budget or unconnected-session cap."""
        options = self.options
        address = client_address(
            info.remote_addr,
            info.headers.get("x-forwarded-for") if options.trusted_proxy else None,
            options.trusted_proxy,
        )
        if self._unconnected_total >= options.max_unconnected:
            raise TooManyRequests("too many sessions without a CONNECT", 5.0)
        cap = options.max_unconnected_per_address
        if cap and self._unconnected[address] >= cap:
            raise TooManyRequests(f"{address}: {cap} sessions without a CONNECT", 5.0)
        wait = self._handshakes.retry_after(address)
        if wait > 0:
            raise TooManyRequests(f"{address}: over its handshake budget", wait)
        eio = EngineSession(
            self.options.sid_prefix + _new_id(), self.engine_config, transport, trio.current_time()
        )
        conn = Connection(self, eio, info, address)
        self._unconnected[address] += 1
        self._unconnected_total += 1
        self._conns[conn.sid] = conn
        self.timers.schedule(conn)
        return conn

    def get_connection(self, sid: str) -> Connection:
        """Raises :class:`UnknownSid` for a sid that does not exist (any more)."""
        conn = self._conns.get(sid)
        if conn is None:
            raise UnknownSid(sid[:64])
        return conn

    # -- internals, called by connections and sockets --------------------------------------

    def connect_requested(self, conn: Connection, namespace: str, auth: Any) -> None:
        if namespace not in self._handlers:
            conn.sio.forget(namespace)
            conn.send_now([connect_error_frame(namespace, {"message": "Invalid namespace"})])
            return
        handler_auth = auth
        recovery = Recovery(self.options.recovery)
        opted_in = recovery is Recovery.ALL
        adopt: tuple[str, str | None] | None = None
        if isinstance(auth, dict):
            opted_in |= recovery is Recovery.OPT_IN and auth.get("recover") is True
            if "pid" in auth or "offset" in auth:
                handler_auth = {k: v for k, v in auth.items() if k not in ("pid", "offset")}
                pid = auth.get("pid")
                old = self._by_pid.get(pid) if isinstance(pid, str) else None
                if old is not None and old.namespace == namespace:
                    resume_from = old.resume_offset(auth.get("offset"))
                    if resume_from is not None:
                        self._resume(old, conn, handler_auth, resume_from)
                        return
                    self.remove_socket(old, old.lost_reason or CloseReason.TRANSPORT_CLOSE)
                elif (
                    old is None
                    and self._recovery_source is not None
                    and recovery is not Recovery.OFF
                ):
                    adopt = _adoptable(pid, auth.get("offset"))
                if adopt is None:
                    self.counters["recovery_misses"] += 1
        sock = Socket(self, _new_id(), namespace, conn, self._offset)
        conn.sockets[namespace] = sock
        if adopt is not None:
            # Registered once the other processes have answered (see _run_connect).
            sock.enqueue(ConnectJob(handler_auth, None, adopt, opted_in))
            return
        self._register(sock, opted_in)
        sock.enqueue(ConnectJob(handler_auth, None))

    def _register(self, sock: Socket, opted_in: bool) -> None:
        sock.initial_offset = sock.floor = sock.sent_offset = sock.ping_mark = self._offset
        if opted_in:
            sock.pid = _new_id()
            sock.log = deque()
            self._by_pid[sock.pid] = sock
        self._sockets[sock.sid] = sock
        self._rooms.add_socket(sock.namespace, sock.sid)

    async def _fetch(self, pid: str, offset: str | None, namespace: str) -> HandOver | None:
        """What the recovery source answers for ``pid``, within the deadline; ``None`` if
        it fails or is late (a recovery miss, not an error of this connect)."""
        source = self._recovery_source
        if source is None:
            return None
        with trio.move_on_after(self._fetch_timeout_s):
            try:
                handed = await source(pid, offset, namespace)
            except Exception:
                log.exception("recovery source failed")
                return None
            if handed is not None and not isinstance(handed, HandOver):
                log.error("recovery source returned %r, not a HandOver", type(handed))
                return None
            return handed
        log.warning("recovery source: no answer in %s s", self._fetch_timeout_s)
        return None

    def _adopt(self, sock: Socket, handed: HandOver, client_offset: str | None) -> bool:
        """Make the unregistered ``sock`` the socket ``handed`` describes, its missed events
        logged as sent, so that resuming from its first offset replays them; whether it
        could (a sid or pid already here, too many events or too much state: no)."""
        limit = 2 * self.options.recovery_buffer  # its log and what it gathered while away
        if (
            handed.namespace != sock.namespace
            or handed.sid in self._sockets
            or handed.pid in self._by_pid
            or len(handed.packets) > limit
        ):
            log.warning("refusing the hand-over of sid %s", handed.sid)
            return False
        try:
            app_state(dict(handed.app), self._max_app_bytes)
        except (TypeError, ValueError):
            log.warning("refusing the hand-over of sid %s: its app state", handed.sid)
            return False
        sock.sid = handed.sid
        self._register(sock, opted_in=False)
        sock.pid = handed.pid
        self._by_pid[handed.pid] = sock
        sock.foreign_offset = client_offset
        sock.log = deque()
        for frames in handed.packets:
            self._offset += 1
            sock.log.append(Outgoing.encoded(frames, sock.namespace, self._offset))
        sock.sent_offset = self._offset
        for room in handed.rooms:
            self._rooms.join(sock.namespace, room, sock.sid)
        # A client lost during its connect job waits for recovery here now.
        sock.connected_once = True
        self.counters["adoptions"] += 1
        return True

    def _resume(self, sock: Socket, conn: Connection, auth: Any, offset: int) -> None:
        old_conn = sock.conn
        if old_conn is not None:
            # The ping-timeout race: the client is back before we noticed it had gone.
            # The socket moves over; its old transport closes without it.
            old_conn.flush_socket(sock)
            del old_conn.sockets[sock.namespace]
            old_conn.sio.forget(sock.namespace)
            if not old_conn.sockets:
                old_conn.cut(CloseReason.TRANSPORT_CLOSE)
            self._report_disconnect(sock, CloseReason.TRANSPORT_CLOSE)
        sock.conn = conn
        sock.state = SocketState.CONNECTING
        sock.held = True
        sock.ghost_deadline = None
        conn.sockets[sock.namespace] = sock
        sock.enqueue(ConnectJob(auth, offset))

    async def run_job(self, sock: Socket, job: Job) -> None:
        if isinstance(job, EventJob):
            await self._run_event(sock, job)
        elif isinstance(job, ConnectJob):
            await self._run_connect(sock, job)
        else:
            await self._run_disconnect(sock, job.reason)

    async def _run_connect(self, sock: Socket, job: ConnectJob) -> None:
        resume_from = job.resume_from
        app: Mapping[str, Any] | None = None
        if job.adopt is not None:
            pid, client_offset = job.adopt
            handed = await self._fetch(pid, client_offset, sock.namespace)
            if sock.conn is None or sock.state is not SocketState.CONNECTING:
                if handed is not None:
                    log.info("sid %s was handed over to a client gone meanwhile", handed.sid)
                return
            if handed is not None and self._adopt(sock, handed, client_offset):
                resume_from = sock.initial_offset
                app = handed.app
            else:
                self.counters["recovery_misses"] += 1
                self._register(sock, job.opted_in)
        conn = sock.conn
        if conn is None or sock.state is not SocketState.CONNECTING:
            return
        registered = self._handlers.get(sock.namespace, {}).get("connect")
        refusal: dict[str, Any] | None = None
        if registered is not None:
            info = ConnectInfo(
                transport=conn.eio.transport.value,
                headers=conn.info.headers,
                remote_addr=conn.info.remote_addr,
                query=conn.info.query,
                recovered=resume_from is not None,
                namespace=sock.namespace,
                app=app,
            )
            args: tuple[Any, ...] = (sock.sid, info, job.auth)[: int(min(3, registered.max_args))]
            try:
                await registered.fn(*args)
            except ConnectRefused as exc:
                refusal = exc.data
            except Exception:
                self.counters["handler_errors"] += 1
                log.exception("connect handler failed (sid %s)", sock.sid)
                refusal = {"message": "Connection refused"}
        conn = sock.conn
        if not sock.connecting or conn is None:
            # The transport went away while the handler decided: an application that
            # accepted the connect is owed the matching disconnect.
            if refusal is None:
                await self._run_disconnect(sock, sock.lost_reason or CloseReason.TRANSPORT_CLOSE)
            return
        if refusal is not None:
            conn.sio.forget(sock.namespace)
            conn.send_now([connect_error_frame(sock.namespace, refusal)])
            self.remove_socket(sock, CloseReason.SERVER_NAMESPACE_DISCONNECT)
            return
        reply: dict[str, Any] = {"sid": sock.sid}
        replay: list[Outgoing] = []
        if sock.pid is not None:
            resume = resume_from
            reply["pid"] = sock.pid
            reply["offset"] = format(sock.initial_offset if resume is None else resume, "x")
            if resume is not None:
                replay = sock.take_replay(resume)
                self.counters["recoveries"] += 1
        # The reply first, then what the client missed, then what was queued meanwhile.
        sock.outbox[:0] = [Packet((connect_frame(sock.namespace, reply),)), *replay]
        conn.sio.accept(sock.namespace)
        self.connect_settled(conn)
        sock.state = SocketState.CONNECTED
        sock.accepted = True
        sock.connected_once = True
        sock.held = False
        conn.wake()

    async def _run_event(self, sock: Socket, job: EventJob) -> None:
        registered = self._handlers.get(sock.namespace, {}).get(job.event)
        if registered is None or job.event in _RESERVED:
            return
        nargs = 1 + len(job.args)
        if not registered.min_args <= nargs <= registered.max_args:
            log.warning(
                "event %r from sid %s: %d arguments, the handler takes %d to %s",
                job.event,
                sock.sid,
                len(job.args),
                registered.min_args - 1,
                registered.max_args - 1,
            )
            return
        try:
            result = await registered.fn(sock.sid, *job.args)
        except Exception:
            self.counters["handler_errors"] += 1
            log.exception("handler for %r failed (sid %s)", job.event, sock.sid)
            return
        if job.ack_id is not None and sock.state is SocketState.CONNECTED:
            sock.push(Packet(ack_frames(sock.namespace, job.ack_id, event_args(result))))

    async def _run_disconnect(self, sock: Socket, reason: CloseReason) -> None:
        registered = self._handlers.get(sock.namespace, {}).get("disconnect")
        if registered is None:
            return
        args: tuple[Any, ...] = (sock.sid, reason)[: int(min(2, registered.max_args))]
        try:
            await registered.fn(*args)
        except Exception:
            self.counters["handler_errors"] += 1
            log.exception("disconnect handler failed (sid %s)", sock.sid)

    def connect_settled(self, conn: Connection) -> None:
        """``conn`` connected a namespace, or closed: it no longer awaits a CONNECT."""
        if conn.connect_deadline is None:
            return
        conn.connect_deadline = None
        self._unconnected_total -= 1
        self._unconnected[conn.address] -= 1
        if self._unconnected[conn.address] <= 0:
            del self._unconnected[conn.address]

    def connection_closed(self, conn: Connection, reason: CloseReason) -> None:
        self.connect_settled(conn)
        if self._conns.get(conn.sid) is conn:
            del self._conns[conn.sid]
        for sock in list(conn.sockets.values()):
            self.socket_lost(sock, reason)
        conn.sockets.clear()

    def socket_lost(self, sock: Socket, reason: CloseReason) -> None:
        """The socket's transport is gone, or its client disconnected it. A socket that was
        connected stays a member of its rooms for ``grace_s`` (a ghost); it can be recovered
        meanwhile only if it has recovery and the loss is one Socket.IO recovers from."""
        if (
            sock.connected_once
            and self.options.grace_s > 0
            and reason not in _SERVER_SIDE
            and self._nursery is not None
            and sock.state in (SocketState.CONNECTED, SocketState.CONNECTING)
        ):
            conn = sock.conn
            if conn is not None:
                conn.sio.forget(sock.namespace)
                if conn.sockets.get(sock.namespace) is sock:
                    del conn.sockets[sock.namespace]
            if sock.pid is not None and reason not in RECOVERABLE:
                self._by_pid.pop(sock.pid, None)
                sock.pid = None
            if sock.pid is None:
                sock.outbox.clear()
                sock.log = None
            sock.conn = None
            sock.state = SocketState.GHOST
            sock.lost_reason = reason
            sock.ghost_deadline = trio.current_time() + self.options.grace_s
            sock.fail_calls()
            self._report_disconnect(sock, reason)
            self.timers.schedule(sock)
            return
        self.remove_socket(sock, reason)

    def _report_disconnect(self, sock: Socket, reason: CloseReason) -> None:
        if sock.accepted:
            sock.accepted = False
            sock.enqueue(DisconnectJob(reason))

    def remove_socket(self, sock: Socket, reason: CloseReason) -> None:
        emptied = self._forget(sock, reason)
        listener = self._room_listener
        if listener is not None:
            for room in emptied:
                try:
                    listener(sock.namespace, room)
                except Exception:
                    log.exception("room listener failed for %r", room)

    def _forget(self, sock: Socket, reason: CloseReason) -> list[str]:
        """Take ``sock`` out of this server; the rooms it left empty."""
        if sock.state is SocketState.GONE:
            return []
        sock.state = SocketState.GONE
        sock.lost_reason = reason
        emptied = self._rooms.remove_socket(sock.namespace, sock.sid)
        self._sockets.pop(sock.sid, None)
        if sock.pid is not None:
            self._by_pid.pop(sock.pid, None)
        conn = sock.conn
        if conn is not None:
            if conn.sockets.get(sock.namespace) is sock:
                del conn.sockets[sock.namespace]
            conn.sio.forget(sock.namespace)
        sock.conn = None
        sock.outbox.clear()
        sock.log = None
        sock.fail_calls()
        self._report_disconnect(sock, reason)
        return emptied

    def merge(self, prev: Outgoing, new: Outgoing) -> Outgoing | None:
        """``prev`` and ``new`` as one event, if the merger combines their data."""
        merger = self._merger
        if (
            merger is None
            or prev.event != new.event
            or prev.namespace != new.namespace
            or prev.render is not new.render
        ):
            return None
        try:
            data = merger(prev.data, new.data)
        except Exception:
            log.exception("outbox merger failed on %r", new.event)
            return None
        if data is None:
            return None
        self.counters["merges"] += 1
        return Outgoing(new.event, data, new.namespace, offset=new.offset, render=new.render)

    def outbox_overflow(self, sock: Socket) -> None:
        if sock.state is SocketState.CONNECTED and sock.conn is not None:
            self.counters["slow_disconnects"] += 1
            log.info("sid %s cannot keep up: %d events queued", sock.sid, len(sock.outbox))
            sock.conn.cut(CloseReason.SLOW_CLIENT)
        else:
            self.remove_socket(sock, sock.lost_reason or CloseReason.SLOW_CLIENT)
