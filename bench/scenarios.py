"""The five scenarios of the load benchmark, and the figures each one yields.

Every measured run goes the same way: fresh sessions are created over REST and joined
over Socket.IO by the worker processes, the mock agent is quiet, CPU readings are
taken, every client sends one ``chat_message`` at once, the replies are watched to
their end (or the step's deadline), readings again, clients disconnect. Gateways take
turns point by point (the first one alternates), so on a noisy machine each ratio
compares runs made moments apart.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import trio

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
    reps: int


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
    reps=1,
)


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

    def reading(self, gateway: Server) -> Reading:
        return Reading(trio.current_time(), gateway.cpu(), self.mock.cpu(), self.pool.cpu())

    async def mock_stats(self, prefix: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.mock.url, timeout=30) as http:
            response = await http.get("/stats", params={"prefix": prefix})
            return dict(response.json())

    async def wait_quiet(self, limit: float = 20.0) -> None:
        """Wait (bounded) until the mock agent streams nothing: a run starts on a quiet
        machine even when the previous gateway never cancelled its upstream streams."""
        with trio.move_on_after(limit):
            while (await self.mock_stats("~"))["active"]:
                await trio.sleep(0.1)

    async def setup(
        self,
        gateway: Server,
        sessions: int,
        *,
        join: bool,
        slow_every: int = 0,
        deadline: float = 180,
    ) -> Counter[str]:
        counts = split(sessions, len(self.pool.workers))
        results = await self.pool.step(
            [
                {
                    "op": "setup",
                    "url": gateway.url,
                    "count": count,
                    "join": join,
                    "slow_every": slow_every,
                    "slow_rate": self.plan.slow_rate,
                    "deadline": deadline,
                }
                for count in counts
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
        deadline: float = 60.0,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One measured run: setup, one turn for every session, close."""
        failures = await self.open_sessions(gateway, sessions, label, slow_every=slow_every)
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
            )
        finally:
            self.status(f"{label}: {gateway.label}: closing")
            await self.close()

    async def open_sessions(
        self, gateway: Server, sessions: int, label: str, *, slow_every: int = 0
    ) -> Counter[str]:
        await self.wait_quiet()
        self.status(f"{label}: {gateway.label}: creating and joining {sessions} sessions")
        return await self.setup(gateway, sessions, join=True, slow_every=slow_every)

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
    ) -> dict[str, Any]:
        """Every joined client sends one message and watches its reply; the figures."""
        self.runs += 1
        prefix = f"r{self.runs}{secrets.token_hex(3)}"
        await self.wait_quiet()
        expected = sessions * int(spec["n"])

        def progress(chunks: int, done: int) -> None:
            self.status(
                f"{label}: {gateway.label}: {done}/{sessions} replies, "
                f"{chunks}/{expected} chunks ({100 * chunks // max(1, expected)}%)"
            )

        self.pool.on_progress = progress
        sampler = Sampler(gateway)
        rss_before = gateway.rss()
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
        self.pool.on_progress = None
        figures = summarize(results, setup_failures, before, after, expected, mode)
        figures["rss_before_mib"] = round(rss_before / 2**20, 1)
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
            key: sum(int(w[key]) for w in slow)
            for key in ("clients", "completed", "disconnected", "chunks")
        }
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
                                "sessions": sessions,
                                "pace_s": pace,
                                "rep": rep,
                            }
                            | spec
                            | figures
                        )
                finally:
                    bench.status(f"{label}: {gateway.label}: closing")
                    await bench.close()
    rows.sort(key=lambda r: (r["pace_s"], r["sessions"], r["rep"]))
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


async def slow(bench: Bench, gateways: Sequence[Server]) -> list[dict[str, Any]]:
    rows = []
    sessions = bench.plan.slow_sessions
    # A load the gateways carry without queueing, so a change in the others' latency is
    # the slow clients' doing.
    pace = carried_pace(sessions)
    # The first chunk waits a second, so every turn has started before any streams: the
    # latencies are the steady relay's, not the start-up burst's.
    spec = {"n": round(5 / pace), "size": bench.plan.slow_size, "pace": pace, "first": 1.0}
    for point, every in enumerate((0, bench.plan.slow_every)):
        for gateway in order(gateways, point):
            figures = await bench.run(
                gateway,
                sessions,
                spec,
                label=f"[5 slow clients] {'1 in ' + str(every) if every else 'none'} slow",
                slow_every=every,
                deadline=40,
                extra={"slow_grace": 1.0},
            )
            rows.append(
                {
                    "gateway": gateway.label,
                    "sessions": sessions,
                    "slow_every": every,
                    **spec,
                    **figures,
                }
            )
    return rows


def plan_json(plan: Plan) -> dict[str, Any]:
    return asdict(plan)
