"""An error in one connection's handling closes that connection only: each byte sequence
below used to end the whole gateway process (h11 refusing to send after the peer broke the
protocol, raised into the root nursery). Each is sent raw to a real gateway, which must
then serve a normal turn and count the aborted connections in /metrics.

Ceiling: every test runs under ``trio.fail_after(40)``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.agents_fake import AgentsFake
from tests.e2e.support import gateway_settings, running_gateway

from .support import exchange, frame, serves_a_turn, upgrade

pytestmark = pytest.mark.slow

HELLO = frame(b"40")
TRIGGERS: dict[str, bytes] = {
    "upgrade_then_frame": upgrade() + HELLO,
    "upgrade_then_frame_on_root": upgrade(b"/") + HELLO,
    "upgrade_then_frame_on_healthz": upgrade(b"/healthz") + HELLO,
    "refused_upgrade_then_data": upgrade(b"/socket.io/?EIO=3&transport=websocket") + HELLO,
    "two_pipelined_upgrades": upgrade() + upgrade(),
    "upgrade_with_a_body": upgrade(extra=b"Content-Length: 5\r\n") + b"hello",
    "h2c_upgrade": (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n" + b"\x00garbage" * 8
    ),
    "http2_preface_then_garbage": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
}


def connection_errors(metrics_text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "archon_chat_connection_errors":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


@pytest.mark.parametrize("name", list(TRIGGERS))
async def test_a_broken_connection_never_takes_the_gateway_down(tmp_path: Path, name: str) -> None:
    with trio.fail_after(40):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with running_gateway(gateway_settings(tmp_path, agents.url)) as gw:
                for _ in range(3):
                    await exchange(gw.port, TRIGGERS[name], read_for_s=1.0)
                await serves_a_turn(gw.url)
            nursery.cancel_scope.cancel()


async def test_aborted_connections_are_counted(tmp_path: Path) -> None:
    with trio.fail_after(40):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with running_gateway(gateway_settings(tmp_path, agents.url)) as gw:
                async with httpx.AsyncClient(base_url=gw.url) as http:
                    before = connection_errors((await http.get("/metrics")).text)
                    await exchange(gw.port, TRIGGERS["upgrade_then_frame"], read_for_s=1.0)
                    after = connection_errors((await http.get("/metrics")).text)
                assert after == before + 1
            nursery.cancel_scope.cancel()


async def test_http2_in_cleartext_is_not_served(tmp_path: Path) -> None:
    with trio.fail_after(40):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with running_gateway(gateway_settings(tmp_path, agents.url)) as gw:
                # An h2c upgrade is ignored: the request is answered in HTTP/1.1.
                reply = await exchange(
                    gw.port,
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, "
                    b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
                    read_for_s=1.0,
                )
                assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
                assert reply.endswith(b'{"status": "ok"}'), reply[-100:]
                # Prior knowledge: closed without a word of HTTP/2.
                reply = await exchange(gw.port, TRIGGERS["http2_preface_then_garbage"], 2.0)
                assert reply == b""
            nursery.cancel_scope.cancel()
