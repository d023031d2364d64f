"""Start this process's cluster node (``ARCHON_CHAT_REDIS_URL`` set)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
from coredis.retry import NoRetryPolicy

from actors.chat.hub import SessionHub
from archon_chat.config import Settings
from archon_chat.gateway.core import Gateway
from archon_chat.gateway.metrics import Metrics
from archon_chat.sio import SocketIOServer
from archon_chat.sio.handover import HandOver

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


def attach_recovery(
    node: ClusterNode, sio: SocketIOServer, gateway: Gateway, settings: Settings
) -> None:
    """Connection state recovery across nodes: a CONNECT with a pid this process does not
    hold asks the other nodes for the socket; the node holding it hands it over."""

    async def fetch(pid: str, offset: str | None, namespace: str) -> HandOver | None:
        found = await node.fetch_hand_over(pid, offset, namespace)
        return None if found is None else HandOver.from_json(found)

    def hand_over(pid: str, offset: str | None, namespace: str) -> dict[str, Any] | None:
        handed = sio.hand_over(pid, offset, namespace)
        return None if handed is None else handed.to_json()

    node.hand_over = hand_over
    sio.set_recovery_source(fetch, timeout_s=settings.cluster_rpc_timeout_s)
    # The exported state: the user and a seq per session the socket watches.
    sio.set_hand_over_hooks(
        gateway.export_socket,
        node.rooms_moved,
        max_app_bytes=1024 + 160 * settings.max_sessions_per_socket,
    )
