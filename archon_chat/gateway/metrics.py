"""Prometheus metrics of the gateway, in their own registry (``GET /metrics``).

Gauges that mirror live state (sockets, sessions, turns) are read at scrape time from
callbacks, so the hot path only touches counters and histograms.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected_sockets = Gauge(
            "archon_chat_connected_sockets", "Socket.IO connections open", registry=r
        )
        self.live_sessions = Gauge(
            "archon_chat_live_sessions", "Session actors running", registry=r
        )
        self.stored_sessions = Gauge(
            "archon_chat_stored_sessions",
            "Sessions in the store (live or passivated)",
            registry=r,
        )
        self.turns_in_flight = Gauge(
            "archon_chat_turns_in_flight", "Agent replies streaming now", registry=r
        )
        self.chunks_relayed = Counter(
            "archon_chat_chunks_relayed", "stream_chunk events fanned out", registry=r
        )
        self.events_relayed = Counter(
            "archon_chat_events_relayed", "Session events fanned out", ["event"], registry=r
        )
        self.turns = Counter(
            "archon_chat_turns",
            "Finished turns by status and error code",
            ["status", "code"],
            registry=r,
        )
        self.refusals = Counter(
            "archon_chat_refusals", "Requests refused, by code", ["code"], registry=r
        )
        self.first_chunk_seconds = Histogram(
            "archon_chat_first_chunk_seconds",
            "Time from turn start to its first chunk",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.relay_seconds = Histogram(
            "archon_chat_chunk_relay_seconds",
            "Time from an actor emitting an event to its fan-out",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cancel_to_quiet_seconds = Histogram(
            "archon_chat_cancel_to_quiet_seconds",
            "Time from a cancel request to the turn's end",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.resumes = Counter(
            "archon_chat_resumes",
            "join_chat replays served, by kind (last_seq, turn)",
            ["kind"],
            registry=r,
        )
        self.replayed_events = Counter(
            "archon_chat_replayed_events", "Events replayed to rejoining sockets", registry=r
        )
        self.slow_client_merges = Gauge(
            "archon_chat_slow_client_merges",
            "stream_chunk events merged in slow sockets' outboxes (since start)",
            registry=r,
        )
        self.slow_client_disconnects = Gauge(
            "archon_chat_slow_client_disconnects",
            "Sockets disconnected for falling too far behind (since start)",
            registry=r,
        )
        self.recoveries = Gauge(
            "archon_chat_connection_recoveries",
            "Connection state recoveries served (since start)",
            registry=r,
        )
        self.unconnected = Gauge(
            "archon_chat_unconnected_sessions",
            "Engine.IO sessions without a Socket.IO namespace connected yet",
            registry=r,
        )
        self.connect_timeouts = Gauge(
            "archon_chat_connect_timeouts",
            "Engine.IO sessions closed for sending no Socket.IO CONNECT in time (since start)",
            registry=r,
        )
        self.connection_errors = Counter(
            "archon_chat_connection_errors",
            "Connections aborted by an error in their handling or a timeout, by kind",
            ["kind"],
            registry=r,
        )
        self._refreshers: list[Callable[[], None]] = []

    def on_scrape(self, refresh: Callable[[], None]) -> None:
        self._refreshers.append(refresh)

    def render(self) -> bytes:
        for refresh in self._refreshers:
            refresh()
        return generate_latest(self.registry)
