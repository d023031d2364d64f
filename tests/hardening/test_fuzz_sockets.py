"""A seeded socket-level fuzzer against the real ``archon-chat serve`` process: random and
mutated HTTP/1.1 and websocket byte streams, alone and pipelined, a batch at a time. After
each batch the process must be alive, serve a normal turn, and be back to its baseline of
file descriptors and (within a few MB) memory.

Bounded: ``BATCHES`` x ``PER_BATCH`` streams, each read for at most ``READ_S``; ceiling
``trio.fail_after(90)`` (about 10 s on a quiet machine).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import trio

from tests.e2e.agents_fake import AgentsFake

from .support import (
    frame,
    gateway_process,
    open_fds,
    rss,
    serves_a_turn,
    upgrade,
)

pytestmark = pytest.mark.slow

SEED = 20261202
BATCHES = 5
PER_BATCH = 60
CONCURRENCY = 20
READ_S = 0.3
MB = 1 << 20

SEEDS: list[bytes] = [
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /api/agent-chat/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 21\r\n\r\n"
    b'{"agent_type": "rag"}',
    b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Length: 2\r\n\r\n40",
    b"POST /api/agent-chat/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n0\r\n\r\n',
    upgrade() + frame(b"40"),
    upgrade() + frame(b"40") + frame(b'42["join_chat",{"session_id":"x"}]'),
    upgrade(b"/") + frame(b"\x00" * 40, opcode=0x2),
    upgrade() + frame(b"", opcode=0x2, length=5_000_000) + b"\x00" * 3000,
    upgrade() + frame(b'451-["x",{"_placeholder":true,"num":0}]') + frame(b"ab", 0x2),
    upgrade() + frame(b"\x03\xe8", opcode=0x8),
    upgrade() + frame(b"ping", opcode=0x9) + frame(b"4", fin=False) + frame(b"0", opcode=0x0),
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /static/%00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        position = rng.randrange(len(out) + 1)
        if choice == 0 and out:  # flip a byte
            out[min(position, len(out) - 1)] = rng.randrange(256)
        elif choice == 1:  # insert random bytes
            out[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 2:  # cut
            del out[position:]
        elif choice == 3:  # repeat a slice
            out[position:position] = out[max(0, position - 32) : position] * rng.randint(1, 8)
        elif choice == 4:  # CRLF games
            out[position:position] = rng.choice([b"\r\n", b"\n", b"\r\n\r\n", b"\x00", b":"])
        else:  # a second request or frame behind it (pipelined)
            out += rng.choice(SEEDS)
    return bytes(out)


def stream_for(rng: random.Random) -> list[bytes]:
    """One connection's bytes, split into the pieces it is sent in."""
    kind = rng.randrange(4)
    if kind == 0:
        data = rng.randbytes(rng.randint(1, 512))
    elif kind == 1:
        data = rng.choice(SEEDS) + rng.choice(SEEDS)
    else:
        data = mutate(rng, rng.choice(SEEDS))
    pieces: list[bytes] = []
    while data:
        cut = rng.randint(1, max(1, len(data))) if rng.random() < 0.3 else len(data)
        pieces.append(data[:cut])
        data = data[cut:]
    return pieces


async def throw(port: int, pieces: list[bytes]) -> None:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return
    try:
        for piece in pieces:
            await stream.send_all(piece)
        with trio.move_on_after(READ_S):
            while await stream.receive_some(65536):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


def upstream_connections(process: trio.Process, port: int) -> int:
    connections = psutil.Process(process.pid).net_connections()
    return sum(1 for c in connections if c.raddr and c.raddr.port == port)


async def settled(measure: Callable[[], int], target: int, within_s: float) -> int:
    """Poll ``measure()`` until it is at most ``target`` or time is up; the last value."""
    value = measure()
    with trio.move_on_after(within_s):
        while value > target:
            await trio.sleep(0.1)
            value = measure()
    return value


async def test_random_byte_streams_never_hurt_the_gateway(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    with trio.fail_after(90):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with gateway_process(
                tmp_path,
                agents.url,
                ARCHON_CHAT_SESSIONS_PER_MINUTE="0",
                ARCHON_CHAT_HANDSHAKES_PER_MINUTE="0",
            ) as (process, url, port):
                await serves_a_turn(url)

                def own_fds() -> int:
                    # Not counting the gateway's keep-alive pool to the agents service.
                    return open_fds(process) - upstream_connections(process, agents.port)

                fds = own_fds()
                memory = rss(process)
                limiter = trio.CapacityLimiter(CONCURRENCY)

                async def one(pieces: list[bytes]) -> None:
                    async with limiter:
                        await throw(port, pieces)

                for batch in range(BATCHES):
                    async with trio.open_nursery() as throwers:
                        for _ in range(PER_BATCH):
                            throwers.start_soon(one, stream_for(rng))
                    assert process.returncode is None, f"batch {batch}: the gateway died"
                    await serves_a_turn(url)
                    now = await settled(own_fds, fds, 10)
                    assert now <= fds, f"batch {batch}: {now} fds, {fds} at the start"
                grown = rss(process) - memory
                assert grown < 8 * MB, grown
            nursery.cancel_scope.cancel()
