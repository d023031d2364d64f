"""Raw-socket helpers for the hardening tests: bytes in, whatever comes back, and proof
that the gateway still serves a normal turn afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import trio

from tests.e2e.support import Client, create_session, turn_done

WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(path: bytes = b"/socket.io/?EIO=4&transport=websocket", extra: bytes = b"") -> bytes:
    """A websocket upgrade request for ``path``."""
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + WS_KEY + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True, length: int | None = None) -> bytes:
    """A masked client frame (mask of zeros, so the payload goes as is); ``length`` may
    announce more than ``payload`` holds."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


async def exchange(port: int, data: bytes, read_for_s: float = 2.0) -> bytes:
    """Send ``data`` at once, then read until the server closes or ``read_for_s``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    try:
        await stream.send_all(data)
        with trio.move_on_after(read_for_s):
            while chunk := await stream.receive_some(65536):
                received += chunk
    except trio.BrokenResourceError:
        pass  # reset by the server
    finally:
        await stream.aclose()
    return received


async def serves_a_turn(url: str) -> None:
    """A fresh session, a websocket client, one message, the whole reply."""
    session_id = await create_session(url)
    client = Client(url, transports=["websocket"])
    await client.connect()
    try:
        ack = await client.call("join_chat", {"session_id": session_id})
        assert ack["status"] == "joined", ack
        ack = await client.call("chat_message", {"session_id": session_id, "message": "hi"})
        assert ack["status"] == "sent", ack
        await client.wait_for(turn_done)
        replies = [
            d["data"]
            for n, d in client.snapshot()
            if n == "message" and d["data"]["sender"] == "agent"
        ]
        assert [r["status"] for r in replies] == ["complete"], replies
    finally:
        await client.disconnect()


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, agents_url: str, **env_overrides: str
) -> AsyncIterator[tuple[trio.Process, str, int]]:
    """``archon-chat serve`` as a subprocess on port 0: (process, url, port)."""
    env = dict(os.environ)
    env.update(
        {
            "AGENT_SERVICE_URL": agents_url,
            "ARCHON_CHAT_DB": str(tmp_path / "chat.db"),
            "ARCHON_CHAT_PORT": "0",
            "ARCHON_CHAT_LOG_LEVEL": "WARNING",
            "ARCHON_CHAT_SHUTDOWN_GRACE_S": "1",
            **env_overrides,
        }
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "archon_chat.cli", "serve"], env=env, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    buffer = b""
    try:
        with trio.fail_after(20):
            while b"serving on" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "gateway exited before serving"
                buffer += chunk
        line = next(x for x in buffer.decode().splitlines() if "serving on" in x)
        url = line.split("serving on ", 1)[1].strip()
        yield process, url, int(url.rsplit(":", 1)[1])
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def rss(process: trio.Process) -> int:
    return int(psutil.Process(process.pid).memory_info().rss)


def open_fds(process: trio.Process) -> int:
    return psutil.Process(process.pid).num_fds()


async def open_websocket(port: int) -> trio.SocketStream:
    """A raw Engine.IO websocket, past its 101 and open packet."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade())
    received = b""
    while b"\r\n\r\n" not in received or b'"sid"' not in received:
        chunk = await stream.receive_some(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 101"), received
    return stream


async def closed_by_peer(stream: trio.SocketStream, within_s: float) -> bool:
    """Whether the server ends the connection (EOF or reset) within ``within_s``."""
    with trio.move_on_after(within_s):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False
