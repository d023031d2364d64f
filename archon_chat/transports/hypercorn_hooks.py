"""Every hook into hypercorn's (and through it h11's and wsproto's) internals, in one place.

Hypercorn has no settings for what follows, so :func:`install` swaps a few of its classes
for subclasses, process-wide, and attaches the values below to one server's ``Config``:
each server keeps its own (the gateway and the built-in agents service share a process, and
the gateway's own connections to that service must not count against its clients' cap). A
server whose config was not given values gets hypercorn's behaviour plus containment. The
hooked internals are listed in ``HOOKED``; the hypercorn version is pinned to a range in
pyproject.toml, and ``tests/hardening/test_hooks_shape.py`` fails when one of them changes
shape.

Containment
    Hypercorn runs each connection in a task of the server's nursery, which sits in our root
    nursery: an exception escaping a connection (h11 refusing to send after a protocol
    error, wsproto, h2, our ASGI app) would end the whole process. Each connection's run is
    wrapped: such an error aborts that connection only, is logged once with its cause and
    reported to ``on_error(kind)`` (counted in ``/metrics``). Cancellation passes through.

Write deadline
    Hypercorn writes every byte in a *shielded* ``send_all`` with no timeout: a peer that
    stops reading (a closed laptop lid, a receive window held at zero) would pin its
    connection and block a graceful shutdown for ever. Each write gets ``write_timeout_s``;
    a write still stalled then aborts the connection, as a broken connection would. A write
    first hands the kernel what it takes at once (a non-blocking ``write`` on the socket,
    under the connection's send lock): usually everything, so the usual write costs one
    trip through trio's scheduler (taking the lock) instead of two; only the rest, if any,
    waits for the socket under the deadline. (The lock's checkpoint stays: without any,
    hypercorn left websocket connections whose peer had closed open, in CLOSE_WAIT.)

Read deadline
    Hypercorn's ``read_timeout`` bounds one ``receive`` only, so a peer trickling a header
    line every few seconds (slowloris) is never cut. A request's head and body must arrive
    within ``read_timeout_s`` of its first byte (of the connection's start, for the first
    request); a keep-alive connection between requests is bounded by hypercorn's
    ``keep_alive_timeout`` as before.

End of input
    When the peer closes, the connection ends at once; hypercorn kept it (and its file
    descriptor) until its idle timer fired.

Closing
    A response that ends its connection (``Connection: close``, HTTP/1.0) closes the socket
    at once. Hypercorn closes it from inside the app's last send, which quart-trio cancels
    as the ``http.disconnect`` that very close queued arrives: the close stopped at its first
    checkpoint and the socket stayed open until the peer went away. The close is shielded
    (within the write deadline, for a TLS close_notify).

Connections per address
    A peer address may hold at most ``max_connections_per_address`` connections at once;
    one more is closed at once (off behind a trusted proxy, where every peer is the proxy).

HTTP/2 in cleartext
    Browsers speak HTTP/2 only over TLS, which a proxy in front of the gateway terminates;
    in cleartext it would only widen what a peer can reach (streams multiplexed past the
    per-connection bounds above, no read deadline). A prior-knowledge preface aborts the
    connection; an ``Upgrade: h2c`` request is served in HTTP/1.1, as RFC 9113 lets a
    server ignore the upgrade (hypercorn switched).

Websocket message size
    Hypercorn answers a message over ``websocket_max_message_size`` with close code 1009 but
    keeps appending the rest of it to its buffer, so one huge frame costs its size in memory.
    The buffer now refuses a part that would pass the limit before storing it and drops
    what it held; any further data on that websocket aborts the connection.

permessage-deflate
    Hypercorn accepts the extension whenever a client offers it, and wsproto then keeps a
    zlib compressor per connection (116.8 KiB per idle websocket instead of 22.5 KiB on
    hypercorn 0.18) and inflates every frame without a size bound. Socket.IO's reference
    server declines it by default; :func:`refuse_permessage_deflate` makes the handshake
    decline every offer.

Several websocket messages in one write
    Hypercorn turns each ASGI ``websocket.send`` into one frame, one event and one
    ``send_all``: a writer with many frames pending pays a syscall for each. With the hooks
    installed an app may send ``{"type": "websocket.send_many", "frames": [str | bytes,
    ...]}``: each frame is encoded by the websocket's own wsproto connection, as
    ``websocket.send`` would, and the bytes go to the peer in one write (through the write
    deadline above). The app is told that the server accepts it (``SEND_MANY``); it never
    probes for it.

Connections handed in
    ``hypercorn.trio.serve`` only accepts from sockets it binds or is given listening.
    :func:`serve_connections` runs the same server (lifespan, worker context, one
    ``TCPServer`` per connection, graceful shutdown) on any ``trio.abc.Listener``: under
    ``serve --workers`` a worker's connections arrive as file descriptors from the parent.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import hypercorn.protocol
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol import h11 as h11_protocol
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Data
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import task_group, tcp_server
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import UnexpectedMessageError, wrap_app
from wsproto.events import BytesMessage, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError

__all__ = [
    "HOOKED",
    "SEND_MANY",
    "Guard",
    "guard_of",
    "install",
    "refuse_permessage_deflate",
    "serve_connections",
]

# The ASGI message type, with hooks installed, that writes several websocket frames at once.
SEND_MANY = "websocket.send_many"

log = logging.getLogger(__name__)

# The internals relied on: (module, name, attributes used).
HOOKED: tuple[tuple[Any, str, tuple[str, ...]], ...] = (
    (hypercorn_run, "TCPServer", ("run", "protocol_send", "_read_data", "_close")),
    (tcp_server, "MAX_RECV", ()),
    (hypercorn.protocol, "H11Protocol", ("_check_protocol", "_handle_events")),
    (task_group, "_handle", ()),
    (ws_stream, "WebsocketBuffer", ("extend", "clear", "to_message")),
    (ws_stream, "FrameTooLargeError", ()),
    (ws_stream, "PerMessageDeflate", ()),
    (h11_protocol, "WSStream", ("app_send", "_send_wsproto_event")),
    (ws_stream, "ASGIWebsocketState", ("CONNECTED",)),
    (hypercorn_run, "Lifespan", ("handle_lifespan", "wait_for_startup", "wait_for_shutdown")),
    (hypercorn_run, "WorkerContext", ("event_class",)),
)


# What install() replaces, as shipped (the shape test compares against them).
ORIGINALS: dict[str, Any] = {
    "TCPServer": TCPServer,
    "WebsocketBuffer": ws_stream.WebsocketBuffer,
    "_handle": task_group._handle,
    "H11Protocol": H11Protocol,
    "WSStream": ws_stream.WSStream,  # what hypercorn.protocol.h11 builds
}


def _ignore(kind: str) -> None:
    return None


@dataclass(eq=False)
class Guard:
    """One server's values for the hooks (see :func:`install`), and its open connections."""

    write_timeout_s: float = math.inf
    read_timeout_s: float = math.inf
    max_connections_per_address: int = 0  # 0: no cap
    on_error: Callable[[str], None] = _ignore
    open_per_address: Counter[str] = field(default_factory=Counter)


