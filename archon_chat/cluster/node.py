"""This process as one node of a cluster sharing Redis and a store (design.md section 8).

Theory of operation
-------------------
Ownership. A session's actor runs on one node at a time: the node holding the session's
*lease* (:mod:`.scripts`). A node takes a free lease when a command for the session reaches
it (:meth:`ClusterNode.resolve`), renews all its leases in one script every third of
``lease_s`` together with its heartbeat, and releases a lease when the actor passivates.
A node whose renewal finds a lease held by someone else stops that actor at once; and it
emits nothing for a session once its last successful renewal is older than ``lease_s``
(a paused node wakes up deposed: :meth:`may_emit`). The store's fencing token is the second
guard: the new owner's actor acquires the session, and the old one's writes are refused.

Commands. :class:`RoutingHub` is the gateway's hub in cluster mode: a command for a session
this node owns goes to the local actor; otherwise it is sent to the owner's inbox (a Redis
pub/sub channel per node) and the answer comes back on ours (:meth:`ClusterNode.request`).

Delivery. Events of an owned session go to the local room (the gateway) and, through
:meth:`publish`, to the other nodes that watch the session: those registered in the
session's ``room:`` hash when the lease was taken, or that asked for the session's state
since (every ``join_chat`` does). They are queued per destination, and one task
(:meth:`_flush`) sends everything queued in one pipeline: one ``PUBLISH`` per destination per
flush, however many sessions and events it carries. A receiving node hands the events to
its gateway (``relay_remote``), dropping those of a deposed owner (lower epoch).

Membership. ``room:{session}`` says which nodes have members in the room ("c": connected
ones, "g": only sockets in their disconnect grace). When a node's last connected member
leaves, or its last member is gone for good, it updates the hash and learns in the same
script whether any live node still has a connected member; if none has, the turn is
cancelled (the command goes to the owner).

Failure. Every node runs :meth:`_reap`: a node whose heartbeat expired is dead; one live
node wins ``reap:{dead}``, takes the leases of the dead node's turns in flight and starts
their actors here, which find the reply left streaming in the store and end it as
``owner_lost`` with its end events. Redis unreachable: owned sessions keep working (their
leases stay valid for ``lease_s``), commands for sessions owned elsewhere are refused with a
clear error, events for other nodes are dropped (counted; clients resume with ``last_seq``);
when Redis comes back empty, the renewal notices the missing heartbeat and registers again
what this node owns and watches.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import secrets
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import coredis
import trio
from coredis.retry import NoRetryPolicy

from actors.chat.hub import HubClosed, HubError, SessionBusy, SessionHub, SessionNotFound
from actors.chat.messages import (
    CancelReason,
    CancelTurn,
    Command,
    GetTurnState,
    SessionEvent,
    SubmitMessage,
    SubmitReply,
    TurnEnded,
    TurnStarted,
    TurnState,
)
from archon_chat.config import Settings, redact_url
from archon_chat.gateway import wire
from archon_chat.gateway.core import Gateway

from . import codec, scripts
from .metrics import ClusterMetrics

log = logging.getLogger(__name__)


#: what a lost Redis connection raises (coredis runs on anyio)
_LINK_ERRORS = (
    coredis.exceptions.RedisError,
    OSError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)


class ClusterUnavailable(HubError):
    """Redis, or the node owning the session, cannot be reached; the message says which."""


class NotOwner(HubError):
    """The node asked no longer owns the session (routing retries)."""


@dataclass
class _Call:
    done: trio.Event = field(default_factory=trio.Event)
    ok: bool = False
    result: Any = None
    #: the caller stopped waiting (answered, timed out, or the owner moved)
    over: bool = False


#: how soon a request or reply that reached no subscriber is published again
_RESEND_S = 0.1


@dataclass
class _Control:
    """A request or reply on its way to a node's inbox. PUBLISH says how many subscribers
    got it: none means the node is not listening at that moment (resubscribing after a
    Redis hiccup, or gone), so it is certainly undelivered and safe to publish again, which
    happens until ``until`` or until its caller stops waiting."""

    data: bytes
    until: float
    call: _Call | None = None
    #: ``False``: reaching nobody fails the call at once instead (a hand-over request:
    #: a node that is not listening does not hold the socket asked for)
    resend: bool = True

    def wanted(self, now: float) -> bool:
        return now < self.until and (self.call is None or not self.call.over)


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class ClusterNode:
    def __init__(
        self,
        settings: Settings,
        redis: coredis.Redis[bytes],
        hub: SessionHub,
        metrics: ClusterMetrics,
    ) -> None:
        self.settings = settings
        self.id = settings.node_id or default_node_id()
        metrics.node.info({"node": self.id})
        self.redis = redis
        self.hub = hub
        self.metrics = metrics
        self.gateway: Gateway | None = None
        #: (pid, offset, namespace) -> hand-over as JSON, or None (set by the server)
        self.hand_over: Callable[[str, str | None, str], dict[str, Any] | None] | None = None
        self._p = settings.redis_prefix
        self._lease_ms = int(settings.lease_s * 1000)
        self._inbox = self._key("node", self.id)
        #: sessions this node owns -> its epoch
        self._leases: dict[str, int] = {}
        #: owned session -> until when its take alone (before any renewal) holds it
        self._taken_until: dict[str, float] = {}
        #: monotonic time until which the leases are known to be ours
        self._valid_until = -math.inf
        #: when renewals began to fail (``None``: the last one worked)
        self._redis_down_since: float | None = None
        #: owned session -> the other nodes watching it
        self._dest: dict[str, set[str]] = {}
        #: session -> newest owner epoch seen (events of older owners are dropped)
        self._epochs: OrderedDict[str, int] = OrderedDict()
        #: session -> the node whose events for it arrived last (a hint: a stop or a
        #: join's state request goes there without asking Redis first)
        self._owners: dict[str, str] = {}
        #: session -> what this node registered in its room hash ("c" or "g")
        self._watching: dict[str, str] = {}
        #: watches that could not be registered (Redis unreachable): registered again
        self._rewatch: set[str] = set()
        #: owned sessions with a turn in flight (mirrored in turns:{id} for the reaper)
        self._turns: set[str] = set()
        self._taking: dict[str, trio.Lock] = {}
        # what the next flush sends
        self._out: dict[str, list[_Control | tuple[str, int, SessionEvent]]] = {}
        #: requests and replies that reached no subscriber: (node, item), published again
        self._resend: list[tuple[str, _Control]] = []
        self._queued = 0
        #: turn registrations the next flush sends: session -> True (in flight) / False
        self._turn_ops: dict[str, bool] = {}
        self._releases: list[tuple[str, int]] = []
        self._wake = trio.Event()
        self._calls: dict[int, _Call] = {}
        self._call_ids = itertools.count(1)
        self._serving = 0
        #: session -> whether to cancel its turn if no node has members left
        self._vacated: dict[str, bool] = {}
        self._vacated_wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._announced = False
        hub.on_actor_exit(self._actor_exited)
        self.routing_hub = RoutingHub(self, hub)

    def _key(self, kind: str, name: str) -> str:
        return f"{self._p}{kind}:{name}"

    def attach(self, gateway: Gateway) -> None:
        self.gateway = gateway

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster and serve it until cancelled. Started once Redis answers
        (waits up to ``db_connect_timeout_s`` for it, then raises
        :class:`ClusterUnavailable`) and the inbox is subscribed."""
        await self._wait_for_redis()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._subscribe)
            await self._renew_once()
            nursery.start_soon(self._renew)
            nursery.start_soon(self._flush)
            nursery.start_soon(self._reap)
            nursery.start_soon(self._check_vacated)
            log.info("cluster node %s joined (%s)", self.id, self._p)
            task_status.started()

    async def _wait_for_redis(self) -> None:
        deadline = trio.current_time() + self.settings.db_connect_timeout_s
        delay = 0.1
        while True:
            try:
                with trio.fail_after(self.settings.redis_timeout_s):
                    await self.redis.ping()
                self.metrics.redis_commands.inc()
                return
            except (coredis.exceptions.RedisError, trio.TooSlowError, OSError) as exc:
                if trio.current_time() + delay > deadline:
                    raise ClusterUnavailable(
                        f"Redis at {redact_url(self.settings.redis_url)} cannot be reached: {exc}"
                    ) from None
                log.warning("Redis not reachable yet (%s); retrying", exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def leave(self) -> None:
        """Leave the cluster (shutdown): release leases, forget watches and heartbeat.
        Best effort, bounded by ``redis_timeout_s``."""
        with trio.move_on_after(self.settings.redis_timeout_s) as scope:
            scope.shield = True
            try:
                releases = [*self._leases.items(), *self._releases]
                async with self.redis.pipeline(transaction=False) as pipe:
                    for session_id, epoch in releases:
                        pipe.eval(
                            scripts.RELEASE,
                            [self._key("lease", session_id)],
                            [f"{self.id} {epoch}"],
                        )
                    for session_id in self._watching:
                        pipe.hdel(self._key("room", session_id), [self.id])
                    pipe.delete([self._key("alive", self.id), self._key("turns", self.id)])
                    pipe.srem(self._key("nodes", "all"), [self.id])
                self.metrics.redis_commands.inc(len(releases) + len(self._watching) + 2)
            except Exception as exc:
                log.warning("leaving the cluster: %s", exc)
        self._leases.clear()
        self._taken_until.clear()

    # ------------------------------------------------------------------ ownership

    def owns(self, session_id: str) -> bool:
        if session_id not in self._leases:
            return False
        return self._leases_valid() or trio.current_time() < self._taken_until[session_id]

    def _leases_valid(self) -> bool:
        """Our leases still hold: renewed less than ``lease_s`` ago, or Redis became
        unreachable while they held (then nobody can have taken them through it; the
        store's fencing still guards the writes). A node that was paused past its lease
        wakes up with neither: it emits nothing until a renewal says what it still owns."""
        if trio.current_time() < self._valid_until:
            return True
        down = self._redis_down_since
        return down is not None and down < self._valid_until

    def may_emit(self, session_id: str) -> bool:
        return self.owns(session_id)

    async def resolve(self, session_id: str, *, take: bool) -> str | None:
        """The node owning the session: this one after taking a free lease (``take``),
        another one, or ``None`` (no owner, and ``take`` is false). Raises
        :class:`ClusterUnavailable` when Redis cannot be reached."""
        if self.owns(session_id):
            return self.id
        try:
            with trio.fail_after(self.settings.redis_timeout_s):
                if not take:
                    value = await self.redis.get(self._key("lease", session_id))
                    self.metrics.redis_commands.inc()
                    lease = scripts.parse_lease(value)
                    return None if lease is None else lease[0]
                lock = self._taking.setdefault(session_id, trio.Lock())
                try:
                    async with lock:
                        if self.owns(session_id):
                            return self.id
                        return await self._take(session_id)
                finally:
                    if not lock.locked() and self._taking.get(session_id) is lock:
                        del self._taking[session_id]
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError) as exc:
            raise ClusterUnavailable(
                f"The cluster cannot be reached ({type(exc).__name__}); retry shortly"
            ) from None

    async def _take(self, session_id: str) -> str:
        keys = [self._key("lease", session_id), self._key("room", session_id)]
        force = "0"
        while True:
            result: Any = await self.redis.eval(
                scripts.TAKE, keys, [self.id, str(self._lease_ms), force]
            )
            self.metrics.redis_commands.inc()
            if int(result[0]) == 1:
                epoch = int(_text(result[1]))
                self._own(session_id, epoch, {_text(n) for n in result[2]})
                return self.id
            lease = scripts.parse_lease(result[1])
            if lease is None:
                continue  # malformed: taken again below only if ours
            if lease[0] == self.id and force == "0":
                force = "1"  # held under our name by an earlier run of this node id
                continue
            return lease[0]

    def _own(self, session_id: str, epoch: int, watchers: set[str]) -> None:
        self._leases[session_id] = epoch
        # Set just now: it holds for lease_s from here, whatever the last renewal said.
        self._taken_until[session_id] = trio.current_time() + self.settings.lease_s
        watchers.discard(self.id)
        self._dest[session_id] = watchers
        self._saw_epoch(session_id, epoch)

    def _saw_epoch(self, session_id: str, epoch: int) -> bool:
        """Remember the session's newest owner epoch; whether ``epoch`` is not older."""
        seen = self._epochs.get(session_id)
        if seen is not None and epoch < seen:
            return False
        self._epochs[session_id] = epoch
        self._epochs.move_to_end(session_id)
        while len(self._epochs) > self.settings.cluster_epochs_kept:
            forgotten, _ = self._epochs.popitem(last=False)
            self._owners.pop(forgotten, None)
        return True

    def release(self, session_id: str) -> None:
        """Give the session's lease back (no actor runs it here). Not a checkpoint."""
        self._actor_exited(session_id)

    def _actor_exited(self, session_id: str) -> None:
        """The local actor ended (passivated, stopped, given up): release its lease."""
        epoch = self._leases.pop(session_id, None)
        self._taken_until.pop(session_id, None)
        self._dest.pop(session_id, None)
        if session_id in self._turns:
            self._turns.discard(session_id)
            self._turn_ops[session_id] = False
        if epoch is not None:
            self._releases.append((session_id, epoch))
            self._wake.set()

    def _lose(self, session_id: str) -> None:
        """Someone else holds the session's lease now: stop our actor, emit nothing more."""
        log.warning("session %s: lease lost to another node; its actor here stops", session_id)
        self._leases.pop(session_id, None)
        self._taken_until.pop(session_id, None)
        self._dest.pop(session_id, None)
        self._turns.discard(session_id)
        self.metrics.leases_lost.inc()
        self.hub.stop_nowait(session_id)

    async def _renew(self) -> None:
        while True:
            await trio.sleep(self.settings.lease_s / 3)
            await self._renew_once()

    async def _renew_once(self) -> None:
        sessions = list(self._leases)
        started = trio.current_time()
        keys = [self._key("alive", self.id), self._key("nodes", "all")]
        keys += [self._key("lease", s) for s in sessions]
        args = [self.id, str(self._lease_ms)] + [str(self._leases[s]) for s in sessions]
        try:
            with trio.fail_after(self.settings.redis_timeout_s):
                result: Any = await self.redis.eval(scripts.RENEW, keys, args)
            self.metrics.redis_commands.inc()
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError) as exc:
            self.metrics.redis_errors.inc()
            if self._redis_down_since is None:
                self._redis_down_since = started
            log.warning("cluster: lease renewal failed (%s)", exc)
            return
        self._redis_down_since = None
        self._valid_until = started + self.settings.lease_s
        if self._rewatch and await self._register_again():
            self._rewatch.clear()
        for index in result[1:]:
            session_id = sessions[int(index) - 1]
            if self._leases.get(session_id) == int(args[int(index) + 1]):
                self._lose(session_id)
        if int(result[0]) == 1:
            if self._announced:
                log.warning("cluster: Redis lost this node's keys; registering again")
                if not await self._register_again():
                    self._rewatch.update(self._watching)  # again at the next renewal
            self._announced = True

    async def _register_again(self) -> bool:
        """Redis came back empty: watches and turns in flight, as this node knows them."""
        try:
            with trio.fail_after(self.settings.redis_timeout_s):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for session_id, mode in self._watching.items():
                        key = self._key("room", session_id)
                        pipe.hset(key, {self.id: mode})
                        pipe.pexpire(key, self._room_ttl_ms)
                    if self._turns:
                        pipe.hset(self._key("turns", self.id), dict.fromkeys(self._turns, "1"))
            self.metrics.redis_commands.inc(2 * len(self._watching) + 1)
            return True
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError) as exc:
            self.metrics.redis_errors.inc()
            log.warning("cluster: registering again failed (%s)", exc)
            return False

    @property
    def _room_ttl_ms(self) -> int:
        return int(self.settings.session_ttl_hours * 3_600_000) + self._lease_ms

    # ------------------------------------------------------------------ watching

    async def watch(self, session_id: str) -> bool:
        if self.owns(session_id):
            self._watching[session_id] = "c"
            return True
        try:
            with trio.fail_after(self.settings.redis_timeout_s):
                value = await self.redis.eval(
                    scripts.WATCH,
                    [self._key("room", session_id), self._key("lease", session_id)],
                    [self.id, str(self._room_ttl_ms)],
                )
            self.metrics.redis_commands.inc()
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError) as exc:
            # Answered from the store; registered once Redis answers again.
            self.metrics.redis_errors.inc()
            log.warning("cluster: could not register a watch of %s (%s)", session_id, exc)
            self._watching[session_id] = "c"
            self._rewatch.add(session_id)
            return False
        self._watching[session_id] = "c"
        self._rewatch.discard(session_id)
        lease = scripts.parse_lease(value)
        if lease is None:
            return False
        owner, epoch = lease
        self._saw_epoch(session_id, epoch)
        if owner != self.id:
            # Events sent before the owner hears of us are not lost: the join asks the
            # owner for the session's state next, which also adds us as a destination.
            self._send_request(owner, "watch", session_id, {})
        return True

    def owner_hint(self, session_id: str) -> str | None:
        """The node this one last received the session's events from, if it still has
        the session in mind: likely its owner (a request to it says if it is not)."""
        owner = self._owners.get(session_id)
        return None if owner is None or session_id not in self._epochs else owner

    def forget_owner(self, session_id: str) -> None:
        self._owners.pop(session_id, None)

    async def owned_anywhere(self, session_id: str) -> bool:
        if self.owns(session_id) or self.owner_hint(session_id) is not None:
            return True
        try:
            return await self.resolve(session_id, take=False) is not None
        except ClusterUnavailable:
            return True  # cannot tell: the command itself then says why it failed

    async def left(self, session_id: str, *, members_remain: bool) -> bool:
        mode = "g" if members_remain else "-"
        if not members_remain:
            self._watching.pop(session_id, None)
        else:
            self._watching[session_id] = "g"
        try:
            with trio.fail_after(self.settings.redis_timeout_s):
                result: Any = await self.redis.eval(
                    scripts.LEFT,
                    [self._key("room", session_id), self._key("lease", session_id)],
                    [self.id, mode, self._p],
                )
            self.metrics.redis_commands.inc()
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError) as exc:
            self.metrics.redis_errors.inc()
            log.warning("cluster: could not record a leave of %s (%s)", session_id, exc)
            # Without Redis nobody can tell: the members here are gone, so are we.
            return True
        lease = scripts.parse_lease(result[1])
        if mode == "-" and lease is not None and lease[0] != self.id:
            self._send_request(lease[0], "unwatch", session_id, {})
        return int(result[0]) == 1

    def vacated(self, session_id: str) -> None:
        self._vacated[session_id] = True
        self._vacated_wake.set()

    def rooms_moved(self, namespace: str, rooms: list[str]) -> None:
        """Sockets handed over to another node took these rooms' last members here: this
        node stops watching them (the turn goes on: its members moved, they did not go)."""
        if namespace != "/":
            return
        for room in rooms:
            session_id = wire.session_of(room)
            if session_id is not None and session_id not in self._vacated:
                self._vacated[session_id] = False
        self._vacated_wake.set()

    async def _check_vacated(self) -> None:
        gateway = self._gateway()
        while True:
            await self._vacated_wake.wait()
            self._vacated_wake = trio.Event()
            while self._vacated:
                session_id = next(iter(self._vacated))
                cancel = self._vacated.pop(session_id)
                if gateway.emitter.has_members(wire.room_of(session_id)):
                    continue  # somebody joined again meanwhile
                if await self.left(session_id, members_remain=False) and cancel:
                    try:
                        await gateway.cancel_left(session_id)
                    except Exception as exc:
                        log.warning("session %s: cancel after the last member: %s", session_id, exc)

    # ------------------------------------------------------------------ events out

    def publish(self, event: SessionEvent) -> None:
        session_id = event.session_id
        kind = type(event)
        if kind is TurnStarted:
            self._turns.add(session_id)
            self._turn_ops[session_id] = True
            self._wake.set()
        elif kind is TurnEnded and session_id in self._turns:
            self._turns.discard(session_id)
            self._turn_ops[session_id] = False
            self._wake.set()
        dest = self._dest.get(session_id)
        if not dest:
            return
        epoch = self._leases[session_id]
        for node in dest:
            if self._queued >= self.settings.cluster_queue:
                self.metrics.dropped_events.labels(reason="queue_full").inc()
                continue
            self._out.setdefault(node, []).append((self.id, epoch, event))
            self._queued += 1
        self._wake.set()

    def _send_request(
        self,
        node: str,
        kind: str,
        session_id: str,
        args: dict[str, Any],
        call: _Call | None = None,
    ) -> int:
        call_id = next(self._call_ids)
        if call is not None:
            self._calls[call_id] = call
        data = codec.encode_request(call_id, self.id, kind, session_id, args)
        self._send(node, data, call, resend=kind != "handover")
        return call_id

    def _send_reply(self, node: str, call_id: int, ok: bool, result: Any) -> None:
        self._send(node, codec.encode_reply(call_id, ok, result))

    def _send(
        self, node: str, data: bytes, call: _Call | None = None, *, resend: bool = True
    ) -> None:
        until = trio.current_time() + self.settings.cluster_rpc_timeout_s
        self._out.setdefault(node, []).append(_Control(data, until, call, resend))
        self._wake.set()

    async def _flush(self) -> None:
        while True:
            with trio.move_on_after(_RESEND_S if self._resend else math.inf):
                await self._wake.wait()
            self._wake = trio.Event()
            out, self._out = self._out, {}
            now = trio.current_time()
            if self._resend:
                # What reached nobody goes again, ahead of what came since (kept in order).
                fresh, out = out, {}
                for node, again in self._resend:
                    if again.wanted(now):
                        out.setdefault(node, []).append(again)
                for node, items in fresh.items():
                    out.setdefault(node, []).extend(items)
                self._resend = []
            events, self._queued = self._queued, 0
            turn_ops, self._turn_ops = self._turn_ops, {}
            releases, self._releases = self._releases, []
            # Requests and replies first: a stop or a join's state must not queue behind
            # a flush's worth of chunks (joins drop what they already replayed).
            control: list[tuple[str, _Control]] = []
            messages: list[tuple[str, bytes]] = []
            for node, items in out.items():
                channel = self._key("node", node)
                writer: codec.BatchWriter | None = None
                for item in items:
                    if isinstance(item, _Control):
                        control.append((node, item))
                        continue
                    if writer is None:
                        writer = codec.BatchWriter(self.settings.cluster_batch_bytes)
                    if not writer.add(*item):
                        messages.append((channel, writer.finish()))
                        writer = codec.BatchWriter(self.settings.cluster_batch_bytes)
                        if not writer.add(*item):
                            self.metrics.dropped_events.labels(reason="too_large").inc()
                            events -= 1
                if writer is not None:
                    messages.append((channel, writer.finish()))
            commands = len(control) + len(messages) + len(releases)
            turns_key = self._key("turns", self.id)
            added = [s for s, on in turn_ops.items() if on and s in self._turns]
            removed = [s for s, on in turn_ops.items() if not on and s not in self._turns]
            commands += bool(added) + bool(removed)
            if not commands:
                continue
            try:
                with trio.fail_after(self.settings.redis_timeout_s):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        reached = [
                            pipe.publish(self._key("node", node), item.data)
                            for node, item in control
                        ]
                        for channel, data in messages:
                            pipe.publish(channel, data)
                        if added:
                            pipe.hset(turns_key, dict.fromkeys(added, "1"))
                        if removed:
                            pipe.hdel(turns_key, removed)
                        for session_id, epoch in releases:
                            pipe.eval(
                                scripts.RELEASE,
                                [self._key("lease", session_id)],
                                [f"{self.id} {epoch}"],
                            )
                    for (node, item), receivers in zip(control, reached, strict=True):
                        if await receivers:
                            continue
                        if item.resend:
                            self._resend.append((node, item))
                        elif item.call is not None and not item.call.done.is_set():
                            item.call.result = "unreachable"
                            item.call.done.set()
                self.metrics.redis_commands.inc(commands)
                self.metrics.published_events.inc(events)
                self.metrics.resent.inc(len(self._resend))
            except (coredis.exceptions.RedisError, trio.TooSlowError, OSError) as exc:
                self.metrics.redis_errors.inc()
                if events:
                    self.metrics.dropped_events.labels(reason="redis_down").inc(events)
                log.warning("cluster: publishing failed (%s); %d events dropped", exc, events)
                for _, item in control:
                    # Its caller hears now what it would hear at the routing timeout.
                    if item.call is not None and not item.call.done.is_set():
                        item.call.result = "unreachable"
                        item.call.done.set()
                # Turn registrations are kept: the reaper must know our turns.
                self._turn_ops = {**turn_ops, **self._turn_ops}
                await trio.sleep(min(1.0, self.settings.redis_timeout_s))

    # ------------------------------------------------------------------ inbox

    async def _subscribe(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        delay = 0.1

        def ready() -> None:
            nonlocal started, delay
            delay = 0.1
            if not started:
                started = True
                task_status.started()

        while True:
            try:
                await self._listen(ready)
            except* _LINK_ERRORS as group:
                self.metrics.redis_errors.inc()
                log.warning(
                    "cluster: inbox subscription lost (%s); resubscribing", group.exceptions[0]
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _listen(self, ready: Callable[[], None]) -> None:
        pubsub = self.redis.pubsub(
            channels=[self._inbox], retry_policy=NoRetryPolicy(), ignore_subscribe_messages=True
        )
        async with pubsub:
            ready()
            async for message in pubsub:
                if message["type"] == "message":
                    self._received(message["data"])

    def _received(self, data: Any) -> None:
        try:
            message = codec.decode_message(
                data if isinstance(data, bytes) else _text(data).encode(),
                max_bytes=self.settings.cluster_batch_bytes
                * 64,  # a batch may hold one event over the cap
            )
        except codec.CodecError as exc:
            log.warning("cluster: undecodable message on the inbox: %s", exc)
            return
        if isinstance(message, codec.Batch):
            gateway = self._gateway()
            received = 0
            for owner, epoch, event in message.events:
                if not self._saw_epoch(event.session_id, epoch) or owner == self.id:
                    self.metrics.dropped_events.labels(reason="deposed").inc()
                    continue
                self._owners[event.session_id] = owner
                gateway.relay_remote(event)
                received += 1
            self.metrics.received_events.inc(received)
        elif isinstance(message, codec.Reply):
            call = self._calls.get(message.req_id)
            if call is not None:
                call.ok, call.result = message.ok, message.result
                call.done.set()
        else:
            self._serve(message)

    def _gateway(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("the cluster node has no gateway attached")
        return self.gateway

    # ------------------------------------------------------------------ requests

    async def request(self, node: str, kind: str, session_id: str, args: dict[str, Any]) -> Any:
        """Ask ``node`` to do ``kind`` for the session; its answer. Raises
        :class:`NotOwner`, :class:`ClusterUnavailable` (no answer within
        ``cluster_rpc_timeout_s``) or the hub error the owner met."""
        call = _Call()
        call_id = self._send_request(node, kind, session_id, args, call)
        self.metrics.routed.labels(kind=kind).inc()
        try:
            with trio.move_on_after(self.settings.cluster_rpc_timeout_s):
                while True:
                    # A dead owner never answers: once its lease is gone or taken, the
                    # command goes to whoever owns the session now (checked each slice).
                    with trio.move_on_after(min(0.5, self.settings.lease_s / 10)):
                        await call.done.wait()
                    if call.done.is_set():
                        break
                    if session_id and await self._lease_moved(session_id, node):
                        raise NotOwner(session_id)
        finally:
            call.over = True
            del self._calls[call_id]
        if not call.done.is_set():
            raise ClusterUnavailable(
                "The node answering this session did not respond; retry shortly"
            )
        if call.ok:
            return call.result
        raise _error_of(call.result)

    async def _lease_moved(self, session_id: str, owner: str) -> bool:
        """Whether ``owner`` no longer holds the session's lease (unknown: ``False``)."""
        try:
            with trio.fail_after(self.settings.redis_timeout_s):
                value = await self.redis.get(self._key("lease", session_id))
            self.metrics.redis_commands.inc()
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError):
            return False
        lease = scripts.parse_lease(value)
        return lease is None or lease[0] != owner

    def _serve(self, request: codec.Request) -> None:
        if request.kind == "watch":
            if self.owns(request.session_id):
                self._dest.setdefault(request.session_id, set()).add(request.origin)
            return
        if request.kind == "unwatch":
            dest = self._dest.get(request.session_id)
            if dest is not None:
                dest.discard(request.origin)
            return
        if self._serving >= self.settings.cluster_max_requests or self._nursery is None:
            self._send_reply(request.origin, request.req_id, False, "busy")
            return
        self._serving += 1
        self._nursery.start_soon(self._answer, request)

    async def _answer(self, request: codec.Request) -> None:
        try:
            ok, result = True, await self._handle(request)
        except NotOwner:
            ok, result = False, "not_owner"
        except SessionNotFound:
            ok, result = False, "session_not_found"
        except SessionBusy:
            ok, result = False, "busy"
        except HubClosed:
            ok, result = False, "closed"
        except Exception as exc:
            log.exception("cluster: request %s for %s failed", request.kind, request.session_id)
            ok, result = False, f"error: {type(exc).__name__}"
        finally:
            self._serving -= 1
        self._send_reply(request.origin, request.req_id, ok, result)

    async def _handle(self, request: codec.Request) -> Any:
        session_id, args = request.session_id, request.args
        if request.kind == "handover":
            hand_over = self.hand_over
            if hand_over is None:
                return None
            return hand_over(str(args.get("pid")), args.get("offset"), str(args.get("namespace")))
        if not self.owns(session_id):
            raise NotOwner(session_id)
        timeout = self.settings.actor_reply_timeout_s
        if request.kind == "submit":
            send, receive = trio.open_memory_channel[SubmitReply](1)
            await self.hub.deliver(session_id, codec.submit_from_args(args, reply=send))
            return codec.submit_reply_to_json(await _answer_of(receive, timeout))
        if request.kind == "cancel":
            reason = CancelReason(args.get("reason"))
            if reason is CancelReason.STOP:
                self._gateway().stop_here(session_id)
            cancel_send, cancel_receive = trio.open_memory_channel[bool](1)
            await self.hub.deliver(session_id, CancelTurn(reason, cancel_send))
            return bool(await _answer_of(cancel_receive, timeout))
        if request.kind == "state":
            # A destination from now on: every event after the state reaches it.
            self._dest.setdefault(session_id, set()).add(request.origin)
            state_send, state_receive = trio.open_memory_channel[TurnState](1)
            after = args.get("after_seq")
            await self.hub.deliver(
                session_id, GetTurnState(after if isinstance(after, int) else None, state_send)
            )
            return codec.turn_state_to_json(await _answer_of(state_receive, timeout))
        raise ValueError(f"unknown request {request.kind!r}")

    async def fetch_hand_over(
        self, pid: str, offset: str | None, namespace: str
    ) -> dict[str, Any] | None:
        """Ask every other live node for the socket with ``pid`` (connection state
        recovery of a client whose reconnect landed here); its hand-over, or ``None``.
        A node that is not listening (dead, not yet reaped) is passed over at once; the
        others are waited for up to ``cluster_rpc_timeout_s``, so a busy holder that
        already gave the socket up is still heard."""
        try:
            with trio.fail_after(self.settings.redis_timeout_s):
                nodes = await self.redis.smembers(self._key("nodes", "all"))
            self.metrics.redis_commands.inc()
        except (coredis.exceptions.RedisError, trio.TooSlowError, OSError):
            return None
        others = [_text(n) for n in nodes if _text(n) != self.id]
        found: list[dict[str, Any]] = []
        args = {"pid": pid, "offset": offset, "namespace": namespace}

        async def ask(node: str, cancel: trio.CancelScope) -> None:
            try:
                result = await self.request(node, "handover", "", args)
            except HubError:
                return
            if isinstance(result, dict):
                found.append(result)
                cancel.cancel()

        with trio.move_on_after(self.settings.cluster_rpc_timeout_s):
            async with trio.open_nursery() as nursery:
                for node in others:
                    nursery.start_soon(ask, node, nursery.cancel_scope)
        return found[0] if found else None

    # ------------------------------------------------------------------ failure

    async def _reap(self) -> None:
        interval = max(0.1, self.settings.lease_s / 10)
        while True:
            await trio.sleep(interval)
            try:
                await self._reap_once()
            except (coredis.exceptions.RedisError, trio.TooSlowError, OSError, HubError) as exc:
                self.metrics.redis_errors.inc()
                log.debug("cluster: reaping skipped (%s)", exc)

    async def _reap_once(self) -> None:
        timeout = self.settings.redis_timeout_s
        with trio.fail_after(timeout):
            members = [_text(n) for n in await self.redis.smembers(self._key("nodes", "all"))]
        others = [n for n in members if n != self.id]
        if not others:
            return
        with trio.fail_after(timeout):
            async with self.redis.pipeline(transaction=False) as pipe:
                checks = [pipe.exists([self._key("alive", n)]) for n in others]
            alive = [bool(await check) for check in checks]
        self.metrics.redis_commands.inc(1 + len(others))
        dead = [n for n, up in zip(others, alive, strict=True) if not up]
        for node in dead:
            for dest in self._dest.values():
                dest.discard(node)
            with trio.fail_after(timeout):
                won = await self.redis.set(
                    self._key("reap", node),
                    self.id,
                    condition=coredis.PureToken.NX,
                    px=self._lease_ms,
                )
                sessions = (
                    [_text(s) for s in await self.redis.hkeys(self._key("turns", node))]
                    if won
                    else []
                )
            self.metrics.redis_commands.inc(2 if won else 1)
            if not won:
                continue
            pending = [s for s in sessions if not await self._take_over(s)]
            if pending:
                continue  # their leases have not expired yet: next round
            with trio.fail_after(timeout):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.delete([self._key("turns", node)])
                    pipe.srem(self._key("nodes", "all"), [node])
            self.metrics.redis_commands.inc(2)
            log.warning("cluster: node %s is gone; %d turn(s) taken over", node, len(sessions))

    async def _take_over(self, session_id: str) -> bool:
        """Own the dead node's session and start its actor here (it ends the reply left
        streaming as ``owner_lost``). False if its lease is still the dead node's."""
        owner = await self.resolve(session_id, take=True)
        if owner != self.id:
            lease_holder_alive = owner is not None and await self.redis.exists(
                [self._key("alive", owner)]
            )
            return bool(lease_holder_alive)
        self.metrics.turns_taken_over.inc()
        send, receive = trio.open_memory_channel[TurnState](1)
        try:
            await self.hub.deliver(session_id, GetTurnState(None, send))
            await _answer_of(receive, self.settings.actor_reply_timeout_s)
        except (HubError, ClusterUnavailable) as exc:
            log.warning("session %s: take-over failed (%s)", session_id, exc)
        return True


async def _answer_of(receive: trio.MemoryReceiveChannel[Any], wait_s: float) -> Any:
    with trio.move_on_after(wait_s):
        async with receive:
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                pass
    raise ClusterUnavailable("The session did not answer; retry")


def _error_of(code: Any) -> HubError:
    if code == "not_owner":
        return NotOwner("not the owner")
    if code == "session_not_found":
        return SessionNotFound("no such session")
    if code == "busy":
        return SessionBusy("the session's owner is busy")
    if code == "closed":
        return HubClosed("the node owning the session is shutting down")
    if code == "unreachable":
        return ClusterUnavailable("The cluster's Redis cannot be reached; retry shortly")
    return ClusterUnavailable(f"The node owning the session failed ({code}); retry")


class RoutingHub:
    """The gateway's hub in cluster mode: commands go to the session's owner."""

    def __init__(self, node: ClusterNode, hub: SessionHub) -> None:
        self.node = node
        self.local = hub

    def live_sessions(self) -> int:
        return self.local.live_sessions()

    def is_live(self, session_id: str) -> bool:
        return self.node.owns(session_id) and self.local.is_live(session_id)

    def cancel_nowait(self, session_id: str, reason: CancelReason) -> bool:
        if not self.node.owns(session_id):
            return False
        return self.local.cancel_nowait(session_id, reason)

    async def deliver(self, session_id: str, command: Command) -> None:
        node = self.node
        cancel = isinstance(command, CancelTurn)
        hint = None if isinstance(command, SubmitMessage) else node.owner_hint(session_id)
        for attempt in range(4):
            if attempt:
                # The owner was letting go (passivating) or changing: let it finish.
                await trio.sleep(0.05 * attempt)
            if hint is not None and not node.owns(session_id):
                owner: str | None = hint  # a stop must not wait for a Redis round trip
                hint = None
            else:
                owner = await node.resolve(session_id, take=not cancel)
            if owner == node.id:
                try:
                    await self.local.deliver(session_id, command)
                except BaseException:
                    if not self.local.is_live(session_id):
                        node.release(session_id)  # taken for an actor that never ran
                    raise
                return
            if owner is None:  # only for a cancel: nothing runs anywhere
                _answer(command, False)
                return
            try:
                result = await node.request(owner, *_request_of(command, session_id))
            except NotOwner:
                node.forget_owner(session_id)
                continue
            _answer(command, _result_of(command, result))
            return
        raise ClusterUnavailable("The session's owner keeps changing; retry")


def _request_of(command: Command, session_id: str) -> tuple[str, str, dict[str, Any]]:
    if isinstance(command, SubmitMessage):
        return "submit", session_id, codec.submit_args(command)
    if isinstance(command, CancelTurn):
        return "cancel", session_id, {"reason": command.reason.value}
    if isinstance(command, GetTurnState):
        return "state", session_id, {"after_seq": command.after_seq}
    raise TypeError(f"cannot route {type(command).__name__}")


def _result_of(command: Command, result: Any) -> Any:
    if isinstance(command, SubmitMessage):
        return codec.submit_reply_from_json(result)
    if isinstance(command, CancelTurn):
        return bool(result)
    return codec.turn_state_from_json(result)


def _answer(command: Command, value: Any) -> None:
    reply = command.reply
    if reply is None:
        return
    try:
        reply.send_nowait(value)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    reply.close()
