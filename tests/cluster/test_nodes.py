"""Two gateway nodes sharing Redis and the SQLite file: ownership, routed commands, routed
delivery, cluster-wide membership and resume across nodes, with real clients connected to
different nodes. Each scenario runs on nodes in this process with python-socketio clients,
and on real ``archon-chat serve`` processes where the client of the second node is the
npm ``socket.io-client``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import trio

from archon_chat.config import Settings
from tests.cluster.support import cluster_nodes, running_agents
from tests.e2e.agents_fake import AgentsFake
from tests.e2e.npm_client import NpmClient
from tests.e2e.support import (
    Client,
    agent_said,
    chunks_at_least,
    create_session,
    gateway_settings,
    joined_client,
    running_gateway,
    turn_done,
)
from tests.redis_server import RedisTarget, RespConnection

pytestmark = pytest.mark.slow


@asynccontextmanager
async def two_nodes(
    tmp_path: Path,
    redis: RedisTarget,
    delay_s: float = 0.05,
    *,
    processes: bool = False,
    **overrides: Any,
) -> AsyncIterator[tuple[AgentsFake, Served, Served]]:
    """Nodes ``n0`` and ``n1`` of one cluster (``overrides``: settings), in this process or
    (``processes``) as real ``archon-chat serve`` processes."""
    common: dict[str, Any] = {"lease_s": 3.0, **overrides}
    if processes:
        env = {_ENV[name]: str(value) for name, value in common.items()}
        async with (
            running_agents(delay_s) as agents,
            cluster_nodes(tmp_path, 2, redis=redis, agents_url=agents.url, env=env) as nodes,
        ):
            yield agents, nodes[0], nodes[1]
        return
    agents = AgentsFake(delay_s=delay_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(agents.serve)
        common.update(redis_url=redis.url, redis_prefix=redis.prefix)
        s0 = gateway_settings(tmp_path, agents.url, node_id="n0", **common)
        s1 = gateway_settings(tmp_path, agents.url, node_id="n1", **common)
        async with running_gateway(s0) as n0, running_gateway(s1) as n1:
            yield agents, n0, n1
        nursery.cancel_scope.cancel()


class Served(Protocol):
    url: str


_ENV = {f.name: f.metadata["env"] for f in dataclasses.fields(Settings)}

#: every scenario on nodes in this process (fast, one traceback) and on real processes
WHERE = pytest.mark.parametrize("processes", [False, True], ids=["in-process", "processes"])


async def joined_on(url: str, session_id: str, *, npm: bool) -> Client | NpmClient:
    """A websocket client that joined ``session_id``: the npm one or python-socketio's."""
    if not npm:
        return await joined_client(url, session_id)
    client = NpmClient(url, transports=["websocket"])
    await client.connect()
    ack = await client.call("join_chat", {"session_id": session_id})
    assert ack["status"] == "joined", ack
    return client


def chunk_text(events: list[tuple[str, Any]]) -> str:
    return "".join(d["content"] for n, d in events if n == "stream_chunk")


def seqs(events: list[tuple[str, Any]]) -> list[int]:
    return [d["seq"] for n, d in events if isinstance(d, dict) and "seq" in d and n != "typing"]


