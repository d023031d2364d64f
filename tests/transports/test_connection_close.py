"""A response that ends its connection closes it: a request with ``Connection: close``, or
an HTTP/1.0 one, gets its answer and then the end of the stream, from the gateway's REST
routes and from the built-in agents service (both quart-trio on hypercorn). quart-trio
cancels the app's last send as the ``http.disconnect`` it causes arrives, which used to
stop hypercorn's close halfway: the socket stayed open until the peer gave up.

Real servers on 127.0.0.1 port 0, raw TCP clients. Ceiling: ``trio.fail_after(10)`` per
request (an answered request reaches the end of its stream at once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.agents.support import agents_settings, running_service
from tests.e2e.support import world


async def _answer_and_end(url: str, request: bytes) -> bytes:
    """Everything the server sends for ``request`` until it closes the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        await stream.send_all(request)
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


def _requests(url: str, path: str) -> list[bytes]:
    host = url.removeprefix("http://")
    return [
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
        f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode(),
    ]


@pytest.mark.parametrize("path", ["/healthz", "/api/agent-chat/sessions/nope", "/metrics"])
async def test_the_gateway_closes_when_its_answer_ends_the_connection(
    tmp_path: Path, path: str
) -> None:
    async with world(tmp_path) as (_, gateway):
        for request in _requests(gateway.url, path):
            answer = await _answer_and_end(gateway.url, request)
            assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 404")), answer[:200]


async def test_the_agents_service_closes_when_its_answer_ends_the_connection(
    tmp_path: Path,
) -> None:
    async with running_service(agents_settings(tmp_path)) as url:
        for request in _requests(url, "/agents"):
            answer = await _answer_and_end(url, request)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
