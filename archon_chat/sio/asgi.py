"""The raw ASGI application serving Engine.IO: long-polling (http) and websocket scopes.

Raw ASGI rather than quart because a websocket costs a third less memory this way
(design.md section 6). Measured with hypercorn 0.18 and 1,000 npm clients: 30.6 KiB per idle
websocket session joined to a room, of which 22.5 KiB is hypercorn's own bare websocket
(permessage-deflate declined, see :mod:`archon_chat.transports.hypercorn_hooks`; accepting
it costs ~95 KiB more).

Everything protocol-related is decided by the sans-IO core; this module only moves bytes
between ASGI messages and a connection of the :class:`EngineHub`:

- ``GET`` without ``sid``: handshake; ``GET`` with ``sid``: long poll (abandoned if the
  client hangs up); ``POST``: packets from the client; ``OPTIONS``: CORS preflight.
- websocket without ``sid``: a websocket-only session; with ``sid``: the upgrade probe of a
  polling session, then the same loop. Each websocket has one reader (this task) and one
  writer task, which owns every send and takes everything pending at once, after merges.
  ASGI carries one frame per ``websocket.send`` (and hypercorn writes each with its own
  syscall); where the server is known to accept ``websocket.send_many`` (our hypercorn
  hooks, :mod:`archon_chat.transports.hypercorn_hooks`, which ``archon_chat.server``
  installs and then says so with ``send_many_bytes``), the writer hands what it took in
  one message (one per ``send_many_bytes``), so one wake-up is one write.
- Refusals are Engine.IO's JSON ``{"code": N, "message": "..."}`` with the status hint of
  the :class:`~archon_chat.protocol.errors.ProtocolError`; a websocket handshake is refused
  the same way through the ``websocket.http.response`` extension where the server has it,
  except a websocket for a session that already has one: accepted then closed, as the
  reference server does. Each refusal is logged once, at INFO.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from archon_chat.limits import retry_after_header
from archon_chat.origins import OriginRequest, Verdict
from archon_chat.protocol.codecs import Frame
from archon_chat.protocol.engineio import CloseReason, Transport, parse_request
from archon_chat.protocol.errors import (
    AlreadyUpgraded,
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    ProtocolError,
    TooManyRequests,
)

__all__ = ["EngineConnection", "EngineHub", "EngineIOApp", "RequestInfo"]

log = logging.getLogger("archon_chat.sio.asgi")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The ASGI extension message our hypercorn hooks add: several websocket frames, one write.
SEND_MANY = "websocket.send_many"

_TEXT = b"text/plain; charset=UTF-8"
_JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the handshake request tells about the client.

    The headers stay as the raw pairs the server already holds, decoded on demand: a
    session keeps them for its whole life, and most never look at them again.
    """

    raw_headers: Sequence[tuple[bytes, bytes]]
    query: dict[str, str]
    remote_addr: str | None

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; repeated headers joined with ``", "``."""
        return _decode_headers(self.raw_headers)


class EngineConnection(Protocol):
    """One Engine.IO session, as the transports drive it."""

    @property
    def closed(self) -> bool: ...

    @property
    def upgraded(self) -> bool: ...

    ws_scope: trio.CancelScope | None

    def take_handshake(self) -> bytes: ...

    async def poll(self) -> bytes: ...

    async def receive_payload(self, body: bytes) -> None: ...

    async def receive_frame(self, frame: Frame) -> None: ...

    async def next_frames(self) -> list[Frame] | None: ...

    def fault(self, exc: ProtocolError) -> None: ...

    def transport_lost(self, reason: CloseReason = ...) -> None: ...

    def begin_upgrade(self) -> None: ...

    def open_probe(self) -> trio.CancelScope: ...

    def take_probe_frames(self) -> list[Frame]: ...

    def receive_probe_frame(self, frame: Frame) -> None: ...

    def abort_upgrade(self) -> None: ...


class EngineHub(Protocol):
    """The server the transports hand sessions to."""

    @property
    def serving(self) -> bool: ...

    @property
    def max_http_buffer_size(self) -> int: ...

    def check_origin(self, request: OriginRequest) -> Verdict: ...

    def open_connection(self, transport: Transport, info: RequestInfo) -> EngineConnection: ...

    def get_connection(self, sid: str) -> EngineConnection: ...


def _headers(scope: Scope) -> dict[str, str]:
    return _decode_headers(scope.get("headers", ()))


def _decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _origin_request(scope: Scope, headers: dict[str, str]) -> OriginRequest:
    return OriginRequest(
        origin=headers.get("origin"),
        scheme=scope.get("scheme", "http"),
        host=headers.get("host"),
        forwarded_proto=headers.get("x-forwarded-proto"),
    )


def _info(scope: Scope, query: dict[str, str]) -> RequestInfo:
    client = scope.get("client")
    return RequestInfo(
        raw_headers=scope.get("headers", ()),
        query=query,
        remote_addr=client[0] if client else None,
    )


def _retry_after(exc: ProtocolError) -> list[tuple[bytes, bytes]]:
    if not isinstance(exc, TooManyRequests):
        return []
    return [(b"retry-after", retry_after_header(exc.retry_after_s).encode())]


def _refusal(verdict: Verdict, headers: dict[str, str]) -> Forbidden:
    if verdict.refusal == "host":
        return Forbidden(f"host {headers.get('host', '')[:100]!r}")
    return Forbidden(f"origin {headers.get('origin', '')[:100]!r}")


class _NotServing(ProtocolError):
    status_hint = 503
    message = "Server not ready"
    close_code = 1013


class EngineIOApp:
    """ASGI app (http, websocket, lifespan scopes) for the Engine.IO endpoint of ``hub``."""

    def __init__(self, hub: EngineHub, *, send_many_bytes: int | None = None) -> None:
        """``send_many_bytes``: ``None`` when the ASGI server has only ``websocket.send``;
        otherwise whoever configured it says it accepts ``websocket.send_many`` (never
        probed here), and this bounds the frames' length in one such message (characters
        of a text frame; a longer frame goes alone)."""
        if send_many_bytes is not None and send_many_bytes < 1:
            raise ValueError("send_many_bytes must be positive")
        self.hub = hub
        self.send_many_bytes = send_many_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- long-polling ----------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        method = scope["method"]
        verdict = self.hub.check_origin(_origin_request(scope, headers))
        if not verdict.allowed:
            await self._refuse(send, _refusal(verdict, headers), [])
            return
        cors = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in verdict.cors_headers()
        ]
        if method == "OPTIONS":
            await self._preflight(send, headers, cors)
            return
        try:
            if not self.hub.serving:
                raise _NotServing("not serving")
            req = parse_request(method, scope.get("query_string", b""), websocket=False)
            if req.sid is None:
                conn = self.hub.open_connection(Transport.POLLING, _info(scope, req.query))
                body = conn.take_handshake()
            elif method == "GET":
                polled = await self._long_poll(self.hub.get_connection(req.sid), receive)
                if polled is None:
                    return
                body = polled
            else:
                conn = self.hub.get_connection(req.sid)
                data = await self._read_body(conn, headers, receive)
                if data is None:
                    return
                await conn.receive_payload(data)
                body = b"ok"
        except ProtocolError as exc:
            await self._refuse(send, exc, cors)
            return
        await _respond(send, 200, body, _TEXT, cors)

    async def _long_poll(self, conn: EngineConnection, receive: Receive) -> bytes | None:
        body: bytes | None = None
        error: ProtocolError | None = None
        async with trio.open_nursery() as nursery:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_disconnect)
            try:
                body = await conn.poll()
            except ProtocolError as exc:
                error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        return body

    async def _read_body(
        self, conn: EngineConnection, headers: dict[str, str], receive: Receive
    ) -> bytes | None:
        limit = self.hub.max_http_buffer_size
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            exc = PayloadTooLarge(f"content-length {declared}")
            conn.fault(exc)
            raise exc
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                exc = PayloadTooLarge(f"more than {limit} bytes")
                conn.fault(exc)
                raise exc
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _preflight(
        send: Send, headers: dict[str, str], cors: list[tuple[bytes, bytes]]
    ) -> None:
        extra = [
            *cors,
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-max-age", b"86400"),
        ]
        requested = headers.get("access-control-request-headers")
        if requested:
            extra.append((b"access-control-allow-headers", requested.encode("latin-1")))
        await send({"type": "http.response.start", "status": 204, "headers": extra})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _refuse(send: Send, exc: ProtocolError, cors: list[tuple[bytes, bytes]]) -> None:
        if not exc.logged:
            log.info("refused: %s (%s)", exc.message, exc.detail)
        body = json.dumps(exc.body()).encode()
        await _respond(send, exc.status_hint, body, _JSON, [*cors, *_retry_after(exc)])

    # -- websocket -------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        headers = _headers(scope)
        try:
            verdict = self.hub.check_origin(_origin_request(scope, headers))
            if not verdict.allowed:
                raise _refusal(verdict, headers)
            if not self.hub.serving:
                raise _NotServing("not serving")
            req = parse_request("GET", scope.get("query_string", b""), websocket=True)
            if req.sid is None:
                conn = self.hub.open_connection(Transport.WEBSOCKET, _info(scope, req.query))
            else:
                conn = self.hub.get_connection(req.sid)
                conn.begin_upgrade()
        except AlreadyUpgraded as exc:
            # As the reference server: accepted, then closed; the session's own websocket
            # (or probe) carries on untouched.
            log.info("closed a surplus websocket: %s", exc.detail)
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        except ProtocolError as exc:
            await self._refuse_websocket(scope, send, exc)
            return
        await send({"type": "websocket.accept"})
        if req.sid is not None and not await self._probe(conn, receive, send):
            await send({"type": "websocket.close", "code": 1000})
            return
        await self._run(conn, receive, send)

    @staticmethod
    async def _refuse_websocket(scope: Scope, send: Send, exc: ProtocolError) -> None:
        log.info("refused websocket: %s (%s)", exc.message, exc.detail)
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": exc.close_code})
            return
        body = json.dumps(exc.body()).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": exc.status_hint,
                "headers": [
                    (b"content-type", _JSON),
                    (b"content-length", str(len(body)).encode()),
                    *_retry_after(exc),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})

    @staticmethod
    async def _probe(conn: EngineConnection, receive: Receive, send: Send) -> bool:
        """Run the upgrade probe; True once the websocket carries the session."""
        with conn.open_probe():
            while not conn.upgraded:
                for frame in conn.take_probe_frames():
                    await _send_frame(send, frame)
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    conn.abort_upgrade()
                    return False
                if message["type"] != "websocket.receive":
                    continue
                try:
                    conn.receive_probe_frame(_frame_of(message))
                except ProtocolError as exc:
                    log.info("upgrade refused: %s", exc.detail)
                    conn.abort_upgrade()
                    return False
            return True
        return False

    async def _run(self, conn: EngineConnection, receive: Receive, send: Send) -> None:
        close_code = 1000
        limit = self.send_many_bytes

        async def writer(scope: trio.CancelScope) -> None:
            while (frames := await conn.next_frames()) is not None:
                if limit is not None:
                    for batch in _batches(frames, limit):
                        await send({"type": SEND_MANY, "frames": batch})
                else:
                    for frame in frames:
                        await _send_frame(send, frame)
            await send({"type": "websocket.close", "code": close_code})
            scope.cancel()

        async with trio.open_nursery() as nursery:
            conn.ws_scope = nursery.cancel_scope
            nursery.start_soon(writer, nursery.cancel_scope)
            try:
                while True:
                    message = await receive()
                    kind = message["type"]
                    if kind == "websocket.disconnect":
                        conn.transport_lost(CloseReason.TRANSPORT_CLOSE)
                        break
                    if kind != "websocket.receive":
                        continue
                    try:
                        await conn.receive_frame(_frame_of(message))
                    except ProtocolError as exc:
                        if not exc.logged:
                            log.info("websocket closed: %s", exc.detail)
                        close_code = exc.close_code
                        break
            finally:
                conn.ws_scope = None
                if not conn.closed:
                    conn.transport_lost(CloseReason.TRANSPORT_ERROR)


def _frame_of(message: Message) -> Frame:
    text = message.get("text")
    if text is not None:
        return str(text)
    raw = message.get("bytes")
    if raw is None:
        raise BadRequest("websocket message without data")
    return bytes(raw)


def _batches(frames: list[Frame], limit: int) -> Iterator[list[Frame]]:
    """``frames`` in order, in runs whose lengths add up to at most ``limit`` (a frame
    longer than that alone); all of them at once in the usual case."""
    if sum(map(len, frames)) <= limit:
        yield frames
        return
    batch: list[Frame] = []
    size = 0
    for frame in frames:
        if batch and size + len(frame) > limit:
            yield batch
            batch, size = [], 0
        batch.append(frame)
        size += len(frame)
    if batch:
        yield batch


async def _send_frame(send: Send, frame: Frame) -> None:
    if isinstance(frame, str):
        await send({"type": "websocket.send", "text": frame})
    else:
        await send({"type": "websocket.send", "bytes": frame})


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
