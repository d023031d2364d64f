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

No ``Origin`` header (not a browser, or a same-origin GET) passes the origin part.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["OriginPolicy", "OriginRequest", "Verdict"]


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
        origin = request.origin
        if origin is None:
            return Verdict(True)
        origin = origin.strip().rstrip("/").lower()
        if origin in self._own_origins(request, host) or origin in self._listed:
            return Verdict(True, allow_origin=origin, credentials=True)
        if "*" in self.allowlist:
            return Verdict(True, allow_origin="*")
        return Verdict(False, "origin")

    @property
    def _listed(self) -> tuple[str, ...]:
        return tuple(o.lower() for o in self.allowlist if o != "*")

    def _own_origins(self, request: OriginRequest, host: str) -> tuple[str, ...]:
        if self.public_origins:
            return tuple(o.lower() for o in self.public_origins)
        if not host:
            return ()
        scheme = request.scheme.lower()
        if self.trusted_proxy and request.forwarded_proto:
            scheme = request.forwarded_proto.split(",", 1)[0].strip().lower()
        scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        return (f"{scheme}://{host}",)

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
