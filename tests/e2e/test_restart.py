"""Restarts: the real ``archon-chat serve`` process, killed mid-turn with SIGKILL, then
started again on the same SQLite file or PostgreSQL database; and a graceful SIGTERM
mid-turn.

Ceiling: every test runs under ``trio.fail_after(40)``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.pg import pg_database, pg_server, pg_url  # noqa: F401 (fixtures)

from .agents_fake import AgentsFake
from .support import agent_said, chunks_at_least, create_session, get_session, joined_client

pytestmark = pytest.mark.slow


@asynccontextmanager
async def gateway_process(
    db: Path, agents_url: str, database_url: str = ""
) -> AsyncIterator[tuple[trio.Process, str]]:
    env = dict(os.environ)
    env.update(
        {
            "AGENT_SERVICE_URL": agents_url,
            "ARCHON_CHAT_DB": str(db),
            "ARCHON_CHAT_DATABASE_URL": database_url,
            "ARCHON_CHAT_PORT": "0",
            "ARCHON_CHAT_LOG_LEVEL": "WARNING",
            "ARCHON_CHAT_GRACE_S": "0.3",
            "ARCHON_CHAT_SHUTDOWN_GRACE_S": "2",
        }
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "archon_chat.cli", "serve"],
        env=env,
        stdout=-1,  # subprocess.PIPE
    )
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(20):
        while b"serving on" not in buffer:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, "gateway exited before serving"
            buffer += chunk
    line = next(x for x in buffer.decode().splitlines() if "serving on" in x)
    url = line.split("serving on ", 1)[1].strip()
    try:
        yield process, url
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_sigkill_mid_turn_keeps_history_and_marks_turn_failed(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    database_url = request.getfixturevalue("pg_url") if store == "postgres" else ""
    with trio.fail_after(40):
        agents = AgentsFake(delay_s=0.05)
        db = tmp_path / "chat.db"
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with gateway_process(db, agents.url, database_url) as (process, url):
                session_id = await create_session(url)
                client = await joined_client(url, session_id)
                await client.call("chat_message", {"session_id": session_id, "message": "first"})
                await client.wait_for(agent_said("Echo: first"))
                await client.call("chat_message", {"session_id": session_id, "message": "endless"})
                await client.wait_for(chunks_at_least(8))
                seen = [d["seq"] for _, d in client.snapshot()]
                process.send_signal(signal.SIGKILL)
                await process.wait()
                await trio.to_thread.run_sync(client.sio.disconnect)

            async with gateway_process(db, agents.url, database_url) as (process, url):
                stored = await get_session(url, session_id)
                contents = [(m["sender"], m["content"], m["status"]) for m in stored["messages"]]
                assert contents[:3] == [
                    ("user", "first", "complete"),
                    ("agent", "Echo: first", "complete"),
                    ("user", "endless", "complete"),
                ]
                interrupted = stored["messages"][3]
                assert interrupted["sender"] == "agent"
                assert interrupted["status"] == "failed"
                assert interrupted["error"]["code"]
                # seq never goes backwards across the crash
                assert interrupted["seq"] > max(seen)
                assert stored["last_seq"] >= interrupted["seq"]

                # The session carries on with fresh, larger seqs.
                client = await joined_client(url, session_id)
                await client.call("chat_message", {"session_id": session_id, "message": "after"})
                await client.wait_for(
                    lambda evs: any(n == "typing" and d["is_typing"] is False for n, d in evs)
                )
                assert min(d["seq"] for n, d in client.snapshot()) > interrupted["seq"]
                await client.disconnect()
            nursery.cancel_scope.cancel()


async def test_sigterm_mid_turn_stores_cancelled(tmp_path: Path) -> None:
    with trio.fail_after(40):
        agents = AgentsFake(delay_s=0.05)
        db = tmp_path / "chat.db"
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with gateway_process(db, agents.url) as (process, url):
                session_id = await create_session(url)
                client = await joined_client(url, session_id)
                await client.call("chat_message", {"session_id": session_id, "message": "endless"})
                await client.wait_for(chunks_at_least(3))
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(10):
                    code = await process.wait()
                assert code == 0
                with trio.fail_after(5):
                    await agents.disconnected.wait()
                await trio.to_thread.run_sync(client.sio.disconnect)
            async with gateway_process(db, agents.url) as (process, url):
                stored = await get_session(url, session_id)
                agent = stored["messages"][-1]
                assert agent["sender"] == "agent" and agent["status"] == "cancelled"
                assert agent["content"].startswith("w0 w1 w2")
            nursery.cancel_scope.cancel()
