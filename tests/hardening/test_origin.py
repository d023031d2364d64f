"""One origin check for REST, long-polling and websockets: scheme included, a wildcard
never with credentials, configured public origins over ``Host``, and (without an API
key) no foreign ``Host`` (DNS rebinding).

Ceiling: the end-to-end test runs under ``trio.fail_after(30)``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from archon_chat.origins import OriginPolicy, OriginRequest, Verdict
from tests.e2e.agents_fake import AgentsFake
from tests.e2e.support import gateway_settings, running_gateway

from .support import exchange, upgrade


def check(
    policy: OriginPolicy,
    origin: str | None,
    host: str = "127.0.0.1:8080",
    scheme: str = "http",
    proto: str | None = None,
) -> Verdict:
    return policy.check(
        OriginRequest(origin=origin, scheme=scheme, host=host, forwarded_proto=proto)
    )


def test_own_origin_includes_the_scheme() -> None:
    policy = OriginPolicy()
    assert check(policy, "http://127.0.0.1:8080").allowed
    assert not check(policy, "https://127.0.0.1:8080").allowed
    assert check(policy, "https://127.0.0.1:8080", scheme="https").allowed
    assert check(policy, "https://127.0.0.1:8080", scheme="wss").allowed


def test_forwarded_proto_only_from_a_trusted_proxy() -> None:
    assert not check(OriginPolicy(), "https://127.0.0.1:8080", proto="https").allowed
    trusted = OriginPolicy(trusted_proxy=True)
    assert check(trusted, "https://127.0.0.1:8080", proto="https").allowed
    assert not check(trusted, "http://127.0.0.1:8080", proto="https").allowed


def test_a_wildcard_never_grants_credentials() -> None:
    verdict = check(OriginPolicy(allowlist=("*",)), "https://evil.example")
    assert verdict.allowed and verdict.allow_origin == "*" and not verdict.credentials
    assert ("Access-Control-Allow-Credentials", "true") not in verdict.cors_headers()
    listed = check(OriginPolicy(allowlist=("https://app.example",)), "https://app.example")
    assert listed.credentials and listed.allow_origin == "https://app.example"
    assert not check(OriginPolicy(allowlist=("https://app.example",)), "http://app.example").allowed


def test_host_guard_against_dns_rebinding() -> None:
    guard = OriginPolicy(guard_host=True, bound_host="10.0.0.5")
    for host in (
        "127.0.0.1:8080",
        "localhost",
        "app.localhost:1",
        "[::1]:80",
        "127.3.2.1",
        "10.0.0.5:8080",
    ):
        assert check(guard, None, host=host).allowed, host
    for host in ("evil.example:8080", "", "127.0.0.1:x", "10.0.0.6"):
        verdict = check(guard, None, host=host)
        assert not verdict.allowed and verdict.refusal == "host", host
    public = OriginPolicy(guard_host=True, public_origins=("https://chat.example",))
    assert check(public, "https://chat.example", host="chat.example").allowed
    # With public origins set, Host does not make an origin our own.
    assert not check(public, "http://127.0.0.1:8080").allowed
    assert check(OriginPolicy(guard_host=False), None, host="evil.example").allowed


@pytest.mark.slow
async def test_one_check_for_rest_polling_and_websockets(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(tmp_path, agents.url, cors_origins=("*",))
            async with running_gateway(settings) as gw:
                evil = {"Origin": "https://evil.example"}
                async with httpx.AsyncClient(base_url=gw.url) as http:
                    r = await http.post("/api/agent-chat/sessions", json={}, headers=evil)
                    assert r.status_code == 201
                    assert r.headers["access-control-allow-origin"] == "*"
                    assert "access-control-allow-credentials" not in r.headers
                    r = await http.get("/socket.io/?EIO=4&transport=polling", headers=evil)
                    assert r.status_code == 200
                    assert r.headers["access-control-allow-origin"] == "*"
                    assert "access-control-allow-credentials" not in r.headers
                    rebound = {"Host": f"evil.example:{gw.port}"}
                    r = await http.get("/api/agent-chat/sessions/x", headers=rebound)
                    assert r.status_code == 403 and r.json()["code"] == "forbidden_host"
                    r = await http.get("/socket.io/?EIO=4&transport=polling", headers=rebound)
                    assert r.status_code == 403
                reply = await exchange(
                    gw.port,
                    upgrade().replace(b"Host: 127.0.0.1", b"Host: evil.example"),
                    read_for_s=1.0,
                )
                assert reply.startswith(b"HTTP/1.1 403"), reply[:100]
                reply = await exchange(gw.port, upgrade(), read_for_s=1.0)
                assert reply.startswith(b"HTTP/1.1 101"), reply[:100]
            nursery.cancel_scope.cancel()