# Where install() keeps a server's Guard: an attribute of its hypercorn Config.
_GUARD = "_archon_chat_guard"
# A server nobody gave values: no deadlines or cap beyond hypercorn's own, errors contained.
_UNGUARDED = Guard()


def guard_of(config: Any) -> Guard:
    """The values :func:`install` attached to ``config`` (hypercorn's behaviour if none)."""
    guard = getattr(config, _GUARD, None)
    return guard if isinstance(guard, Guard) else _UNGUARDED


@dataclass(eq=False)
class _Connection:
    """Per connection, shared by its tasks (they inherit the context of its run)."""

    guard: Guard
    reported: bool = False


_connection: ContextVar[_Connection] = ContextVar("archon_chat_connection")


def _first_report() -> bool:
    """Whether this connection has not reported its end yet (it reports it now)."""
    state = _connection.get(None)
    if state is None:
        return True
    first = not state.reported
    state.reported = True
    return first


def _report(group: BaseExceptionGroup[Exception], peer: str, guard: Guard) -> None:
    """Log an error that ended a connection (its traceback only if it is our bug) and
    count it: once per connection, the first error being the cause of the rest."""
    if not _first_report():
        return
    error = _first_leaf(group)
    kind = _kind(error)
    if kind == "internal":
        log.error("connection from %s aborted by an error", peer, exc_info=error)
    else:
        log.info("connection from %s aborted: %s (%r)", peer, kind, error)
    guard.on_error(kind)


async def _handle_app(
    app: Any,
    config: Any,
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    sync_spawn: Any,
    call_soon: Any,
) -> None:
    """Hypercorn's ``task_group._handle``: runs the ASGI app of one request or websocket.
    Hypercorn already keeps the app's errors in the connection; this reports them like the
    connection's own (a send refused by h11 after the peer broke the protocol is no bug of
    the app and gets one line, not a traceback)."""
    try:
        await app(scope, receive, send, sync_spawn, call_soon)
    except* Exception as group:
        client = scope.get("client")
        _report(group, f"{client[0]}:{client[1]}" if client else "?", guard_of(config))
    finally:
        await send(None)


class MessageTooBigError(Exception):
    """A websocket peer kept sending after its message was refused as too big."""


