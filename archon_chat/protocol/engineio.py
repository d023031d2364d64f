"""Engine.IO v4, server side, without I/O.

Theory of operation
-------------------
One :class:`EngineSession` per Engine.IO session (``sid``). It never touches a socket or a
clock: the shell feeds it what arrived (:meth:`~EngineSession.receive_payload` for a polling
POST body, :meth:`~EngineSession.receive_frame` for a websocket message,
:meth:`~EngineSession.receive_probe_frame` for the websocket that is probing an upgrade),
passes the time as ``now``, pulls :meth:`~EngineSession.events`, and takes what is to be sent
(:meth:`~EngineSession.take_poll` for a pending GET, :meth:`~EngineSession.take_frames` for
the websocket, :meth:`~EngineSession.take_probe_frames` for the probe). It wakes the session
at :meth:`~EngineSession.next_deadline` with :meth:`~EngineSession.handle_timeout`.

States: ``OPEN`` -> (``UPGRADING`` -> ``OPEN``)* -> ``CLOSED``. The transport starts as
``POLLING`` or ``WEBSOCKET`` and only ever moves from polling to websocket, when the probe
websocket has exchanged ``2probe``/``3probe`` and then sent ``5``. Once the probe has been
answered, polls are released at once (with a ``6`` noop when nothing is queued) so the client
can pause polling and complete the upgrade; the queue is not drained to the poll any more
than the client asks, so what is queued then goes over the websocket.

Heartbeat (v4: the server pings): ``2`` every ``ping_interval_s`` after the previous pong
(or the handshake), reported as :class:`PingSent`; no ``3`` within ``ping_timeout_s`` closes
the session with :attr:`CloseReason.PING_TIMEOUT`. Only a pong proves the peer alive, as in
the reference server.

A close always leaves the session ``CLOSED`` with one :class:`Closed` event carrying a
:class:`CloseReason`. A server-side close (:meth:`~EngineSession.close`) keeps what is
queued and adds a ``1``, so the peer gets both before the websocket closes; a failure
(:meth:`~EngineSession.fail`, a missed pong, a peer fault) drops what is queued. A close
while polling leaves a ``1`` for the next poll, except the client's own ``1``: as in the
reference server, the pending poll is then released with a ``6`` (the client knows).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final
from urllib.parse import parse_qsl

from .codecs import Frame, decode_payload, dumps, encode_payload, payload_length
from .errors import (
    AlreadyUpgraded,
    BadHandshakeMethod,
    BadRequest,
    InvalidState,
    MalformedPacket,
    PayloadTooLarge,
    UnknownTransport,
    UnsupportedProtocolVersion,
)

__all__ = [
    "CloseReason",
    "Closed",
    "EngineConfig",
    "EngineEvent",
    "EngineRequest",
    "EngineSession",
    "MessageReceived",
    "PingSent",
    "PongReceived",
    "SessionState",
    "Transport",
    "UpgradeAborted",
    "Upgraded",
    "parse_request",
]

MAX_POLL_PACKETS: Final = 16
NOOP: Final = "6"
CLOSE: Final = "1"
PING: Final = "2"


class Transport(enum.Enum):
    POLLING = "polling"
    WEBSOCKET = "websocket"


class CloseReason(enum.StrEnum):
    """Why a session (or one Socket.IO socket on it) ended: Socket.IO's own reason strings,
    which is what a ``disconnect`` handler receives; ``SLOW_CLIENT`` and ``CONNECT_TIMEOUT``
    (no Socket.IO CONNECT in time) are ours."""

    TRANSPORT_CLOSE = "transport close"
    TRANSPORT_ERROR = "transport error"
    PING_TIMEOUT = "ping timeout"
    PARSE_ERROR = "parse error"
    FORCED_SERVER_CLOSE = "forced server close"
    SERVER_SHUTTING_DOWN = "server shutting down"
    SERVER_NAMESPACE_DISCONNECT = "server namespace disconnect"
    CLIENT_NAMESPACE_DISCONNECT = "client namespace disconnect"
    SLOW_CLIENT = "slow client"
    CONNECT_TIMEOUT = "connect timeout"


class SessionState(enum.Enum):
    OPEN = "open"
    UPGRADING = "upgrading"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Session settings; durations in seconds (milliseconds only in the handshake).

    Each field is the gateway setting of the same name, which declares its default (this
    module imports no configuration: the shell builds one by copying those fields).
    """

    ping_interval_s: float
    ping_timeout_s: float
    max_http_buffer_size: int
    upgrade_timeout_s: float
    #: python-engineio's client refuses a payload of more packets: not a setting
    max_poll_packets: ClassVar[int] = MAX_POLL_PACKETS

    @property
    def max_payload(self) -> int:
        """``maxPayload`` of the handshake: the largest message or polling body, bytes."""
        return self.max_http_buffer_size


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """An Engine.IO MESSAGE: text, or ``bytes`` for a binary message."""

    data: Frame


