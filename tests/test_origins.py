"""The one origin rule of REST and Socket.IO, on literal header values (synchronous)."""

from __future__ import annotations

import pytest

from archon_chat.origins import OriginPolicy, OriginRequest, own_origin

OWN = own_origin("http", "Chat.Example:8080")


def origin_allowed(origin: str | None, host: str | None, allowlist: tuple[str, ...]) -> bool:
    policy = OriginPolicy(allowlist=allowlist, guard_host=False)
    return policy.check(OriginRequest(origin=origin, scheme="http", host=host)).allowed


def test_own_origin_of_http_and_websocket_requests() -> None:
    assert OWN == "http://chat.example:8080"
    assert own_origin("wss", "chat.example:443") == "https://chat.example"
    assert own_origin("ws", "[::1]:8080") == "http://[::1]:8080"
    assert own_origin("https", None) is None
    assert own_origin("https", "") is None


@pytest.mark.parametrize(
    ("origin", "allowlist", "allowed"),
    [
        (None, (), True),  # not a browser page
        ("http://chat.example:8080", (), True),
        ("HTTP://Chat.Example:8080/", (), True),
        ("https://chat.example:8080", (), False),  # same host, other scheme
        ("http://chat.example", (), False),  # other port
        ("http://chat.example:8081", (), False),
        ("https://app.example", ("https://App.Example",), True),
        ("https://app.example:443", ("https://app.example",), True),  # default port
        ("http://app.example", ("https://app.example",), False),
        ("https://app.example.evil", ("https://app.example",), False),
        ("https://evil.example", ("*",), True),
        ("null", ("*",), True),
        ("null", ("null",), False),  # opaque origins are never listed
        ("http://chat.example:notaport", (), False),
        ("chat.example:8080", (), False),
    ],
)
def test_origin_rule(origin: str | None, allowlist: tuple[str, ...], allowed: bool) -> None:
    assert origin_allowed(origin, "Chat.Example:8080", allowlist) is allowed


def test_without_an_own_origin_only_the_allowlist_counts() -> None:
    assert not origin_allowed("http://chat.example:8080", None, ())
    assert origin_allowed("https://app.example", None, ("https://app.example",))


def test_a_wildcard_never_grants_credentials() -> None:
    policy = OriginPolicy(allowlist=("*",), guard_host=False)
    verdict = policy.check(OriginRequest("https://evil.example", "http", "chat.example"))
    assert verdict.allowed and verdict.allow_origin == "*" and not verdict.credentials
    own = policy.check(OriginRequest("http://chat.example", "http", "chat.example"))
    assert own.credentials and own.allow_origin == "http://chat.example"
