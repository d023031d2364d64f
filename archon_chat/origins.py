"""The one origin check of the gateway, for REST, long-polling and websockets alike.

A request is judged on its ``Origin`` and ``Host`` headers and the scheme it came in on:

* **Host** (DNS rebinding): without an API key, a page on a foreign name that resolves to
  this machine could otherwise drive the gateway as its own origin. So when no API key is
  set, the ``Host`` must be a loopback name (``localhost``, ``*.localhost``, 127.0.0.0/8,
  ``::1``), the bound address, or the host of a configured public origin.
* **Own origin**: the configured public origins when set (``Host`` is then not trusted to
  say who we are), otherwise ``scheme://Host``; scheme included, so ``https://x`` is not
  ``http://x``. Behind a TLS-terminating proxy the scheme is ``X-Forwarded-Proto``, but
  only when the proxy is declared trusted.
* **Other origins**: allowed when listed; ``*`` allows any, but then without credentials
  (``Access-Control-Allow-Origin: *`` and no ``Access-Control-Allow-Credentials``).

Origins compare as RFC 6454 says: scheme and host case-insensitively, a scheme's default
port the same as no port, no path (a trailing ``/`` is ignored); an opaque origin
(``null``) is never listed, so only ``*`` lets it in. No ``Origin`` header (not a browser,
or a same-origin GET) passes the origin part.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["OriginPolicy", "OriginRequest", "Verdict", "normal_origin", "own_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: a websocket's own origin is that of the page that opened it
_PAGE_SCHEMES = {"ws": "http", "wss": "https"}


def normal_origin(origin: str) -> str:
    """``origin`` as RFC 6454 compares it: lower case, no default port, no trailing ``/``.
    Something that is not an origin comes back lower-cased (it can only match itself)."""
    text = origin.strip().rstrip("/").lower()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
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
    return normal_origin(f"{_PAGE_SCHEMES.get(scheme.lower(), scheme)}://{host}")


@dataclass(frozen=True, slots=True)
class OriginRequest:
    origin: str | None
    scheme: str  # as the request reached us: http, https, ws or wss
    host: str | None  # the Host header
    forwarded_proto: str | None = None  # X-Forwarded-Proto


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    refusal: str = ""  # "origin" or "host" when refused
    allow_origin: str | None = None  # Access-Control-Allow-Origin, if any
    credentials: bool = False

    def cors_headers(self) -> list[tuple[str, str]]:
        if self.allow_origin is None:
            return []
        headers = [("Access-Control-Allow-Origin", self.allow_origin), ("Vary", "Origin")]
        if self.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    allowlist: tuple[str, ...] = ()  # other origins allowed; "*" for any
    public_origins: tuple[str, ...] = ()  # who we are, when a proxy or DNS name fronts us
    trusted_proxy: bool = False  # honour X-Forwarded-Proto
    guard_host: bool = True  # refuse unknown Host names (set when no API key is set)
    bound_host: str = "127.0.0.1"

    def check(self, request: OriginRequest) -> Verdict:
        host = (request.host or "").strip().lower()
        if self.guard_host and not self._known_host(host):
            return Verdict(False, "host")
        if request.origin is None:
            return Verdict(True)
        origin = normal_origin(request.origin)
        if origin != "null" and (
            origin in self._own_origins(request, host) or origin in self._listed()
        ):
            return Verdict(True, allow_origin=request.origin.strip(), credentials=True)
        if "*" in self.allowlist:
            return Verdict(True, allow_origin="*")
        return Verdict(False, "origin")

    def _listed(self) -> tuple[str, ...]:
        return tuple(normal_origin(o) for o in self.allowlist if o != "*")

    def _own_origins(self, request: OriginRequest, host: str) -> tuple[str, ...]:
        if self.public_origins:
            return tuple(normal_origin(o) for o in self.public_origins)
        scheme = request.scheme
        if self.trusted_proxy and request.forwarded_proto:
            scheme = request.forwarded_proto.split(",", 1)[0].strip()
        own = own_origin(scheme, host)
        return () if own is None else (own,)

    def _known_host(self, host: str) -> bool:
        name = _hostname(host)
        if name is None:
            return False
        if name == "localhost" or name.endswith(".localhost"):
            return True
        if name == self.bound_host.strip("[]").lower():
            return True
        try:
            if ipaddress.ip_address(name).is_loopback:
                return True
        except ValueError:
            pass
        return any(_hostname(urlsplit(o).netloc.lower()) == name for o in self.public_origins)


def _hostname(host: str) -> str | None:
    """The name in a Host header, without its port (``None`` if it is malformed)."""
    if not host:
        return None
    try:
        parsed = urlsplit(f"//{host}")
        parsed.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        return None
    return parsed.hostname
