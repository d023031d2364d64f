"""Smoke test of the benchmark's scale scenario (7): real processes, a real Redis.

The mock agents service, one load-generator process, and each scale gateway: ours in one
process, ours as two nodes sharing Redis and one SQLite file, the seed as two uvicorn
workers with python-socketio's AsyncRedisManager. Redis is the run's own redis-server
when the binary is installed, else the machine's (with a key prefix of its own, removed
afterwards). A few sessions per point; asserts that every point ran and what must hold
whatever the machine's speed (nothing lost, every stop cancelled upstream, no gaps), never
a timing.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from bench import cluster, report, scale, scenarios
from bench.runner import open_worker_pool, python, start_server

#: the whole scenario, three gateways, with the failover's lease expiry in it
CEILING_S = 240


@pytest.mark.slow
async def test_every_point_of_the_scale_scenario_runs() -> None:
    statuses: list[str] = []
    with trio.fail_after(CEILING_S):
        async with (
            start_server("mock-agent", [python(), "-m", "bench.mock_agent"]) as mock,
            open_worker_pool(1) as pool,
            cluster.open_redis() as target,
        ):
            bench = scenarios.Bench(pool, mock, scenarios.SMOKE, statuses.append)
            rows = await scale.scale(
                bench, cluster.SCALE_KINDS, mock.url, target, ours_form="ports"
            )
            leftovers = list(target.client().scan_iter(match=f"{target.prefix}*"))

    def row(gateway: str, kind: str, mode: str = "normal") -> dict[str, Any]:
        (found,) = [
            r for r in rows if (r["gateway"], r["kind"], r["mode"]) == (gateway, kind, mode)
        ]
        return found

    for gateway in cluster.SCALE_KINDS:
        sweep = row(gateway, "sweep")
        assert sweep["failure_kinds"] == {}, gateway
        assert sweep["completed"] == sweep["sessions"] == 4
        assert row(gateway, "turns")["completed"] == 4
    # Redis figures only where Redis is used, and ours stays within a command per chunk
    # even at this size (heartbeats included).
    assert "redis_commands" not in row("ours-1", "sweep")
    assert row("ours-2", "sweep")["redis_commands"] > 0
    assert row("seed-2", "sweep")["redis_commands"] > 0
    # Both members of every session saw the whole reply, across processes.
    for gateway in ("ours-2", "seed-2"):
        watched = row(gateway, "cross")
        assert watched["members"] == 2
        assert watched["completed"] == watched["turns"] == 6
    stop = row("ours-2", "cross", "stop")
    assert stop["upstream_cancelled"] == stop["stops"] == 3
    assert stop["after_stop"] == 0
    drop = row("ours-2", "cross", "drop")
    assert (drop["resumed"], drop["gaps"], drop["duplicates"]) == (3, 0, 0)
    failover = row("ours-2", "failover", "kill -9")
    assert failover["in_flight"] == 3
    assert failover["usable"] == failover["usable_of"] == 3
    assert failover["messages_sent"] == 6  # one before the kill, one after, per session
    assert failover["messages_lost"] == 0
    text = "\n".join(report.tables({"scale": rows}, list(cluster.SCALE_KINDS)))
    assert "[7] Scale: failover" in text
    names = {t["name"] for t in report.targets({"scale": rows})}
    assert "scale: ours-2 chunks/s vs ours-1, 4 sessions, pace 0 ms" in names
    assert "scale: failover messages lost" in names
    assert statuses, "no progress was shown"
    if not target.private:
        assert leftovers == [], "the run's keys were left in the machine's Redis"


@pytest.mark.slow
async def test_two_workers_on_one_port_carry_the_sweep() -> None:
    """``ours-2`` as ``serve --workers 2``: the kernel's choice of worker, Redis between."""
    plan = dataclasses.replace(scenarios.SMOKE, scale_paces=(0.0,))
    with trio.fail_after(CEILING_S):
        async with (
            start_server("mock-agent", [python(), "-m", "bench.mock_agent"]) as mock,
            open_worker_pool(1) as pool,
            cluster.open_redis() as target,
        ):
            bench = scenarios.Bench(pool, mock, plan, lambda _: None)
            forms = {"ours-2": "one-port"}
            async with scale.started(bench, ["ours-2"], mock.url, target, forms) as gateways:
                (gateway,) = gateways
                assert len(gateway.tree()) >= 3  # the parent and its two workers
                rows = await scale.sweep(bench, gateways)
    sweep = next(r for r in rows if r["kind"] == "sweep")
    assert sweep["form"] == "one-port"
    assert sweep["failure_kinds"] == {}
    assert sweep["completed"] == 4
    assert sweep["redis_commands"] > 0
    assert sweep["redis_sent"] is None  # /metrics would answer for one worker only


