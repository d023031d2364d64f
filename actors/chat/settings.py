"""The session hub's settings: every bound and deadline of the session actors."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol


class HubConfig(Protocol):
    """The fields :meth:`HubSettings.from_config` reads (the gateway's ``Settings`` has
    them all, under these names)."""

    @property
    def mailbox_size(self) -> int: ...
    @property
    def max_queued_turns(self) -> int: ...
    @property
    def turn_buffer(self) -> int: ...
    @property
    def idle_passivate_s(self) -> float: ...
    @property
    def agent_first_event_timeout_s(self) -> float: ...
    @property
    def agent_idle_timeout_s(self) -> float: ...
    @property
    def agent_turn_timeout_s(self) -> float: ...
    @property
    def history_turns(self) -> int: ...
    @property
    def save_timeout_s(self) -> float: ...
    @property
    def restart_intensity(self) -> int: ...
    @property
    def restart_period_s(self) -> float: ...
    @property
    def max_messages_per_session(self) -> int: ...
    @property
    def shutdown_grace_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Bounds and deadlines of the session actors (durations in seconds)."""

    #: commands queued per actor; past it ``deliver`` raises ``SessionBusy``
    mailbox_size: int = 64
    #: accepted messages waiting for their turn; past it a message is ``session_busy``
    max_queued_turns: int = 8
    #: events of the turn in progress kept for rejoining clients (older chunks merged)
    turn_buffer: int = 4096
    #: an actor with nothing to do ends after this (its state is in the store)
    idle_passivate_s: float = 60.0
    #: from the request to the first upstream event (heartbeats count)
    first_event_timeout_s: float = 60.0
    #: longest gap between upstream events (heartbeats count)
    gap_timeout_s: float = 60.0
    #: a whole turn, from the request to stream_complete
    turn_timeout_s: float = 600.0
    #: complete turns sent to the agent as history
    history_turns: int = 20
    #: deadline of the shielded saves at the end of a cancelled or crashed turn
    save_timeout_s: float = 5.0
    #: restarts of one session's actor allowed within ``restart_period_s``
    restart_intensity: int = 5
    restart_period_s: float = 10.0
    #: stored messages per session; the next one is ``session_full``
    max_messages_per_session: int = 1000
    #: how long stopping actors may take to finish their turns before being cancelled
    shutdown_grace_s: float = 5.0
    #: how often the partial reply is saved while it streams (recovered after a crash)
    checkpoint_interval_s: float = 5.0
    #: seqs reserved in the store per write (the high-water mark moves by this much)
    seq_block: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and (math.isnan(value) or value < 0):
                raise ValueError(f"HubSettings.{f.name} must be zero or more, not {value}")
        for name in ("mailbox_size", "max_queued_turns", "turn_buffer", "seq_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"HubSettings.{name} must be at least 1")
        if self.restart_intensity < 0 or self.restart_period_s <= 0:
            raise ValueError("HubSettings needs restart_intensity >= 0, restart_period_s > 0")

    @classmethod
    def from_config(cls, config: HubConfig) -> HubSettings:
        """The hub settings of the gateway's configuration (same meanings)."""
        return cls(
            mailbox_size=config.mailbox_size,
            max_queued_turns=config.max_queued_turns,
            turn_buffer=config.turn_buffer,
            idle_passivate_s=config.idle_passivate_s,
            first_event_timeout_s=config.agent_first_event_timeout_s,
            gap_timeout_s=config.agent_idle_timeout_s,
            turn_timeout_s=config.agent_turn_timeout_s,
            history_turns=config.history_turns,
            save_timeout_s=config.save_timeout_s,
            restart_intensity=config.restart_intensity,
            restart_period_s=config.restart_period_s,
            max_messages_per_session=config.max_messages_per_session,
            shutdown_grace_s=config.shutdown_grace_s,
        )
