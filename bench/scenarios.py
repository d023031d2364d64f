"""The six scenarios of the load benchmark, and the figures each one yields.

Every measured run goes the same way: fresh sessions are created over REST and joined
over Socket.IO by the worker processes, the mock agent is quiet, CPU readings are
taken, every client sends one ``chat_message`` at once, the replies are watched to
their end (or the step's deadline), readings again, clients disconnect. Gateways take
turns point by point (the first one alternates), so on a noisy machine each ratio
compares runs made moments apart.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster import RedisProbe, group_urls, redis_figures
from bench.loadgen import unpack
from bench.runner import (
    Sampler,
    Server,
    WorkerPool,
    gateway_command,
    remove_db,
    split,
    start_server,
    temp_db,
)


@dataclass(frozen=True)
class Plan:
    """How much of each scenario a mode runs."""

    mode: str
    sweep_sessions: tuple[int, ...]
    sweep_paces: tuple[float, ...]
    chunk_size: int
    #: chunks per reply at pace 0: this many in total over all sessions...
    burst_total_chunks: int
    #: ...within these bounds per reply
    burst_chunks_bounds: tuple[int, int]
    paced_chunks: int
    #: ...and at most this many paced chunks in total over all sessions (at least 25 each)
    paced_total_chunks: int
    idle_sessions: tuple[int, ...]
    cancel_sessions: int
    resume_sessions: int
    slow_sessions: int
    slow_every: int
    slow_rate: float
    slow_size: int
    #: chunk size of the replies of the 1-in-``slow_every`` sessions (slow in one run, not
    #: in the other): large, so that they outrun their readers' kernel buffers in seconds
    slow_heavy_size: int
    slow_seconds: float
    #: our outbox bound (``ARCHON_CHAT_OUTBOX_SIZE``) in the slow-client scenario
    slow_outbox: int
    #: the 1,000 one-chunk replies of the turn-cost point (run at this sweep point)
    turn_sessions: int
    long_sessions: int
    long_size: int
    long_seconds: tuple[float, ...]
    reps: int
    #: scenario 7 (scale): sessions and paces of its sweep, one turn per session
    scale_sessions: tuple[int, ...] = (100, 1000)
    scale_paces: tuple[float, ...] = (0.0, 0.02)
    #: sessions of the cross-node points (two members each, on different processes)
    scale_cross_sessions: int = 100
    #: turns in flight when the process owning them is killed
    scale_failover_sessions: int = 100
    #: our nodes' ``ARCHON_CHAT_LEASE_S`` in scenario 7 (a dead owner's turns fail within it)
    scale_lease_s: float = 6.0
    #: how long the failover point's replies would stream if nothing died
    scale_failover_reply_s: float = 30.0


QUICK = Plan(
    mode="quick",
    sweep_sessions=(1, 10, 100, 1000),
    sweep_paces=(0.0, 0.02),
    chunk_size=48,
    burst_total_chunks=20_000,
    burst_chunks_bounds=(20, 1000),
    paced_chunks=25,
    paced_total_chunks=25_000,
    idle_sessions=(1000, 5000),
    cancel_sessions=100,
    resume_sessions=100,
    slow_sessions=100,
    slow_every=10,
    slow_rate=8192.0,
    slow_size=4000,
    slow_heavy_size=32_000,
    slow_seconds=15.0,
    slow_outbox=16,
    turn_sessions=1000,
    long_sessions=100,
    long_size=4000,
    long_seconds=(2.0, 20.0),
    reps=1,
)

FULL = Plan(
    mode="full",
    sweep_sessions=(1, 10, 100, 1000, 5000),
    sweep_paces=(0.0, 0.02),
    chunk_size=48,
    burst_total_chunks=100_000,
    burst_chunks_bounds=(50, 5000),
    paced_chunks=250,
    paced_total_chunks=250_000,
    idle_sessions=(1000, 5000, 10_000),
    cancel_sessions=1000,
    resume_sessions=1000,
    slow_sessions=300,
    slow_every=10,
    slow_rate=8192.0,
    slow_size=4000,
    slow_heavy_size=32_000,
    slow_seconds=40.0,
    slow_outbox=16,
    turn_sessions=1000,
    long_sessions=100,
    long_size=4000,
    long_seconds=(2.0, 20.0),
    reps=1,
)

SMOKE = Plan(
    mode="smoke",
    sweep_sessions=(3,),
    sweep_paces=(0.0, 0.02),
    chunk_size=48,
    burst_total_chunks=30,
    burst_chunks_bounds=(10, 10),
    paced_chunks=10,
    paced_total_chunks=30,
    idle_sessions=(20,),
    cancel_sessions=4,
    resume_sessions=4,
    slow_sessions=10,
    slow_every=5,
    slow_rate=8192.0,
    slow_size=4000,
    slow_heavy_size=4000,
    slow_seconds=0.5,
    slow_outbox=16,
    turn_sessions=3,
    long_sessions=3,
    long_size=4000,
    long_seconds=(0.2, 1.0),
    reps=1,
    scale_sessions=(4,),
    scale_paces=(0.0,),
    scale_cross_sessions=3,
    scale_failover_sessions=3,
    scale_lease_s=2.0,
    scale_failover_reply_s=15.0,
)


#: a server using less than this share of a core over a sample counts as idle
IDLE_CPU_SHARE = 0.1
IDLE_SAMPLE_S = 0.5


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


@dataclass
class Reading:
    """CPU seconds of the gateway, the mock agent and each worker at one moment."""

    at: float
    gateway: float
    mock: float
    workers: list[float]


class Bench:
    """Shared state of one invocation: the worker pool, the mock agent, progress."""

    def __init__(
        self,
        pool: WorkerPool,
        mock: Server,
        plan: Plan,
        status: Callable[[str], None],
    ) -> None:
        self.pool = pool
        self.mock = mock
        self.plan = plan
        self.status = status
        self.runs = 0
        #: the shared Redis of the gateways under test (scenario 7): its counters are read
        #: around every measured turn
        self.redis: RedisProbe | None = None
        #: servers that must be idle before a measured run starts (scenario 7 runs its
        #: gateways side by side), and how long to wait for that at most
        self.idle_servers: list[Server] = []
        self.idle_limit = 120.0

    def reading(self, gateway: Server) -> Reading:
        return Reading(trio.current_time(), gateway.cpu(), self.mock.cpu(), self.pool.cpu())

    async def mock_stats(self, prefix: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.mock.url, timeout=30) as http:
            response = await http.get("/stats", params={"prefix": prefix})
            return dict(response.json())

    async def wait_quiet(self, limit: float = 20.0) -> None:
        """Wait (bounded) until the mock agent streams nothing: a run starts on a quiet
        machine even when the previous gateway never cancelled its upstream streams.
        Then (bounded by ``idle_limit``) until every server of :attr:`idle_servers` is
        idle: one still relaying a backlog (a gateway whose replies missed their
        deadline) would take the CPU from the next run."""
        with trio.move_on_after(limit):
            while (await self.mock_stats("~"))["active"]:
                await trio.sleep(0.1)
        with trio.move_on_after(self.idle_limit):
            while True:
                before = [s.cpu() for s in self.idle_servers]
                await trio.sleep(IDLE_SAMPLE_S)
                used = sum(s.cpu() for s in self.idle_servers) - sum(before)
                if used < IDLE_CPU_SHARE * IDLE_SAMPLE_S:
                    return
                self.status(f"waiting for the gateways to go idle ({used / IDLE_SAMPLE_S:.0%})")

    async def setup(
        self,
        gateway: Server,
        sessions: int,
        *,
        join: bool,
        slow_every: int = 0,
        heavy_every: int = 0,
        deadline: float = 180,
        cross: bool = False,
    ) -> Counter[str]:
        counts = split(sessions, len(self.pool.workers))
        results = await self.pool.step(
            [
                {
                    "op": "setup",
                    "url": gateway.url,
                    "urls": list(group_urls(gateway)),
                    "cross": cross,
                    "offset": sum(counts[:i]),
                    "count": count,
                    "join": join,
                    "slow_every": slow_every,
                    "heavy_every": heavy_every,
                    "slow_rate": self.plan.slow_rate,
                    "deadline": deadline,
                }
                for i, count in enumerate(counts)
            ],
            timeout=deadline + 30,
        )
        failures: Counter[str] = Counter()
        for result in results:
            failures.update(result["failures"])
        return failures

    async def close(self) -> None:
        await self.pool.step([{"op": "close"}] * len(self.pool.workers), timeout=60)

    async def run(
        self,
        gateway: Server,
        sessions: int,
        spec: dict[str, Any],
        *,
        mode: str = "normal",
        label: str = "",
        slow_every: int = 0,
        heavy_every: int = 0,
        deadline: float = 60.0,
        extra: dict[str, Any] | None = None,
        cross: bool = False,
    ) -> dict[str, Any]:
        """One measured run: setup, one turn for every session, close."""
        failures = await self.open_sessions(
            gateway, sessions, label, slow_every=slow_every, heavy_every=heavy_every, cross=cross
        )
        try:
            return await self.turn(
                gateway,
                sessions,
                spec,
                failures,
                mode=mode,
                label=label,
                deadline=deadline,
                extra=extra,
                members=2 if cross else 1,
            )
        finally:
            self.status(f"{label}: {gateway.label}: closing")
            await self.close()

    async def open_sessions(
        self,
        gateway: Server,
        sessions: int,
        label: str,
        *,
        slow_every: int = 0,
        heavy_every: int = 0,
        cross: bool = False,
    ) -> Counter[str]:
        await self.wait_quiet()
        self.status(f"{label}: {gateway.label}: creating and joining {sessions} sessions")
        return await self.setup(
            gateway,
            sessions,
            join=True,
            slow_every=slow_every,
            heavy_every=heavy_every,
            cross=cross,
        )

    async def turn(
        self,
        gateway: Server,
        sessions: int,
        spec: dict[str, Any],
        setup_failures: Counter[str],
        *,
        mode: str = "normal",
        label: str = "",
        deadline: float = 60.0,
        extra: dict[str, Any] | None = None,
        members: int = 1,
    ) -> dict[str, Any]:
        """Every joined client sends one message and watches its reply (with ``members``
        2, the session's second member on another process watches it too); the figures."""
        self.runs += 1
        prefix = f"r{self.runs}{secrets.token_hex(3)}"
        await self.wait_quiet()
        expected = sessions * int(spec["n"]) * members

        def progress(chunks: int, done: int) -> None:
            self.status(
                f"{label}: {gateway.label}: {done}/{sessions} replies, "
                f"{chunks}/{expected} chunks ({100 * chunks // max(1, expected)}%)"
            )

        self.pool.on_progress = progress
        sampler = Sampler(gateway)
        rss_before = gateway.rss()
        written_before = gateway.written()
        probe = self.redis if getattr(gateway, "uses_redis", False) else None
        redis_before = await probe.read() if probe is not None else None
        sent_before = await redis_sent(gateway) if probe is not None else None
        before = self.reading(gateway)
        command = {"op": "turn", "spec": spec, "mode": mode, "prefix": prefix, "deadline": deadline}
        command.update(extra or {})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler.run)
            results = await self.pool.step(
                [command] * len(self.pool.workers), timeout=deadline + 60
            )
            nursery.cancel_scope.cancel()
        after = self.reading(gateway)
        redis_after = await probe.read() if probe is not None else None
        sent_after = await redis_sent(gateway) if probe is not None else None
        written = gateway.written() - written_before
        self.pool.on_progress = None
        figures = summarize(results, setup_failures, before, after, expected, mode)
        figures["members"] = members
        # The machine is shared: how busy it was, beside this run's own processes.
        figures["load_average_1m"] = round(os.getloadavg()[0], 2)
        figures["store_written_bytes"] = written
        turns = int(figures["turns"]) // members
        figures["store_written_per_turn_bytes"] = round(written / turns) if turns else None
        if redis_before is not None and redis_after is not None:
            figures.update(redis_figures(redis_before, redis_after, int(figures["chunks"]), turns))
            # What the gateway itself sent (a script counts once; INFO counts the
            # commands it runs inside too): from its /metrics, where it has them.
            sent = difference(sent_after, sent_before)
            chunks = int(figures["chunks"])
            figures["redis_sent"] = sent
            figures["redis_sent_per_chunk"] = (
                round(sent / chunks, 3) if sent is not None and chunks else None
            )
            figures["redis_sent_per_turn"] = (
                round(sent / turns, 2) if sent is not None and turns else None
            )
        figures["run_prefix"] = prefix
        figures["rss_before_mib"] = round(rss_before / 2**20, 1)
        figures["rss_peak_mib"] = round(max(sampler.peak, rss_before) / 2**20, 1)
        figures["rss_peak_growth_mib"] = round(max(0, sampler.peak - rss_before) / 2**20, 1)
        if mode in ("stop", "leave"):
            figures.update(await self.cancel_figures(prefix, results))
        return figures

    async def cancel_figures(self, prefix: str, results: list[dict[str, Any]]) -> dict[str, Any]:
        stops: dict[str, float] = {}
        for result in results:
            stops.update(result["stops"])
        streams = (await self.mock_stats(prefix))["streams"]
        delays = []
        for token, stopped in stops.items():
            record = streams.get(token)
            if record and record["status"] == "disconnected":
                delays.append(record["ended"] - stopped)
        return {
            "stops": len(stops),
            "upstream_cancelled": len(delays),
            "cancel_to_quiet_p50_ms": ms(percentile(delays, 0.5)),
            "cancel_to_quiet_p99_ms": ms(percentile(delays, 0.99)),
            "cancel_to_quiet_max_ms": ms(max(delays) if delays else None),
            "acks": sum(int(r["acks"]) for r in results),
        }