@dataclass(frozen=True, slots=True)
class PingSent:
    """A ``2`` was queued: its pong will prove the peer read everything queued before it."""


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered our ping: it has read everything we sent before that ping."""


@dataclass(frozen=True, slots=True)
class Upgraded:
    """The probe websocket is now the session's transport."""


@dataclass(frozen=True, slots=True)
class UpgradeAborted:
    """The probe took too long; the shell closes the probe websocket."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over."""

    reason: CloseReason


EngineEvent = MessageReceived | PingSent | PongReceived | Upgraded | UpgradeAborted | Closed


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """What an HTTP or websocket request to the Engine.IO endpoint asks for."""

    transport: Transport
    sid: str | None
    method: str
    query: dict[str, str]


def parse_request(method: str, query_string: bytes, *, websocket: bool) -> EngineRequest:
    """Validate the query of a request (``EIO``, ``transport``, ``sid``) and the method.

    Does not look the ``sid`` up. Raises :class:`UnknownTransport`,
    :class:`UnsupportedProtocolVersion`, :class:`BadHandshakeMethod` or :class:`BadRequest`.
    """
    try:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        raise BadRequest("unparsable query string") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        query.setdefault(key, value)
    try:
        transport = Transport(query.get("transport", ""))
    except ValueError:
        raise UnknownTransport(f"transport {query.get('transport')!r}") from None
    if query.get("EIO") != "4":
        raise UnsupportedProtocolVersion(f"EIO={query.get('EIO')!r}")
    if websocket != (transport is Transport.WEBSOCKET):
        raise BadRequest("transport does not match the request kind")
    sid = query.get("sid") or None
    if sid is None and method != "GET":
        raise BadHandshakeMethod(f"handshake with {method}")
    if sid is not None and method not in ("GET", "POST"):
        raise BadRequest(f"method {method}")
    return EngineRequest(transport, sid, method, query)


# --- the session --------------------------------------------------------------------------


