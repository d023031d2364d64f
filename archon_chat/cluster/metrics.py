"""The cluster's Prometheus metrics, in the gateway's registry (cluster mode only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Info


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.node = Info(
            "archon_chat_cluster_node",
            "This process's node of the cluster (under serve --workers: <host>-w<worker>)",
            registry=r,
        )
        self.redis_commands = Counter(
            "archon_chat_redis_commands",
            "Redis commands sent (a pipeline counts each of its commands)",
            registry=r,
        )
        self.redis_errors = Counter(
            "archon_chat_redis_errors", "Redis calls that failed or timed out", registry=r
        )
        self.published_events = Counter(
            "archon_chat_cluster_events_published",
            "Session events sent to other nodes (one per destination node)",
            registry=r,
        )
        self.received_events = Counter(
            "archon_chat_cluster_events_received",
            "Session events received from the nodes owning their sessions",
            registry=r,
        )
        self.dropped_events = Counter(
            "archon_chat_cluster_events_dropped",
            "Session events not delivered between nodes, by reason",
            ["reason"],
            registry=r,
        )
        self.resent = Counter(
            "archon_chat_cluster_requests_resent",
            "Requests and replies published again because no node was subscribed to take them",
            registry=r,
        )
        self.routed = Counter(
            "archon_chat_cluster_requests",
            "Commands sent to the node owning their session, by kind",
            ["kind"],
            registry=r,
        )
        self.leases_lost = Counter(
            "archon_chat_cluster_leases_lost",
            "Sessions this node owned until another node took them over",
            registry=r,
        )
        self.turns_taken_over = Counter(
            "archon_chat_cluster_turns_taken_over",
            "Turns of a dead node this node ended (owner_lost)",
            registry=r,
        )