class HTTP2RefusedError(Exception):
    """A peer opened an HTTP/2 connection in cleartext (not served)."""


class _HTTP1Protocol(H11Protocol):
    async def _check_protocol(self, event: h11.Request) -> None:
        if event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
            raise HTTP2RefusedError("HTTP/2 prior knowledge in cleartext")
        # Anything else, an h2c upgrade included, is served as the HTTP/1.1 it is.


class RequestReadTimeoutError(Exception):
    """An HTTP request's head and body did not arrive within the read timeout."""


class _BoundedWebsocketBuffer(ws_stream.WebsocketBuffer):
    refused = False

    def extend(self, event: Any) -> None:
        if self.refused:
            raise MessageTooBigError(f"more data after a message over {self.max_length}")
        if self.length + len(event.data) > self.max_length:
            self.refused = True
            self.clear()
            raise ws_stream.FrameTooLargeError()  # hypercorn answers with close code 1009
        super().extend(event)


class _BatchingWSStream(ws_stream.WSStream):
    """Hypercorn's websocket stream, plus ``SEND_MANY`` (see the module docstring)."""

    async def app_send(self, message: Any) -> None:
        if self.closed or message is None or message.get("type") != SEND_MANY:
            await super().app_send(message)
            return
        if self.state != ws_stream.ASGIWebsocketState.CONNECTED:
            raise UnexpectedMessageError(self.state, SEND_MANY)
        frames = message.get("frames")
        if not isinstance(frames, list | tuple):
            raise TypeError(f"{SEND_MANY} needs a list of frames, not {type(frames).__name__}")
        parts: list[bytes] = []
        for frame in frames:
            event: TextMessage | BytesMessage
            if isinstance(frame, str):
                event = TextMessage(data=frame)
            elif isinstance(frame, bytes | bytearray | memoryview):
                event = BytesMessage(data=bytes(frame))
            else:
                raise TypeError(f"a websocket frame is str or bytes, not {type(frame).__name__}")
            try:
                parts.append(self.connection.send(event))
            except LocalProtocolError:
                break  # closing: dropped, as hypercorn drops a websocket.send then
        if parts:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            await self.send(Data(stream_id=self.stream_id, data=data))


