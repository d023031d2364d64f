"""Routed requests on a real Redis, one node against a hand-driven inbox: a request whose
destination is not subscribed at the moment it is published (a node resubscribing after a
Redis hiccup) is published again until it is taken, not lost until the routing timeout."""

from __future__ import annotations

from collections.abc import Callable
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


async def _counter(metrics: ClusterMetrics, name: str) -> float:
    for metric in metrics.resent.collect():
        for sample in metric.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(name)


async def test_a_request_to_a_node_resubscribing_waits_for_it_instead_of_being_lost(
    tmp_path: Path, redis_url: RedisTarget
) -> None:
    settings = gateway_settings(
        tmp_path,
        "http://127.0.0.1:9",
        node_id="n0",
        redis_url=redis_url.url,
        redis_prefix=redis_url.prefix,
        lease_s=6.0,
        cluster_rpc_timeout_s=5.0,
    )
    p = redis_url.prefix
    metrics = ClusterMetrics(CollectorRegistry())
    result: list[Any] = []
    with trio.fail_after(15):
        async with open_redis(settings) as redis:
            assert redis is not None
            await redis.set(f"{p}lease:s1", "n9 1")  # n9 owns s1 (its lease stays)
            node = ClusterNode(settings, redis, _Hub(), metrics)  # type: ignore[arg-type]
            node.attach(object())  # type: ignore[arg-type]
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)

                async def ask() -> None:
                    result.append(await node.request("n9", "state", "s1", {"after_seq": 3}))

                nursery.start_soon(ask)
                # n9 is not listening: the request reached nobody, more than once.
                while await _counter(metrics, "archon_chat_cluster_requests_resent_total") < 2:
                    await trio.sleep(0.02)
                assert not result
                inbox: coredis.Redis[bytes] = coredis.Redis.from_url(
                    redis_url.url, decode_responses=False
                )
                async with inbox, inbox.pubsub(channels=[f"{p}node:n9"]) as pubsub:
                    async for message in pubsub:
                        if message["type"] != "message":
                            continue
                        request = codec.decode_message(message["data"], max_bytes=1 << 20)
                        assert isinstance(request, codec.Request)
                        assert (request.kind, request.session_id, request.origin) == (
                            "state",
                            "s1",
                            "n0",
                        )
                        assert request.args == {"after_seq": 3}
                        reply = codec.encode_reply(request.req_id, True, {"answered": True})
                        await inbox.publish(f"{p}node:n0", reply)
                        break
                while not result:
                    await trio.sleep(0.02)
                assert result == [{"answered": True}]
                nursery.cancel_scope.cancel()


async def test_a_hand_over_skips_a_node_not_listening_and_waits_for_a_slow_holder(
    tmp_path: Path, redis_url: RedisTarget
) -> None:
    settings = gateway_settings(
        tmp_path,
        "http://127.0.0.1:9",
        node_id="n0",
        redis_url=redis_url.url,
        redis_prefix=redis_url.prefix,
        lease_s=6.0,
        cluster_rpc_timeout_s=60.0,  # never reached: the ceiling below is 15 s
    )
    p = redis_url.prefix
    with trio.fail_after(15):
        async with open_redis(settings) as redis:
            assert redis is not None
            node = ClusterNode(settings, redis, _Hub(), ClusterMetrics(CollectorRegistry()))  # type: ignore[arg-type]
            node.attach(object())  # type: ignore[arg-type]
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                # A dead node still listed: nobody listens to its inbox.
                await redis.sadd(f"{p}nodes:all", ["n8"])
                assert await node.fetch_hand_over("pid-1", "1-0", "/") is None
                # A live holder that takes its time (longer than a renewal slice).
                holder: coredis.Redis[bytes] = coredis.Redis.from_url(
                    redis_url.url, decode_responses=False
                )
                async with holder, holder.pubsub(channels=[f"{p}node:n9"]) as pubsub:
                    await redis.sadd(f"{p}nodes:all", ["n9"])

                    async def answer_late() -> None:
                        async for message in pubsub:
                            if message["type"] != "message":
                                continue
                            request = codec.decode_message(message["data"], max_bytes=1 << 20)
                            assert isinstance(request, codec.Request)
                            assert request.kind == "handover"
                            assert request.args["pid"] == "pid-1"
                            await trio.sleep(1.0)
                            reply = codec.encode_reply(request.req_id, True, {"sid": "s"})
                            await holder.publish(f"{p}node:n0", reply)
                            return

                    nursery.start_soon(answer_late)
                    assert await node.fetch_hand_over("pid-1", "1-0", "/") == {"sid": "s"}
                nursery.cancel_scope.cancel()
