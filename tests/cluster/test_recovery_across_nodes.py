"""Connection state recovery across nodes: the stock npm ``socket.io-client`` drops its
transport mid-reply on one node and reconnects to the other, which adopts the socket from
the first (sid, pid, rooms, missed events): ``recovered === true``, the text whole and
exactly once, without a re-join."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trio

from tests.cluster.test_nodes import WHERE, metric, two_nodes
from tests.e2e.support import create_session
from tests.redis_server import RedisTarget

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "e2e" / "node" / "recover_mid_stream.mjs"


def _node() -> str:
    """Node.js, which `make setup` needs anyway (npm ci): missing, the test fails."""
    node = shutil.which("node")
    assert node, "node is needed for the npm client tests"
    return node


@WHERE
async def test_the_npm_client_is_recovered_on_another_node(
    tmp_path: Path, redis_url: RedisTarget, processes: bool
) -> None:
    with trio.fail_after(40):
        async with two_nodes(
            tmp_path, redis_url, delay_s=0.08, processes=processes, grace_s=5.0
        ) as (agents, n0, n1):
            session_id = await create_session(n0.url)
            result = await trio.run_process(
                [_node(), str(SCRIPT), n0.url, session_id, "slow", "3", "opt-in", n1.url],
                capture_stdout=True,
                capture_stderr=True,
                cwd=ROOT,
                check=False,
            )
            assert result.returncode == 0, result.stderr.decode()
            out = json.loads(result.stdout.decode().strip().splitlines()[-1])
            assert out["reason"] == "done", out
            assert out["recovered"] is True, out
            assert out["rejoined"] is False
            expected = "".join(f"w{i} " for i in range(10))
            assert "".join(out["chunks"]) == expected, out
            assert out["final"] == expected
            seqs = [s for s in out["seqs"] if s is not None]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), out
            assert agents.disconnects == []
            # recovered by the other node (a hand-over), not by the one it dropped from
            assert await metric(n1.url, "archon_chat_connection_recoveries") == 1
            assert await metric(n0.url, "archon_chat_connection_recoveries") == 0
