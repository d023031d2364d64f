"""Time limits for peers that have not proven anything yet: a request's head and body
must arrive within ``http_read_timeout_s`` (slowloris); keep-alive connections between
requests and websockets are not cut by it. An Engine.IO session that connects no
Socket.IO namespace within ``connect_timeout_s`` is closed, even if it answers pings.

Ceiling: every test runs under ``trio.fail_after(30)``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.agents_fake import AgentsFake
from tests.e2e.support import Client, gateway_settings, running_gateway

from .support import closed_by_peer, open_websocket

pytestmark = pytest.mark.slow


async def test_a_trickled_request_head_is_cut_at_the_read_timeout(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(tmp_path, agents.url, http_read_timeout_s=0.6)
            async with running_gateway(settings) as gw:
                stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
                started = time.monotonic()
                await stream.send_all(b"GET /healthz HTTP/1.1\r\n")
                cut = False
                for i in range(60):
                    await trio.sleep(0.1)
                    try:
                        await stream.send_all(b"X-Slow-%d: y\r\n" % i)
                    except trio.BrokenResourceError:
                        cut = True
                        break
                    with trio.move_on_after(0):
                        if await stream.receive_some(1) == b"":
                            cut = True
                            break
                assert cut or await closed_by_peer(stream, within_s=1)
                assert time.monotonic() - started < 5
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_silent_new_connection_is_cut_at_the_read_timeout(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(tmp_path, agents.url, http_read_timeout_s=0.5)
            async with running_gateway(settings) as gw:
                stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
                started = time.monotonic()
                assert await closed_by_peer(stream, within_s=5)
                assert 0.4 < time.monotonic() - started < 5
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_keep_alive_and_websockets_outlive_the_read_timeout(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(tmp_path, agents.url, http_read_timeout_s=0.4)
            async with running_gateway(settings) as gw:
                websocket = await open_websocket(gw.port)
                stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
                for _ in range(2):
                    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    received = b""
                    while b"\r\n\r\n" not in received or not received.endswith(b"}"):
                        chunk = await stream.receive_some(65536)
                        assert chunk, received
                        received += chunk
                    assert received.startswith(b"HTTP/1.1 200"), received
                    await trio.sleep(1.0)  # idle between requests: keep-alive, not a read
                # Engine.IO pings every 0.5 s in these settings: answer one, stay open.
                assert not await closed_by_peer_quickly(websocket)
                await stream.aclose()
                await websocket.aclose()
            nursery.cancel_scope.cancel()


async def closed_by_peer_quickly(stream: trio.SocketStream) -> bool:
    with trio.move_on_after(0.2):
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return True
        return data == b""
    return False


async def test_a_session_without_connect_is_closed_at_the_connect_timeout(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(
                tmp_path, agents.url, connect_timeout_s=1.0, ping_interval_s=0.2
            )
            async with running_gateway(settings) as gw:
                async with httpx.AsyncClient(base_url=gw.url) as http:
                    started = time.monotonic()  # before the server's clock starts
                    r = await http.get("/socket.io/?EIO=4&transport=polling")
                    sid = json.loads(r.text[1:])["sid"]
                    poll = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
                    assert metric(await http.get("/metrics"), "unconnected_sessions") == 1
                    closed = False
                    while not closed:
                        r = await http.get(poll)
                        packets = r.text.split("\x1e") if r.status_code == 200 else []
                        closed = r.status_code != 200 or "1" in packets
                        if "2" in packets:  # keep answering pings: alive, but silent
                            await http.post(poll, content=b"3")
                    assert 0.9 < time.monotonic() - started < 5
                    scraped = await http.get("/metrics")
                    assert metric(scraped, "unconnected_sessions") == 0
                    assert metric(scraped, "connect_timeouts") == 1
                # A client that connects in time is not touched by it.
                client = Client(gw.url, transports=["polling"])
                await client.connect()
                await trio.sleep(1.5)
                assert client.sio.connected
                await client.disconnect()
            nursery.cancel_scope.cancel()


def metric(response: httpx.Response, name: str) -> float:
    for family in text_string_to_metric_families(response.text):
        if family.name == f"archon_chat_{name}":
            return float(family.samples[0].value)
    raise AssertionError(f"no metric {name}")