async def test_the_machines_redis_is_cleaned_of_the_runs_keys(redis_server: str) -> None:
    """A shared Redis (the tests' one: the machine's, else a private server) keeps none
    of the run's keys."""
    address = urlsplit(redis_server)
    machine = (address.hostname or "127.0.0.1", address.port or 6379)
    with trio.fail_after(30):
        async with cluster.open_redis(prefer_private=False, machine=machine) as target:
            assert not target.private
            client = target.client()
            client.set(f"{target.prefix}a", "1")
            client.set(f"{target.prefix}b", "2")
            before = await cluster.RedisProbe(target).read()
        assert before["commands"] > 0
    assert list(client.scan_iter(match=f"{target.prefix}*")) == []


def scale_row(gateway: str, kind: str = "sweep", **figures: object) -> dict[str, object]:
    base: dict[str, object] = {
        "gateway": gateway,
        "kind": kind,
        "mode": "normal",
        "sessions": 100,
        "pace_s": 0.0,
        "n": 200,
        "chunks_per_s": 100.0,
        "latency_p99_ms": 10.0,
        "failures": 0,
    }
    return base | figures


def test_scale_targets_compare_two_processes_with_one_and_with_the_seeds_two() -> None:
    rows = [
        scale_row("ours-1", chunks_per_s=100.0),
        scale_row("ours-2", chunks_per_s=180.0, redis_commands_per_chunk=1.2),
        scale_row("seed-2", chunks_per_s=150.0, latency_p99_ms=20.0),
        scale_row(
            "ours-2",
            "cross",
            mode="stop",
            stops=10,
            upstream_cancelled=9,
            cancel_to_quiet_p99_ms=5.0,
        ),
        scale_row("ours-2", "cross", mode="drop", resumed=100, gaps=0, duplicates=0),
        scale_row(
            "ours-2",
            "failover",
            mode="kill -9",
            messages_lost=0,
            messages_sent=200,
            lease_s=6.0,
            usable_max_ms=6500.0,
            usable=100,
            usable_of=100,
        ),
    ]
    found = {t["name"]: t for t in report.targets({"scale": rows})}
    one = found["scale: ours-2 chunks/s vs ours-1, 100 sessions, pace 0 ms"]
    assert (one["value"], one["met"]) == (1.8, True)
    seed = found["scale: ours-2 chunks/s vs seed-2, 100 sessions, pace 0 ms"]
    assert (seed["value"], seed["met"]) == (1.2, False)
    assert found["scale: ours-2 chunk latency p99 vs seed-2, 100 sessions, pace 0 ms"]["met"]
    redis_cost = found["scale: ours-2 Redis commands per chunk, sweep, 100 sessions, pace 0 ms"]
    assert redis_cost["met"] is False
    # One upstream left running fails the stop target, however fast the others were.
    assert (
        found["scale: cross-node cancel-to-quiet p99 ms (stop from the non-owner)"]["met"] is False
    )
    assert found["scale: cross-node resume gaps + duplicates (all resumed)"]["met"] is True
    assert found["scale: failover messages lost"]["met"] is True
    assert found["scale: failover, every session usable again, max ms"]["met"] is True


def test_scale_tables_put_two_processes_over_one_and_over_the_seed() -> None:
    rows = [
        scale_row("ours-1", chunks_per_s=100.0),
        scale_row("ours-2", chunks_per_s=180.0),
        scale_row("seed-2", chunks_per_s=90.0),
    ]
    metrics = report.SCALE[:1]
    (_, rows_of, point, _) = report.scale_sections(rows)[0]
    text = report.table(
        "t",
        rows_of,
        point,
        metrics,
        ["ours-1", "ours-2", "seed-2"],
        "ours-2",
        report.SCALE_BASELINES,
    )
    head, _, line = text.splitlines()[1:]
    assert head.split()[-2:] == ["ours-2/ours-1", "ours-2/seed-2"]
    assert line.split()[-2:] == ["1.80x", "2.00x"]


def test_smoke_plan_keeps_the_scale_scenario_small() -> None:
    plan = dataclasses.replace(scenarios.SMOKE)
    assert max(plan.scale_sessions) <= 10
    assert plan.scale_lease_s < scenarios.QUICK.scale_lease_s
