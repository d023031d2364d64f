"""Actor fan-out benchmark: thousands of session actors in one ``trio.run``.

For each session count it measures, against an in-process fake agents service (an httpx
transport that streams SSE from memory, so no sockets and no HTTP parsing are measured):

* memory per live (idle) session actor and per passivated session (tracemalloc: Python
  allocations; the store's own rows are excluded since they exist either way);
* relay throughput: every session sends one message at once, each reply streams
  ``--chunks`` chunks as fast as the actors take them; chunks/s and CPU per chunk, and the
  first-chunk latency p50/p99 the actors report;
* cancel-to-quiet: every session streams an endless paced reply; once each has relayed a
  chunk, a ``CancelTurn`` goes to each, and the time from that command to the upstream
  body being closed is recorded (p50/p99; all cancels are sent in one burst).

Run: ``python -m bench.actors_fanout`` (1,000 and 10,000 sessions), or
``--sessions 200 --chunks 5`` for a quick look; ``--json out.json`` writes the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import trio

from actors.chat.agents_client import AgentsClient
from actors.chat.hub import SessionHub, open_session_hub
from actors.chat.memory_store import MemoryStore
from actors.chat.messages import (
    CancelReason,
    CancelTurn,
    ChunkStreamed,
    GetTurnState,
    SessionEvent,
    StreamCompleted,
    SubmitMessage,
    TurnEnded,
    TurnState,
)
from actors.chat.settings import HubSettings
from archon_chat.config import Settings, derive

CHUNK = b'data: {"type": "stream_chunk", "content": "token "}\n\n'
COMPLETE = b'data: {"type": "stream_complete"}\n\n'
PHASE_LIMIT_S = 600.0  # no phase may run longer than this


# -- the fake agents service ---------------------------------------------------------------


class _Body(httpx.AsyncByteStream):
    """One streamed reply: ``chunks`` chunks then stream_complete, or endless chunks
    ``interval`` seconds apart. Not an async generator: closing is explicit."""

    def __init__(self, upstream: FakeAgents, session_id: str, endless: bool) -> None:
        self._upstream = upstream
        self._session_id = session_id
        self._endless = endless
        self._sent = 0
        self._done = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        upstream = self._upstream
        if self._endless:
            if self._sent:
                await trio.sleep(upstream.interval)
            else:
                await trio.lowlevel.checkpoint()
            self._sent += 1
            return CHUNK
        await trio.lowlevel.checkpoint()
        if self._sent < upstream.chunks:
            self._sent += 1
            return CHUNK
        if not self._done:
            self._done = True
            return COMPLETE
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if not self._done:
            self._upstream.closed_at[self._session_id] = trio.current_time()


class FakeAgents(httpx.AsyncBaseTransport):
    """Answers every stream request from memory; a prompt of ``endless`` streams until
    the client closes (the close time is recorded per session)."""

    def __init__(self, chunks: int, interval: float) -> None:
        self.chunks = chunks
        self.interval = interval
        self.requests = 0
        self.closed_at: dict[str, float] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests += 1
        await trio.lowlevel.checkpoint()
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_Body(self, body["session_id"], body["prompt"] == "endless"),
        )


# -- the gateway side ----------------------------------------------------------------------


class Sink:
    """Reads the hub's events like the gateway would, counting what matters here."""

    def __init__(self) -> None:
        self.chunks = 0
        self.ended: list[TurnEnded] = []
        self.completed: set[str] = set()
        self.late_chunks = 0  # chunks of a session after its stream_complete: must stay 0
        self.first_chunk: dict[str, float] = {}
        self._waiters: list[tuple[Callable[[], bool], trio.Event]] = []

    async def run(self, receive: trio.MemoryReceiveChannel[SessionEvent]) -> None:
        async for event in receive:
            if isinstance(event, ChunkStreamed):
                self.chunks += 1
                if event.session_id in self.completed:
                    self.late_chunks += 1
                self.first_chunk.setdefault(event.session_id, trio.current_time())
            elif isinstance(event, StreamCompleted):
                self.completed.add(event.session_id)
            elif isinstance(event, TurnEnded):
                self.ended.append(event)
                self._check()

    def reset(self) -> None:
        self.chunks = 0
        self.ended.clear()
        self.completed.clear()
        self.first_chunk.clear()

    def _check(self) -> None:
        for predicate, event in list(self._waiters):
            if predicate():
                event.set()
                self._waiters.remove((predicate, event))

    async def until(self, predicate: Callable[[], bool], poll_s: float = 0.05) -> None:
        with trio.fail_after(PHASE_LIMIT_S):
            while not predicate():
                event = trio.Event()
                self._waiters.append((predicate, event))
                with trio.move_on_after(poll_s):
                    await event.wait()


