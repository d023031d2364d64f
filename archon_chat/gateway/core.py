"""The chat gateway: Socket.IO events and REST calls in, session actors behind channels.

Theory of operation
-------------------
The gateway keeps no record of who watches a session: the emitter's rooms do
(:class:`~archon_chat.gateway.emitter.RoomEmitter`; today the Socket.IO server's rooms, with
sockets in their disconnect grace period). Every command for a session goes to its actor
through :class:`~actors.chat.hub.SessionHub` (bounded mailboxes); every event of every
session comes back on one bounded channel, drained by :meth:`Gateway.fan_out`, which emits
it to the room ``chat_{session_id}``; its wire shape is rendered by :mod:`.wire` when a
socket's writer encodes it. Consecutive ``stream_chunk`` events waiting unsent in a socket's
outbox are merged there (:meth:`~actors.chat.messages.ChunkStreamed.merge`).

Watching. A socket that joined a session is a member of its room until it sends
``leave_chat``. A socket that drops without leaving stays a member for ``grace_s`` (the
same window as Socket.IO connection state recovery); reconnecting and re-joining, or being
recovered, keeps the session watched. The turn in flight is cancelled
(``CancelReason.LEFT``) when the last *connected* member sends ``leave_chat`` (members in
their grace period are gone unless they come back: they do not hold the turn for others who
chose to leave), or when the room's last member's grace runs out. ``stop_response`` cancels
whoever watches, and chunks of the stopped turn still waiting in outboxes are dropped, so
nothing of it follows the stop's acknowledgement but its end events.

Resume without gaps. ``join_chat`` enters the room *first* and parks the live events of
that session for that socket while it builds the replay: it asks the actor for its
state (``GetTurnState``: last seq ``S`` and the turn-in-progress events), reads finished
messages after ``last_seq`` up to ``S`` from the store, sends them in seq order, then
``connection_confirmed``, then the parked events with seq > ``S``. The actor is the
authority on seq, and every message it emits is stored before it is emitted, so the
replay and the parked events together are exactly the events after ``last_seq``. A replay
is never silently cut: when more than ``replay_limit`` finished messages were missed, none
are replayed and ``connection_confirmed`` says ``"reload": true`` (the client reloads the
history with ``GET /sessions/{id}``); the turn in progress is still replayed.

Users. In user mode (:mod:`archon_chat.auth`) every socket is known by the user of its
connect token (``_identities``, one entry per connected socket, gone at disconnect) and
every REST call by its bearer token. A session belongs to the user who created it. Any
command for a session of someone else is refused exactly as for an unknown session
(``session_not_found``), before it touches the room or the actor, so ids cannot be probed
and a room only ever holds sockets of the session's owner. Owners never change, so they
are cached (``_owners``, bounded). A socket is told (``error``, ``token_expired``)
``token_refresh_window_s`` before its token expires and is disconnected at expiry unless
it sends ``refresh_token`` with a fresh token of the same user. Per-user limits:
messages a minute (a token bucket, ``Retry-After``), sessions with a reply in progress
(counted from the actors' turn events), stored sessions, and connections.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from actors.chat.hub import HubClosed, HubError, SessionBusy, SessionNotFound
from actors.chat.messages import (
    CancelReason,
    CancelTurn,
    ChunkStreamed,
    ErrorCode,
    GetTurnState,
    MessageEmitted,
    SessionEvent,
    StreamCompleted,
    SubmitMessage,
    SubmitOutcome,
    SubmitReply,
    TurnEnded,
    TurnFailed,
    TurnStarted,
    TurnState,
)
from archon_chat.auth import AuthError, Identity, TokenVerifier
from archon_chat.config import Settings
from archon_chat.limits import RateLimiter
from archon_chat.store_api import GatewayStore

from . import validation, wire
from .emitter import RoomEmitter
from .errors import GatewayError, invalid
from .metrics import Metrics
from .ports import ClusterPort, HubPort

log = logging.getLogger(__name__)

#: Events replayed to a rejoining socket (typing is carried by connection_confirmed).
_REPLAYED = (MessageEmitted, ChunkStreamed, StreamCompleted, TurnFailed)
#: Kinds of token deadline (the notice sorts first when both fall at once).
_NOTICE, _EXPIRY = 0, 1


@dataclass
class _Join:
    parked: list[SessionEvent]
    overflow: bool = False


class Gateway:
    def __init__(
        self,
        settings: Settings,
        store: GatewayStore,
        hub: HubPort,
        emitter: RoomEmitter,
        metrics: Metrics,
        cluster: ClusterPort | None = None,
    ) -> None:
        self.settings = settings
        #: the cluster this process is a node of; ``None``: one process, nothing shared
        self.cluster = cluster
        self.store = store
        self.hub = hub
        self.emitter = emitter
        self.metrics = metrics
        self.json_limits = validation.JsonLimits(
            max_depth=settings.max_json_depth, max_context_bytes=settings.max_context_bytes
        )
        self._joining: dict[str, dict[str, _Join]] = {}  # session id -> {sid: parked}
        self._sent_times: dict[str, deque[float]] = {}  # sid -> chat_message times
        self._turns_in_flight: set[str] = set()
        self._cancel_requested: dict[str, float] = {}
        #: sessions whose turn was stopped and has not ended: its chunks are dropped
        self._stopped: set[str] = set()
        #: session -> {sid: seq}: a socket that just joined has had everything up to seq
        self._floors: dict[str, dict[str, int]] = {}
        #: cluster mode: session -> seq of the newest event relayed to its room here
        #: (sessions with members or a turn in flight)
        self._last_seq: dict[str, int] = {}
        emitter.on_vacated(self._room_vacated)
        # user mode
        self.auth = TokenVerifier(settings)
        self._identities: dict[str, Identity] = {}  # sid -> who, while connected
        self._user_sockets: dict[str, set[str]] = {}  # user -> connected sids
        self._departed: OrderedDict[str, str] = OrderedDict()  # sid -> user (recovery)
        self._owners: OrderedDict[str, str | None] = OrderedDict()  # session -> owner
        self._user_turns: dict[str, set[str]] = {}  # user -> sessions replying
        self._user_budget = RateLimiter(settings.user_messages_per_minute, settings.max_users)
        #: (when, kind, sid, identity): token notices and expiries, stale ones skipped
        self._expiries: list[tuple[float, int, int, str, Identity]] = []
        self._expiry_numbers = itertools.count()
        self._expiries_changed = trio.Event()

    # ------------------------------------------------------------------ socket events

    async def on_connect(
        self, sid: str, recovered: bool, auth: Any, handed: Mapping[str, Any] | None = None
    ) -> None:
        """Authorise a connection. Raises :class:`GatewayError` (``unauthorized`` or
        ``token_expired``) to refuse it. ``handed``: what another node exported for this
        socket when it handed it over (cluster recovery, :meth:`export_socket`)."""
        token = auth.get("token") if isinstance(auth, dict) else None
        if not self.auth.enabled:
            if self.settings.api_key and (
                not isinstance(token, str)
                or not hmac.compare_digest(token.encode(), self.settings.api_key.encode())
            ):
                raise GatewayError(ErrorCode.UNAUTHORIZED)
            if handed is not None:
                await self._catch_up(sid, handed)
            return
        identity = await self.verify(token)
        if recovered:
            # A recovered socket gets its rooms back: only for the user who had them.
            before = self._identities.get(sid)
            previous = before.user if before is not None else self._departed.pop(sid, None)
            if handed is not None:
                previous = handed.get("user")
            if previous != identity.user:
                raise GatewayError(ErrorCode.UNAUTHORIZED, "Not the user of that connection")
        sockets = self._user_sockets.setdefault(identity.user, set())
        cap = self.settings.user_max_connections
        if cap and sid not in sockets and len(sockets) >= cap:
            if not sockets:
                del self._user_sockets[identity.user]
            raise GatewayError(
                ErrorCode.RATE_LIMITED, f"A user may have at most {cap} connections open"
            )
        sockets.add(sid)
        self._set_identity(sid, identity)
        if handed is not None:
            await self._catch_up(sid, handed)

    def export_socket(self, sid: str) -> dict[str, Any]:
        """What another node needs to adopt this socket (cluster recovery): its user, and
        for each session it watches the newest seq relayed here (its missed events, handed
        over with it, end there)."""
        identity = self._identities.get(sid)
        user = identity.user if identity is not None else self._departed.get(sid)
        seqs = {}
        for room in self.emitter.rooms_of(sid):
            session_id = wire.session_of(room)
            if session_id is not None:
                seqs[session_id] = self._last_seq.get(session_id, 0)
        return {"user": user, "seqs": seqs}

    async def _catch_up(self, sid: str, handed: Mapping[str, Any]) -> None:
        """An adopted socket: what its sessions emitted after the node it came from
        stopped relaying for it, as a rejoin with ``last_seq`` gets it."""
        seqs = handed.get("seqs")
        if not isinstance(seqs, dict):
            return
        for session_id, last_seq in list(seqs.items())[: self.settings.max_sessions_per_socket]:
            if not isinstance(last_seq, int) or isinstance(last_seq, bool):
                continue
            try:
                await self.on_join_chat(sid, {"session_id": session_id, "last_seq": last_seq})
            except GatewayError as exc:
                log.info("sid %s: catching up on %s failed: %s", sid, session_id, exc.detail)

    async def verify(self, token: object) -> Identity:
        """The identity a token proves (user mode). Raises :class:`GatewayError`."""
        try:
            return await self.auth.verify(token)
        except AuthError as exc:
            expired = exc.code == ErrorCode.TOKEN_EXPIRED.value
            code = ErrorCode.TOKEN_EXPIRED if expired else ErrorCode.UNAUTHORIZED
            raise GatewayError(code, exc.detail) from None

    def _set_identity(self, sid: str, identity: Identity) -> None:
        self._identities[sid] = identity
        notice_at = identity.expires_at - self.settings.token_refresh_window_s
        number = next(self._expiry_numbers)
        heapq.heappush(self._expiries, (notice_at, _NOTICE, number, sid, identity))
        heapq.heappush(self._expiries, (identity.expires_at, _EXPIRY, number, sid, identity))
        if len(self._expiries) > 4 * len(self._identities) + 64:
            # Stale entries (refreshed or gone sockets) would pile up: keep the live ones.
            self._expiries = [e for e in self._expiries if self._identities.get(e[3]) is e[4]]
            heapq.heapify(self._expiries)
        self._expiries_changed.set()

    def user_of(self, sid: str) -> str | None:
        """The socket's user in user mode; ``None`` when user mode is off."""
        if not self.auth.enabled:
            return None
        identity = self._identities.get(sid)
        if identity is None:
            raise GatewayError(ErrorCode.UNAUTHORIZED)
        return identity.user

    async def on_refresh_token(self, sid: str, data: Any) -> dict[str, Any]:
        """``refresh_token {token}``: a fresh token of the same user keeps the socket."""
        if not self.auth.enabled:
            raise invalid("Tokens are not in use on this server")
        token = data.get("token") if isinstance(data, dict) else None
        identity = await self.verify(token)
        current = self._identities.get(sid)
        if current is None or current.user != identity.user:
            raise GatewayError(ErrorCode.UNAUTHORIZED, "A refreshed token must be the same user's")
        self._set_identity(sid, identity)
        return {"status": "refreshed", "expires_at": int(identity.expires_at * 1000)}

    async def on_disconnect(self, sid: str, reason: str) -> None:
        # Its memberships are the emitter's: they end with its grace period.
        self._sent_times.pop(sid, None)
        identity = self._identities.pop(sid, None)
        if identity is not None:
            sockets = self._user_sockets.get(identity.user)
            if sockets is not None:
                sockets.discard(sid)
                if not sockets:
                    del self._user_sockets[identity.user]
            self._departed[sid] = identity.user
            while len(self._departed) > self.settings.max_users:
                self._departed.popitem(last=False)

    async def _owner_of(self, session_id: str) -> str | None:
        """The session's owner; raises ``session_not_found`` for an unknown session."""
        if session_id in self._owners:
            self._owners.move_to_end(session_id)
            return self._owners[session_id]
        record = await self.store.get_session(session_id)
        if record is None:
            raise GatewayError(ErrorCode.SESSION_NOT_FOUND)
        self._remember_owner(session_id, record.owner)
        return record.owner

    def _remember_owner(self, session_id: str, owner: str | None) -> None:
        self._owners[session_id] = owner
        while len(self._owners) > self.settings.max_users:
            self._owners.popitem(last=False)

    async def check_owner(self, session_id: str, user: str | None) -> None:
        """Refuse (``session_not_found``, as for an unknown id) a session that is not
        ``user``'s. ``user`` ``None``: user mode is off, anyone may."""
        if user is not None and await self._owner_of(session_id) != user:
            raise GatewayError(ErrorCode.SESSION_NOT_FOUND)

    async def on_join_chat(self, sid: str, data: Any) -> dict[str, Any]:
        obj = data if isinstance(data, dict) else {}
        session_id = validation.session_id_of(data)
        last_seq = validation.last_seq_of(obj)
        await self.check_owner(session_id, self.user_of(sid))
        room = wire.room_of(session_id)
        member = self.emitter.in_room(sid, room)
        cap = self.settings.max_sessions_per_socket
        if not member and self.emitter.room_count(sid) >= cap:
            raise invalid(f"A connection may join at most {cap} sessions; leave one first")
        joins = self._joining.setdefault(session_id, {})
        join = joins[sid] = _Join(parked=[])
        self.emitter.enter_room(sid, room)
        try:
            owned = self.hub.is_live(session_id)
            if self.cluster is not None and not owned:
                # Registered before the state is read: every event after it reaches us.
                owned = await self.cluster.watch(session_id)
            if owned:
                state = await self._turn_state(session_id, last_seq)
            else:
                # A passivated session has no turn in progress, and its actor saved its
                # last seq before it ended: answer from the store without starting one
                # (an idle joined session costs no task). Should an actor start meanwhile,
                # its events are parked above and sent after the replay.
                record = await self.store.get_session(session_id)
                if record is None:
                    raise GatewayError(ErrorCode.SESSION_NOT_FOUND)
                state = TurnState(record.last_seq, False, None, ())
            finished = []
            reload = False
            if last_seq is not None and last_seq < state.last_seq:
                # Half the outbox at most: the replay and what arrives meanwhile fit in it.
                limit = min(self.settings.replay_limit, self.settings.outbox_size // 2)
                finished = [
                    m
                    for m in await self.store.messages_after(session_id, last_seq, limit + 1)
                    if m.seq <= state.last_seq
                ]
                if len(finished) > limit:
                    # Too much to replay over the socket: the client reloads it over REST.
                    finished, reload = [], True
        except BaseException:
            self._end_join(session_id, sid)
            if not member:
                self._undo_enter(sid, session_id)
            raise
        # From here to the end: no checkpoint, so nothing interleaves with the replay.
        self._end_join(session_id, sid)
        if join.overflow:
            if not member:
                self._undo_enter(sid, session_id)
            raise GatewayError(ErrorCode.SESSION_BUSY, "Too many events while joining; retry")
        replay: dict[int, SessionEvent] = {}
        for message in finished:
            replay[message.seq] = MessageEmitted(session_id, message.seq, message)
        for event in state.events:
            if isinstance(event, _REPLAYED) and (last_seq is None or event.seq > last_seq):
                replay.setdefault(event.seq, event)
        for seq in sorted(replay):
            self._emit(replay[seq], to=sid)
        if replay:
            self.metrics.replayed_events.inc(len(replay))
            self.metrics.resumes.labels(kind="last_seq" if last_seq is not None else "turn").inc()
        if reload:
            self.metrics.replay_reloads.inc()
        confirmed = wire.confirmed(session_id, state, reload=reload)
        self.emitter.emit("connection_confirmed", confirmed, to=sid)
        # Events up to the state's seq that are still on their way (in the fan-out's
        # channel, or from the owning node) were just replayed: not again to this socket.
        self._floors.setdefault(session_id, {})[sid] = state.last_seq
        for event in join.parked:
            if event.seq > state.last_seq:
                self._emit(event, to=sid)
        if self.cluster is not None and self._last_seq.get(session_id, -1) < state.last_seq:
            self._last_seq[session_id] = state.last_seq
        return {"status": "joined", "session_id": session_id, "last_seq": state.last_seq}

    def _undo_enter(self, sid: str, session_id: str) -> None:
        room = wire.room_of(session_id)
        self.emitter.leave_room(sid, room)
        if self.cluster is not None and not self.emitter.has_members(room):
            self.cluster.vacated(session_id)

    def _end_join(self, session_id: str, sid: str) -> None:
        joins = self._joining.get(session_id)
        if joins is not None:
            joins.pop(sid, None)
            if not joins:
                del self._joining[session_id]

    async def on_chat_message(self, sid: str, data: Any) -> dict[str, Any]:
        outgoing = validation.outgoing_message(
            data, self.settings.max_message_chars, limits=self.json_limits
        )
        user = self.user_of(sid)
        await self.check_owner(outgoing.session_id, user)
        self.rate_limit(sid)
        return await self.send(outgoing, user)

    async def on_leave_chat(self, sid: str, data: Any) -> dict[str, Any]:
        session_id = validation.session_id_of(data)
        cancelled = False
        room = wire.room_of(session_id)
        floors = self._floors.get(session_id)
        if floors is not None:
            floors.pop(sid, None)
            if not floors:
                del self._floors[session_id]
        if self.emitter.leave_room(sid, room):
            # No connected member is left here; in a cluster, maybe on other nodes.
            nobody = self.cluster is None or await self.cluster.left(
                session_id, members_remain=self.emitter.has_members(room)
            )
            if nobody:
                try:
                    cancelled = await self._cancel(session_id, CancelReason.LEFT, "leave")
                except GatewayError as exc:  # the leave itself is done
                    log.warning("session %s: cancel at the last leave: %s", session_id, exc.detail)
        return {"status": "left", "session_id": session_id, "cancelled": cancelled}

    async def on_stop_response(self, sid: str, data: Any) -> dict[str, Any]:
        session_id = validation.session_id_of(data)
        await self.check_owner(session_id, self.user_of(sid))
        # A stop goes straight to a live actor; only one with no actor (so nothing to
        # stop) costs a store read, to tell an unknown session apart.
        if not self.hub.is_live(session_id) and (
            self.cluster is None or not await self.cluster.owned_anywhere(session_id)
        ):
            if await self.store.get_session(session_id) is None:
                raise GatewayError(ErrorCode.SESSION_NOT_FOUND)
            return {"status": "stopped", "session_id": session_id, "cancelled": False}
        # From now on nothing of the stopped turn but its end reaches the room: chunks
        # waiting in outboxes are dropped here, those still coming in fan_out.
        self._stopped.add(session_id)
        self._drop_chunks(session_id)
        cancelled = await self._cancel(session_id, CancelReason.STOP, "stop")
        if not cancelled and session_id not in self._turns_in_flight:
            self._stopped.discard(session_id)
        return {"status": "stopped", "session_id": session_id, "cancelled": cancelled}

    # ------------------------------------------------------------------ REST-facing API

    async def create_session(self, body: Any, user: str | None = None) -> dict[str, Any]:
        spec = validation.new_session(body)
        cap = self.settings.user_max_sessions
        if user is not None and cap and await self.store.count_sessions(user) >= cap:
            raise GatewayError(
                ErrorCode.RATE_LIMITED,
                f"A user may have at most {cap} sessions; old ones expire after "
                f"{self.settings.session_ttl_hours:g} h without activity",
            )
        record = await self.store.create_session(spec.agent_type, spec.project_id, user)
        self._remember_owner(record.session_id, user)
        self.metrics.stored_sessions.inc()
        return {
            "session_id": record.session_id,
            "agent_type": record.agent_type,
            "project_id": record.project_id,
            "created_at": record.created_at,
        }

    async def get_session(self, session_id: str, user: str | None = None) -> dict[str, Any]:
        record = await self.store.get_session(session_id)
        if record is None or (user is not None and record.owner != user):
            raise GatewayError(ErrorCode.SESSION_NOT_FOUND)
        messages = await self.store.session_messages(session_id)
        last_seq = record.last_seq
        return {
            "session_id": record.session_id,
            "id": record.session_id,
            "project_id": record.project_id,
            "agent_type": record.agent_type,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "last_seq": last_seq,
            "messages": [wire.message_wire(m) for m in messages],
        }

    async def list_sessions(self, user: str, limit: Any, before: Any) -> dict[str, Any]:
        """``GET /sessions``: the user's sessions, most recently active first, one page;
        ``next`` is the ``before`` of the following page (``None``: the last page)."""
        size = validation.page_size(limit, default=20, maximum=self.settings.max_list_sessions)
        cursor = validation.page_cursor(before)
        records = await self.store.list_sessions(user, size + 1, cursor)
        more = len(records) > size
        records = records[:size]
        return {
            "sessions": [
                {
                    "session_id": r.session_id,
                    "project_id": r.project_id,
                    "agent_type": r.agent_type,
                    "created_at": r.created_at,
                    "updated_at": r.updated_at,
                    "last_seq": r.last_seq,
                    "message_count": r.message_count,
                }
                for r in records
            ],
            "next": validation.cursor_of(records[-1].updated_at, records[-1].session_id)
            if more
            else None,
        }

    def validate_rest_message(self, session_id: str, body: Any) -> validation.OutgoingMessage:
        return validation.outgoing_message(
            body, self.settings.max_message_chars, session_id=session_id, limits=self.json_limits
        )

    async def send(
        self, outgoing: validation.OutgoingMessage, user: str | None = None
    ) -> dict[str, Any]:
        """Submit a message (its sender's ownership already checked)."""
        if user is not None:
            self._user_limits(user, outgoing.session_id)
        send, receive = trio.open_memory_channel[SubmitReply](1)
        command = SubmitMessage(
            content=outgoing.message,
            context=outgoing.context,
            client_message_id=outgoing.client_message_id,
            reply=send,
        )
        reply = await self._ask(outgoing.session_id, command, receive)
        if reply.outcome in (SubmitOutcome.ACCEPTED, SubmitOutcome.DUPLICATE):
            return {"status": "sent", "message_id": reply.message_id}
        raise GatewayError(ErrorCode(reply.outcome.value))

    def _user_limits(self, user: str, session_id: str) -> None:
        cap = self.settings.user_concurrent_turns
        replying = self._user_turns.get(user, ())
        if cap and session_id not in replying and len(replying) >= cap:
            raise GatewayError(
                ErrorCode.RATE_LIMITED,
                f"A user may have {cap} replies in progress at once; wait for one to finish",
            )
        wait = self._user_budget.retry_after(user)
        if wait > 0:
            raise GatewayError(
                ErrorCode.RATE_LIMITED, "Too many messages; slow down", retry_after=wait
            )

    # ------------------------------------------------------------------ actors

    async def _ask(
        self, session_id: str, command: Any, receive: trio.MemoryReceiveChannel[Any]
    ) -> Any:
        try:
            await self.hub.deliver(session_id, command)
        except SessionNotFound:
            raise GatewayError(ErrorCode.SESSION_NOT_FOUND) from None
        except SessionBusy:
            raise GatewayError(ErrorCode.SESSION_BUSY) from None
        except HubClosed:
            raise GatewayError(
                ErrorCode.INTERNAL_ERROR, "The server is shutting down; retry shortly"
            ) from None
        except HubError as exc:  # the cluster could not route it (its message says why)
            raise GatewayError(ErrorCode.INTERNAL_ERROR, str(exc)) from None
        with trio.move_on_after(self.settings.actor_reply_timeout_s):
            async with receive:
                try:
                    return await receive.receive()
                except trio.EndOfChannel:
                    pass
        raise GatewayError(ErrorCode.INTERNAL_ERROR, "The session did not answer; retry")

    async def _turn_state(self, session_id: str, after_seq: int | None) -> TurnState:
        send, receive = trio.open_memory_channel[TurnState](1)
        state: TurnState = await self._ask(session_id, GetTurnState(after_seq, send), receive)
        return state

    async def _cancel(self, session_id: str, reason: CancelReason, why: str) -> bool:
        """Cancel the session's turn in flight; whether one was cancelled."""
        if self.cluster is None and not self.hub.is_live(session_id):
            return False
        send, receive = trio.open_memory_channel[bool](1)
        self._cancel_requested.setdefault(session_id, time.perf_counter())
        cancelled: bool = await self._ask(session_id, CancelTurn(reason, send), receive)
        if cancelled:
            self.metrics.cancels.labels(reason=why).inc()
        else:
            self._cancel_requested.pop(session_id, None)
        return cancelled

    def _room_vacated(self, room: str) -> None:
        """The room's last member is gone for good (grace over): cancel its turn."""
        session_id = wire.session_of(room)
        if session_id is None:
            return
        self._floors.pop(session_id, None)
        if self.cluster is not None:
            if session_id not in self._turns_in_flight:
                self._last_seq.pop(session_id, None)
            self.cluster.vacated(session_id)  # other nodes' members count too
            return
        if session_id not in self._turns_in_flight:
            return
        if self.hub.cancel_nowait(session_id, CancelReason.LEFT):
            self._cancel_requested.setdefault(session_id, time.perf_counter())
            self.metrics.cancels.labels(reason="grace_over").inc()

    def stop_here(self, session_id: str) -> None:
        """A stop routed here from another node: nothing of the turn but its end reaches
        this node's members either."""
        if session_id in self._turns_in_flight:
            self._stopped.add(session_id)
        self._drop_chunks(session_id)

    async def cancel_left(self, session_id: str) -> None:
        """No node has a member of the session's room any more (cluster mode)."""
        await self._cancel(session_id, CancelReason.LEFT, "grace_over")

    def _drop_chunks(self, session_id: str) -> None:
        def unwanted(data: Any) -> bool:
            return type(data) is ChunkStreamed and data.session_id == session_id

        dropped = self.emitter.drop_queued(wire.room_of(session_id), unwanted)
        if dropped:
            self.metrics.chunks_dropped.inc(dropped)

    def _emit(
        self,
        event: SessionEvent,
        *,
        room: str | None = None,
        to: str | None = None,
        skip: list[str] | None = None,
    ) -> None:
        name = wire.event_name(event)
        if name is not None:
            self.emitter.emit(name, event, room=room, to=to, skip=skip or (), render=wire.payload)

    def merge(self, earlier: Any, later: Any) -> Any | None:
        """The outbox merger (see :meth:`SocketIOServer.set_outbox_merger`)."""
        if type(earlier) is ChunkStreamed and type(later) is ChunkStreamed:
            return earlier.merge(later, self.settings.max_merged_chars)
        return None

    def observe_sent(self, data: Any) -> None:
        """A rendered event was first handed to a socket's transport (relay latency)."""
        if type(data) is ChunkStreamed and data.read_at:
            self.metrics.relay_seconds.observe(trio.current_time() - data.read_at)

    def rate_limit(self, key: str) -> None:
        """Refuse (``rate_limited``) a chat message past the per-connection budget."""
        now = time.monotonic()
        window = self.settings.rate_limit_window_s
        if len(self._sent_times) > self.settings.rate_limit_keys:
            self._sent_times = {
                k: v for k, v in self._sent_times.items() if v and v[-1] > now - window
            }
        times = self._sent_times.setdefault(key, deque())
        while times and times[0] <= now - window:
            times.popleft()
        if len(times) >= self.settings.rate_limit_messages:
            raise GatewayError(ErrorCode.RATE_LIMITED)
        times.append(now)

    # ------------------------------------------------------------------ long-running tasks

    async def fan_out(
        self,
        events: trio.MemoryReceiveChannel[SessionEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Emit every session event to its room, in order. Runs until ``events`` closes.

        One event per checkpoint. Taking a burst without yielding (measured at 100
        sessions, pace 0) lets outboxes merge more and halves CPU per chunk, but every
        scheduler round gets longer and a cancel crosses several tasks: cancel-to-quiet p50
        rose from ~5 to ~25-30 ms with slices of 64 or 16. Cancelling at once comes first.
        """
        task_status.started()
        relay = self._relay if self.cluster is None else self._relay_owned
        async with events:
            async for event in events:
                relay(event)

    def _relay_owned(self, event: SessionEvent) -> None:
        """An event of this node's actor (cluster mode): to the room here and to the other
        nodes watching; nowhere once another node owns the session."""
        cluster = self.cluster
        assert cluster is not None
        if type(event) is ChunkStreamed and event.session_id in self._stopped:
            self.metrics.chunks_dropped.inc()
            return
        if not cluster.may_emit(event.session_id):
            if type(event) is TurnEnded:
                assert isinstance(event, TurnEnded)
                self._turn_ended(event)
            else:
                self.metrics.chunks_dropped.inc()
            return
        self._relay(event)
        cluster.publish(event)

    def relay_remote(self, event: SessionEvent) -> None:
        """An event of a session owned by another node, for this node's members."""
        self._relay(event, remote=True)

    def _relay(self, event: SessionEvent, remote: bool = False) -> None:
        kind = type(event)
        if kind is TurnStarted:
            self._turns_in_flight.add(event.session_id)
            owner = self._owners.get(event.session_id)
            if owner is not None:
                self._user_turns.setdefault(owner, set()).add(event.session_id)
            return
        if kind is TurnEnded:
            assert isinstance(event, TurnEnded)
            self._turn_ended(event, remote)
            return
        session_id = event.session_id
        metrics = self.metrics
        if self.cluster is not None:
            self._last_seq[session_id] = event.seq
        if kind is ChunkStreamed and session_id in self._stopped:
            metrics.chunks_dropped.inc()
            return
        joins = self._joining.get(session_id)
        skip: list[str] = []
        floors = self._floors.get(session_id)
        if floors:
            seq = event.seq
            for joined, floor in list(floors.items()):
                if seq <= floor:
                    skip.append(joined)
                else:  # in seq order from here: nothing more to hold back for it
                    del floors[joined]
            if not floors:
                del self._floors[session_id]
        if joins:
            for sid, join in joins.items():
                if len(join.parked) >= self.settings.join_buffer:
                    join.overflow = True
                else:
                    join.parked.append(event)
                skip.append(sid)
        self._emit(event, room=wire.room_of(session_id), skip=skip)
        if kind is ChunkStreamed:
            metrics.chunks_relayed.inc()
        else:
            metrics.events_relayed.labels(event=wire.event_name(event) or "").inc()

    def _turn_ended(self, event: TurnEnded, remote: bool = False) -> None:
        self._turns_in_flight.discard(event.session_id)
        if self.cluster is not None:
            self._last_seq[event.session_id] = event.seq
            if not self.emitter.has_members(wire.room_of(event.session_id)):
                del self._last_seq[event.session_id]
        owner = self._owners.get(event.session_id)
        replying = self._user_turns.get(owner) if owner is not None else None
        if owner is not None and replying is not None:
            replying.discard(event.session_id)
            if not replying:
                del self._user_turns[owner]
        self._stopped.discard(event.session_id)
        requested = self._cancel_requested.pop(event.session_id, None)
        if requested is not None:
            self.metrics.cancel_to_quiet_seconds.observe(time.perf_counter() - requested)
        if remote:
            return  # the owner counts the turn
        code = event.code.value if event.code is not None else ""
        self.metrics.turns.labels(status=event.status.value, code=code).inc()
        if code.startswith("agent_"):
            self.metrics.upstream_errors.labels(code=code).inc()
        if event.first_chunk_latency_s is not None:
            self.metrics.first_chunk_seconds.observe(event.first_chunk_latency_s)

    async def expire_tokens(
        self,
        disconnect: Callable[[str], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.time,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Tell sockets their token is about to expire, and ``disconnect`` them at its
        expiry unless refreshed. Runs until cancelled."""
        task_status.started()
        while True:
            now = clock()
            while self._expiries and self._expiries[0][0] <= now:
                _, kind, _, sid, identity = heapq.heappop(self._expiries)
                if self._identities.get(sid) is not identity:
                    continue  # refreshed, or gone
                if kind == _NOTICE:
                    left = max(0, math.ceil(identity.expires_at - now))
                    self.emitter.emit(
                        "error",
                        {
                            "type": "error",
                            "session_id": None,
                            "error": f"Token expires in {left} s; send refresh_token",
                            "code": ErrorCode.TOKEN_EXPIRED.value,
                            "expires_at": int(identity.expires_at * 1000),
                        },
                        to=sid,
                    )
                else:
                    self.metrics.refusals.labels(code=ErrorCode.TOKEN_EXPIRED.value).inc()
                    await disconnect(sid)
            wait = self._expiries[0][0] - now if self._expiries else math.inf
            self._expiries_changed = trio.Event()
            with trio.move_on_after(wait):
                await self._expiries_changed.wait()

    async def sweep(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Delete expired sessions and their messages, every ``sweep_interval_s``."""
        task_status.started()
        while True:
            try:
                removed = await self.store.delete_expired()
            except Exception:
                log.exception("session sweep failed")
            else:
                if removed:
                    log.info("removed %d expired session(s)", removed)
                    self.metrics.stored_sessions.dec(removed)
            await trio.sleep(self.settings.sweep_interval_s)

    def refresh_gauges(self) -> None:
        self.metrics.live_sessions.set(self.hub.live_sessions())
        self.metrics.turns_in_flight.set(len(self._turns_in_flight))