def summarize(
    results: list[dict[str, Any]],
    setup_failures: Counter[str],
    before: Reading,
    after: Reading,
    expected: int,
    mode: str = "normal",
) -> dict[str, Any]:
    latencies: list[float] = []
    ttfc: list[float] = []
    failures = Counter(setup_failures)
    resume: list[float] = []
    resume_total: list[float] = []
    for result in results:
        latencies.extend(unpack(result["lat"]))
        ttfc.extend(unpack(result["ttfc"]))
        failures.update(result["failures"])
        resume.extend(result["resume_s"])
        resume_total.extend(result["resume_total_s"])
    firsts = [r["first_sent"] for r in results if r["first_sent"] is not None]
    lasts = [r["last_complete"] for r in results if r["last_complete"] is not None]
    chunks = sum(int(r["chunks"]) for r in results)
    window = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
    wall = max(1e-9, after.at - before.at)
    gateway_cpu = after.gateway - before.gateway
    mock_cpu = after.mock - before.mock
    worker_util = [(a - b) / wall for a, b in zip(after.workers, before.workers, strict=True)]

    def total(key: str) -> int:
        return sum(int(r.get(key, 0)) for r in results)

    out: dict[str, Any] = {
        "turns": total("turns"),
        "completed": total("completed"),
        "chunks_expected": expected,
        "chunks": chunks,
        "frames": total("frames"),
        "chunks_per_s": round(chunks / window, 1) if window > 0 else None,
        "window_s": round(window, 3),
        "latency_p50_ms": ms(percentile(latencies, 0.5)),
        "latency_p99_ms": ms(percentile(latencies, 0.99)),
        "ttfc_p50_ms": ms(percentile(ttfc, 0.5)),
        "ttfc_p99_ms": ms(percentile(ttfc, 0.99)),
        "failures": count_failures(failures, total("turns"), total("completed"), mode),
        "failure_kinds": dict(failures),
        "gateway_cpu_s": round(gateway_cpu, 3),
        "gateway_cpu_util": round(gateway_cpu / wall, 3),
        "gateway_cpu_per_chunk_us": round(1e6 * gateway_cpu / chunks, 1) if chunks else None,
        "gateway_cpu_per_turn_us": (
            round(1e6 * gateway_cpu / total("turns"), 1) if total("turns") else None
        ),
        "mock_cpu_util": round(mock_cpu / wall, 3),
        "mock_cpu_per_chunk_us": round(1e6 * mock_cpu / chunks, 1) if chunks else None,
        "generator_cpu_util": [round(u, 3) for u in worker_util],
        "duplicates": total("duplicates"),
        "gaps": total("gaps"),
        "gap_turns": total("gap_turns"),
        "stale_events": total("stale_events"),
        "foreign_chunks": total("foreign_chunks"),
        "after_stop": total("after_stop"),
        "after_request": total("after_request"),
        "statuses": dict(sum((Counter(r["statuses"]) for r in results), Counter())),
    }
    slow = [r["slow"] for r in results if r.get("slow", {}).get("clients")]
    if slow:
        out["slow"] = {
            key: sum(int(w.get(key, 0)) for w in slow)
            for key in (
                "clients",
                "throttled",
                "completed",
                "disconnected",
                "cut",
                "resumed",
                "chunks",
            )
        }
        out["slow_texts"] = {t: v for w in slow for t, v in (w.get("texts") or {}).items()}
    if resume:
        out["resume_p50_ms"] = ms(percentile(resume, 0.5))
        out["resume_p99_ms"] = ms(percentile(resume, 0.99))
        out["resume_total_p99_ms"] = ms(percentile(resume_total, 0.99))
        out["resumed"] = len(resume)
    return out


