"""Start this process's cluster node (``ARCHON_CHAT_REDIS_URL`` set)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import coredis
from coredis.retry import NoRetryPolicy

from actors.chat.hub import SessionHub
from archon_chat.config import Settings
from archon_chat.gateway.metrics import Metrics

from .metrics import ClusterMetrics
from .node import ClusterNode


@asynccontextmanager
async def open_redis(settings: Settings) -> AsyncIterator[coredis.Redis[bytes] | None]:
    """The cluster's Redis client (its connections close on exit); ``None`` without a
    Redis URL. Connecting is lazy: an unreachable Redis fails the first command."""
    if not settings.redis_url:
        yield None
        return
    redis: coredis.Redis[bytes] = coredis.Redis.from_url(
        settings.redis_url,
        stream_timeout=settings.redis_timeout_s,
        connect_timeout=settings.redis_timeout_s,
        retry_policy=NoRetryPolicy(),
        decode_responses=False,
    )
    async with redis:
        yield redis


def new_node(
    settings: Settings, redis: coredis.Redis[bytes], hub: SessionHub, metrics: Metrics
) -> ClusterNode:
    """This process's node; attach the gateway, then run it (``ClusterNode.run``)."""
    return ClusterNode(settings, redis, hub, ClusterMetrics(metrics.registry))
