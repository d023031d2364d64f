"""The actor fan-out benchmark runs end to end on a few sessions (figures not checked,
only that every turn was relayed and cancelled as asked).

Real clock (the benchmark measures wall time), sub-second settings; the test runs under
``trio.fail_after(20)``.
"""

from __future__ import annotations

import trio

from bench.actors_fanout import run_size


async def test_fanout_benchmark_runs() -> None:
    with trio.fail_after(20):
        result = await run_size(sessions=20, chunks=3, cancel_interval=0.05, passivate_s=0.3)
    assert result.chunks_relayed == 60
    assert result.cancelled == 20
    assert result.late_chunks == 0
    assert result.notes == []
