"""The client of the agents service: one streaming request per chat turn.

``POST {base_url}/agents/{agent_type}/stream`` with the JSON body of
:class:`AgentRequest` answers a ``text/event-stream`` whose events carry JSON data:
``{"type": "stream_chunk", "content": delta}`` any number of times, then
``{"type": "stream_complete"}``, or ``{"type": "error", "error": text}``. Comment lines
(``: ping``) are heartbeats. Anything else is a protocol error.

One :class:`httpx.AsyncClient` serves the whole process (:func:`open_agents_client` builds
it; tests inject their own, e.g. over :class:`httpx.MockTransport`). Its pool allows as
many connections as there can be concurrent turns, but keeps only a few idle keep-alive
connections: httpcore scans every idle connection on each request start and close, so
thousands of them would cost more CPU than the relaying itself (design.md section 6).

Timeouts. The client sets an explicit connect and write timeout and no read timeout: the
session actor enforces the first-event, gap and whole-turn deadlines itself, exactly, with
trio cancel scopes. Cancelling a stream (leaving :meth:`AgentsClient.open_stream`'s block
by cancellation) closes its connection at once, so the agents service sees the client go.

Connection reuse. A reply whose ``stream_complete`` was read is read on to the end of its
response when the block is left (at most ``DRAIN_BYTES``, within ``DRAIN_TIMEOUT_S`` and half
the time the caller's deadlines leave): httpcore returns only a connection whose response
ended to the pool, so without this every turn opened a new TCP connection.

Every httpx error is mapped at this boundary to our own tree; ``code`` is the wire code::

    AgentsError                   (code)
    ├── AgentUnavailable          agent_unavailable: cannot connect, connection lost,
    │                             non-2xx "Agent service error: <status>"
    ├── AgentTimeout              agent_timeout: an httpx timeout (an injected client's)
    ├── AgentProtocolError        agent_protocol_error: not an event stream, malformed
    │                             event, end of stream without stream_complete
    └── AgentReportedError        agent_error: the agent's own ``error`` event
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import trio

from actors.chat.messages import AgentType, ErrorCode
from actors.chat.settings import AgentsClientSettings
from actors.chat.sse import ServerSentEvent, SSEDecodeError, SSEDecoder

logger = logging.getLogger(__name__)


# -- errors ------------------------------------------------------------------------------


class AgentsError(Exception):
    """Base of the agents client's errors; ``str(exc)`` is the text shown to users."""

    code: ErrorCode = ErrorCode.AGENT_UNAVAILABLE


class AgentUnavailable(AgentsError):
    code = ErrorCode.AGENT_UNAVAILABLE


class AgentTimeout(AgentsError):
    code = ErrorCode.AGENT_TIMEOUT


class AgentProtocolError(AgentsError):
    code = ErrorCode.AGENT_PROTOCOL_ERROR


class AgentReportedError(AgentsError):
    code = ErrorCode.AGENT_ERROR


AGENT_TIMEOUT_TEXT = "Agent response timeout"


def _map_error(exc: Exception, *, streaming: bool) -> AgentsError:
    """The :class:`AgentsError` for an httpx (or transport) exception."""
    if isinstance(exc, httpx.PoolTimeout):
        return AgentUnavailable("Agent service busy: no free connection")
    if isinstance(exc, httpx.ConnectTimeout):
        return AgentUnavailable("Agent service unreachable: connect timeout")
    if isinstance(exc, httpx.TimeoutException):
        return AgentTimeout(AGENT_TIMEOUT_TEXT)
    if isinstance(exc, httpx.ConnectError):
        return AgentUnavailable("Agent service unreachable: connection refused or failed")
    if isinstance(exc, httpx.RemoteProtocolError) and streaming:
        return AgentProtocolError("Agent stream broke off without stream_complete")
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        return AgentUnavailable("Agent service connection lost")
    if isinstance(exc, httpx.DecodingError):
        return AgentProtocolError("Agent stream could not be decoded")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return AgentUnavailable("Agent service URL is invalid")
    return AgentUnavailable(f"Agent service unavailable ({type(exc).__name__})")


# -- requests and events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """The body of one stream request (design.md section 3)."""

    agent_type: AgentType
    prompt: str
    session_id: str
    context: Mapping[str, Any] = field(default_factory=dict)
    history: Sequence[HistoryEntry] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_type": self.agent_type,
            "prompt": self.prompt,
            "context": dict(self.context),
            "history": [{"role": h.role, "content": h.content} for h in self.history],
            "session_id": self.session_id,
        }


@dataclass(frozen=True, slots=True)
class ChunkReceived:
    """A non-empty delta of the reply."""

    content: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Upstream activity without text (a ``: ping`` comment, an empty delta)."""


@dataclass(frozen=True, slots=True)
class StreamFinished:
    """``stream_complete``: the reply is whole. Always the stream's last event."""


AgentEvent = ChunkReceived | Heartbeat | StreamFinished

