"""The chat gateway: Socket.IO events and REST calls in, session actors behind channels.

Theory of operation
-------------------
The gateway owns no chat state of its own beyond room membership. Every command for a
session goes to its actor through :class:`~actors.chat.hub.SessionHub` (bounded mailboxes);
every event of every session comes back on one bounded channel, drained by
:meth:`Gateway.fan_out`, which emits it to the room ``chat_{session_id}`` through the
:class:`RoomEmitter`. The socket layer merges consecutive ``stream_chunk`` events waiting
in a slow socket's outbox (:func:`merge_chunks`).

Membership. A socket that joined a session is a *member* until it sends ``leave_chat``.
A socket that drops without leaving stays a member in *grace* for ``grace_s`` (the same
window as Socket.IO connection state recovery); reconnecting and re-joining, or being
recovered, ends the grace. When a session has no member and no grace left, its turn in
flight is cancelled (``CancelReason.LEFT``). ``stop_response`` cancels whoever watches.

Resume without gaps. ``join_chat`` enters the room *first* and parks the live events of
that session for that socket while it builds the replay: it asks the actor for its
state (``GetTurnState``: last seq ``S`` and the turn-in-progress events), reads finished
messages after ``last_seq`` up to ``S`` from the store, sends them in seq order, then
``connection_confirmed``, then the parked events with seq > ``S``. The actor is the
authority on seq, and every message it emits is stored before it is emitted, so the
replay and the parked events together are exactly the events after ``last_seq``.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from actors.chat.hub import HubClosed, SessionBusy, SessionHub, SessionNotFound
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
from archon_chat.config import Settings
from archon_chat.store_api import GatewayStore

from . import validation
from .emitter import RoomEmitter
from .errors import GatewayError, invalid
from .metrics import Metrics

log = logging.getLogger(__name__)

#: Events replayed to a rejoining socket (typing is carried by connection_confirmed).
_REPLAYED = (MessageEmitted, ChunkStreamed, StreamCompleted, TurnFailed)
#: Parked events per joining socket; a join takes milliseconds, a busy turn emits a few
#: hundred events a second, so this is never reached by an honest client.
MAX_PARKED = 10_000
#: Sessions one socket may have joined at once (each costs a room entry and bookkeeping).
MAX_SESSIONS_PER_SOCKET = 64
#: Largest merged stream_chunk content in a slow socket's outbox.
MAX_MERGED_CHARS = 65_536
#: Rate-limit budgets kept (sockets and REST client addresses); idle ones are pruned past it.
MAX_RATE_KEYS = 10_000
#: How long a command waits for its actor's answer before the request fails.
ACTOR_REPLY_TIMEOUT_S = 10.0


def room_of(session_id: str) -> str:
    return f"chat_{session_id}"


def merge_chunks(prev_event: str, prev: Any, new_event: str, new: Any) -> Any | None:
    """Merge two queued ``stream_chunk`` payloads of one reply (content concatenated, the
    later seq), or ``None`` if they are not mergeable."""
    if prev_event != "stream_chunk" or new_event != "stream_chunk":
        return None
    if not isinstance(prev, dict) or not isinstance(new, dict):
        return None
    if prev.get("message_id") != new.get("message_id"):
        return None
    if prev.get("session_id") != new.get("session_id"):
        return None
    if len(prev["content"]) + len(new["content"]) > MAX_MERGED_CHARS:
        # Past this, a slow socket's outbox grows by count and hits its bound instead.
        return None
    merged = dict(new)
    merged["content"] = prev["content"] + new["content"]
    return merged


@dataclass
class _Join:
    parked: list[SessionEvent]
    overflow: bool = False


class Gateway:
    def __init__(
        self,
        settings: Settings,
        store: GatewayStore,
        hub: SessionHub,
        emitter: RoomEmitter,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.emitter = emitter
        self.metrics = metrics
        self._joined: dict[str, set[str]] = {}  # sid -> session ids
        self._members: dict[str, set[str]] = {}  # session id -> sids
        self._grace: dict[str, dict[str, float]] = {}  # session id -> {sid: deadline}
        self._grace_changed = trio.Event()
        self._joining: dict[str, dict[str, _Join]] = {}  # session id -> {sid: parked}
        self._sent_times: dict[str, deque[float]] = {}  # sid -> chat_message times
        self._turns_in_flight: set[str] = set()
        self._cancel_requested: dict[str, float] = {}

    # ------------------------------------------------------------------ socket events

    async def on_connect(self, sid: str, recovered: bool, auth: Any) -> bool:
        """Authorise a connection; ``False`` refuses it (``unauthorized``)."""
        if self.settings.api_key:
            token = auth.get("token") if isinstance(auth, dict) else None
            if not isinstance(token, str) or not hmac.compare_digest(
                token.encode(), self.settings.api_key.encode()
            ):
                self.metrics.refusals.labels(code="unauthorized").inc()
                return False
        if recovered:
            # The socket layer restored this sid and its rooms: it is a member again.
            for session_id in self._joined.get(sid, set()):
                self._grace.get(session_id, {}).pop(sid, None)
                self._members.setdefault(session_id, set()).add(sid)
        return True

    async def on_disconnect(self, sid: str, reason: str) -> None:
        self._sent_times.pop(sid, None)
        deadline = trio.current_time() + self.settings.grace_s
        for session_id in self._joined.get(sid, set()):
            members = self._members.get(session_id)
            if members is not None:
                members.discard(sid)
                if not members:
                    del self._members[session_id]
            self._grace.setdefault(session_id, {})[sid] = deadline
        self._grace_changed.set()

    async def on_join_chat(self, sid: str, data: Any) -> dict[str, Any]:
        obj = data if isinstance(data, dict) else {}
        session_id = validation.session_id_of(data)
        last_seq = validation.last_seq_of(obj)
        joined = self._joined.get(sid, ())
        if session_id not in joined and len(joined) >= MAX_SESSIONS_PER_SOCKET:
            raise invalid(
                f"A connection may join at most {MAX_SESSIONS_PER_SOCKET} sessions; leave one first"
            )
        room = room_of(session_id)
        joins = self._joining.setdefault(session_id, {})
        join = joins[sid] = _Join(parked=[])
        self.emitter.enter_room(sid, room)
        try:
            if self.hub.is_live(session_id):
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
            if last_seq is not None:
                finished = await self.store.messages_after(
                    session_id, last_seq, self.settings.max_messages_per_session
                )
        except BaseException:
            self._end_join(session_id, sid)
            self.emitter.leave_room(sid, room)
            raise
        # From here to the end: no checkpoint, so nothing interleaves with the replay.
        self._end_join(session_id, sid)
        if join.overflow:
            self.emitter.leave_room(sid, room)
            raise GatewayError(ErrorCode.SESSION_BUSY, "Too many events while joining; retry")
        replay: dict[int, SessionEvent] = {}
        for message in finished:
            if message.seq <= state.last_seq:
                replay[message.seq] = MessageEmitted(session_id, message.seq, message)
        for event in state.events:
            if isinstance(event, _REPLAYED) and (last_seq is None or event.seq > last_seq):
                replay.setdefault(event.seq, event)
        for seq in sorted(replay):
            event = replay[seq]
            self.emitter.emit(event.name, event.payload(), to=sid)
        if replay:
            self.metrics.replayed_events.inc(len(replay))
            self.metrics.resumes.labels(kind="last_seq" if last_seq is not None else "turn").inc()
        confirmed: dict[str, Any] = {
            "type": "connection_confirmed",
            "session_id": session_id,
            "last_seq": state.last_seq,
            "typing": state.typing,
        }
        if state.turn is not None:
            confirmed["turn"] = {"message_id": state.turn[0], "seq": state.turn[1]}
        self.emitter.emit("connection_confirmed", confirmed, to=sid)
        for event in join.parked:
            if event.seq > state.last_seq and not event.name.startswith("_"):
                self.emitter.emit(event.name, event.payload(), to=sid)
        self._joined.setdefault(sid, set()).add(session_id)
        self._members.setdefault(session_id, set()).add(sid)
        grace = self._grace.get(session_id)
        if grace is not None:
            grace.pop(sid, None)
        return {"status": "joined", "session_id": session_id, "last_seq": state.last_seq}

    def _end_join(self, session_id: str, sid: str) -> None:
        joins = self._joining.get(session_id)
        if joins is not None:
            joins.pop(sid, None)
            if not joins:
                del self._joining[session_id]

    async def on_chat_message(self, sid: str, data: Any) -> dict[str, Any]:
        outgoing = validation.outgoing_message(data, self.settings.max_message_chars)
        self.rate_limit(sid)
        return await self.send(outgoing)

    async def on_leave_chat(self, sid: str, data: Any) -> dict[str, Any]:
        session_id = validation.session_id_of(data)
        self.emitter.leave_room(sid, room_of(session_id))
        joined = self._joined.get(sid)
        if joined is not None:
            joined.discard(session_id)
            if not joined:
                del self._joined[sid]
        members = self._members.get(session_id)
        if members is not None:
            members.discard(sid)
            if not members:
                del self._members[session_id]
        grace = self._grace.get(session_id)
        if grace is not None:
            grace.pop(sid, None)
            if not grace:
                del self._grace[session_id]
        cancelled = False
        if not self._watched(session_id):
            cancelled = await self._cancel(session_id, CancelReason.LEFT)
        return {"status": "left", "session_id": session_id, "cancelled": cancelled}

    async def on_stop_response(self, sid: str, data: Any) -> dict[str, Any]:
        session_id = validation.session_id_of(data)
        # A stop goes straight to a live actor; only one with no actor (so nothing to
        # stop) costs a store read, to tell an unknown session apart.
        if not self.hub.is_live(session_id):
            if await self.store.get_session(session_id) is None:
                raise GatewayError(ErrorCode.SESSION_NOT_FOUND)
            return {"status": "stopped", "session_id": session_id, "cancelled": False}
        cancelled = await self._cancel(session_id, CancelReason.STOP)
        return {"status": "stopped", "session_id": session_id, "cancelled": cancelled}

    # ------------------------------------------------------------------ REST-facing API

    async def create_session(self, body: Any) -> dict[str, Any]:
        spec = validation.new_session(body)
        record = await self.store.create_session(spec.agent_type, spec.project_id)
        return {
            "session_id": record.session_id,
            "agent_type": record.agent_type,
            "project_id": record.project_id,
            "created_at": record.created_at,
        }

    async def get_session(self, session_id: str) -> dict[str, Any]:
        record = await self.store.get_session(session_id)
        if record is None:
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
            "messages": [m.to_wire() for m in messages],
        }

    def validate_rest_message(self, session_id: str, body: Any) -> validation.OutgoingMessage:
        return validation.outgoing_message(
            body, self.settings.max_message_chars, session_id=session_id
        )

    async def send(self, outgoing: validation.OutgoingMessage) -> dict[str, Any]:
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
        with trio.move_on_after(ACTOR_REPLY_TIMEOUT_S):
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

    async def _cancel(self, session_id: str, reason: CancelReason) -> bool:
        if not self.hub.is_live(session_id):
            return False
        send, receive = trio.open_memory_channel[bool](1)
        self._cancel_requested.setdefault(session_id, time.perf_counter())
        cancelled: bool = await self._ask(session_id, CancelTurn(reason, send), receive)
        if not cancelled:
            self._cancel_requested.pop(session_id, None)
        return cancelled

    def _watched(self, session_id: str) -> bool:
        return bool(self._members.get(session_id)) or bool(self._grace.get(session_id))

    def rate_limit(self, key: str) -> None:
        """Refuse (``rate_limited``) a chat message past the per-connection budget."""
        now = time.monotonic()
        window = self.settings.rate_limit_window_s
        if len(self._sent_times) > MAX_RATE_KEYS:
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
        """Emit every session event to its room, in order. Runs until ``events`` closes."""
        task_status.started()
        metrics = self.metrics
        chunks = metrics.chunks_relayed
        async with events:
            async for event in events:
                if isinstance(event, TurnStarted):
                    self._turns_in_flight.add(event.session_id)
                elif isinstance(event, TurnEnded):
                    self._turn_ended(event)
                else:
                    joins = self._joining.get(event.session_id)
                    skip: list[str] = []
                    if joins:
                        for sid, join in joins.items():
                            if len(join.parked) >= MAX_PARKED:
                                join.overflow = True
                            else:
                                join.parked.append(event)
                            skip.append(sid)
                    self.emitter.emit(event.name, event.payload(), room=event.room, skip=skip)
                    if isinstance(event, ChunkStreamed):
                        chunks.inc()
                    else:
                        metrics.events_relayed.labels(event=event.name).inc()

    def _turn_ended(self, event: TurnEnded) -> None:
        self._turns_in_flight.discard(event.session_id)
        code = event.code.value if event.code is not None else ""
        self.metrics.turns.labels(status=event.status.value, code=code).inc()
        if event.first_chunk_latency_s is not None:
            self.metrics.first_chunk_seconds.observe(event.first_chunk_latency_s)
        requested = self._cancel_requested.pop(event.session_id, None)
        if requested is not None:
            self.metrics.cancel_to_quiet_seconds.observe(time.perf_counter() - requested)

    async def expire_graces(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """End disconnect graces when due; cancel turns nobody watches any more."""
        task_status.started()
        while True:
            now = trio.current_time()
            due: list[str] = []
            next_deadline = float("inf")
            for session_id, graces in list(self._grace.items()):
                for sid, deadline in list(graces.items()):
                    if deadline <= now:
                        del graces[sid]
                        self._forget_if_gone(sid)
                    else:
                        next_deadline = min(next_deadline, deadline)
                if not graces:
                    del self._grace[session_id]
                    if not self._members.get(session_id):
                        due.append(session_id)
            for session_id in due:
                try:
                    await self._cancel(session_id, CancelReason.LEFT)
                except GatewayError as exc:
                    log.warning("cancel of unwatched session %s failed: %s", session_id, exc)
            self._grace_changed = trio.Event()
            with trio.move_on_at(next_deadline):
                await self._grace_changed.wait()

    def _forget_if_gone(self, sid: str) -> None:
        sessions = self._joined.get(sid)
        if sessions is None:
            return
        if not any(sid in self._members.get(s, ()) for s in sessions) and not any(
            sid in self._grace.get(s, {}) for s in sessions
        ):
            del self._joined[sid]

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
            await trio.sleep(self.settings.sweep_interval_s)

    def refresh_gauges(self) -> None:
        self.metrics.live_sessions.set(self.hub.live_sessions())
        self.metrics.turns_in_flight.set(len(self._turns_in_flight))
