"""Input over a size limit is refused while it is read, not after it has been buffered:
measured on the real ``archon-chat serve`` process with psutil.

Ceiling: every test runs under ``trio.fail_after(60)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.e2e.agents_fake import AgentsFake

from .support import closed_by_peer, frame, gateway_process, open_websocket, rss

pytestmark = pytest.mark.slow

MB = 1 << 20


async def test_a_50_mb_frame_is_cut_as_soon_as_it_passes_the_limit(tmp_path: Path) -> None:
    with trio.fail_after(60):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with gateway_process(tmp_path, agents.url) as (process, _, port):
                warm = await open_websocket(port)
                await warm.aclose()
                before = rss(process)
                stream = await open_websocket(port)
                size = 50 * MB
                sent = 0
                chunk = b"\x00" * 65536
                try:
                    await stream.send_all(frame(b"", opcode=0x2, length=size))
                    while sent < size:
                        await stream.send_all(chunk)
                        sent += len(chunk)
                except trio.BrokenResourceError:
                    pass  # reset by the server
                assert await closed_by_peer(stream, within_s=10)
                assert sent < size
                grown = rss(process) - before
                assert grown < 4 * MB, grown
                await stream.aclose()
            nursery.cancel_scope.cancel()


ANNOUNCE = (
    b'451-["chat_message",'
    + b",".join(b'{"_placeholder":true,"num":%d}' % i for i in range(10))
    + b"]"
)


async def test_partial_binary_events_before_connect_hold_nothing(tmp_path: Path) -> None:
    with trio.fail_after(60):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with gateway_process(tmp_path, agents.url) as (process, _, port):
                # Warm up with as many plain websockets: what is measured below is what
                # the attachments hold, not the allocator's high-water mark of 100 sockets.
                warm = [await open_websocket(port) for _ in range(100)]
                for stream in warm:
                    await stream.aclose()
                before = rss(process)
                streams = [await open_websocket(port) for _ in range(100)]
                attachment = frame(b"\x00" * 100_000, opcode=0x2)
                for stream in streams:
                    try:
                        await stream.send_all(frame(ANNOUNCE) + attachment * 9)
                    except trio.BrokenResourceError:
                        pass  # already closed by the server
                for stream in streams:
                    assert await closed_by_peer(stream, within_s=10)
                grown = rss(process) - before
                assert grown < 4 * MB, grown
                for stream in streams:
                    await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_attachments_over_the_byte_bound_close_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(60):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with gateway_process(
                tmp_path, agents.url, ARCHON_CHAT_MAX_ATTACHMENT_BYTES="250000"
            ) as (_, _, port):
                stream = await open_websocket(port)
                await stream.send_all(frame(b"40"))
                received = b""
                while b"40{" not in received:
                    chunk = await stream.receive_some(65536)
                    assert chunk, received
                    received += chunk
                attachment = frame(b"\x00" * 100_000, opcode=0x2)
                try:
                    await stream.send_all(frame(ANNOUNCE) + attachment * 3)
                except trio.BrokenResourceError:
                    pass
                assert await closed_by_peer(stream, within_s=10)
                await stream.aclose()
            nursery.cancel_scope.cancel()