class EngineSession:
    """One Engine.IO session (see the module docstring for the theory of operation)."""

    __slots__ = (
        "_events",
        "_next_ping",
        "_poll_active",
        "_pong_deadline",
        "_probe_queue",
        "_probed",
        "_queue",
        "_upgrade_deadline",
        "close_reason",
        "config",
        "sid",
        "state",
        "transport",
    )

    def __init__(self, sid: str, config: EngineConfig, transport: Transport, now: float) -> None:
        """Open the session: the OPEN packet is the first thing to be sent."""
        self.sid = sid
        self.config = config
        self.transport = transport
        self.state = SessionState.OPEN
        self.close_reason: CloseReason | None = None
        # A list, not a deque: it is short, the websocket writer takes it whole, and an
        # empty deque costs 760 bytes per session against 56.
        self._queue: list[Frame] = []
        self._events: list[EngineEvent] = []
        self._poll_active = False
        self._probe_queue: list[Frame] = []
        self._probed = False
        self._upgrade_deadline: float | None = None
        self._next_ping = now + config.ping_interval_s
        self._pong_deadline: float | None = None
        handshake = {
            "sid": sid,
            "upgrades": ["websocket"] if transport is Transport.POLLING else [],
            "pingInterval": math.ceil(config.ping_interval_s * 1000),
            "pingTimeout": math.ceil(config.ping_timeout_s * 1000),
            "maxPayload": config.max_payload,
        }
        self._queue.append("0" + dumps(handshake))

    # -- output ----------------------------------------------------------------------------

    def send_frames(self, frames: Iterable[Frame]) -> None:
        """Queue Engine.IO frames (already encoded). Ignored once the session is closed."""
        if self.state is not SessionState.CLOSED:
            self._queue.extend(frames)

    @property
    def queued(self) -> int:
        """Frames waiting to be taken by a poll or the websocket."""
        return len(self._queue)

    @property
    def has_output(self) -> bool:
        """True when :meth:`take_poll` or :meth:`take_frames` would return something now."""
        if self._queue:
            return True
        return self.transport is Transport.POLLING and self._probed

    def take_frames(self) -> list[Frame]:
        """Everything queued, for the websocket writer (empty while polling)."""
        if self.transport is not Transport.WEBSOCKET:
            return []
        frames, self._queue = self._queue, []
        return frames

    def begin_poll(self) -> None:
        """A GET poll arrived and will wait for :meth:`take_poll`.

        Raises :class:`BadRequest` if the session uses the websocket now, or if another poll
        is already pending; the latter also closes the session (``"transport error"``).
        """
        if self.state is SessionState.CLOSED:
            raise BadRequest("poll on a closed session")
        if self.transport is not Transport.POLLING:
            raise BadRequest("poll on a session that has upgraded to websocket")
        if self._poll_active:
            self._close(CloseReason.TRANSPORT_ERROR, notify=True)
            raise BadRequest("overlapping polls")
        self._poll_active = True

    def take_poll(self) -> bytes | None:
        """The body for the pending poll, or ``None`` while it should keep waiting.

        At most ``max_poll_packets`` packets and, beyond the first, ``max_payload`` bytes.
        A poll is answered with ``6`` (noop) once an upgrade probe has been answered or the
        session has moved to websocket, so the client can complete its upgrade.
        """
        if self.transport is not Transport.POLLING:
            # A poll left over from before the upgrade: the queue belongs to the websocket.
            frames: list[Frame] = [NOOP]
        elif not self._queue:
            if not self._probed and self.state is not SessionState.CLOSED:
                return None
            frames = [NOOP if self.state is not SessionState.CLOSED else CLOSE]
        else:
            queue = self._queue
            size = 0
            limit = self.config.max_payload
            count = 0
            for frame in queue[: self.config.max_poll_packets]:
                cost = payload_length(frame) + (1 if count else 0)
                if count and size + cost > limit:
                    break
                size += cost
                count += 1
            frames = queue[:count]
            del queue[:count]
        self._poll_active = False
        return encode_payload(frames)

    @property
    def poll_pending(self) -> bool:
        """A GET poll has begun and is not answered yet."""
        return self._poll_active

    def cancel_poll(self) -> None:
        """The pending poll went away (its HTTP connection closed) without an answer."""
        self._poll_active = False

    # -- input -----------------------------------------------------------------------------

    def receive_payload(self, body: bytes, now: float) -> None:
        """Feed the body of a polling POST.

        Raises :class:`PayloadTooLarge`, :class:`MalformedPacket`, or :class:`BadRequest`
        when the session has moved to websocket. Frames before a malformed one are not
        delivered: the whole body is refused.
        """
        if len(body) > self.config.max_payload:
            raise PayloadTooLarge(f"{len(body)} bytes")
        if self.transport is not Transport.POLLING:
            raise BadRequest("POST on a session that has upgraded to websocket")
        for frame in decode_payload(body):
            self._receive(frame, now)

    def receive_frame(self, frame: Frame, now: float) -> None:
        """Feed one message of the session's websocket.

        Raises :class:`PayloadTooLarge` or :class:`MalformedPacket`.
        """
        if len(frame) > self.config.max_payload:
            raise PayloadTooLarge(f"{len(frame)} bytes")
        if isinstance(frame, str) and (not frame or frame[0] not in "0123456"):
            raise MalformedPacket("unknown Engine.IO packet type")
        self._receive(frame, now)

    def _receive(self, frame: Frame, now: float) -> None:
        if self.state is SessionState.CLOSED:
            return
        if isinstance(frame, bytes):
            self._events.append(MessageReceived(frame))
            return
        kind = frame[0]
        if kind == "4":
            self._events.append(MessageReceived(frame[1:]))
        elif kind == "3":
            if self._pong_deadline is not None and len(frame) == 1:
                self._pong_deadline = None
                self._next_ping = now + self.config.ping_interval_s
                self._events.append(PongReceived())
        elif kind == "1":
            self._close(CloseReason.TRANSPORT_CLOSE, notify=False, last=NOOP)
        elif kind == "2":
            # v4 clients do not ping, but answering costs nothing and keeps old ones alive.
            self._queue.append("3" + frame[1:])
        elif kind == "0":
            raise InvalidState("OPEN packet from the client")
        # "5" (upgrade) outside a probe and "6" (noop) carry nothing for us.

    # -- upgrade ---------------------------------------------------------------------------

    def begin_upgrade(self, now: float) -> None:
        """A websocket arrived for this polling session and will probe.

        Raises :class:`AlreadyUpgraded` if the session uses a websocket or is probing one
        (the session is unchanged), :class:`BadRequest` if it is closed.
        """
        if self.state is SessionState.CLOSED:
            raise BadRequest("upgrade of a closed session")
        if self.transport is not Transport.POLLING or self.state is not SessionState.OPEN:
            raise AlreadyUpgraded("session already upgraded or upgrading")
        self.state = SessionState.UPGRADING
        self._upgrade_deadline = now + self.config.upgrade_timeout_s

    def receive_probe_frame(self, frame: Frame, now: float) -> None:
        """Feed one message of the probe websocket (``2probe``, then ``5``).

        Raises :class:`InvalidState` for anything else; the shell then calls
        :meth:`abort_upgrade` and closes the probe.
        """
        if self.state is not SessionState.UPGRADING:
            raise InvalidState("probe frame without an upgrade in progress")
        if frame == "2probe":
            self._probe_queue.append("3probe")
            self._probed = True
        elif frame == "5" and self._probed:
            self.transport = Transport.WEBSOCKET
            self.state = SessionState.OPEN
            self._upgrade_deadline = None
            self._probed = False
            self._events.append(Upgraded())
        else:
            raise InvalidState(f"unexpected frame on the probe: {frame[:20]!r}")

    def take_probe_frames(self) -> list[Frame]:
        """Frames for the probe websocket."""
        frames, self._probe_queue = self._probe_queue, []
        return frames

    def abort_upgrade(self) -> None:
        """The probe websocket is gone before completing: keep polling."""
        if self.state is SessionState.UPGRADING:
            self.state = SessionState.OPEN
        self._probed = False
        self._upgrade_deadline = None
        self._probe_queue.clear()

    # -- time and closing ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` must next be called (``None``: never again)."""
        if self.state is SessionState.CLOSED:
            return None
        deadline = self._next_ping if self._pong_deadline is None else self._pong_deadline
        if self._upgrade_deadline is not None and self._upgrade_deadline < deadline:
            return self._upgrade_deadline
        return deadline

    def handle_timeout(self, now: float) -> None:
        """Send a due ping, close on a missed pong, abort a stalled upgrade."""
        if self.state is SessionState.CLOSED:
            return
        if self._pong_deadline is not None:
            if now >= self._pong_deadline:
                self._close(CloseReason.PING_TIMEOUT, notify=False)
                return
        elif now >= self._next_ping:
            self._queue.append(PING)
            self._events.append(PingSent())
            self._pong_deadline = now + self.config.ping_timeout_s
        if self._upgrade_deadline is not None and now >= self._upgrade_deadline:
            self.abort_upgrade()
            self._events.append(UpgradeAborted())

    def close(self, reason: CloseReason = CloseReason.FORCED_SERVER_CLOSE) -> None:
        """Close from our side; the peer is told with a ``1`` packet."""
        self._close(reason, notify=True)

    def fail(self, reason: CloseReason = CloseReason.TRANSPORT_ERROR) -> None:
        """The transport broke (websocket gone, peer fault): close without telling the peer."""
        self._close(reason, notify=False)

    def _close(self, reason: CloseReason, *, notify: bool, last: Frame = CLOSE) -> None:
        """``last``: what a poll gets after the close (``1``; ``6`` when the client
        closed, so its pending poll just ends)."""
        if self.state is SessionState.CLOSED:
            return
        if not notify:
            # The transport failed: what is still queued would go nowhere useful (and
            # whatever mattered is in the recovery log of its socket).
            self._queue.clear()
        if notify or self.transport is Transport.POLLING:
            self._queue.append(CLOSE if notify else last)
        self.state = SessionState.CLOSED
        self.close_reason = reason
        self._upgrade_deadline = None
        self._pong_deadline = None
        self._events.append(Closed(reason))

    def events(self) -> list[EngineEvent]:
        """Events since the last call, oldest first."""
        events, self._events = self._events, []
        return events
