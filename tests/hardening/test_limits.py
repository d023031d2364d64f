"""Per-address budgets: session creation and Engine.IO handshakes are rate limited (429,
``rate_limited``, ``Retry-After``); sessions awaiting a CONNECT and open connections are
capped per address.

Ceiling: every end-to-end test runs under ``trio.fail_after(30)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from archon_chat.limits import RateLimiter, client_address
from tests.e2e.agents_fake import AgentsFake
from tests.e2e.support import gateway_settings, running_gateway

from .support import closed_by_peer, serves_a_turn

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


def test_rate_limiter_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=2, max_addresses=2, clock=lambda: now[0])
    assert limiter.retry_after("a") == 0 and limiter.retry_after("a") == 0
    assert limiter.retry_after("a") == pytest.approx(30.0)
    assert limiter.retry_after("b") == 0
    now[0] = 30.0
    assert limiter.retry_after("a") == 0  # refilled one token in 30 s
    limiter.retry_after("c")
    assert len(limiter) == 2  # "b", the least recently used, forgotten
    assert RateLimiter(per_minute=0, max_addresses=1).retry_after("a") == 0


def test_client_address_trusts_forwarded_for_only_behind_a_trusted_proxy() -> None:
    assert client_address("10.0.0.1", "1.2.3.4, 5.6.7.8", trusted_proxy=False) == "10.0.0.1"
    assert client_address("10.0.0.1", "1.2.3.4, 5.6.7.8", trusted_proxy=True) == "5.6.7.8"
    assert client_address("10.0.0.1", None, trusted_proxy=True) == "10.0.0.1"


@pytest.mark.slow
async def test_session_creation_and_handshakes_are_rate_limited(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(
                tmp_path, agents.url, sessions_per_minute=3, handshakes_per_minute=4
            )
            async with running_gateway(settings) as gw:
                async with httpx.AsyncClient(base_url=gw.url) as http:
                    statuses = [
                        (await http.post("/api/agent-chat/sessions", json={})).status_code
                        for _ in range(3)
                    ]
                    assert statuses == [201, 201, 201]
                    r = await http.post("/api/agent-chat/sessions", json={})
                    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
                    assert 1 <= int(r.headers["retry-after"]) <= 20
                    for _ in range(4):
                        assert (await http.get(HANDSHAKE)).status_code == 200
                    r = await http.get(HANDSHAKE)
                    assert r.status_code == 429
                    assert 1 <= int(r.headers["retry-after"]) <= 15
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_sessions_awaiting_connect_are_capped_per_address(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(tmp_path, agents.url, max_unconnected_per_address=2)
            async with running_gateway(settings) as gw:
                async with httpx.AsyncClient(base_url=gw.url) as http:
                    sids = [json.loads((await http.get(HANDSHAKE)).text[1:])["sid"] for _ in "ab"]
                    r = await http.get(HANDSHAKE)
                    assert r.status_code == 429 and "retry-after" in r.headers
                    # One of them connects its namespace: it no longer counts.
                    r = await http.post(f"{HANDSHAKE}&sid={sids[0]}", content=b"40")
                    assert r.status_code == 200
                    r = await http.get(f"{HANDSHAKE}&sid={sids[0]}")
                    assert r.text.startswith("40{"), r.text
                    assert (await http.get(HANDSHAKE)).status_code == 200
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_open_connections_are_capped_per_address(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(tmp_path, agents.url, max_connections_per_address=3)
            async with running_gateway(settings) as gw:
                held = [await trio.open_tcp_stream("127.0.0.1", gw.port) for _ in range(3)]
                refused = await trio.open_tcp_stream("127.0.0.1", gw.port)
                assert await closed_by_peer(refused, within_s=5)
                await refused.aclose()
                for stream in held:
                    await stream.aclose()
                # Freed once the server has seen them go: a normal client is served.
                async with httpx.AsyncClient(base_url=gw.url) as http:
                    while True:
                        try:
                            if (await http.get("/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            await trio.sleep(0.05)
                await serves_a_turn(gw.url)
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_the_address_cap_is_the_gateways_own_not_its_built_in_agents(
    tmp_path: Path,
) -> None:
    """The built-in agents service runs in the gateway's process: the gateway's cap on
    connections per address must not apply to it (the gateway's own connections to it all
    come from 127.0.0.1), nor its connections count against the gateway's clients. Twice:
    the second gateway's agents service starts with the hooks already in place."""
    with trio.fail_after(30):
        settings = gateway_settings(tmp_path, "", max_connections_per_address=3)
        for _ in range(2):
            async with running_gateway(settings) as gw:
                assert gw.agents_url
                held = [await trio.open_tcp_stream("127.0.0.1", gw.port) for _ in range(3)]
                agents_port = int(gw.agents_url.rsplit(":", 1)[1])
                also = [await trio.open_tcp_stream("127.0.0.1", agents_port) for _ in range(4)]
                async with httpx.AsyncClient(base_url=gw.agents_url) as agents:
                    assert (await agents.get("/health")).status_code == 200
                for stream in also:
                    await stream.aclose()
                refused = await trio.open_tcp_stream("127.0.0.1", gw.port)
                assert await closed_by_peer(refused, within_s=5)
                await refused.aclose()
                for stream in held:
                    await stream.aclose()
