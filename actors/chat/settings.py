"""Settings of the session hub and of the agents client.

Each field is the gateway setting of the same name (``archon_chat.config.Settings``,
where its default, its environment variable and its meaning are declared once); the
gateway builds these with ``archon_chat.config.derive``. Nothing here has a default, so
a value can only come from the one declaration. Durations are seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


def _check_durations(options: object) -> None:
    for f in fields(options):  # type: ignore[arg-type]
        value = getattr(options, f.name)
        if isinstance(value, float) and (math.isnan(value) or value < 0):
            raise ValueError(f"{type(options).__name__}.{f.name} must be zero or more, not {value}")


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Bounds and deadlines of the session actors."""

    mailbox_size: int
    max_queued_turns: int
    idle_passivate_s: float
    agent_first_event_timeout_s: float
    agent_idle_timeout_s: float
    agent_turn_timeout_s: float
    history_turns: int
    save_timeout_s: float
    restart_intensity: int
    restart_period_s: float
    max_messages_per_session: int
    shutdown_grace_s: float
    checkpoint_interval_s: float
    seq_block: int
    #: other processes own sessions too: a reply a new owner finds in progress was lost
    #: by a live cluster (``owner_lost``), not by a restart of this process
    cluster_mode: bool

    def __post_init__(self) -> None:
        _check_durations(self)
        for name in ("mailbox_size", "max_queued_turns", "seq_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"HubSettings.{name} must be at least 1")
        if self.restart_intensity < 0 or self.restart_period_s <= 0:
            raise ValueError("HubSettings needs restart_intensity >= 0, restart_period_s > 0")


@dataclass(frozen=True, slots=True)
class AgentsClientSettings:
    """Connection limits and timeouts of the HTTP client to the agents service."""

    agent_pool_size: int
    agent_keepalive: int
    agent_keepalive_expiry_s: float
    agent_connect_timeout_s: float
    agent_pools: int
    agent_max_event_chars: int

    def __post_init__(self) -> None:
        _check_durations(self)
        for name in ("agent_pool_size", "agent_pools", "agent_max_event_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"AgentsClientSettings.{name} must be at least 1")
        if self.agent_keepalive < 0:
            raise ValueError("AgentsClientSettings.agent_keepalive must not be negative")
