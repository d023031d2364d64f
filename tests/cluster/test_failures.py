"""Failures of a cluster on real processes: an owner killed mid-turn, Redis gone for five
seconds, a node paused past its lease. Python-socketio clients on the surviving nodes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster.support import cluster_nodes, running_agents
from tests.cluster.test_nodes import metric
from tests.e2e.support import (
    Client,
    agent_said,
    chunks_at_least,
    create_session,
    get_session,
    joined_client,
    turn_done,
)
from tests.redis_server import PrivateRedis, RedisTarget

pytestmark = pytest.mark.slow

LEASE_S = 2.0
FAST = {"ARCHON_CHAT_LEASE_S": str(LEASE_S), "ARCHON_CHAT_REDIS_TIMEOUT_S": "0.5"}


def ended_lost(events: list[tuple[str, Any]]) -> bool:
    return (
        any(n == "error" and d.get("code") == "owner_lost" for n, d in events)
        and any(n == "message" and d["data"]["status"] == "failed" for n, d in events)
        and any(n == "stream_complete" for n, d in events)
        and turn_done(events)
    )


async def test_a_killed_owner_s_turn_fails_as_owner_lost_and_the_session_goes_on(
    tmp_path: Path, redis_url: RedisTarget
) -> None:
    async with (
        running_agents(delay_s=0.05) as agents,
        cluster_nodes(tmp_path, 2, redis=redis_url, agents_url=agents.url, env=FAST) as nodes,
    ):
        n0, n1 = nodes
        session_id = await create_session(n0.url)
        owner_side = await joined_client(n0.url, session_id)
        watcher = await joined_client(n1.url, session_id)
        await owner_side.call("chat_message", {"session_id": session_id, "message": "endless"})
        await watcher.wait_for(chunks_at_least(3))
        killed_at = time.monotonic()
        await n0.kill()
        await watcher.wait_for(ended_lost, timeout=LEASE_S + 5)
        noticed_s = time.monotonic() - killed_at
        assert noticed_s < LEASE_S + 2.5, noticed_s
        stored = await get_session(n1.url, session_id)
        reply = stored["messages"][-1]
        assert reply["sender"] == "agent" and reply["status"] == "failed"
        assert await metric(n1.url, "archon_chat_cluster_turns_taken_over") == 1
        ack = await watcher.call("chat_message", {"session_id": session_id, "message": "again"})
        assert ack["status"] == "sent"
        await watcher.wait_for(agent_said("Echo: again"))
        owner_side.sio.disconnect()
        await watcher.disconnect()


async def test_redis_gone_for_five_seconds_loses_nothing_and_heals(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    redis = RedisTarget(private_redis.url, "outage:")
    async with (
        running_agents(delay_s=0.5) as agents,
        cluster_nodes(tmp_path, 2, redis=redis, agents_url=agents.url, env=FAST) as nodes,
    ):
        n0, n1 = nodes
        session_id = await create_session(n0.url)
        other_id = await create_session(n0.url)
        owner_side = await joined_client(n0.url, session_id)
        await owner_side.call("chat_message", {"session_id": other_id, "message": "warm"})
        # Another session, owned by n0, that a client of n1 will write to meanwhile.
        with trio.fail_after(10):
            while not (await get_session(n0.url, other_id))["messages"][-1]["content"]:
                await trio.sleep(0.1)
        routed = await joined_client(n1.url, other_id)
        await owner_side.call("chat_message", {"session_id": session_id, "message": "slow out"})
        await owner_side.wait_for(chunks_at_least(1))
        private_redis.stop()
        outage_ends = time.monotonic() + 5
        # A command for a session owned by the other node cannot be routed: a clear error.
        refused = await routed.call("chat_message", {"session_id": other_id, "message": "now"})
        assert refused["status"] == "error" and "retry" in refused["error"], refused
        while time.monotonic() < outage_ends:  # the outage is the scenario, not a margin
            await trio.sleep(0.2)
        private_redis.start()
        # The turn in flight on its owner finished and is stored; nobody exited.
        await owner_side.wait_for(agent_said("w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 "), timeout=15)
        assert n0.alive and n1.alive
        assert await metric(n0.url, "archon_chat_redis_errors") > 0
        stored = await get_session(n0.url, session_id)
        assert stored["messages"][-1]["content"] == "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 "
        # Healed without a restart: a command routed across nodes works again.
        with trio.fail_after(15):
            while True:
                ack = await routed.call(
                    "chat_message", {"session_id": other_id, "message": "healed"}
                )
                if ack.get("status") == "sent":
                    break
                await trio.sleep(0.3)
        await routed.wait_for(agent_said("Echo: healed"), timeout=10)
        await owner_side.disconnect()
        await routed.disconnect()


async def test_a_paused_owner_neither_writes_nor_emits_after_the_take_over(
    tmp_path: Path, redis_url: RedisTarget
) -> None:
    async with (
        running_agents(delay_s=0.05) as agents,
        cluster_nodes(tmp_path, 2, redis=redis_url, agents_url=agents.url, env=FAST) as nodes,
    ):
        n0, n1 = nodes
        session_id = await create_session(n0.url)
        owner_side = await joined_client(n0.url, session_id)
        watcher = await joined_client(n1.url, session_id)
        await owner_side.call("chat_message", {"session_id": session_id, "message": "endless"})
        await watcher.wait_for(chunks_at_least(3))
        n0.pause()
        try:
            await watcher.wait_for(ended_lost, timeout=LEASE_S + 5)
        finally:
            n0.resume()
        ended_at = len(watcher.snapshot())
        # n0 learns it was deposed: from its lease renewal, or from the store refusing its
        # actor's next write (fencing), whichever comes first.
        with trio.fail_after(10):
            while not any(line in n0.log_text() for line in ("lease lost", "taken over elsewhere")):
                await trio.sleep(0.05)
        # n0 woke deposed: its stale turn is not stored over the take-over, and nothing
        # of it reaches the room from n0 (n1 relays only the new owner's events).
        stored = await get_session(n1.url, session_id)
        reply = stored["messages"][-1]
        assert reply["status"] == "failed" and reply["error"]["code"] == "owner_lost", reply
        probe = Client(n1.url, transports=["websocket"])
        await probe.connect()
        await probe.call("join_chat", {"session_id": session_id})
        assert [n for n, _ in watcher.snapshot()[ended_at:]] == []
        await probe.disconnect()
        owner_side.sio.disconnect()
        await watcher.disconnect()