#: What may follow ``stream_complete`` and still be read to reuse the connection. A server
#: that ends its response sends the end right behind the last event; the wait is short
#: because the turn's end events are emitted only after it.
DRAIN_BYTES = 4096
DRAIN_TIMEOUT_S = 0.1

_HEARTBEAT = Heartbeat()
_FINISHED = StreamFinished()


# -- the stream --------------------------------------------------------------------------


class AgentStream:
    """The events of one reply, read incrementally from the open response.

    Not an async generator: it holds the response's byte iterator and closes it when the
    stream is closed, inside the caller's cancel scope (never left for the garbage
    collector). Iterate it with ``async for`` or call :meth:`receive`.
    """

    __slots__ = ("_bytes", "_decoder", "_finished", "_pending")

    def __init__(self, response: httpx.Response, max_event_chars: int) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity") and isinstance(response.stream, httpx.AsyncByteStream):
            # Read the transport's stream itself: the same bytes as aiter_bytes() without
            # two more generator levels and a chunker on every chunk.
            self._bytes = response.stream.__aiter__()
        else:
            self._bytes = response.aiter_bytes()
        self._decoder = SSEDecoder(max_event_chars)
        self._pending: deque[AgentEvent] = deque()
        self._finished = False

    async def receive(self) -> AgentEvent:
        """The next event, reading more of the response as needed.

        A checkpoint when it reads (events already decoded return without one). If
        cancelled, nothing is lost that a retry needed, but the caller is expected to
        close the stream. Raises :class:`AgentProtocolError` (malformed event, end of
        stream without ``stream_complete``, reading past :class:`StreamFinished`),
        :class:`AgentReportedError`, :class:`AgentUnavailable`, :class:`AgentTimeout`.
        """
        while not self._pending:
            if self._finished:
                raise AgentProtocolError("Agent stream read past stream_complete")
            try:
                chunk = await self._bytes.__anext__()
            except StopAsyncIteration:
                try:
                    self._decoder.close()
                except SSEDecodeError as exc:
                    raise AgentProtocolError(f"Agent sent a malformed stream: {exc}") from exc
                raise AgentProtocolError("Agent stream ended without stream_complete") from None
            except httpx.HTTPError as exc:
                raise _map_error(exc, streaming=True) from exc
            try:
                items = self._decoder.feed(chunk)
            except SSEDecodeError as exc:
                raise AgentProtocolError(f"Agent sent a malformed stream: {exc}") from exc
            for item in items:
                if isinstance(item, ServerSentEvent):
                    event = _interpret(item)
                    self._pending.append(event)
                    if event is _FINISHED:
                        # Whatever follows stream_complete is not part of the reply.
                        break
                else:
                    self._pending.append(_HEARTBEAT)
        event = self._pending.popleft()
        if event is _FINISHED:
            self._finished = True
            self._pending.clear()
        return event

    @property
    def finished(self) -> bool:
        """Whether :class:`StreamFinished` was received."""
        return self._finished

    async def drain(self) -> bool:
        """Read the response to its end after :class:`StreamFinished`, discarding it, so
        that its connection can go back to the pool; True if the end was reached. Gives up
        past ``DRAIN_BYTES``, after ``DRAIN_TIMEOUT_S`` or half the time left before the
        caller's deadline, whichever is first (the deadline itself never fires here); a
        cancellation passes through. A checkpoint if it reads."""
        left = trio.current_effective_deadline() - trio.current_time()
        read = 0
        with trio.move_on_after(min(DRAIN_TIMEOUT_S, left / 2)):
            try:
                while read <= DRAIN_BYTES:
                    read += len(await self._bytes.__anext__())
            except StopAsyncIteration:
                return True
            except httpx.HTTPError:
                return False
        return False

    def __aiter__(self) -> AgentStream:
        return self

    async def __anext__(self) -> AgentEvent:
        if self._finished:
            raise StopAsyncIteration
        return await self.receive()

    async def aclose(self) -> None:
        """Close the byte iterator. A checkpoint only if the iterator needs one."""
        await self._bytes.aclose()  # type: ignore[attr-defined]


def _interpret(item: ServerSentEvent) -> AgentEvent:
    try:
        payload = json.loads(item.data)
    except ValueError:
        raise AgentProtocolError("Agent sent an event that is not JSON") from None
    if not isinstance(payload, dict):
        raise AgentProtocolError("Agent sent an event that is not a JSON object")
    kind = payload.get("type")
    if kind == "stream_chunk":
        content = payload.get("content")
        if not isinstance(content, str):
            raise AgentProtocolError("Agent sent a stream_chunk without text content")
        return ChunkReceived(content) if content else _HEARTBEAT
    if kind == "stream_complete":
        return _FINISHED
    if kind == "error":
        text = payload.get("error")
        raise AgentReportedError(text if isinstance(text, str) and text else "Agent error")
    raise AgentProtocolError(f"Agent sent an event of unknown type {kind!r:.40}")


