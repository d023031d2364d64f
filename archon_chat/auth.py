"""User mode: who is calling, from a signed token (a JWT) the host application mints.

User mode is on when ``ARCHON_CHAT_JWT_SECRET`` (HS256, a secret shared with the host
application) or ``ARCHON_CHAT_JWKS_URL`` (RS256 / ES256, public keys the host publishes as
a JSON Web Key Set) is set. REST carries the token as ``Authorization: Bearer <jwt>``,
Socket.IO as ``auth: {"token": <jwt>}``. The user is the token's ``sub``.

Checks (PyJWT does the cryptography): the signature, with the algorithm the key allows
(``alg: none`` and an HS256 token signed with a public key are refused, since the accepted
algorithms are fixed per key kind, never taken from the token); ``exp`` and ``sub`` are
required; ``nbf``, ``iat`` are honoured; ``iss`` and ``aud`` must match the settings when
they are set; clocks may differ by ``jwt_leeway_s``.

Keys from a JWKS URL are cached: fetched at the first token, again once the copy is older
than ``jwks_cache_s``, and at once for a token whose ``kid`` is unknown (the host rotated
its keys) but never more often than every ``jwks_min_refresh_s``, so tokens with made-up
``kid``s cannot make us hammer the key server. One fetch at a time; a failed fetch keeps
the keys we have. The response is read up to ``max_jwks_bytes``.

Errors::

    AuthError           (code, detail): the token is refused
      code "unauthorized"   missing, malformed, forged, wrong issuer/audience, no key
      code "token_expired"  past its ``exp`` (the client fetches a fresh one)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt
import trio

log = logging.getLogger(__name__)

__all__ = ["AuthError", "AuthSettings", "Identity", "TokenVerifier"]

#: Algorithms accepted for keys from the JWKS (asymmetric only: a JWKS key is public).
JWKS_ALGORITHMS = ("RS256", "ES256")
#: Longest ``sub`` accepted (it is stored with every session and used as a map key).
MAX_SUBJECT_CHARS = 256
#: Longest token accepted, in characters.
MAX_TOKEN_CHARS = 8192


class AuthError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class Identity:
    #: the token's ``sub``
    user: str
    #: the token's ``exp`` (Unix time, seconds)
    expires_at: float


class AuthSettings(Protocol):
    @property
    def jwt_secret(self) -> str: ...
    @property
    def jwks_url(self) -> str: ...
    @property
    def jwt_issuer(self) -> str: ...
    @property
    def jwt_audience(self) -> str: ...
    @property
    def jwt_leeway_s(self) -> float: ...
    @property
    def jwks_cache_s(self) -> float: ...
    @property
    def jwks_min_refresh_s(self) -> float: ...
    @property
    def jwks_timeout_s(self) -> float: ...
    @property
    def max_jwks_bytes(self) -> int: ...


def _unauthorized(detail: str = "Invalid token") -> AuthError:
    return AuthError("unauthorized", detail)


class TokenVerifier:
    """Verifies tokens for user mode (:attr:`enabled` tells whether it is on)."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._fetch_lock = trio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._settings.jwt_secret or self._settings.jwks_url)

    async def verify(self, token: object) -> Identity:
        """The identity the token proves. A checkpoint (it may fetch the JWKS).

        Raises :class:`AuthError`.
        """
        await trio.lowlevel.checkpoint()
        if not isinstance(token, str) or not token:
            raise _unauthorized("Missing token")
        if len(token) > MAX_TOKEN_CHARS:
            raise _unauthorized("Token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthorized("Malformed token") from None
        alg = header.get("alg")
        s = self._settings
        key: Any
        if alg == "HS256" and s.jwt_secret:
            key, algorithms = s.jwt_secret, ["HS256"]
        elif alg in JWKS_ALGORITHMS and s.jwks_url:
            kid = header.get("kid")
            key = await self._jwk(kid if isinstance(kid, str) else None)
            if key.algorithm_name != alg:
                raise _unauthorized("Token algorithm does not match its key")
            algorithms = [alg]
        else:
            raise _unauthorized("Token algorithm not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=s.jwt_audience or None,
                issuer=s.jwt_issuer or None,
                leeway=s.jwt_leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": bool(s.jwt_audience)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token_expired", "Token expired") from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"Invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_CHARS:
            raise _unauthorized("Token 'sub' must be a non-empty string")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)):
            raise _unauthorized("Token 'exp' must be a number")
        return Identity(user=sub, expires_at=float(exp))

    async def _jwk(self, kid: str | None) -> jwt.PyJWK:
        s = self._settings
        now = trio.current_time()
        stale = self._fetched_at is None or now - self._fetched_at >= s.jwks_cache_s
        unknown = self._find(kid) is None
        if stale or (
            unknown
            and self._fetched_at is not None
            and now - self._fetched_at >= s.jwks_min_refresh_s
        ):
            await self._refresh(now)
        found = self._find(kid)
        if found is None:
            raise _unauthorized("No key for this token")
        return found

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        # A token without kid is accepted only when the set holds exactly one key.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh(self, asked_at: float) -> None:
        async with self._fetch_lock:
            if self._fetched_at is not None and self._fetched_at >= asked_at:
                return  # someone fetched while we waited
            self._fetched_at = trio.current_time()
            try:
                self._keys = await self._fetch()
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                log.warning("could not fetch the JWKS from %s: %s", self._settings.jwks_url, exc)

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        s = self._settings
        async with (
            httpx.AsyncClient(timeout=s.jwks_timeout_s, follow_redirects=False) as client,
            client.stream("GET", s.jwks_url) as response,
        ):
            response.raise_for_status()
            body = bytearray()
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > s.max_jwks_bytes:
                    raise ValueError(f"JWKS larger than {s.max_jwks_bytes} bytes")
        document = json.loads(body)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("JWKS has no 'keys' list")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type we cannot use; the others still serve
            if key.algorithm_name not in JWKS_ALGORITHMS:
                continue
            keys[str(entry.get("kid", ""))] = key
        return keys
