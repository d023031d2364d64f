"""Per-client-address budgets: how many requests of a kind an address may make a minute.

:class:`RateLimiter` keeps a token bucket per address: ``per_minute`` tokens, refilled
evenly over a minute (so a burst of ``per_minute`` is allowed, then one every
``60 / per_minute`` seconds). At most ``max_addresses`` buckets are kept; the least
recently used one is forgotten first (its address starts afresh). ``per_minute = 0`` turns
the limiter off.

:func:`client_address` names the client: the socket's peer, or behind a trusted proxy the
address that proxy appended to ``X-Forwarded-For``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import trio

__all__ = ["RateLimiter", "client_address", "retry_after_header"]


class RateLimiter:
    def __init__(
        self,
        per_minute: int,
        max_addresses: int,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if per_minute < 0 or max_addresses < 1:
            raise ValueError("per_minute must not be negative, max_addresses at least 1")
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, address: str) -> float:
        """Spend one of ``address``'s tokens: ``0`` if it had one, otherwise the seconds
        until it has one (nothing is spent). Not a checkpoint."""
        if self.per_minute == 0:
            return 0.0
        now = self._clock()
        rate = self.per_minute / 60.0
        tokens, at = self._buckets.pop(address, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - at) * rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / rate
        self._buckets[address] = (tokens, now)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return wait


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxy: bool) -> str:
    """The client's address, as far as we can trust it."""
    if trusted_proxy and forwarded_for:
        return forwarded_for.rsplit(",", 1)[-1].strip() or (peer or "?")
    return peer or "?"