class _GuardedTCPServer(TCPServer):
    @property
    def guard(self) -> Guard:
        return guard_of(self.config)

    async def run(self) -> None:
        guard = self.guard
        _connection.set(_Connection(guard))
        address = _peer(self.stream).rsplit(":", 1)[0]
        cap = guard.max_connections_per_address
        open_now = guard.open_per_address
        if cap and open_now[address] >= cap:
            log.info("connection from %s refused: %d already open", address, cap)
            guard.on_error("address_cap")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            return
        open_now[address] += 1
        try:
            await super().run()
        except* Exception as group:
            await self._contain(group)
        finally:
            open_now[address] -= 1
            if open_now[address] <= 0:
                del open_now[address]

    async def _contain(self, group: BaseExceptionGroup[Exception]) -> None:
        _report(group, _peer(self.stream), self.guard)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Closed):
            # Hypercorn's own handling, with the socket's close shielded: hypercorn sends
            # this from inside the app's last send when the response ends the connection
            # (``Connection: close``), and quart-trio cancels that very send as the
            # ``http.disconnect`` it caused arrives; unshielded, the close stopped at its
            # first checkpoint and the socket stayed open until the peer went away. Only
            # the close is shielded (a TLS close_notify within the write deadline): telling
            # the protocol may wait on the app's queue and stays cancellable.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.guard.write_timeout_s
                await self._close()
            await self.protocol.handle(Closed())
            return
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            data = event.data
            # First as much as the kernel takes right now, without a scheduling round
            # (trio's send_all yields once even when the kernel took everything).
            fd = _plain_fd(self.stream)
            try:
                sent = 0 if fd is None else os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:  # reset, broken pipe, closed: as send_all would have found
                await self.protocol.handle(Closed())
                return
            if sent < len(data):
                await self._send_rest(memoryview(data)[sent:])

    async def _send_rest(self, data: memoryview) -> None:
        """Send what the kernel did not take at once, within the write deadline."""
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.guard.write_timeout_s
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
            return
        if scope.cancelled_caught:
            if _first_report():
                guard = self.guard
                log.info("write stalled for %.1f s: connection aborted", guard.write_timeout_s)
                guard.on_error("write_timeout")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
                await self.protocol.handle(Closed())

    async def _read_data(self) -> None:
        read_timeout_s = self.guard.read_timeout_s
        deadline = math.inf
        while True:
            if not self._reading_request():
                deadline = math.inf
            elif deadline == math.inf:
                deadline = trio.current_time() + read_timeout_s
            with trio.move_on_at(deadline) as timer:
                try:
                    data = await self.stream.receive_some(tcp_server.MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
            if timer.cancelled_caught:
                # Raised, so that the connection's other tasks (its idle timer, an app
                # waiting for the body) end with it.
                raise RequestReadTimeoutError(f"request not read within {read_timeout_s} s")
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        # The peer is gone: hypercorn would keep the connection (and its socket) until
        # its keep-alive timer ran out, up to 75 s after a silent peer closed.
        await self.idle_task.stop()
        await self.protocol.handle(Closed())

    def _reading_request(self) -> bool:
        """Whether an HTTP/1.1 request's head or body is due from the peer."""
        protocol = getattr(self.protocol, "protocol", None)
        if not isinstance(protocol, H11Protocol):
            return False  # not HTTP/1.1 (HTTP/2 is refused, see the module docstring)
        connection = protocol.connection
        if not isinstance(connection, h11.Connection):
            return False  # a websocket: Engine.IO's pings watch it
        if connection.their_state is h11.SEND_BODY:
            return True
        if connection.their_state is h11.IDLE:
            return protocol.keep_alive_requests == 0 or bool(connection.trailing_data[0])
        return False


def _plain_fd(stream: Any) -> int | None:
    """The descriptor of a plain TCP connection, written to directly; ``None`` for any
    other stream (TLS, whose bytes must go through its own ``send_all``)."""
    return stream.socket.fileno() if type(stream) is trio.SocketStream else None


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    error: Exception | BaseExceptionGroup[Exception] = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _kind(error: BaseException) -> str:
    if isinstance(error, MessageTooBigError):
        return "message_too_big"
    if isinstance(error, RequestReadTimeoutError):
        return "read_timeout"
    if isinstance(error, HTTP2RefusedError):
        return "http2"
    package = type(error).__module__.split(".", 1)[0]
    if package in ("h11", "h2", "wsproto", "hpack"):
        return package
    if package == "hypercorn":
        return "hypercorn"
    return "internal"


def _peer(stream: Any) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except (AttributeError, OSError, ValueError):
        return "?"
    return f"{host}:{port}"


class _DeclinedDeflate(PerMessageDeflate):
    def accept(self, offer: str) -> None:
        return None


def refuse_permessage_deflate() -> None:
    """Make hypercorn's websocket handshakes decline permessage-deflate from now on."""
    setattr(ws_stream, "PerMessageDeflate", _DeclinedDeflate)  # noqa: B010 (no re-export)


def install(
    config: Config,
    *,
    write_timeout_s: float,
    read_timeout_s: float,
    max_connections_per_address: int,
    on_error: Callable[[str], None] = _ignore,
) -> Guard:
    """Put the hooks above in place for every connection hypercorn's trio worker accepts
    from now on, and give the server of ``config`` these values: ``on_error(kind)`` hears
    of every one of its connections aborted or refused; ``max_connections_per_address``
    (0: no cap) refuses a peer's connection beyond that many open at once on this server.
    Other servers in the process keep their own values. Not a checkpoint."""
    if not write_timeout_s > 0 or not read_timeout_s > 0:
        raise ValueError("the write and read timeouts must be positive")
    if max_connections_per_address < 0:
        raise ValueError("max_connections_per_address must not be negative")
    guard = Guard(write_timeout_s, read_timeout_s, max_connections_per_address, on_error)
    setattr(config, _GUARD, guard)
    setattr(hypercorn_run, "TCPServer", _GuardedTCPServer)  # noqa: B010 (no re-export)
    setattr(ws_stream, "WebsocketBuffer", _BoundedWebsocketBuffer)  # noqa: B010
    setattr(task_group, "_handle", _handle_app)  # noqa: B010
    setattr(hypercorn.protocol, "H11Protocol", _HTTP1Protocol)  # noqa: B010
    setattr(h11_protocol, "WSStream", _BatchingWSStream)  # noqa: B010
    return guard


async def serve_connections(
    app: Any,
    config: Config,
    listener: trio.abc.Listener[trio.SocketStream],
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` on the connections ``listener`` accepts, as
    ``hypercorn.trio.serve`` does on a bound socket, until ``shutdown_trigger`` returns;
    then connections get ``config.graceful_timeout`` to finish. Reports readiness once
    the app's lifespan has started. The hooks of :func:`install` apply to every connection."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan = Lifespan(wrapped, config, {})
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            # Looked up now, so that the server install() put in place serves them.
            tcp_server_class = getattr(hypercorn_run, "TCPServer")  # noqa: B009 (no re-export)
            server = partial(tcp_server_class, wrapped, config, context, {})
            task_status.started()
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        partial(
                            trio.serve_listeners, server, [listener], handler_nursery=connections
                        )
                    )
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
