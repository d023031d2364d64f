"""The multi-node harness (tests/cluster/support.py) and the Redis fixtures
(tests/redis_server.py) do what the cluster tests rely on: real processes sharing one store,
signals that really reach them, keys that really go, a server that really restarts.

Ceiling: every async test runs under ``trio.fail_after(60)``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.support import agent_said, create_session, get_session, joined_client
from tests.redis_server import (
    PrivateRedis,
    RedisTarget,
    RespConnection,
    any_server,
    delete_prefix,
    free_port,
    keys_with_prefix,
    ping,
    prefixed,
)

from .support import Node, NodeStartError, cluster_nodes, running_agents

pytestmark = pytest.mark.slow

CEILING_S = 60


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def healthz(node: Node, timeout_s: float) -> int:
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        response = await http.get(f"{node.url}/healthz")
    return response.status_code


async def test_nodes_share_the_store_and_each_serves_sockets(
    tmp_path: Path, redis_url: RedisTarget
) -> None:
    with trio.fail_after(CEILING_S):
        async with running_agents(delay_s=0.01) as agents:
            async with cluster_nodes(tmp_path, 3, redis=redis_url, agents_url=agents.url) as nodes:
                n0, n1, n2 = nodes
                assert [n.node_id for n in nodes] == ["n0", "n1", "n2"]
                assert len({n.port for n in nodes}) == 3 and len({n.pid for n in nodes}) == 3
                assert n0.env["ARCHON_CHAT_REDIS_URL"] == redis_url.url
                assert n1.env["ARCHON_CHAT_REDIS_PREFIX"] == redis_url.prefix
                assert n2.env["ARCHON_CHAT_NODE_ID"] == "n2"

                session_id = await create_session(n0.url)
                for node in (n1, n2):
                    assert (await get_session(node.url, session_id))["session_id"] == session_id

                client = await joined_client(n1.url, session_id)
                try:
                    ack = await client.call(
                        "chat_message", {"session_id": session_id, "message": "hello"}
                    )
                    assert ack["status"] == "sent", ack
                    await client.wait_for(agent_said("Echo: hello"))
                finally:
                    await client.disconnect()
                # The turn went to the shared store: node 0 reads it back.
                stored = await get_session(n0.url, session_id)
                assert [m["content"] for m in stored["messages"]] == ["hello", "Echo: hello"]
            assert [n.returncode for n in nodes] == [0, 0, 0]  # each a graceful SIGTERM


async def test_kill_pause_resume_restart(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        async with running_agents() as agents:
            async with cluster_nodes(tmp_path, 2, redis=None, agents_url=agents.url) as nodes:
                n0, n1 = nodes
                assert n0.env["ARCHON_CHAT_REDIS_URL"] == ""

                n1.pause()
                with pytest.raises(httpx.TimeoutException):
                    await healthz(n1, timeout_s=1.0)
                assert await healthz(n0, timeout_s=5.0) == 200
                n1.resume()
                assert await healthz(n1, timeout_s=5.0) == 200

                pid = n0.pid
                await n0.kill()
                assert not pid_exists(pid)
                assert n0.returncode == -signal.SIGKILL
                with pytest.raises(httpx.ConnectError):
                    await healthz(n0, timeout_s=1.0)

                await n0.restart()
                assert n0.alive and n0.pid != pid and n0.starts == 2
                assert await healthz(n0, timeout_s=5.0) == 200
                assert n0.log_text().count("--- n0 start") == 2

                # A paused node still ends on terminate() (SIGTERM, then SIGCONT).
                n1.pause()
                assert await n1.terminate() == 0
                await n1.wait_for_log("shutting down", timeout_s=1.0)
                with pytest.raises(AssertionError, match="did not log 'never said'"):
                    await n1.wait_for_log("never said", timeout_s=0.2)


async def test_a_node_that_cannot_start_says_why(tmp_path: Path) -> None:
    with trio.fail_after(CEILING_S):
        with pytest.RaisesGroup(
            pytest.RaisesExc(NodeStartError, match="ARCHON_CHAT_LEASE_S='-1' is invalid"),
            flatten_subgroups=True,
        ):
            async with cluster_nodes(
                tmp_path,
                1,
                redis=None,
                agents_url="http://127.0.0.1:9",
                env={"ARCHON_CHAT_LEASE_S": "-1"},
            ):
                pytest.fail("the node started")


def test_prefixed_keys_go_and_others_stay(redis_url: RedisTarget) -> None:
    # ``prefixed`` is the ``redis_url`` fixture's body; keys of several kinds, more than
    # one SCAN page of them.
    outside = f"{redis_url.prefix}outside"
    with RespConnection.to_url(redis_url.url) as conn:
        with prefixed(redis_url.url) as target:
            assert target.prefix.startswith("t") and target.prefix != redis_url.prefix
            for i in range(1500):
                conn.command("SET", f"{target.prefix}k{i}", "v")
            conn.command("XADD", f"{target.prefix}stream", "*", "f", "v")
            conn.command("HSET", f"{target.prefix}hash", "f", "v")
            conn.command("SET", outside, "v")
            assert len(keys_with_prefix(target.url, target.prefix)) == 1502
        assert keys_with_prefix(target.url, target.prefix) == []
        assert conn.command("GET", outside) == b"v"
    assert delete_prefix(redis_url.url, redis_url.prefix) == 1


def test_without_the_machines_redis_a_private_one_serves() -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    with any_server(nobody) as (url, description):
        assert description.startswith("a private Redis server")
        assert url != nobody
        assert ping(url)
    assert not ping(url)


def test_private_redis_stops_and_starts_empty_on_the_same_port(
    private_redis: PrivateRedis,
) -> None:
    url, port = private_redis.url, private_redis.port
    with RespConnection.to_url(url) as conn:
        conn.command("SET", "k", "v")
        assert conn.command("GET", "k") == b"v"
    private_redis.stop()
    assert not private_redis.running
    assert not ping(url)
    private_redis.start()
    assert (private_redis.url, private_redis.port) == (url, port)
    with RespConnection.to_url(url) as conn:
        assert conn.command("DBSIZE") == 0
        conn.command("SET", "k", "v")
    pid = private_redis.pid
    assert pid is not None
    private_redis.kill()
    assert not pid_exists(pid)
    assert not ping(url)
    private_redis.start()
    assert ping(url)
    with RespConnection.to_url(url) as conn:
        assert conn.command("DBSIZE") == 0
        conn.command("SET", "k", "kept")
    private_redis.pause()
    assert not ping(url, timeout_s=0.5)
    private_redis.resume()
    with RespConnection.to_url(url) as conn:
        assert conn.command("GET", "k") == b"kept"
    private_redis.pause()
    private_redis.stop()  # ends a paused server too
    assert not private_redis.running
