"""Smoke test of the load benchmark: does the harness work end to end?

Real processes on 127.0.0.1 (the mock agents service, one load-generator process, each
gateway), real clock; each test has a 90 s ceiling (``trio.fail_after``). A few sessions,
one message each; asserts only that every piece ran and nothing failed, never a timing.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import trio

from bench import report, scenarios
from bench.runner import gateway_command, open_worker_pool, python, remove_db, start_server, temp_db

SESSIONS = 3
CHUNKS = 5

OURS_PRESENT = importlib.util.find_spec("archon_chat.server") is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(
            "ours", marks=pytest.mark.skipif(not OURS_PRESENT, reason="no gateway in this tree")
        ),
        "seed",
    ],
)
async def test_one_message_per_session_arrives_whole(kind: str) -> None:
    statuses: list[str] = []
    db = temp_db()
    try:
        with trio.fail_after(90):
            async with (
                start_server("mock-agent", [python(), "-m", "bench.mock_agent"]) as mock,
                open_worker_pool(1) as pool,
            ):
                argv, env = gateway_command(kind, mock.url, db)
                async with start_server(kind, argv, env) as gateway:
                    bench = scenarios.Bench(pool, mock, scenarios.SMOKE, statuses.append)
                    spec = {"n": CHUNKS, "size": 48, "pace": 0.0}
                    figures = await bench.run(gateway, SESSIONS, spec, label="smoke", deadline=30)
                    implementation = gateway.implementation
    finally:
        remove_db(db)

    assert figures["failure_kinds"] == {}
    assert figures["turns"] == SESSIONS
    assert figures["completed"] == SESSIONS
    assert figures["chunks"] == SESSIONS * CHUNKS
    assert figures["duplicates"] == 0
    assert figures["latency_p99_ms"] is not None
    assert statuses, "no progress was shown"
    if kind == "seed":
        # The seed as uvicorn[standard] runs it, and the run can tell.
        assert implementation["loop"] == "uvloop.Loop"
        assert implementation["http"].endswith("HttpToolsProtocol")


def test_table_ratios_put_seed_shared_first_then_the_seed() -> None:
    rows = [
        {"gateway": "ours", "sessions": 1, "value": 30.0},
        {"gateway": "seed", "sessions": 1, "value": 10.0},
        {"gateway": "seed-shared", "sessions": 1, "value": 60.0},
    ]
    text = report.table(
        "t",
        rows,
        lambda r: f"{r['sessions']} sess",
        [("v", lambda r: r["value"])],
        ["ours", "seed", "seed-shared"],
    )
    head, _, line = text.splitlines()[1:]
    assert head.split()[-2:] == ["ours/seed-shared", "ours/seed"]
    assert line.split()[-2:] == ["0.50x", "3.00x"]


def sweep_row(gateway: str, sessions: int, **figures: object) -> dict[str, object]:
    base: dict[str, object] = {
        "gateway": gateway,
        "kind": "sweep",
        "sessions": sessions,
        "pace_s": 0.0,
        "chunks_per_s": 100.0,
        "latency_p99_ms": 10.0,
        "gateway_cpu_per_chunk_us": 100.0,
        "ttfc_p99_ms": 500.0,
        "failures": 0,
    }
    return base | figures


def test_targets_compare_ours_with_seed_shared_not_the_seed() -> None:
    rows = [
        sweep_row("ours", 100, chunks_per_s=150.0, gateway_cpu_per_chunk_us=60.0),
        sweep_row("seed-shared", 100, chunks_per_s=100.0, latency_p99_ms=5.0),
        sweep_row("seed", 100, chunks_per_s=10.0, latency_p99_ms=50.0),
    ]
    found = {t["name"]: t for t in report.targets({"throughput": rows})}
    speed = found["chunks/s vs seed-shared, 100 sessions, pace 0 ms"]
    assert (speed["value"], speed["met"]) == (1.5, True)
    cpu = found["gateway CPU per chunk vs seed-shared, 100 sessions, pace 0 ms"]
    assert (cpu["value"], cpu["met"]) == (0.6, True)
    latency = found["chunk latency p99 vs seed-shared, 100 sessions, pace 0 ms"]
    assert (latency["value"], latency["met"]) == (2.0, False)


def test_targets_cover_turn_cost_slow_clients_and_long_replies() -> None:
    turns = sweep_row("ours", 1000, kind="turns", n=1, gateway_cpu_per_turn_us=1200.0)
    slow = [
        {"gateway": "ours", "slow_every": 0, "latency_p99_ms": 10.0},
        {
            "gateway": "ours",
            "slow_every": 10,
            "latency_p99_ms": 11.0,
            "slow": {"cut": 3, "cut_text_complete": 3},
        },
        {"gateway": "seed-shared", "slow_every": 10, "latency_p99_ms": 20.0},
    ]
    long = [
        {"gateway": "ours", "reply_s": 2.0, "latency_p99_ms": 10.0},
        {"gateway": "ours", "reply_s": 20.0, "latency_p99_ms": 13.0},
    ]
    found = {
        t["name"]: t for t in report.targets({"throughput": [turns], "slow": slow, "long": long})
    }
    assert found["gateway CPU per turn us, 1000 one-chunk replies"]["met"] is False
    assert found["slow clients (1 in 10 slow): others' p99 vs none slow"]["met"] is True
    assert found["slow clients (1 in 10 slow): others' p99 vs seed-shared's"]["met"] is True
    resumed = found["slow clients (1 in 10 slow): cut ones resumed with their text complete"]
    assert (resumed["value"], resumed["met"]) == ("3/3", True)
    longest = found["long replies: p99 of 20 s vs 2 s replies"]
    assert (longest["value"], longest["met"]) == (1.3, False)


def test_no_cut_fails_the_slow_client_target() -> None:
    slow = [
        {"gateway": "ours", "slow_every": 0, "latency_p99_ms": 10.0},
        {
            "gateway": "ours",
            "slow_every": 10,
            "latency_p99_ms": 10.0,
            "slow": {"cut": 0, "cut_text_complete": 0},
        },
    ]
    (*_, resumed) = report.targets({"slow": slow})
    assert resumed["met"] is False


@pytest.mark.slow
@pytest.mark.skipif(not OURS_PRESENT, reason="no gateway in this tree")
async def test_slow_client_is_merged_cut_and_resumes_with_the_agents_text() -> None:
    """A client reading 8 KiB/s gets a 6.4 MB reply at full speed: past its kernel
    buffers the outbox merges, past the (lowered) bound the socket is cut; the client
    comes back with its last seq and ends with exactly the text the agent sent."""
    statuses: list[str] = []
    plan = dataclasses.replace(scenarios.SMOKE, slow_every=2, slow_seconds=3.0)
    db = temp_db()
    try:
        with trio.fail_after(120):
            async with (
                start_server("mock-agent", [python(), "-m", "bench.mock_agent"]) as mock,
                open_worker_pool(1) as pool,
            ):
                argv, env = gateway_command("ours", mock.url, db)
                env.update({"ARCHON_CHAT_OUTBOX_SIZE": "4", "ARCHON_CHAT_WRITE_TIMEOUT_S": "2"})
                async with start_server("ours", argv, env) as gateway:
                    bench = scenarios.Bench(pool, mock, plan, statuses.append)
                    figures = await scenarios.slow_run(
                        bench,
                        gateway,
                        2,
                        {"n": CHUNKS, "size": 48, "pace": 0.0},
                        {"n": 200, "size": 32_000, "pace": 0.0},
                        2,
                        label="slow",
                        deadline=60,
                    )
    finally:
        remove_db(db)

    slow = figures["slow"]
    assert (slow["clients"], slow["throttled"]) == (1, 1)
    assert figures["outbox_merges"] > 0
    assert figures["slow_cuts"] == 1
    assert (slow["cut"], slow["resumed"]) == (1, 1)
    assert slow["cut_text_complete"] == 1
    assert figures["completed"] == 1  # the other client's reply, whole
    assert figures["failure_kinds"] == {}


@pytest.mark.slow
@pytest.mark.skipif(not OURS_PRESENT, reason="no gateway in this tree")
async def test_turn_cost_and_long_reply_points_come_out_in_tables_and_targets() -> None:
    statuses: list[str] = []
    plan = dataclasses.replace(
        scenarios.SMOKE,
        sweep_sessions=(2,),
        sweep_paces=(0.0,),
        turn_sessions=2,
        long_sessions=2,
        long_seconds=(0.1, 0.3),
    )
    db = temp_db()
    try:
        with trio.fail_after(90):
            async with (
                start_server("mock-agent", [python(), "-m", "bench.mock_agent"]) as mock,
                open_worker_pool(1) as pool,
            ):
                argv, env = gateway_command("ours", mock.url, db)
                async with start_server("ours", argv, env) as gateway:
                    bench = scenarios.Bench(pool, mock, plan, statuses.append)
                    document = {
                        "throughput": await scenarios.throughput(bench, [gateway]),
                        "long": await scenarios.long_replies(bench, [gateway]),
                    }
    finally:
        remove_db(db)

    sweep, turns = document["throughput"]
    assert (sweep["kind"], sweep["n"], turns["kind"], turns["n"]) == ("sweep", 10, "turns", 1)
    assert turns["completed"] == 2
    assert turns["gateway_cpu_per_turn_us"] is not None
    short, long = document["long"]
    assert (short["reply_s"], long["reply_s"]) == (0.1, 0.3)
    assert long["n"] == 3 * short["n"]
    assert long["completed"] == short["completed"] == 2
    assert long["latency_p99_ms"] is not None
    text = "\n".join(report.tables(document, ["ours"]))
    assert "[6] Long replies" in text
    assert "1 chunks" in text
    names = [t["name"] for t in report.targets(document)]
    assert "gateway CPU per turn us, 2 one-chunk replies" in names
    assert "long replies: p99 of 0.3 s vs 0.1 s replies" in names
