"""The stock npm ``socket.io-client`` loses its transport in the middle of a reply. Where
the server offers it connection state recovery (``ARCHON_CHAT_RECOVERY``: ``opt-in`` with
``auth: {recover: true}``, or ``all`` for any client) it reports ``recovered === true``
without re-joining; elsewhere it re-joins with its ``last_seq``. Either way the text arrives
whole and exactly once.

Ceiling: ``trio.fail_after(40)``; the node script has its own 20 s deadline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trio

from .agents_fake import AgentsFake
from .support import create_session, gateway_settings, running_gateway

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "node" / "recover_mid_stream.mjs"


def _node() -> str:
    """Node.js, which `make setup` needs anyway (npm ci): missing, the test fails."""
    node = shutil.which("node")
    assert node, "node is needed for the npm client tests"
    return node


@pytest.mark.parametrize(
    ("mode", "ask", "recovered"),
    [
        ("opt-in", "opt-in", True),
        ("opt-in", "plain", False),
        ("all", "plain", True),
        ("off", "opt-in", False),
    ],
)
async def test_npm_client_recovers_mid_stream(
    tmp_path: Path, mode: str, ask: str, recovered: bool
) -> None:
    with trio.fail_after(40):
        agents = AgentsFake(delay_s=0.08)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(tmp_path, agents.url, grace_s=5.0, recovery=mode)
            async with running_gateway(settings) as gw:
                session_id = await create_session(gw.url)
                result = await trio.run_process(
                    [_node(), str(SCRIPT), gw.url, session_id, "slow", "3", ask],
                    capture_stdout=True,
                    capture_stderr=True,
                    cwd=ROOT,
                    check=False,
                )
                assert result.returncode == 0, result.stderr.decode()
                out = json.loads(result.stdout.decode().strip().splitlines()[-1])
                assert out["reason"] == "done", out
                assert out["recovered"] is recovered, out
                assert out["rejoined"] is not recovered
                assert (out["pid"] is not None) is recovered
                expected = "".join(f"w{i} " for i in range(10))
                assert "".join(out["chunks"]) == expected
                assert out["final"] == expected
                seqs = out["seqs"]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
                assert agents.disconnects == []
            nursery.cancel_scope.cancel()