SETUP_FAILURES = ("create", "connect", "join", "closed before turn")


def count_failures(kinds: Counter[str], turns: int, completed: int, mode: str) -> int:
    """Failed sessions: those refused at setup, plus each reply that did not arrive whole
    (one reply can fail in several ways at once: an error and missing chunks). A stopped
    or left reply is not expected to complete, so there only errors count."""
    setup = sum(n for kind, n in kinds.items() if kind.startswith(SETUP_FAILURES))
    if mode in ("normal", "drop"):
        return setup + turns - completed
    return sum(kinds.values())


def burst_chunks(plan: Plan, sessions: int) -> int:
    low, high = plan.burst_chunks_bounds
    return max(low, min(high, plan.burst_total_chunks // sessions))


def paced_chunks(plan: Plan, sessions: int) -> int:
    return max(25, min(plan.paced_chunks, plan.paced_total_chunks // sessions))


def carried_pace(sessions: int) -> float:
    """Agent pacing for scenarios that need a gateway that keeps up: about 2,000 chunks/s
    in all (20 ms at most), since a stop or a drop measured behind seconds of queued
    chunks would time the queue."""
    return max(0.02, sessions / 2000)


def turn_deadline(sessions: int, spec: dict[str, Any]) -> float:
    stream_s = float(spec.get("first", 0)) + int(spec["n"]) * float(spec["pace"])
    # Generous: a saturated baseline relays ~5,000 chunks/s; slower is a failure.
    return 30.0 + stream_s * 3 + sessions * int(spec["n"]) / 2000


def order(gateways: Sequence[Server], point: int) -> list[Server]:
    """Alternate who goes first, point by point."""
    return list(gateways) if point % 2 == 0 else list(reversed(gateways))


async def throughput(bench: Bench, gateways: Sequence[Server]) -> list[dict[str, Any]]:
    """Each gateway in turn joins the sessions once, then one reply per pace."""
    rows = []
    for point, sessions in enumerate(bench.plan.sweep_sessions):
        for rep in range(bench.plan.reps):
            for gateway in order(gateways, point + rep):
                label = f"[1 throughput] {sessions} sessions"
                failures = await bench.open_sessions(gateway, sessions, label)
                try:
                    for pace in bench.plan.sweep_paces:
                        n = (
                            burst_chunks(bench.plan, sessions)
                            if pace == 0
                            else paced_chunks(bench.plan, sessions)
                        )
                        spec = {"n": n, "size": bench.plan.chunk_size, "pace": pace}
                        figures = await bench.turn(
                            gateway,
                            sessions,
                            spec,
                            failures,
                            label=f"{label}, pace {pace * 1000:g} ms",
                            deadline=turn_deadline(sessions, spec),
                        )
                        failures = Counter()
                        if figures["completed"] < sessions:
                            # Late events of an unfinished reply carry no id in the seed's
                            # shape: the next reply gets fresh sessions.
                            await bench.close()
                            failures = await bench.open_sessions(gateway, sessions, label)
                        rows.append(
                            {
                                "gateway": gateway.label,
                                "kind": "sweep",
                                "sessions": sessions,
                                "pace_s": pace,
                                "rep": rep,
                            }
                            | spec
                            | figures
                        )
                    if sessions == bench.plan.turn_sessions:
                        # What a turn costs: one-chunk replies, all at once.
                        spec = {"n": 1, "size": bench.plan.chunk_size, "pace": 0.0}
                        figures = await bench.turn(
                            gateway,
                            sessions,
                            spec,
                            failures,
                            label=f"{label}, one-chunk replies",
                            deadline=turn_deadline(sessions, spec),
                        )
                        rows.append(
                            {
                                "gateway": gateway.label,
                                "kind": "turns",
                                "sessions": sessions,
                                "pace_s": 0.0,
                                "rep": rep,
                            }
                            | spec
                            | figures
                        )
                finally:
                    bench.status(f"{label}: {gateway.label}: closing")
                    await bench.close()
    rows.sort(key=lambda r: (r["kind"] != "sweep", r["pace_s"], r["sessions"], r["rep"]))
    return rows


async def idle(bench: Bench, kinds: Sequence[str], agent_url: str) -> list[dict[str, Any]]:
    """Memory per connected and per joined session, each size on a fresh gateway."""
    rows = []
    for point, sessions in enumerate(bench.plan.idle_sessions):
        for kind in order_kinds(kinds, point):
            db = temp_db()
            argv, env = gateway_command(kind, agent_url, db)
            label = f"[2 idle] {sessions} sessions"
            try:
                async with start_server(kind, argv, env) as gateway:
                    rows.append(
                        {
                            "gateway": kind,
                            "sessions": sessions,
                            **await idle_point(bench, gateway, sessions, label),
                        }
                    )
            finally:
                remove_db(db)
    return rows


def order_kinds(kinds: Sequence[str], point: int) -> list[str]:
    return list(kinds) if point % 2 == 0 else list(reversed(kinds))


async def idle_point(bench: Bench, gateway: Server, sessions: int, label: str) -> dict[str, Any]:
    # Warm up every code path once so that the readings hold only per-session cost.
    await bench.setup(gateway, min(10, sessions), join=True)
    await bench.close()
    workers = len(bench.pool.workers)
    failures: Counter[str] = Counter()

    async def step(command: dict[str, Any], what: str) -> int:
        bench.status(f"{label}: {gateway.label}: {what}")
        commands = [{**command, "count": c} for c in split(sessions, workers)]
        for result in await bench.pool.step(commands, timeout=300):
            failures.update(result["failures"])
        await trio.sleep(1.0)  # let allocations settle before reading
        return gateway.rss()

    setup = {"op": "setup", "url": gateway.url, "connect": False, "deadline": 240}
    base = await step(setup, f"creating {sessions} sessions")
    connected = await step({"op": "connect", "deadline": 240}, f"connecting {sessions} sockets")
    joined = await step({"op": "join", "deadline": 240}, f"joining {sessions} sessions")
    bench.status(f"{label}: {gateway.label}: closing")
    await bench.close()
    return {
        "failures": sum(failures.values()),
        "failure_kinds": dict(failures),
        "rss_base_mib": round(base / 2**20, 1),
        "rss_connected_mib": round(connected / 2**20, 1),
        "rss_joined_mib": round(joined / 2**20, 1),
        "per_connected_kib": round((connected - base) / sessions / 1024, 2),
        "per_joined_kib": round((joined - base) / sessions / 1024, 2),
    }


async def cancel(bench: Bench, gateways: Sequence[Server]) -> list[dict[str, Any]]:
    rows = []
    sessions = bench.plan.cancel_sessions
    pace = carried_pace(sessions)
    spec = {"n": round(5 / pace), "size": bench.plan.chunk_size, "pace": pace}
    for point, mode in enumerate(("stop", "leave")):
        for gateway in order(gateways, point):
            figures = await bench.run(
                gateway,
                sessions,
                spec,
                mode=mode,
                label=f"[3 cancel] {mode}",
                deadline=turn_deadline(sessions, spec),
                extra={"stop_share": 0.2, "quiet": 0.3},
            )
            rows.append(
                {"gateway": gateway.label, "sessions": sessions, "mode": mode, **spec, **figures}
            )
    return rows


async def resume(bench: Bench, gateways: Sequence[Server]) -> list[dict[str, Any]]:
    rows = []
    sessions = bench.plan.resume_sessions
    pace = carried_pace(sessions)
    spec = {"n": round(4 / pace), "size": bench.plan.chunk_size, "pace": pace}
    for gateway in gateways:
        figures = await bench.run(
            gateway,
            sessions,
            spec,
            mode="drop",
            label="[4 resume]",
            deadline=turn_deadline(sessions, spec),
            extra={"stop_share": 0.25, "reconnect_delay": 0.2},
        )
        rows.append({"gateway": gateway.label, "sessions": sessions, **spec, **figures})
    return rows


#: metric families read from a gateway's /metrics: the current name first, then older ones
MERGES_METRICS = ("archon_chat_outbox_merges", "archon_chat_slow_client_merges")
CUTS_METRICS = ("archon_chat_slow_client_disconnects",)


def metric_value(text: str, names: Sequence[str]) -> float | None:
    """The value of the first of ``names`` (counter or gauge, its samples summed) found in
    a Prometheus exposition ``text``; ``None`` if none is there. Raises ``ValueError``
    on text that is not the exposition format."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        own = (family.name, f"{family.name}_total")
        found[family.name] = sum(x.value for x in family.samples if x.name in own)
    return next((found[name] for name in names if name in found), None)


async def scrape(gateway: Server) -> dict[str, float | None]:
    """Outbox merges and slow-client cuts so far, from the gateway's /metrics (``None``
    each where the gateway has no such metric or no /metrics at all, like the seed)."""
    empty: dict[str, float | None] = {"merges": None, "cuts": None}
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            response = await http.get("/metrics")
    except httpx.HTTPError:
        return empty
    if response.status_code != 200:
        return empty
    try:
        return {
            "merges": metric_value(response.text, MERGES_METRICS),
            "cuts": metric_value(response.text, CUTS_METRICS),
        }
    except ValueError:
        return empty


#: the Redis commands one of our nodes sent (a pipeline counts each, a script once)
REDIS_SENT_METRICS = ("archon_chat_redis_commands",)


async def redis_sent(gateway: Server) -> float | None:
    """Redis commands sent so far by every process of ``gateway``, from each one's
    /metrics; ``None`` if any process has no such metric (the seed) or its processes
    share one port (/metrics would reach one of them)."""
    if getattr(gateway, "form", "ports") != "ports":
        return None
    total = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for url in group_urls(gateway):
            try:
                response = await http.get(f"{url}/metrics")
                value = metric_value(response.text, REDIS_SENT_METRICS)
            except (httpx.HTTPError, ValueError):
                return None
            if value is None:
                return None
            total += value
    return total


def difference(after: float | None, before: float | None) -> int | None:
    if after is None or before is None:
        return None
    return round(after - before)


def check_texts(texts: dict[str, Any], streams: dict[str, Any]) -> dict[str, int]:
    """How many watched replies ended with the agent's exact text: their chunks' contents
    in order, or the agent's final ``message`` (live or replayed after a cut)."""
    complete = cut_complete = 0
    for token, seen in texts.items():
        agent = (streams.get(token) or {}).get("text_sha256")
        whole = agent is not None and (
            seen["chunks_sha256"] == agent or seen["message_sha256"] == agent
        )
        complete += whole
        cut_complete += whole and seen["cut"]
    return {"text_complete": complete, "cut_text_complete": cut_complete}


def slow_env(plan: Plan) -> dict[str, str]:
    """Our settings in the slow-client scenario: a lower outbox bound, so that a client
    falling behind reaches it within the run (README: a scale model of the default)."""
    return {"ARCHON_CHAT_OUTBOX_SIZE": str(plan.slow_outbox)}


async def slow(bench: Bench, kinds: Sequence[str], agent_url: str) -> list[dict[str, Any]]:
    """1 session in ``slow_every`` gets large chunks; in the second run its client reads
    ``slow_rate`` bytes a second, far below its reply's rate, for ``slow_seconds``: its
    kernel buffers fill, its outbox merges, it passes the bound and is cut, then resumes
    at full speed. Each run on a fresh gateway, so its peak memory is its own."""
    plan = bench.plan
    rows = []
    sessions = plan.slow_sessions
    # A load the gateways carry without queueing, so a change in the others' latency is
    # the slow clients' doing.
    pace = carried_pace(sessions)
    n = max(1, round(plan.slow_seconds / pace))
    # The first chunk waits a second, so every turn has started before any streams: the
    # latencies are the steady relay's, not the start-up burst's.
    spec = {"n": n, "size": plan.slow_size, "pace": pace, "first": 1.0}
    heavy = {**spec, "size": plan.slow_heavy_size}
    deadline = 40 + 3 * plan.slow_seconds
    for point, every in enumerate((0, plan.slow_every)):
        for kind in order_kinds(kinds, point):
            db = temp_db()
            argv, env = gateway_command(kind, agent_url, db)
            if kind == "ours":
                env.update(slow_env(plan))
            label = f"[5 slow clients] {'1 in ' + str(every) if every else 'none'} slow"
            try:
                async with start_server(kind, argv, env) as gateway:
                    figures = await slow_run(
                        bench, gateway, sessions, spec, heavy, every, label=label, deadline=deadline
                    )
            finally:
                remove_db(db)
            rows.append(
                {
                    "gateway": kind,
                    "sessions": sessions,
                    "slow_every": every,
                    "heavy_size": plan.slow_heavy_size,
                    "gateway_env": slow_env(plan) if kind == "ours" else {},
                    "implementation": gateway.implementation,
                    **spec,
                    **figures,
                }
            )
    return rows


async def slow_run(
    bench: Bench,
    gateway: Server,
    sessions: int,
    spec: dict[str, Any],
    heavy: dict[str, Any],
    slow_every: int,
    *,
    label: str,
    deadline: float,
) -> dict[str, Any]:
    """One run of the slow-client scenario on ``gateway``: 1 session in
    ``bench.plan.slow_every`` gets the ``heavy`` reply, 1 in ``slow_every`` (if any) reads
    slowly for ``bench.plan.slow_seconds`` (after the reply's first delay), then at full
    speed; cut clients resume; the figures, with merges and cuts from /metrics and how
    many watched replies ended with the agent's exact text."""
    before = await scrape(gateway)
    figures = await bench.run(
        gateway,
        sessions,
        spec,
        label=label,
        slow_every=slow_every,
        heavy_every=bench.plan.slow_every,
        deadline=deadline,
        extra={
            "heavy_spec": heavy,
            # Slow for the length of the reply, then the link recovers: a client that
            # was cut finds out and resumes, one that was not reads the rest.
            "slow_for": float(heavy.get("first", 0)) + bench.plan.slow_seconds,
            "slow_wait": 10 + bench.plan.slow_seconds,
            "resume_cut": True,
            "reconnect_delay": 0.2,
        },
    )
    after = await scrape(gateway)
    texts = figures.pop("slow_texts", {})
    streams = (await bench.mock_stats(figures["run_prefix"]))["streams"]
    figures.setdefault("slow", {}).update(check_texts(texts, streams))
    figures["outbox_merges"] = difference(after["merges"], before["merges"])
    figures["slow_cuts"] = difference(after["cuts"], before["cuts"])
    return figures


async def long_replies(bench: Bench, gateways: Sequence[Server]) -> list[dict[str, Any]]:
    """The same chunk rate, replies of different lengths: does the latency grow with the
    reply (work that grows with the text so far)?"""
    plan = bench.plan
    rows = []
    sessions = plan.long_sessions
    pace = carried_pace(sessions)
    first = min(1.0, min(plan.long_seconds) / 2)
    for point, seconds in enumerate(plan.long_seconds):
        spec = {
            "n": max(1, round(seconds / pace)),
            "size": plan.long_size,
            "pace": pace,
            "first": first,
        }
        for gateway in order(gateways, point):
            figures = await bench.run(
                gateway,
                sessions,
                spec,
                label=f"[6 long replies] {seconds:g} s",
                deadline=turn_deadline(sessions, spec),
            )
            rows.append(
                {"gateway": gateway.label, "sessions": sessions, "reply_s": seconds, **spec}
                | figures
            )
    return rows


def plan_json(plan: Plan) -> dict[str, Any]:
    return asdict(plan)
