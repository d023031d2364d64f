"""Settings of the Socket.IO server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archon_chat.config import Settings

__all__ = ["ServerOptions"]


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Bounds and timings; durations in seconds, sizes in bytes or events.

    ``outbox_size``: events queued for one connected socket before it is cut as a slow
    client. ``recovery_buffer``: events kept for an opted-in socket to replay after a drop
    (and the most a disconnected one may gather during ``grace_s``). ``inbox_size``: events
    of one socket waiting for its handler before we stop reading from its transport.
    ``max_attachments``, ``max_attachment_bytes``: binary attachments of one packet (the
    only one a connection may have pending), accepted only on a connected namespace.
    ``connect_timeout_s``: an Engine.IO session with no namespace connected by then is closed.
    ``handshakes_per_minute`` (per client address, 0: no limit), ``max_unconnected_per_address``
    (0: no cap) and ``max_unconnected``: handshakes refused with 429 beyond them.
    ``cors_origins``: origins allowed besides the request's own; ``"*"`` allows any
    (without credentials). ``public_origins``, ``trusted_proxy``, ``guard_host`` and
    ``bound_host``: who the request's own origin is, see :mod:`archon_chat.transports.origin`.
    ``websocket_compression``: accept permessage-deflate; off by default, as in Socket.IO's
    reference server, since it costs ~95 KiB and a deflate pass per frame for every
    websocket (see :mod:`archon_chat.transports.hypercorn_hooks`; turning it off is process-wide).
    """

    ping_interval_s: float = 25.0
    ping_timeout_s: float = 60.0
    max_http_buffer_size: int = 1_000_000
    outbox_size: int = 1024
    recovery_buffer: int = 2048
    grace_s: float = 30.0
    max_attachments: int = 10
    max_attachment_bytes: int = 1_000_000
    connect_timeout_s: float = 45.0
    handshakes_per_minute: int = 0
    max_unconnected_per_address: int = 0
    max_unconnected: int = 10_000
    rate_limit_addresses: int = 10_000
    cors_origins: tuple[str, ...] = ()
    public_origins: tuple[str, ...] = ()
    trusted_proxy: bool = False
    guard_host: bool = False
    bound_host: str = "127.0.0.1"
    inbox_size: int = 64
    upgrade_timeout_s: float = 10.0
    websocket_compression: bool = False

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

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerOptions:
        """The options :class:`~archon_chat.config.Settings` describe."""
        return cls(
            ping_interval_s=settings.ping_interval_s,
            ping_timeout_s=settings.ping_timeout_s,
            max_http_buffer_size=settings.max_http_buffer_size,
            outbox_size=settings.outbox_size,
            recovery_buffer=settings.recovery_buffer,
            grace_s=settings.grace_s,
            max_attachments=settings.max_attachments,
            max_attachment_bytes=settings.max_attachment_bytes,
            connect_timeout_s=settings.connect_timeout_s,
            handshakes_per_minute=settings.handshakes_per_minute,
            max_unconnected_per_address=settings.max_unconnected_per_address,
            max_unconnected=settings.max_unconnected,
            rate_limit_addresses=settings.rate_limit_addresses,
            cors_origins=settings.cors_origins,
            public_origins=settings.public_origins,
            trusted_proxy=settings.trusted_proxy,
            guard_host=not settings.api_key,
            bound_host=settings.host,
        )
