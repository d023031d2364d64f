"""Which browser origins may use the gateway: one rule for REST and Socket.IO.

A request without an ``Origin`` header does not come from a browser page and is allowed
(the API key guards those). A browser's request is allowed when its origin is the
gateway's own (the scheme, host and port the request was addressed to) or is listed in
``ARCHON_CHAT_CORS_ORIGINS`` (``*``: any origin). Origins compare as RFC 6454 says:
scheme and host case-insensitively, a scheme's default port the same as no port, and no
path (a trailing ``/`` is ignored). An opaque origin (``null``) matches only ``*``.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["origin_allowed", "own_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: a websocket's own origin is that of the page that opened it
_PAGE_SCHEMES = {"ws": "http", "wss": "https"}


def _normal(origin: str) -> str:
    text = origin.strip().rstrip("/").lower()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # not an origin: it can only match itself
        return text
    host = parts.hostname
    if not parts.scheme or not host:
        return text
    if ":" in host:
        host = f"[{host}]"
    if port is None or _DEFAULT_PORTS.get(parts.scheme) == port:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def own_origin(scheme: str, host: str | None) -> str | None:
    """The origin of a request made with ``scheme`` (``http``, ``ws``...) to ``host``
    (the ``Host`` header), or ``None`` if there is no host."""
    if not host:
        return None
    return _normal(f"{_PAGE_SCHEMES.get(scheme.lower(), scheme)}://{host}")


def origin_allowed(origin: str | None, own: str | None, allowlist: Collection[str]) -> bool:
    """Whether a request with this ``Origin`` header, addressed to the origin ``own``, is
    allowed with ``allowlist`` (the ``cors_origins`` setting)."""
    if not origin:
        return True
    if "*" in allowlist:
        return True
    theirs = _normal(origin)
    if theirs == "null":
        return False
    if own is not None and theirs == _normal(own):
        return True
    return any(theirs == _normal(allowed) for allowed in allowlist)
