"""A peer that stops reading cannot pin a connection: hypercorn's writes get a deadline.

A real hypercorn server on 127.0.0.1 port 0 streams an endless body to a raw TCP client
that sends its request and never reads. Without the deadline the server's shielded write
blocks forever and its shutdown never ends (this test would hit its ceiling).

Ceiling: ``trio.fail_after(20)``.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from archon_chat.transports import hypercorn_hooks

pytestmark = pytest.mark.slow


async def test_a_stalled_write_aborts_the_connection_and_shutdown_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="archon_chat.transports.hypercorn_hooks")
    sent = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal sent
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 65536
        while True:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
            await trio.lowlevel.checkpoint()

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 0.5
    hypercorn_hooks.install(
        config, write_timeout_s=0.3, read_timeout_s=30.0, max_connections_per_address=0
    )
    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    app, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            port = int(binds[0].rsplit(":", 1)[1])
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            # Not reading: the kernel buffers fill, then the server's write stalls...
            while not any("connection aborted" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.02)
            # ...and is aborted: reading now reaches the end of what was sent, where
            # without the deadline the server would resume writing for ever.
            received = 0
            try:
                while data := await client.receive_some(1 << 20):
                    received += len(data)
            except trio.BrokenResourceError:
                pass  # reset by the abort
            # The write that stalled is counted in ``sent`` only once it returns, and it
            # may be partly on the wire; the head and the chunked framing add a little.
            assert 0 < received <= sent + len(b"x" * 65536) + 4096
            stop.set()
        await client.aclose()


async def test_only_a_plain_tcp_connection_is_written_to_directly() -> None:
    """The first write goes straight to the socket only without TLS: a TLS stream's bytes
    must go through the stream itself (encrypted)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    with trio.fail_after(10):
        async with listener, await trio.open_tcp_stream("127.0.0.1", port) as plain:
            assert hypercorn_hooks._plain_fd(plain) == plain.socket.fileno()
            tls = trio.SSLStream(plain, ssl.create_default_context(), server_hostname="x")
            assert hypercorn_hooks._plain_fd(tls) is None