# -- measurements --------------------------------------------------------------------------


@dataclass
class Result:
    sessions: int
    chunks_per_turn: int
    live_bytes_per_session: float = 0.0
    passivated_bytes_per_session: float = 0.0
    activate_s: float = 0.0
    relay_wall_s: float = 0.0
    chunks_relayed: int = 0
    chunks_per_s: float = 0.0
    cpu_us_per_chunk: float = 0.0
    first_chunk_p50_ms: float = 0.0
    first_chunk_p99_ms: float = 0.0
    cancel_to_quiet_p50_ms: float = 0.0
    cancel_to_quiet_p99_ms: float = 0.0
    cancel_to_quiet_max_ms: float = 0.0
    cancelled: int = 0
    late_chunks: int = 0
    notes: list[str] = field(default_factory=list)


def percentile(values: Iterable[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


async def ask_state(hub: SessionHub, session_id: str) -> None:
    send, receive = trio.open_memory_channel[TurnState](1)
    await hub.deliver(session_id, GetTurnState(None, send))
    async with receive:
        await receive.receive()


async def run_size(
    sessions: int, chunks: int, cancel_interval: float, passivate_s: float
) -> Result:
    result = Result(sessions, chunks)
    upstream = FakeAgents(chunks, cancel_interval)
    config = Settings().replace(idle_passivate_s=passivate_s, mailbox_size=8, max_queued_turns=2)
    settings = derive(HubSettings, config)
    sink = Sink()
    send, receive = trio.open_memory_channel[SessionEvent](1024)

    gc.collect()
    tracemalloc.start()
    store = MemoryStore()
    ids = [(await store.create_session()).session_id for _ in range(sessions)]
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(transport=upstream) as client,
    ):
        nursery.start_soon(sink.run, receive)
        agents = AgentsClient(
            "http://agents.bench", client, max_event_chars=config.agent_max_event_chars
        )
        async with open_session_hub(store, agents, send, settings) as hub:
            # Memory: idle live actors, then the same sessions passivated.
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            start = time.perf_counter()
            async with trio.open_nursery() as activate:
                for sid in ids:
                    activate.start_soon(ask_state, hub, sid)
            result.activate_s = time.perf_counter() - start
            if hub.live_sessions() != sessions:
                raise RuntimeError("actors passivated while others started: raise --passivate-s")
            gc.collect()
            live = tracemalloc.get_traced_memory()[0]
            result.live_bytes_per_session = (live - before) / sessions
            with trio.fail_after(passivate_s * 4 + 30):
                while hub.live_sessions():
                    await trio.sleep(0.05)
            gc.collect()
            passive = tracemalloc.get_traced_memory()[0]
            result.passivated_bytes_per_session = (passive - before) / sessions
            tracemalloc.stop()

            # Throughput: one turn per session, all at once.
            sink.reset()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for sid in ids:
                await hub.deliver(sid, SubmitMessage("go"))
            await sink.until(lambda: len(sink.ended) >= sessions)
            result.relay_wall_s = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            result.chunks_relayed = sink.chunks
            result.chunks_per_s = sink.chunks / result.relay_wall_s
            result.cpu_us_per_chunk = cpu / max(1, sink.chunks) * 1e6
            latencies = [e.first_chunk_latency_s or 0.0 for e in sink.ended]
            result.first_chunk_p50_ms = percentile(latencies, 0.50) * 1e3
            result.first_chunk_p99_ms = percentile(latencies, 0.99) * 1e3

            # Cancel-to-quiet: endless replies, cancelled once each has relayed a chunk.
            sink.reset()
            for sid in ids:
                await hub.deliver(sid, SubmitMessage("endless"))
            await sink.until(lambda: len(sink.first_chunk) >= sessions)
            cancelled_at: dict[str, float] = {}
            for sid in ids:
                cancelled_at[sid] = trio.current_time()
                await hub.deliver(sid, CancelTurn(CancelReason.STOP))
            await sink.until(lambda: len(sink.ended) >= sessions)
            quiet = [upstream.closed_at[sid] - cancelled_at[sid] for sid in ids]
            result.cancelled = sum(1 for e in sink.ended if e.status.value == "cancelled")
            result.cancel_to_quiet_p50_ms = percentile(quiet, 0.50) * 1e3
            result.cancel_to_quiet_p99_ms = percentile(quiet, 0.99) * 1e3
            result.cancel_to_quiet_max_ms = max(quiet) * 1e3
            result.late_chunks = sink.late_chunks
        nursery.cancel_scope.cancel()
    if result.cancelled != sessions:
        result.notes.append(f"only {result.cancelled} of {sessions} turns ended cancelled")
    return result


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "trio": trio.__version__,
        "httpx": httpx.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def show(result: Result) -> None:
    r = result
    print(
        f"{r.sessions:>7} sessions | "
        f"live {r.live_bytes_per_session / 1024:6.1f} KiB/session, "
        f"passivated {r.passivated_bytes_per_session:6.0f} B/session | "
        f"{r.chunks_per_s:9,.0f} chunks/s ({r.cpu_us_per_chunk:5.1f} us CPU/chunk, "
        f"{r.chunks_relayed:,} chunks in {r.relay_wall_s:.2f} s) | "
        f"first chunk p50 {r.first_chunk_p50_ms:.1f} ms p99 {r.first_chunk_p99_ms:.1f} ms | "
        f"cancel-to-quiet p50 {r.cancel_to_quiet_p50_ms:.2f} ms "
        f"p99 {r.cancel_to_quiet_p99_ms:.2f} ms max {r.cancel_to_quiet_max_ms:.2f} ms | "
        f"late chunks {r.late_chunks}",
        flush=True,
    )
    for note in r.notes:
        print(f"        note: {note}", flush=True)


async def main_async(args: argparse.Namespace) -> list[Result]:
    results = []
    for sessions in args.sessions:
        result = await run_size(sessions, args.chunks, args.cancel_interval, args.passivate_s)
        show(result)
        results.append(result)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--chunks", type=int, default=20, help="chunks per reply")
    parser.add_argument(
        "--cancel-interval", type=float, default=2.0, help="chunk pacing of endless replies (s)"
    )
    parser.add_argument("--passivate-s", type=float, default=10.0, help="actor idle time (s)")
    parser.add_argument(
        "--gc-threshold",
        help="gc.set_threshold values, e.g. 10000,50,50 (default: the interpreter's)",
    )
    parser.add_argument("--json", help="write the figures and the machine to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.gc_threshold:
        gc.set_threshold(*(int(x) for x in args.gc_threshold.split(",")))
    print(f"actor fan-out on {machine()}, gc thresholds {gc.get_threshold()}", flush=True)
    results = trio.run(main_async, args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "machine": machine(),
                    "gc_threshold": gc.get_threshold(),
                    "args": vars(args),
                    "results": [asdict(r) for r in results],
                },
                f,
                indent=2,
            )
    return results


if __name__ == "__main__":
    main()
