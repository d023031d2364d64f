"""Routed requests on a real Redis, one node against hand-driven inboxes: a request whose
destination is not subscribed at the moment it is published (a node resubscribing after a
Redis hiccup) is published again until it is taken, not lost until the routing timeout;
a hand-over request passes over a node nobody listens for and waits for a slow holder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import trio
from prometheus_client import CollectorRegistry

from archon_chat.cluster import codec
from archon_chat.cluster.metrics import ClusterMetrics
from archon_chat.cluster.node import ClusterNode
from archon_chat.cluster.serve import open_redis
from tests.e2e.support import gateway_settings
from tests.redis_server import RedisTarget


class _Hub:
    """What a node asks of its hub when nobody sends it work: nothing."""

    def on_actor_exit(self, callback: Callable[[str], None]) -> None:
        pass


@asynccontextmanager
async def running_node(
    tmp_path: Path, redis_url: RedisTarget, metrics: ClusterMetrics, rpc_timeout_s: float
) -> AsyncIterator[tuple[ClusterNode, coredis.Redis[bytes], trio.Nursery]]:
    """Node ``n0`` joined to the cluster of ``redis_url``'s prefix; its Redis client and
    a nursery that ends with it."""
    settings = gateway_settings(
        tmp_path,
        "http://127.0.0.1:9",
        node_id="n0",
        redis_url=redis_url.url,
        redis_prefix=redis_url.prefix,
        lease_s=6.0,
        cluster_rpc_timeout_s=rpc_timeout_s,
    )
    async with open_redis(settings) as redis:
        assert redis is not None
        node = ClusterNode(settings, redis, _Hub(), metrics)  # type: ignore[arg-type]
        node.attach(object())  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            yield node, redis, nursery
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def inbox(redis_url: RedisTarget, node: str) -> AsyncIterator[tuple[Any, Any]]:
    """A hand-driven node: a client subscribed to ``node``'s inbox, and its pub/sub."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url.url, decode_responses=False)
    async with client, client.pubsub(channels=[f"{redis_url.prefix}node:{node}"]) as pubsub:
        yield client, pubsub


async def next_request(pubsub: Any) -> codec.Request:
    async for message in pubsub:
        if message["type"] == "message":
            request = codec.decode_message(message["data"], max_bytes=1 << 20)
            assert isinstance(request, codec.Request)
            return request
    raise AssertionError("the inbox closed")


def _resent(metrics: ClusterMetrics) -> float:
    for metric in metrics.resent.collect():
        for sample in metric.samples:
            if sample.name == "archon_chat_cluster_requests_resent_total":
                return sample.value
    raise AssertionError("no resent counter")


async def test_a_request_to_a_node_resubscribing_waits_for_it_instead_of_being_lost(
    tmp_path: Path, redis_url: RedisTarget
) -> None:
    p = redis_url.prefix
    metrics = ClusterMetrics(CollectorRegistry())
    result: list[Any] = []
    with trio.fail_after(15):
        async with running_node(tmp_path, redis_url, metrics, 5.0) as (node, redis, nursery):
            await redis.set(f"{p}lease:s1", "n9 1")  # n9 owns s1 (its lease stays)

            async def ask() -> None:
                result.append(await node.request("n9", "state", "s1", {"after_seq": 3}))

            nursery.start_soon(ask)
            # n9 is not listening: the request reached nobody, more than once.
            while _resent(metrics) < 2:
                await trio.sleep(0.02)
            assert not result
            async with inbox(redis_url, "n9") as (client, pubsub):
                request = await next_request(pubsub)
                assert (request.kind, request.session_id, request.origin) == ("state", "s1", "n0")
                assert request.args == {"after_seq": 3}
                await client.publish(
                    f"{p}node:n0", codec.encode_reply(request.req_id, True, {"answered": True})
                )
            while not result:
                await trio.sleep(0.02)
            assert result == [{"answered": True}]


async def test_a_hand_over_skips_a_node_not_listening_and_waits_for_a_slow_holder(
    tmp_path: Path, redis_url: RedisTarget
) -> None:
    p = redis_url.prefix
    metrics = ClusterMetrics(CollectorRegistry())
    # The routing timeout is never reached: the ceiling below is 15 s.
    with trio.fail_after(15):
        async with running_node(tmp_path, redis_url, metrics, 60.0) as (node, redis, nursery):
            # A dead node still listed: nobody listens to its inbox.
            await redis.sadd(f"{p}nodes:all", ["n8"])
            assert await node.fetch_hand_over("pid-1", "1-0", "/") is None
            # A live holder that takes its time (longer than a renewal slice).
            async with inbox(redis_url, "n9") as (client, pubsub):
                await redis.sadd(f"{p}nodes:all", ["n9"])

                async def answer_late() -> None:
                    request = await next_request(pubsub)
                    assert request.kind == "handover" and request.args["pid"] == "pid-1"
                    await trio.sleep(1.0)
                    reply = codec.encode_reply(request.req_id, True, {"sid": "s"})
                    await client.publish(f"{p}node:n0", reply)

                nursery.start_soon(answer_late)
                assert await node.fetch_hand_over("pid-1", "1-0", "/") == {"sid": "s"}
