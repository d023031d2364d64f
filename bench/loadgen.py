"""One load-generator process: many Socket.IO clients, steered over stdin/stdout.

The controller (:mod:`bench.runner`) starts several of these and moves them through
the steps of a scenario in lockstep, one JSON line per command, one JSON line per
answer, so every measurement window starts when all processes are ready:

* ``setup``: create ``count`` sessions over REST, connect a websocket for each and,
  if asked, ``join_chat``; answers with its failures.
* ``join``: ``join_chat`` every connected client.
* ``turn``: every client sends one ``chat_message`` whose prompt tells the mock agent
  the reply's shape and token, and watches the reply. Modes: ``normal`` (to
  ``stream_complete``), ``stop`` / ``leave`` (``stop_response`` or ``leave_chat`` after
  a share of the chunks, then a quiet window in which every late chunk is counted),
  ``drop`` (the connection is cut after a share of the chunks; the client reconnects
  and resumes with ``join_chat {last_seq}``). A turn may give the watched share of sessions
  (``heavy_every``, chosen at setup) a reply of its own (``heavy_spec``), and with
  ``resume_cut`` a client whose connection the server cut mid-reply reconnects at full
  speed and resumes the same way; the watched clients' texts are hashed and returned, to be
  compared with the agent's. Progress lines go out twice a second.
* ``close``: disconnect every client. ``exit``: leave.

Every step has a deadline; clients that miss it count as failures, never hang.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from array import array
from collections import Counter
from typing import Any

import httpx
import trio
import trio_websocket

from bench.mock_agent import StreamSpec, spec_prompt
from bench.sio_client import Client, Turn

CREATE_CONCURRENCY = 32
CONNECT_CONCURRENCY = 64
PROGRESS_EVERY_S = 0.5


def pack(values: list[float] | array[float]) -> str:
    return base64.b64encode(array("d", values).tobytes()).decode()


def unpack(text: str) -> array[float]:
    out = array("d")
    out.frombytes(base64.b64decode(text))
    return out


class Worker:
    def __init__(self, index: int, out: trio.lowlevel.FdStream) -> None:
        self.index = index
        self.out = out
        self.clients: list[Client] = []
        self.host = "127.0.0.1"
        self.port = 0
        self.url = ""
        self.nursery: trio.Nursery | None = None
        #: the failover point: user messages acknowledged ``sent``, by session
        self.failover_sent: dict[str, list[str]] = {}
        #: ... and when the first new message after the kill was accepted, by session
        self.failover_accepted: dict[str, float] = {}

    async def reply(self, message: dict[str, Any]) -> None:
        await self.out.send_all(json.dumps(message).encode() + b"\n")

    async def run(self, commands: trio.abc.ReceiveStream) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            buf = b""
            while True:
                data = await commands.receive_some(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    command = json.loads(line)
                    op = command["op"]
                    if op == "exit":
                        nursery.cancel_scope.cancel()
                        return
                    started = time.monotonic()
                    result = await getattr(self, f"op_{op}")(command)
                    result.update(op="done", step=op, elapsed=time.monotonic() - started)
                    await self.reply(result)
            nursery.cancel_scope.cancel()

    # -- steps -------------------------------------------------------------------------

    async def op_setup(self, command: dict[str, Any]) -> dict[str, Any]:
        self.url = command["url"]
        self.host, self.port = address(self.url)
        # Several processes of one gateway (scenario 7): clients spread over them, client k
        # (counted over every generator, from ``offset``) on ``urls[k % len(urls)]``; with
        # ``cross`` every session gets a second member, member 1 on the first process and
        # member 2 on the second.
        ports = [address(u)[1] for u in command.get("urls") or [self.url]]
        offset = int(command.get("offset", 0))
        cross = bool(command.get("cross", False)) and len(ports) > 1
        count = int(command["count"])
        slow_rate = float(command.get("slow_rate", 0.0))
        slow_every = int(command.get("slow_every", 0))
        heavy_every = int(command.get("heavy_every", 0))
        deadline = float(command.get("deadline", 120))
        failures: Counter[str] = Counter()
        session_ids: list[str | None] = [None] * count
        with trio.move_on_after(deadline):
            await self._create_sessions(session_ids, failures)
        self.clients = []
        for i, session_id in enumerate(session_ids):
            if session_id is None:
                continue
            slow = slow_every > 0 and i % slow_every == 0
            port = ports[0] if cross else ports[(offset + i) % len(ports)]
            client = Client(self.host, port, session_id, slow_rate if slow else 0.0)
            client.heavy = slow or (heavy_every > 0 and i % heavy_every == 0)
            if cross:
                client.peer = Client(self.host, ports[1], session_id)
            self.clients.append(client)
        if command.get("connect", True):
            self.clients = await self._connect_all(self.clients, failures, deadline)
            if cross:
                peers = [c.peer for c in self.clients if c.peer is not None]
                connected = {id(p) for p in await self._connect_all(peers, failures, deadline)}
                self.clients = [c for c in self.clients if id(c.peer) in connected]
            if command.get("join"):
                await self._join_all(failures, deadline)
        return {"clients": len(self.clients), "failures": dict(failures)}

    async def op_connect(self, command: dict[str, Any]) -> dict[str, Any]:
        failures: Counter[str] = Counter()
        deadline = float(command.get("deadline", 120))
        self.clients = await self._connect_all(self.clients, failures, deadline)
        return {"clients": len(self.clients), "failures": dict(failures)}

    async def op_join(self, command: dict[str, Any]) -> dict[str, Any]:
        failures: Counter[str] = Counter()
        await self._join_all(failures, float(command.get("deadline", 120)))
        return {"clients": len(self.clients), "failures": dict(failures)}

    async def op_close(self, command: dict[str, Any]) -> dict[str, Any]:
        everyone = self.clients + [c.peer for c in self.clients if c.peer is not None]
        with trio.move_on_after(float(command.get("deadline", 30))):
            async with trio.open_nursery() as nursery:
                for client in everyone:
                    nursery.start_soon(client.close)
        for client in everyone:
            if client.stream is not None:
                await trio.aclose_forcefully(client.stream)
            client.scope.cancel()
        closed = len(self.clients)
        self.clients = []
        return {"closed": closed}

    async def op_turn(self, command: dict[str, Any]) -> dict[str, Any]:
        spec = command["spec"]
        mode = command.get("mode", "normal")
        prefix = command["prefix"]
        deadline = float(command.get("deadline", 60))
        share = float(command.get("stop_share", 0.25))
        quiet = float(command.get("quiet", 0.3))
        turns: list[Turn] = []
        tag = "".join(c for c in prefix if c.isalnum())
        extra: dict[str, Any] = {"stops": {}, "resume_s": [], "resume_total_s": [], "acks": 0}
        failures: Counter[str] = Counter()

        heavy_spec = command.get("heavy_spec") or spec
        resume_cut = bool(command.get("resume_cut", False))
        reconnect_delay = float(command.get("reconnect_delay", 0.1))

        async def one(i: int, client: Client) -> None:
            token = f"{prefix}-{self.index}-{i}"
            shape = heavy_spec if client.heavy else spec
            n = int(shape["n"])
            threshold = max(1, int(n * share)) if mode != "normal" else 0
            turn = Turn(token, n, tag, threshold=threshold, keep_text=client.heavy)
            turn.slow = bool(client.slow_rate)
            turn.heavy = client.heavy
            turns.append(turn)
            client.turn = turn
            peer = client.peer
            # The second member watches the same reply from the other process.
            watch = Turn(token, n, tag, threshold=threshold) if peer is not None else None
            if peer is not None and watch is not None:
                peer.turn = watch
                turns.append(watch)
            prompt = spec_prompt(
                StreamSpec(
                    n,
                    int(shape["size"]),
                    float(shape["pace"]),
                    float(shape.get("first", 0)),
                    token,
                    tag,
                    digest=client.heavy,
                )
            )
            turn.sent_at = time.monotonic()
            if watch is not None:
                watch.sent_at = turn.sent_at
            try:
                await client.emit(
                    "chat_message",
                    {"session_id": client.session_id, "message": prompt, "context": {}},
                )
            except trio_websocket.ConnectionClosed:
                turn.errors.append("connection closed")
                return
            if peer is not None and watch is not None:
                await self._cross(client, turn, peer, watch, mode, quiet, reconnect_delay, extra)
                return
            if mode == "normal":
                await turn.done.wait()
                if resume_cut and turn.completed_at is None and client.closed.is_set():
                    # Cut by the server mid-reply (not by this step's end: the reader
                    # runs in the worker's nursery): come back and resume, once.
                    turn.cut = True
                    await self._drop_and_resume(
                        client, turn, reconnect_delay, extra, throttled=False
                    )
                return
            await turn.reached.wait()
            if client.closed.is_set():
                return
            if mode in ("stop", "leave"):
                await self._stop(client, turn, mode, quiet, extra)
            elif mode == "drop":
                await self._drop_and_resume(client, turn, reconnect_delay, extra)

        async def progress() -> None:
            while True:
                await trio.sleep(PROGRESS_EVERY_S)
                await self.reply(
                    {
                        "op": "progress",
                        "chunks": sum(t.distinct for t in turns),
                        "done": sum(1 for t in turns if t.done.is_set()),
                    }
                )

        # Slow clients do not hold the step up: once every other reply is in, they get
        # ``slow_wait`` more (a cut one resumes meanwhile), then what they have is what
        # they got. With ``slow_for`` their link recovers that long after the turn starts.
        slow_wait = float(command.get("slow_wait", command.get("slow_grace", 1.0)))
        slow_for = command.get("slow_for")
        if slow_for is not None:
            for client in self.clients:
                if client.throttle is not None:
                    client.throttle.until = trio.current_time() + float(slow_for)
        async with trio.open_nursery() as outer:
            outer.start_soon(progress)
            with trio.move_on_after(deadline):
                async with trio.open_nursery() as slow_nursery:
                    async with trio.open_nursery() as nursery:
                        for i, client in enumerate(self.clients):
                            if client.closed.is_set():
                                failures["closed before turn"] += 1
                            else:
                                (slow_nursery if client.slow_rate else nursery).start_soon(
                                    one, i, client
                                )
                    slow_nursery.cancel_scope.deadline = trio.current_time() + slow_wait
            outer.cancel_scope.cancel()
        result = self._turn_result([t for t in turns if not t.heavy], mode, failures, extra)
        watched = [t for t in turns if t.heavy]
        result["slow"] = {
            "clients": len(watched),
            "throttled": sum(1 for t in watched if t.slow),
            "completed": sum(1 for t in watched if t.completed_at is not None),
            "disconnected": sum(1 for c in self.clients if c.heavy and c.closed.is_set()),
            "cut": sum(1 for t in watched if t.cut),
            "resumed": sum(1 for t in watched if t.resumed),
            "chunks": sum(t.distinct for t in watched),
            "latency_p50_s": _median([x for t in watched for x in t.latencies]),
            "texts": {
                t.token: {
                    "chunks_sha256": t.text_sha256,
                    "message_sha256": t.message_sha256,
                    "completed": t.completed_at is not None,
                    "cut": t.cut,
                }
                for t in watched
            },
        }
        return result

    async def op_failover_start(self, command: dict[str, Any]) -> dict[str, Any]:
        """Every member 1 sends one ``chat_message`` (asking for an ack) for a long reply;
        answers once every member 2 has seen ``threshold`` chunks of it (or the
        deadline). The replies go on streaming in the background: the controller then
        kills the process owning them and sends ``failover_finish``."""
        spec = command["spec"]
        prefix = command["prefix"]
        tag = "".join(c for c in prefix if c.isalnum())
        n = int(spec["n"])
        threshold = max(1, int(n * float(command.get("stop_share", 0.2))))
        self.failover_sent = {}
        assert self.nursery is not None
        watched: list[Turn] = []
        for i, client in enumerate(self.clients):
            if client.peer is None:
                continue
            client.peer.completions.clear()
            token = f"{prefix}-{self.index}-{i}"
            turn = Turn(token, n, tag)
            watch = Turn(token, n, tag, threshold=threshold)
            client.turn, client.peer.turn = turn, watch
            watched.append(watch)
            prompt = spec_prompt(
                StreamSpec(n, int(spec["size"]), float(spec["pace"]), 0.0, token, tag)
            )
            self.nursery.start_soon(self._send_acked, client, prompt)
        with trio.move_on_after(float(command.get("deadline", 60))):
            for watch in watched:
                await watch.reached.wait()
        return {"sessions": len(watched), "reached": sum(w.reached.is_set() for w in watched)}

    async def op_failover_finish(self, command: dict[str, Any]) -> dict[str, Any]:
        """After the kill (``kill_at``, ``time.monotonic()``): every member 2 sends a new
        message until one is acknowledged ``sent``; the time from the kill to that ack per
        session, the ``owner_lost`` errors seen, and the user messages acknowledged
        ``sent`` (before and after the kill) missing from the session's stored history."""
        kill_at = float(command["kill_at"])
        deadline = float(command.get("deadline", 30))
        retry = float(command.get("retry_s", 0.2))
        accepted: list[float] = []
        accepted_by = self.failover_accepted = {}
        failures: Counter[str] = Counter()
        peers = [c.peer for c in self.clients if c.peer is not None]

        async def recover(peer: Client) -> None:
            # Resent under one client_message_id (the gateway answers a repeat ``sent``
            # without storing it twice), so an attempt stuck on the dead owner does not
            # hold the next one up.
            token = secrets.token_hex(4)
            prompt = f"after the failover {token}"
            async with trio.open_nursery() as attempts:
                while True:
                    if peer.closed.is_set():
                        failures["member 2 disconnected"] += 1
                        break
                    done = trio.Event()
                    attempts.start_soon(self._attempt, peer, prompt, token, done)
                    await trio.sleep(retry)
                    if peer.session_id in accepted_by:
                        accepted.append(accepted_by[peer.session_id] - kill_at)
                        break
                attempts.cancel_scope.cancel()

        with trio.move_on_after(deadline):
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(recover, peer)
        failures["not usable by the deadline"] += len(peers) - len(accepted)
        failed: Counter[str] = Counter()
        lost = await self._lost_messages(failures, failed)
        return {
            "sessions": len(peers),
            "owner_lost": sum(p.owner_lost for p in peers),
            "owner_lost_stale": sum(p.owner_lost_stale for p in peers),
            # The reply cut by the kill ends first (failed), then the new message's.
            "statuses": dict(Counter(p.completions[0] if p.completions else "none" for p in peers)),
            "accepted": len(accepted),
            "accept_s": accepted,
            "sent": sum(len(v) for v in self.failover_sent.values()),
            "lost": lost,
            "stored_failed": dict(failed),
            "failures": {k: v for k, v in failures.items() if v},
        }

    async def _attempt(self, client: Client, prompt: str, token: str, done: trio.Event) -> None:
        """One attempt of the failover's new message; the first ``sent`` ack is timed."""
        try:
            if await self._send_acked(client, prompt, client_message_id=token):
                self.failover_accepted.setdefault(client.session_id, time.monotonic())
        finally:
            done.set()

    async def _send_acked(
        self,
        client: Client,
        prompt: str,
        timeout: float = 10.0,
        client_message_id: str | None = None,
    ) -> bool:
        """One ``chat_message`` asking for an ack; True (and the message recorded as
        sent, once) if the ack says ``sent`` within ``timeout``."""
        data: dict[str, Any] = {"session_id": client.session_id, "message": prompt, "context": {}}
        if client_message_id is not None:
            data["client_message_id"] = client_message_id
        try:
            ack_id, acked = await client.emit_with_ack("chat_message", data)
        except trio_websocket.ConnectionClosed:
            return False
        with trio.move_on_after(timeout):
            await acked.wait()
        args = client.ack_args.pop(ack_id, [])
        reply = args[0] if args and isinstance(args[0], dict) else {}
        if reply.get("status") != "sent":
            return False
        sent = self.failover_sent.setdefault(client.session_id, [])
        if prompt not in sent:
            sent.append(prompt)
        return True

    async def _lost_messages(self, failures: Counter[str], failed: Counter[str]) -> int:
        """User messages acknowledged ``sent`` but missing from the stored history (read
        over REST from the process member 2 is on); the agent messages stored as failed
        are counted into ``failed`` by error code."""
        lost = 0
        peers = {c.session_id: c.peer for c in self.clients if c.peer is not None}
        async with httpx.AsyncClient(timeout=30) as http:
            for session_id, prompts in self.failover_sent.items():
                peer = peers.get(session_id)
                if peer is None:
                    continue
                url = f"http://{peer.host}:{peer.port}/api/agent-chat/sessions/{session_id}"
                try:
                    response = await http.get(url)
                    messages = response.json().get("messages", [])
                    stored = {str(m.get("content")) for m in messages if m.get("sender") == "user"}
                    for m in messages:
                        if m.get("sender") == "agent" and m.get("status") == "failed":
                            failed[str((m.get("error") or {}).get("code"))] += 1
                except (httpx.HTTPError, ValueError) as exc:
                    failures[f"history {type(exc).__name__}"] += 1
                    lost += len(prompts)
                    continue
                lost += sum(1 for p in prompts if p not in stored)
        return lost

    # -- helpers -----------------------------------------------------------------------

    async def _cross(
        self,
        client: Client,
        turn: Turn,
        peer: Client,
        watch: Turn,
        mode: str,
        quiet: float,
        reconnect_delay: float,
        extra: dict[str, Any],
    ) -> None:
        """A reply watched by two members on two processes. ``stop``: member 2 (not on
        the process that received the message, so not its owner) stops it. ``drop``:
        member 1 is cut from its process and resumes on member 2's with ``last_seq``."""
        if mode == "normal":
            await turn.done.wait()
            await watch.done.wait()
            return
        if mode == "stop":
            await watch.reached.wait()
            if not peer.closed.is_set():
                await self._stop(peer, watch, mode, quiet, extra)
            with trio.move_on_after(quiet):
                await turn.done.wait()
            turn.done.set()
            return
        if mode == "drop":
            await turn.reached.wait()
            if not client.closed.is_set():
                client.port = peer.port
                await self._drop_and_resume(client, turn, reconnect_delay, extra)
            await watch.done.wait()

    async def _stop(
        self, client: Client, turn: Turn, mode: str, quiet: float, extra: dict[str, Any]
    ) -> None:
        turn.stop_at = time.monotonic()
        extra["stops"][turn.token] = turn.stop_at
        try:
            if mode == "stop":
                await client.emit("stop_response", {"session_id": client.session_id})
            else:
                turn.stop_ack_id = client.peek_ack_id
                _, acked = await client.emit_with_ack(
                    "leave_chat", {"session_id": client.session_id}
                )
                with trio.move_on_after(2):
                    await acked.wait()
                    extra["acks"] += 1
        except trio_websocket.ConnectionClosed:
            return
        if mode == "stop":
            with trio.move_on_after(5):
                await turn.done.wait()
        # The quiet window: any chunk of this turn arriving now is counted.
        await trio.sleep(quiet)
        turn.done.set()

    async def _drop_and_resume(
        self,
        client: Client,
        turn: Turn,
        delay: float,
        extra: dict[str, Any],
        *,
        throttled: bool = True,
    ) -> None:
        """Cut the connection (if the server has not already), reconnect after ``delay``,
        rejoin with ``last_seq`` and wait for the reply's end."""
        dropped_at = time.monotonic()
        await client.drop()
        await trio.sleep(delay)
        turn.done = trio.Event()
        reconnect_at = time.monotonic()
        assert self.nursery is not None
        try:
            await client.connect(self.nursery, throttled=throttled)
            client.turn = turn
            await client.join(client.last_seq if client.last_seq else None)
        except (OSError, ConnectionError, trio_websocket.HandshakeError) as exc:
            turn.errors.append(f"reconnect: {type(exc).__name__}")
            turn.done.set()
            return
        if client.confirmed_at is not None and not client.closed.is_set():
            turn.resumed = True
            extra["resume_s"].append(client.confirmed_at - reconnect_at)
            extra["resume_total_s"].append(client.confirmed_at - dropped_at)
        await turn.done.wait()

    def _turn_result(
        self, turns: list[Turn], mode: str, failures: Counter[str], extra: dict[str, Any]
    ) -> dict[str, Any]:
        latencies: array[float] = array("d")
        ttfc: list[float] = []
        completed = 0
        sent = [t.sent_at for t in turns if t.sent_at]
        ends = [t.completed_at for t in turns if t.completed_at is not None]
        statuses: Counter[str] = Counter()
        finished = [t for t in turns if t.completed_at is not None]
        for turn in turns:
            latencies.extend(turn.latencies)
            if turn.first_chunk_at is not None:
                ttfc.append(turn.first_chunk_at - turn.sent_at)
            for code in turn.errors:
                failures[f"error {code}"] += 1
            if turn.status is not None:
                statuses[turn.status] += 1
            if mode in ("normal", "drop"):
                if turn.completed_at is None:
                    failures["no stream_complete"] += 1
                elif turn.missing:
                    failures["missing chunks"] += 1
                elif turn.status not in (None, "complete"):
                    failures[f"status {turn.status}"] += 1
                elif not turn.errors:
                    completed += 1
        return {
            "turns": len(turns),
            "completed": completed,
            "failures": dict(failures),
            "statuses": dict(statuses),
            "chunks": sum(t.distinct for t in turns),
            "frames": sum(t.frames for t in turns),
            "duplicates": sum(t.duplicates for t in turns),
            # Gaps only in replies that ended: an unfinished one is a failure of its own.
            "gaps": sum(t.missing for t in finished) if mode == "drop" else 0,
            "gap_turns": sum(1 for t in finished if t.missing) if mode == "drop" else 0,
            "stale_events": sum(t.stale_events for t in turns),
            "foreign_chunks": sum(t.foreign for t in turns),
            "after_stop": sum(t.after_stop for t in turns),
            "after_request": sum(t.after_request for t in turns),
            "first_sent": min(sent) if sent else None,
            "last_complete": max(ends) if ends else None,
            "lat": pack(latencies),
            "ttfc": pack(ttfc),
            "stops": extra["stops"],
            "acks": extra["acks"],
            "resume_s": extra["resume_s"],
            "resume_total_s": extra["resume_total_s"],
        }

    async def _create_sessions(self, session_ids: list[str | None], failures: Counter[str]) -> None:
        limits = httpx.Limits(
            max_connections=CREATE_CONCURRENCY, max_keepalive_connections=CREATE_CONCURRENCY
        )
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=30) as http:
            slots = trio.Semaphore(CREATE_CONCURRENCY)

            async def create(i: int) -> None:
                async with slots:
                    try:
                        response = await http.post(
                            "/api/agent-chat/sessions", json={"agent_type": "rag"}
                        )
                    except httpx.HTTPError as exc:
                        failures[f"create {type(exc).__name__}"] += 1
                        return
                    if response.status_code not in (200, 201):
                        failures[f"create {response.status_code}"] += 1
                        return
                    session_ids[i] = str(response.json()["session_id"])

            async with trio.open_nursery() as nursery:
                for i in range(len(session_ids)):
                    nursery.start_soon(create, i)

    async def _connect_all(
        self, clients: list[Client], failures: Counter[str], deadline: float
    ) -> list[Client]:
        assert self.nursery is not None
        nursery_for_ws = self.nursery
        slots = trio.Semaphore(CONNECT_CONCURRENCY)
        ok: list[Client] = []

        async def connect(client: Client) -> None:
            async with slots:
                try:
                    with trio.fail_after(30):
                        await client.connect(nursery_for_ws)
                except (
                    OSError,
                    ConnectionError,
                    trio_websocket.HandshakeError,
                    trio.TooSlowError,
                ) as exc:
                    failures[f"connect {type(exc).__name__}"] += 1
                    return
                ok.append(client)

        with trio.move_on_after(deadline):
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(connect, client)
        return ok

    async def _join_all(self, failures: Counter[str], deadline: float) -> None:
        slots = trio.Semaphore(CONNECT_CONCURRENCY * 4)

        async def join(client: Client) -> None:
            async with slots:
                try:
                    with trio.fail_after(30):
                        await client.join()
                except (trio_websocket.ConnectionClosed, trio.TooSlowError) as exc:
                    failures[f"join {type(exc).__name__}"] += 1
                    return
                if client.closed.is_set():
                    failures["join: connection closed"] += 1

        with trio.move_on_after(deadline):
            async with trio.open_nursery() as nursery:
                for client in self.clients:
                    nursery.start_soon(join, client)
                    if client.peer is not None:
                        nursery.start_soon(join, client.peer)


def address(url: str) -> tuple[str, int]:
    """Host and port of ``http://host:port``."""
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def main() -> None:
    index = int(sys.argv[1]) if len(sys.argv) > 1 else 0

    async def run() -> None:
        commands = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        out = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
        await Worker(index, out).run(commands)

    trio.run(run)


if __name__ == "__main__":
    main()
