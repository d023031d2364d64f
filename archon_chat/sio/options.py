"""Settings of the Socket.IO server."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["SID_PREFIX", "Recovery", "ServerOptions"]

# What a sid prefix may hold: characters that need no escaping in a query string.
SID_PREFIX = re.compile(r"[A-Za-z0-9_.-]{0,16}")


class Recovery(enum.StrEnum):
    """Which clients get connection state recovery (a ``pid`` in the CONNECT reply and an
    offset as the last argument of every event)."""

    OPT_IN = "opt-in"  # those whose CONNECT carries auth {"recover": true}
    ALL = "all"  # every client, as Node's ``connectionStateRecovery``
    OFF = "off"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Bounds and timings; durations in seconds, sizes in bytes or events.

    Each field is the setting of the same name in :class:`archon_chat.config.Settings`,
    which declares its default and meaning; build one with
    ``archon_chat.config.derive(ServerOptions, settings)``.

    ``outbox_size``: events queued for one connected socket before it is cut as a slow
    client. ``recovery_buffer``: events kept for an opted-in socket to replay after a drop
    (and the most a disconnected one may gather during ``grace_s``). ``inbox_size``: events
    of one socket waiting for its handler before we stop reading from its transport.
    ``max_attachments``, ``max_attachment_bytes``: binary attachments of one packet (the
    only one a connection may have pending), accepted only on a connected namespace.
    ``connect_timeout_s``: an Engine.IO session with no namespace connected by then is closed.
    ``handshakes_per_minute`` (per client address, 0: no limit), ``max_unconnected_per_address``
    (0: no cap) and ``max_unconnected``: handshakes refused with 429 beyond them.
    ``trusted_proxy``: the client address is the first of ``X-Forwarded-For``.
    ``recovery``: which clients get connection state recovery (a :class:`Recovery` value);
    ``all`` breaks clients that do not expect the offset argument, such as python-socketio's.
    ``sid_prefix``: starts every Engine.IO sid this server makes, so that whatever hands
    connections to several processes can tell which one holds a session (``serve --workers``).
    Which origins may connect is the server's :class:`~archon_chat.origins.OriginPolicy`.
    """

    ping_interval_s: float
    ping_timeout_s: float
    max_http_buffer_size: int
    outbox_size: int
    recovery_buffer: int
    grace_s: float
    max_attachments: int
    max_attachment_bytes: int
    connect_timeout_s: float
    handshakes_per_minute: int
    max_unconnected_per_address: int
    max_unconnected: int
    rate_limit_addresses: int
    trusted_proxy: bool
    inbox_size: int
    upgrade_timeout_s: float
    recovery: str
    sid_prefix: str

    def __post_init__(self) -> None:
        for name in ("ping_interval_s", "ping_timeout_s", "upgrade_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "max_http_buffer_size",
            "outbox_size",
            "recovery_buffer",
            "inbox_size",
            "max_attachment_bytes",
            "max_unconnected",
            "rate_limit_addresses",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.handshakes_per_minute < 0 or self.max_unconnected_per_address < 0:
            raise ValueError("handshake limits must not be negative")
        if self.grace_s < 0 or self.max_attachments < 0:
            raise ValueError("grace_s and max_attachments must not be negative")
        Recovery(self.recovery)  # raises ValueError for anything else
        if not SID_PREFIX.fullmatch(self.sid_prefix):
            raise ValueError("sid_prefix must be at most 16 of A-Z a-z 0-9 _ - .")