async def metric(url: str, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{name}(_total)?(\{{.*\}})? ", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


@WHERE
async def test_a_turn_is_watched_from_both_nodes(
    tmp_path: Path, redis_url: RedisTarget, processes: bool
) -> None:
    async with two_nodes(tmp_path, redis_url, processes=processes) as (_, n0, n1):
        session_id = await create_session(n0.url)
        a = await joined_client(n0.url, session_id)
        b = await joined_on(n1.url, session_id, npm=processes)
        ack = await b.call("chat_message", {"session_id": session_id, "message": "slow hi"})
        assert ack["status"] == "sent"
        for client in (a, b):
            await client.wait_for(turn_done)
            await client.wait_for(agent_said("w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 "))
        assert (
            chunk_text(a.snapshot()) == chunk_text(b.snapshot()) == "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 "
        )
        for client in (a, b):
            got = seqs(client.snapshot())
            assert got == sorted(got) and len(set(got)) == len(got)
        # One node owns the session and routed the other's events to it: never a broadcast.
        published = await metric(n0.url, "archon_chat_cluster_events_published") + await metric(
            n1.url, "archon_chat_cluster_events_published"
        )
        assert published > 0
        assert await metric(n0.url, "archon_chat_redis_commands") > 0
        for client in (a, b):
            await client.disconnect()


@WHERE
async def test_stop_from_a_node_that_does_not_own_the_turn(
    tmp_path: Path, redis_url: RedisTarget, processes: bool
) -> None:
    async with two_nodes(tmp_path, redis_url, processes=processes) as (agents, n0, n1):
        session_id = await create_session(n0.url)
        a = await joined_client(n0.url, session_id)
        b = await joined_on(n1.url, session_id, npm=processes)
        await a.call("chat_message", {"session_id": session_id, "message": "endless"})
        await b.wait_for(chunks_at_least(2))
        ack = await b.call("stop_response", {"session_id": session_id})
        assert ack["cancelled"] is True
        after_ack = len(b.snapshot())
        events = await b.wait_for(turn_done)
        tail = [n for n, _ in b.snapshot()[after_ack:]]
        assert "stream_chunk" not in tail, tail
        assert any(n == "message" and d["data"]["status"] == "cancelled" for n, d in events)
        with trio.fail_after(5):
            while session_id not in agents.disconnects:
                await trio.sleep(0.02)
        await a.disconnect()
        await b.disconnect()


@WHERE
async def test_the_last_leave_on_any_node_cancels(
    tmp_path: Path, redis_url: RedisTarget, processes: bool
) -> None:
    async with two_nodes(tmp_path, redis_url, processes=processes) as (agents, n0, n1):
        session_id = await create_session(n0.url)
        a = await joined_client(n0.url, session_id)
        b = await joined_on(n1.url, session_id, npm=processes)
        await a.call("chat_message", {"session_id": session_id, "message": "endless"})
        await b.wait_for(chunks_at_least(2))
        left = await a.call("leave_chat", {"session_id": session_id})
        assert left["cancelled"] is False  # b still watches, on the other node
        seen = len(b.snapshot())
        await b.wait_for(lambda evs: len([e for e in evs if e[0] == "stream_chunk"]) > seen)
        left = await b.call("leave_chat", {"session_id": session_id})
        assert left["cancelled"] is True
        with trio.fail_after(5):
            while session_id not in agents.disconnects:
                await trio.sleep(0.02)
        await a.disconnect()
        await b.disconnect()


@WHERE
async def test_a_client_resumes_on_the_other_node_without_gaps(
    tmp_path: Path, redis_url: RedisTarget, processes: bool
) -> None:
    async with two_nodes(tmp_path, redis_url, delay_s=0.1, processes=processes) as (_, n0, n1):
        session_id = await create_session(n0.url)
        a = await joined_client(n0.url, session_id)
        # The client that will resume is connected to the other node ahead (the npm
        # client's process takes a while to start); it joins once the first drops.
        b: Client | NpmClient = (
            NpmClient(n1.url, transports=["websocket"])
            if processes
            else Client(n1.url, transports=["websocket"])
        )
        await b.connect()
        await a.call("chat_message", {"session_id": session_id, "message": "first"})
        await a.wait_for(turn_done)
        first_turn = len(a.snapshot())
        await a.call("chat_message", {"session_id": session_id, "message": "slow go"})
        await a.wait_for(chunks_at_least(5))
        await a.disconnect()
        before = a.snapshot()[first_turn:]
        last_seq = max(seqs(a.snapshot()))
        ack = await b.call("join_chat", {"session_id": session_id, "last_seq": last_seq})
        assert ack["status"] == "joined"
        whole = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 "
        await b.wait_for(agent_said(whole))
        missed = chunk_text(b.snapshot())
        # Joined mid-reply (the usual case): the rest of the text, exactly. (If the reply
        # ended first, its message, waited for above, carries it all.)
        if missed:
            assert chunk_text(before) + missed == whole
        after = seqs(b.snapshot())
        assert after and all(s > last_seq for s in after) and after == sorted(after)
        await b.disconnect()


@WHERE
async def test_a_message_sent_on_the_other_node_is_answered_by_the_owner(
    tmp_path: Path, redis_url: RedisTarget, processes: bool
) -> None:
    async with two_nodes(tmp_path, redis_url, processes=processes) as (_, n0, n1):
        session_id = await create_session(n0.url)
        a = await joined_client(n0.url, session_id)
        await a.call("chat_message", {"session_id": session_id, "message": "one"})
        await a.wait_for(agent_said("Echo: one"))
        # n0 owns the session now; a client of n1 sends the next message.
        b = await joined_on(n1.url, session_id, npm=processes)
        ack = await b.call("chat_message", {"session_id": session_id, "message": "two"})
        assert ack["status"] == "sent"
        await b.wait_for(agent_said("Echo: two"))
        await a.wait_for(agent_said("Echo: two"))
        assert await metric(n1.url, "archon_chat_cluster_requests") >= 1
        await a.disconnect()
        await b.disconnect()


def lease_holder(redis: RedisTarget, session_id: str) -> str | None:
    with RespConnection.to_url(redis.url) as conn:
        value = conn.command("GET", f"{redis.prefix}lease:{session_id}")
    if not isinstance(value, bytes):
        return None
    return value.decode().split(" ")[0]


async def test_an_idle_owner_lets_go_and_the_next_node_takes_over(
    tmp_path: Path, redis_url: RedisTarget
) -> None:
    async with two_nodes(tmp_path, redis_url, idle_passivate_s=0.5) as (_, n0, n1):
        session_id = await create_session(n0.url)
        a = await joined_client(n0.url, session_id)
        await a.call("chat_message", {"session_id": session_id, "message": "one"})
        await a.wait_for(agent_said("Echo: one"))
        assert lease_holder(redis_url, session_id) == "n0"
        # Passivated: the lease is released, nobody owns the session.
        with trio.fail_after(10):
            while lease_holder(redis_url, session_id) is not None:
                await trio.sleep(0.05)
        b = await joined_client(n1.url, session_id)
        await b.call("chat_message", {"session_id": session_id, "message": "two"})
        await a.wait_for(agent_said("Echo: two"))
        assert lease_holder(redis_url, session_id) == "n1"
        # seq keeps growing across the change of owner
        got = seqs(a.snapshot())
        assert got == sorted(got) and len(set(got)) == len(got)
        await a.disconnect()
        await b.disconnect()
