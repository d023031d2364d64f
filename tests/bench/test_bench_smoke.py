"""Smoke test of the load benchmark: does the harness work end to end?

Real processes on 127.0.0.1 (the mock agents service, one load-generator process, each
gateway), real clock; each test has a 90 s ceiling (``trio.fail_after``). A few sessions,
one message each; asserts only that every piece ran and nothing failed, never a timing.
"""

from __future__ import annotations

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
    finally:
        remove_db(db)

    assert figures["failure_kinds"] == {}
    assert figures["turns"] == SESSIONS
    assert figures["completed"] == SESSIONS
    assert figures["chunks"] == SESSIONS * CHUNKS
    assert figures["duplicates"] == 0
    assert figures["latency_p99_ms"] is not None
    assert statuses, "no progress was shown"


def test_table_ratio_compares_ours_with_the_seed() -> None:
    rows = [
        {"gateway": "ours", "sessions": 1, "value": 30.0},
        {"gateway": "seed", "sessions": 1, "value": 10.0},
    ]
    text = report.table(
        "t",
        rows,
        lambda r: f"{r['sessions']} sess",
        [("v", lambda r: r["value"])],
        ["ours", "seed"],
    )
    assert text.splitlines()[-1].split()[-1] == "3.00x"


def test_targets_hold_or_fail_on_the_measured_ratio() -> None:
    rows = [
        {"gateway": g, "sessions": 100, "pace_s": 0.0, "chunks_per_s": v, "failures": 0}
        for g, v in (("ours", 150.0), ("seed", 100.0))
    ]
    (target,) = report.targets({"throughput": rows})
    assert target["value"] == 1.5
    assert target["met"] is False