# -- the client --------------------------------------------------------------------------


class AgentsClient:
    """Streams replies from the agents service at ``base_url`` over ``client``.

    The client is shared by every session and owned by whoever made it (see
    :func:`open_agents_client`); :class:`AgentsClient` never closes it.
    """

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient | Sequence[httpx.AsyncClient],
        *,
        max_event_chars: int,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        # Requests go round-robin over the clients: each pool stays small, and httpcore's
        # walk of a pool's connections on every request start and close stays short.
        self._clients = (client,) if isinstance(client, httpx.AsyncClient) else tuple(client)
        if not self._clients:
            raise ValueError("AgentsClient needs at least one httpx client")
        self._next = 0
        self._urls: dict[str, httpx.URL] = {}
        self._max_event_chars = max_event_chars

    @property
    def base_url(self) -> str:
        return self._base_url

    @asynccontextmanager
    async def open_stream(self, request: AgentRequest) -> AsyncIterator[AgentStream]:
        """Send ``request`` and yield the reply's :class:`AgentStream` once its headers
        arrived with a 2xx status and an event-stream content type.

        A checkpoint. Leaving the block closes the response, once the stream finished
        after reading it to its end (:meth:`AgentStream.drain`) so that its connection is
        reused; if it is left by cancellation or an error the connection is closed at once
        rather than returned to the pool. Raises
        :class:`AgentUnavailable` (cannot connect, connection lost, non-2xx
        ``"Agent service error: <status>"``), :class:`AgentProtocolError` (not an event
        stream), :class:`AgentTimeout` (an httpx timeout). No httpx exception escapes.
        """
        url = self._urls.get(request.agent_type)
        try:
            if url is None:
                url = httpx.URL(f"{self._base_url}/agents/{request.agent_type}/stream")
                self._urls[request.agent_type] = url
            client = self._clients[self._next]
            self._next = (self._next + 1) % len(self._clients)
            http_request = client.build_request(
                "POST", url, json=request.to_json(), headers={"accept": "text/event-stream"}
            )
            response = await client.send(http_request, stream=True)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            logger.debug("agents request to %s failed: %r", url, exc)
            raise _map_error(exc, streaming=False) from exc
        try:
            if not 200 <= response.status_code < 300:
                raise AgentUnavailable(f"Agent service error: {response.status_code}")
            content_type = response.headers.get("content-type", "")
            if not content_type.lower().startswith("text/event-stream"):
                raise AgentProtocolError(
                    f"Agent service answered {content_type or 'no content type'!r:.60}, "
                    "not an event stream"
                )
            stream = AgentStream(response, self._max_event_chars)
            try:
                yield stream
                if stream.finished:
                    await stream.drain()
            finally:
                try:
                    await stream.aclose()
                except httpx.HTTPError:
                    logger.debug("closing the agents stream of %s failed", url, exc_info=True)
        finally:
            try:
                await response.aclose()
            except httpx.HTTPError:
                logger.debug("closing the agents response of %s failed", url, exc_info=True)


def make_http_client(
    *,
    max_connections: int,
    max_keepalive_connections: int,
    keepalive_expiry_s: float,
    connect_timeout_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The process's shared :class:`httpx.AsyncClient` for the agents service.

    ``max_connections`` bounds concurrent streams (one connection each; waiting for a
    free one is bounded by the turn's own deadlines). ``max_keepalive_connections`` stays
    small (module docstring). Connect and write timeouts are explicit; reads and pool
    waits have none because the session actor bounds every turn with its own deadlines.
    Proxy variables are ignored (``trust_env=False``): the agents service is a local
    peer. Not a checkpoint; the caller must ``await client.aclose()``.
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry_s,
    )
    timeout = httpx.Timeout(
        connect=connect_timeout_s, read=None, write=connect_timeout_s, pool=None
    )
    return httpx.AsyncClient(limits=limits, timeout=timeout, transport=transport, trust_env=False)


@asynccontextmanager
async def open_agents_client(
    base_url: str,
    settings: AgentsClientSettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[AgentsClient]:
    """An :class:`AgentsClient` over ``settings.agent_pools`` new shared clients
    (:func:`make_http_client`) used round-robin, the connection limits split among them;
    closed when the block ends. A checkpoint on exit (closing the pools)."""
    pools = settings.agent_pools
    per_pool = -(-settings.agent_pool_size // pools)
    keepalive = -(-settings.agent_keepalive // pools)
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                make_http_client(
                    max_connections=per_pool,
                    max_keepalive_connections=keepalive,
                    keepalive_expiry_s=settings.agent_keepalive_expiry_s,
                    connect_timeout_s=settings.agent_connect_timeout_s,
                    transport=transport,
                )
            )
            for _ in range(pools)
        ]
        yield AgentsClient(base_url, clients, max_event_chars=settings.agent_max_event_chars)
