"""Scenario 7, scale: one process against two, ours against the seed scaled out.

Gateways (:mod:`bench.cluster`): ``ours-1`` (one process, no Redis), ``ours-2`` (two
processes sharing Redis and the SQLite store) and ``seed-2`` (two uvicorn workers of the
seed baseline with python-socketio's ``AsyncRedisManager`` on the same Redis). Three kinds
of point:

* **sweep**: the plan's session counts and paces, one turn per session, clients spread
  over the gateway's processes (or over its one port, the kernel choosing the worker).
* **cross**: ``ours-2`` and ``seed-2`` as two processes on two ports; every session has
  two members, member 1 on process A (it sends the message, so on ours A owns the turn)
  and member 2 on process B. ``normal``: both watch the reply; ``stop``: member 2 sends
  ``stop_response`` (to a process that does not own the turn); ``drop``: member 1's
  connection is cut and it rejoins on B with ``last_seq``.
* **failover** (``ours-2`` only, a fresh cluster): the cross placement, long replies; once
  every member 2 has seen a share of its reply, process A (owning every turn) gets
  SIGKILL; each member 2 then sends a message until one is acknowledged ``sent``.

Every point records the gateway's CPU over all its processes and the shared Redis's
commands, CPU and bytes (``INFO`` deltas) per delivered chunk.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from bench.cluster import RedisProbe, RedisTarget, start_gateway
from bench.runner import BenchError, Server, remove_db, temp_db
from bench.scenarios import (
    Bench,
    burst_chunks,
    carried_pace,
    ms,
    order,
    paced_chunks,
    percentile,
    turn_deadline,
)

#: the cross-node points' modes and what the load generator does in each
CROSS_MODES = ("normal", "stop", "drop")
#: share of the reply member 2 must have seen before the failover's kill
FAILOVER_SHARE = 0.1
#: how long after the lease's expiry the failover point waits for sessions to recover
FAILOVER_GRACE_S = 20.0
#: how often a member 2 retries its message while the dead owner's lease runs
FAILOVER_RETRY_S = 0.25


async def scale(
    bench: Bench,
    kinds: Sequence[str],
    agent_url: str,
    target: RedisTarget,
    *,
    ours_form: str,
) -> list[dict[str, Any]]:
    """Every point of the scenario for ``kinds`` (of ``ours-1``, ``ours-2``, ``seed-2``)."""
    rows: list[dict[str, Any]] = []
    forms = {"ours-1": "ports", "ours-2": ours_form, "seed-2": "one-port"}
    async with started(bench, kinds, agent_url, target, forms) as gateways:
        rows += await sweep(bench, gateways)
    cross_kinds = [k for k in kinds if k != "ours-1"]
    if cross_kinds:
        two_ports = dict.fromkeys(cross_kinds, "ports")
        async with started(bench, cross_kinds, agent_url, target, two_ports, "cross-") as gws:
            rows += await cross(bench, gws)
    if "ours-2" in kinds:
        alone = {"ours-2": "ports"}
        async with started(bench, ["ours-2"], agent_url, target, alone, "failover-") as gws:
            rows.append(await failover(bench, gws[0]))
    return rows


@asynccontextmanager
async def started(
    bench: Bench,
    kinds: Sequence[str],
    agent_url: str,
    target: RedisTarget,
    forms: dict[str, str],
    tag: str = "",
) -> AsyncIterator[list[Server]]:
    """The gateways ``kinds`` in their ``forms``, each with its own SQLite file, until the
    block ends; a gateway that does not start is left out (said on the progress line).
    Meanwhile the bench reads ``target``'s counters around each run and waits for these
    gateways to be idle before one."""
    async with AsyncExitStack() as stack:
        running: list[Server] = []
        for kind in kinds:
            db = temp_db()
            stack.callback(remove_db, db)
            bench.status(f"[7 scale] starting {kind} ({forms[kind]})")
            try:
                running.append(
                    await stack.enter_async_context(
                        start_gateway(
                            kind,
                            agent_url,
                            db,
                            target,
                            form=forms[kind],
                            lease_s=bench.plan.scale_lease_s,
                            tag=tag,
                        )
                    )
                )
            except BenchError as exc:
                bench.status(f"[7 scale] {kind} unavailable: {exc}")
        bench.idle_servers = list(running)
        bench.redis = RedisProbe(target)
        try:
            yield running
        finally:
            bench.idle_servers = []
            bench.redis = None


def _form(gateway: Server) -> str:
    return str(getattr(gateway, "form", "ports"))


async def sweep(bench: Bench, gateways: Sequence[Server]) -> list[dict[str, Any]]:
    """Each gateway in turn joins the sessions once, then one turn per pace."""
    rows = []
    plan = bench.plan
    for point, sessions in enumerate(plan.scale_sessions):
        for gateway in order(gateways, point):
            label = f"[7 scale] {sessions} sessions"
            failures = await bench.open_sessions(gateway, sessions, label)
            try:
                for pace in plan.scale_paces:
                    n = burst_chunks(plan, sessions) if pace == 0 else paced_chunks(plan, sessions)
                    spec = {"n": n, "size": plan.chunk_size, "pace": pace}
                    figures = await bench.turn(
                        gateway,
                        sessions,
                        spec,
                        failures,
                        label=f"{label}, pace {pace * 1000:g} ms",
                        deadline=turn_deadline(sessions, spec),
                    )
                    failures.clear()
                    if figures["completed"] < sessions:
                        await bench.close()
                        failures = await bench.open_sessions(gateway, sessions, label)
                    rows.append(
                        {
                            "gateway": gateway.label,
                            "kind": "sweep",
                            "form": _form(gateway),
                            "sessions": sessions,
                            "pace_s": pace,
                            "mode": "normal",
                        }
                        | spec
                        | figures
                    )
                if sessions == max(plan.scale_sessions):
                    # What a turn costs (CPU, Redis): one-chunk replies, all at once.
                    spec = {"n": 1, "size": plan.chunk_size, "pace": 0.0}
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
                            "form": _form(gateway),
                            "sessions": sessions,
                            "pace_s": 0.0,
                            "mode": "normal",
                        }
                        | spec
                        | figures
                    )
            finally:
                bench.status(f"{label}: {gateway.label}: closing")
                await bench.close()
    return rows


async def cross(bench: Bench, gateways: Sequence[Server]) -> list[dict[str, Any]]:
    """Two members per session on two processes: a reply watched from both, a stop from
    the process that does not own the turn, a drop and a resume on the other process."""
    rows = []
    plan = bench.plan
    sessions = plan.scale_cross_sessions
    for point, mode in enumerate(CROSS_MODES):
        if mode == "normal":
            spec = {"n": burst_chunks(plan, sessions), "size": plan.chunk_size, "pace": 0.0}
            extra: dict[str, Any] = {}
        else:
            # Paced so that the gateways keep up (a stop behind queued chunks would time
            # the queue), as in scenarios 3 and 4.
            pace = carried_pace(2 * sessions)
            spec = {"n": round(4 / pace), "size": plan.chunk_size, "pace": pace}
            extra = (
                {"stop_share": 0.2, "quiet": 0.3}
                if mode == "stop"
                else {"stop_share": 0.25, "reconnect_delay": 0.2}
            )
        for gateway in order(gateways, point):
            figures = await bench.run(
                gateway,
                sessions,
                spec,
                mode=mode,
                label=f"[7 scale] cross-node {mode}",
                deadline=turn_deadline(2 * sessions, spec),
                extra=extra,
                cross=True,
            )
            rows.append(
                {
                    "gateway": gateway.label,
                    "kind": "cross",
                    "form": _form(gateway),
                    "sessions": sessions,
                    "pace_s": spec["pace"],
                    "mode": mode,
                }
                | spec
                | figures
            )
    return rows


async def failover(bench: Bench, gateway: Server) -> dict[str, Any]:
    """SIGKILL of the process owning every turn in flight; the figures of the recovery."""
    plan = bench.plan
    sessions = plan.scale_failover_sessions
    pace = carried_pace(2 * sessions)
    spec = {"n": round(plan.scale_failover_reply_s / pace), "size": plan.chunk_size, "pace": pace}
    label = "[7 scale] failover"
    members = list(getattr(gateway, "members", []))
    if len(members) < 2:
        raise BenchError("the failover point needs two processes on two ports")
    failures = await bench.open_sessions(gateway, sessions, label, cross=True)
    workers = len(bench.pool.workers)
    prefix = f"f{bench.runs}"
    bench.runs += 1
    try:
        bench.status(f"{label}: {sessions} replies streaming, watched from the other process")
        started = await bench.pool.step(
            [
                {
                    "op": "failover_start",
                    "spec": spec,
                    "prefix": prefix,
                    "stop_share": FAILOVER_SHARE,
                    "deadline": 60,
                }
            ]
            * workers,
            timeout=90,
        )
        owner = members[0]
        bench.status(f"{label}: SIGKILL to {owner.label} (pid {owner.process.pid})")
        # The load generators' clock (time.monotonic: one clock for every process).
        kill_at = time.monotonic()
        owner.process.kill()
        deadline = plan.scale_lease_s + FAILOVER_GRACE_S
        results = await bench.pool.step(
            [
                {
                    "op": "failover_finish",
                    "kill_at": kill_at,
                    "deadline": deadline,
                    "retry_s": FAILOVER_RETRY_S,
                }
            ]
            * workers,
            timeout=deadline + 90,
        )
    finally:
        bench.status(f"{label}: closing")
        await bench.close()
    accept = [float(x) for r in results for x in r["accept_s"]]
    kinds = dict(failures)
    for result in results:
        for kind, n in result["failures"].items():
            kinds[kind] = kinds.get(kind, 0) + int(n)
    count = sum(int(r["sessions"]) for r in results)
    return {
        "gateway": gateway.label,
        "kind": "failover",
        "form": _form(gateway),
        "sessions": sessions,
        "pace_s": pace,
        "mode": "kill -9",
        **spec,
        "lease_s": plan.scale_lease_s,
        "in_flight": sum(int(r["reached"]) for r in started),
        "turns_failed_owner_lost": sum(int(r["owner_lost"]) for r in results),
        # owner_lost errors whose seq member 2 had already seen (a client drops those)
        "owner_lost_stale": sum(int(r["owner_lost_stale"]) for r in results),
        # the cut replies as the store has them afterwards: failed, by error code
        "stored_failed": dict(sum((Counter(r["stored_failed"]) for r in results), Counter[str]())),
        "member2_statuses": dict(sum((Counter(r["statuses"]) for r in results), Counter[str]())),
        "usable": sum(int(r["accepted"]) for r in results),
        "usable_of": count,
        "usable_p50_ms": ms(percentile(accept, 0.5)),
        "usable_p99_ms": ms(percentile(accept, 0.99)),
        "usable_max_ms": ms(max(accept) if accept else None),
        "messages_sent": sum(int(r["sent"]) for r in results),
        "messages_lost": sum(int(r["lost"]) for r in results),
        "failures": sum(kinds.values()),
        "failure_kinds": kinds,
    }
