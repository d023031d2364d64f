"""Prometheus metrics of the gateway, in their own registry (``GET /metrics``).

Gauges that mirror live state (sockets, sessions, turns) are read at scrape time from
callbacks, so the hot path only touches counters and histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
            "Time from reading an agent's delta to handing its stream_chunk to a socket",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cancel_to_quiet_seconds = Histogram(
            "archon_chat_cancel_to_quiet_seconds",
            "Time from a cancel request to the turn's end",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cancels = Counter(
            "archon_chat_cancels",
            "Turns cancelled, by reason (stop, leave, grace_over)",
            ["reason"],
            registry=r,
        )
        self.chunks_dropped = Counter(
            "archon_chat_chunks_dropped_after_stop",
            "stream_chunk events of a stopped turn dropped before reaching a socket",
            registry=r,
        )
        self.upstream_errors = Counter(
            "archon_chat_upstream_errors",
            "Turns failed by the agents service, by error code",
            ["code"],
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
        self.replay_reloads = Counter(
            "archon_chat_replay_reloads",
            "Rejoins told to reload the history over REST (more missed than the replay limit)",
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

    def watch_sockets(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Expose the Socket.IO server's own counters, read at scrape time."""
        self.registry.register(_SocketStats(stats))

    def render(self) -> bytes:
        for refresh in self._refreshers:
            refresh()
        return generate_latest(self.registry)


class _SocketStats(Collector):
    """The Socket.IO server's counters (see ``SocketIOServer.stats``) as metrics."""

    _GAUGES = (
        ("archon_chat_connected_sockets", "Socket.IO connections open", "connected"),
        (
            "archon_chat_sockets_in_grace",
            "Sockets gone without leaving, still members for the grace period",
            "ghosts",
        ),
        ("archon_chat_engine_sessions", "Engine.IO sessions open", "engine_connections"),
        (
            "archon_chat_unconnected_sessions",
            "Engine.IO sessions without a Socket.IO CONNECT yet",
            "unconnected",
        ),
    )
    _COUNTERS = (
        (
            "archon_chat_outbox_merges",
            "stream_chunk events merged into an unsent one in a socket's outbox",
            "merges",
        ),
        (
            "archon_chat_slow_client_disconnects",
            "Sockets cut for falling too far behind",
            "slow_disconnects",
        ),
        (
            "archon_chat_connection_recoveries",
            "Connection state recoveries served",
            "recoveries",
        ),
        (
            "archon_chat_connect_timeouts",
            "Engine.IO sessions closed for not completing a Socket.IO CONNECT in time",
            "connect_timeouts",
        ),
        ("archon_chat_socketio_packets_in", "Socket.IO packets received", "packets_in"),
        ("archon_chat_socketio_packets_out", "Socket.IO packets sent", "packets_out"),
        (
            "archon_chat_handler_errors",
            "Socket.IO handlers that raised (a bug of ours)",
            "handler_errors",
        ),
    )

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for name, doc, key in self._GAUGES:
            yield GaugeMetricFamily(name, doc, value=stats.get(key, 0))
        for name, doc, key in self._COUNTERS:
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
