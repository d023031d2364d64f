"""The parent's side of ``serve --workers``: reading the request line without consuming it,
naming the worker of a sid, and handing a connection's descriptor to a worker.

Real sockets (socket pairs, loopback TCP) and the real clock, with sub-second timeouts.
Ceiling: ``trio.fail_after(5)`` per test.
"""

from __future__ import annotations

import socket

import pytest
import trio

from archon_chat.config import load_settings
from archon_chat.workers import (
    PEEK_BYTES,
    HandedConnections,
    _Child,
    _Pool,
    peek_request_line,
    sid_prefix,
    worker_of,
)

POLL = b"GET /socket.io/?EIO=4&transport=polling&t=PZk3&sid=w1.AbC-d_9 HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "workers", "expected"),
    [
        (POLL, 2, 1),
        (POLL.replace(b"sid=w1.", b"sid=w0."), 2, 0),
        (POLL.replace(b"sid=w1.", b"sid=w1%2E"), 2, 1),  # percent-encoded dot
        (b"POST /socket.io/?EIO=4&sid=w12.x&transport=polling HTTP/1.1\r\n", 13, 12),
        (b"GET /socket.io/?EIO=4&transport=websocket&sid=w0.q HTTP/1.1\r\n", 2, 0),
        (POLL, 1, None),  # no such worker (any more)
        (b"GET /socket.io/?EIO=4&transport=polling&t=x HTTP/1.1\r\n", 2, None),  # handshake
        (b"GET /api/agent-chat/sessions?sid=w1.x HTTP/1.1\r\n", 2, None),
        (b"GET /socket.io/?sid=AbCdEf HTTP/1.1\r\n", 2, None),  # no worker prefix
        (b"GET /socket.io/?sid=w.x HTTP/1.1\r\n", 2, None),
        (b"GET /socket.io/?sid=w1x HTTP/1.1\r\n", 2, None),
        (b"GET /socket.io/?sid=w99999999999999999999.x HTTP/1.1\r\n", 2, None),
        (b"GET /socket.io/?sid=w1.x\r\n", 2, None),  # not three parts
        (b"", 2, None),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 2, None),  # a TLS hello
        (bytes(range(256)) * 8, 2, None),
        (b"GET /socket.io/?" + b"a=b&" * 5000 + b"sid=w1.x HTTP/1.1", 2, 1),
        # an operator's request for one worker
        (b"GET /metrics?worker=1 HTTP/1.1\r\n", 2, 1),
        (b"GET /metrics?worker=01 HTTP/1.1\r\n", 2, 1),
        (b"GET /healthz?x=y&worker=0 HTTP/1.1\r\n", 2, 0),
        (b"GET /metrics?worker=2 HTTP/1.1\r\n", 2, None),
        (b"GET /metrics?worker=-1 HTTP/1.1\r\n", 2, None),
        (b"GET /metrics?worker=1x HTTP/1.1\r\n", 2, None),
        (b"GET /metrics?worker= HTTP/1.1\r\n", 2, None),
        (b"GET /metrics HTTP/1.1\r\n", 2, None),
        (b"GET /metricsx?worker=1 HTTP/1.1\r\n", 2, None),
        (b"GET /api/agent-chat/sessions?worker=1 HTTP/1.1\r\n", 2, None),
    ],
)
def test_worker_of_a_request_head(head: bytes, workers: int, expected: int | None) -> None:
    assert worker_of(head, workers) == expected


def test_the_prefix_is_what_the_parser_reads() -> None:
    for index in (0, 1, 7, 31):
        sid = sid_prefix(index) + "Zm9v-_bar"
        head = f"GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n".encode()
        assert worker_of(head, 32) == index
        settings = load_settings({}, {"sid_prefix": sid_prefix(index)})
        assert settings.worker_index == index
    assert load_settings({}, {}).worker_index is None


async def test_peek_leaves_the_bytes_for_the_worker() -> None:
    with trio.fail_after(5):
        a, b = trio.socket.socketpair()
        with a, b:
            await a.send(POLL)
            assert await peek_request_line(b, PEEK_BYTES, 1.0) == POLL
            assert await b.recv(4096) == POLL


async def test_peek_waits_for_a_line_sent_in_pieces() -> None:
    with trio.fail_after(5):
        a, b = trio.socket.socketpair()
        with a, b:
            async with trio.open_nursery() as nursery:

                async def trickle() -> None:
                    for i in range(0, 40, 8):
                        await a.send(POLL[i : i + 8])
                        await trio.sleep(0.02)
                    await a.send(POLL[40:])

                nursery.start_soon(trickle)
                head = await peek_request_line(b, PEEK_BYTES, 2.0)
            assert head is not None and head.startswith(POLL[:40]) and b"\n" in head
            assert worker_of(head, 2) == 1


async def test_a_slow_request_line_is_given_up_at_the_deadline() -> None:
    with trio.fail_after(5):
        a, b = trio.socket.socketpair()
        with a, b:
            await a.send(b"GET /socket.io/?EIO=4&sid=w1.")
            start = trio.current_time()
            assert await peek_request_line(b, PEEK_BYTES, 0.3) is None
            assert 0.3 <= trio.current_time() - start < 1.0


async def test_silence_and_close_give_nothing() -> None:
    with trio.fail_after(5):
        a, b = trio.socket.socketpair()
        with b:
            assert await peek_request_line(b, PEEK_BYTES, 0.1) is None
            a.close()
            assert await peek_request_line(b, PEEK_BYTES, 1.0) is None


async def test_a_huge_line_stops_at_the_limit_and_binary_at_once() -> None:
    with trio.fail_after(5):
        a, b = trio.socket.socketpair()
        with a, b:
            await a.send(b"GET /" + b"a" * 10_000)
            head = await peek_request_line(b, 64, 1.0)
            assert head is not None and len(head) == 64
            assert worker_of(head, 2) is None
        a, b = trio.socket.socketpair()
        with a, b:
            await a.send(b"\x16\x03\x01")  # no line feed will come: routed at once
            start = trio.current_time()
            assert await peek_request_line(b, PEEK_BYTES, 5.0) == b"\x16\x03\x01"
            assert trio.current_time() - start < 1.0


def _pool(workers: int) -> tuple[_Pool, list[HandedConnections]]:
    """A parent's pool whose workers are the other ends of their Unix sockets."""
    settings = load_settings(
        {},
        {
            "workers": workers,
            "redis_url": "redis://127.0.0.1:6379/0",
            "port": 0,
            "http_read_timeout_s": 1.0,
        },
    )
    pool = _Pool(settings, 0, trio.Event())
    ends = []
    for child in pool.workers:
        parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child.unix = trio.socket.from_stdlib_socket(parent_end)
        child.ready = True
        ends.append(HandedConnections(trio.socket.from_stdlib_socket(worker_end)))
    return pool, ends


async def _connected_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return client, server


async def test_a_handed_connection_is_the_same_connection_in_the_worker() -> None:
    with trio.fail_after(5):
        pool, ends = _pool(2)
        client, server = await _connected_pair()
        async with trio.open_nursery() as nursery:
            for child in pool.workers:
                assert child.unix is not None
                nursery.start_soon(pool.collect_acks, child, child.unix)
            with client:
                await client.send(POLL)
                with server:
                    head = await peek_request_line(server, PEEK_BYTES, 1.0)
                    assert head is not None
                    accepted: list[trio.SocketStream] = []

                    async def accept() -> None:
                        accepted.append(await ends[1].accept())

                    nursery.start_soon(accept)
                    assert await pool.hand(server, worker_of(head, 2))
                # The parent's copy is closed: the worker's is the only one.
                stream = accepted[0]
                assert await stream.receive_some(4096) == POLL
                await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\n")
                assert await client.recv(100) == b"HTTP/1.1 200 OK\r\n\r\n"
                await stream.aclose()
                assert await client.recv(100) == b""
            for end in ends:
                await end.aclose()


async def test_new_connections_go_round_robin_and_skip_dead_workers() -> None:
    with trio.fail_after(5):
        pool, ends = _pool(3)
        got: list[int] = []
        async with trio.open_nursery() as nursery:
            for child in pool.workers:
                assert child.unix is not None
                nursery.start_soon(pool.collect_acks, child, child.unix)

            async def accept(index: int) -> None:
                while True:
                    (await ends[index].accept()).socket.close()
                    got.append(index)

            accepting = [trio.CancelScope() for _ in ends]
            for index, scope in enumerate(accepting):

                async def run(index: int = index, scope: trio.CancelScope = scope) -> None:
                    with scope:
                        await accept(index)

                nursery.start_soon(run)
            for _ in range(3):
                client, server = await _connected_pair()
                with client, server:
                    assert await pool.hand(server, None)
            assert sorted(got) == [0, 1, 2]
            # Worker 1 dies: its sid and the round-robin go elsewhere, never fail.
            accepting[1].cancel()
            await ends[1].aclose()
            for _ in range(4):
                client, server = await _connected_pair()
                with client, server:
                    assert await pool.hand(server, 1)
            assert not pool.workers[1].ready
            assert len(got) == 7 and set(got[3:]) == {0, 2}
            # No worker at all: the connection is refused (closed), the parent carries on.
            for child in pool.workers:
                child.ready = False
            client, server = await _connected_pair()
            with client, server:
                assert not await pool.hand(server, 0)
            nursery.cancel_scope.cancel()
        for index in (0, 2):
            await ends[index].aclose()


async def test_connections_sent_to_a_worker_that_dies_before_taking_them_go_elsewhere() -> None:
    with trio.fail_after(5):
        pool, ends = _pool(2)
        async with trio.open_nursery() as nursery:
            for child in pool.workers:
                assert child.unix is not None
                nursery.start_soon(pool.collect_acks, child, child.unix)
            client, server = await _connected_pair()
            with client:
                await client.send(POLL)
                with server:
                    # Worker 1 gets the descriptor but dies without taking it.
                    async def die_soon() -> None:
                        await trio.sleep(0.1)
                        await ends[1].aclose()

                    nursery.start_soon(die_soon)
                    accepted: list[trio.SocketStream] = []

                    async def accept() -> None:
                        accepted.append(await ends[0].accept())

                    nursery.start_soon(accept)
                    assert await pool.hand(server, 1)
                assert not pool.workers[1].ready and not pool.workers[1].pending
                assert await accepted[0].receive_some(4096) == POLL
                await accepted[0].aclose()
            nursery.cancel_scope.cancel()
        await ends[0].aclose()


async def test_a_worker_sees_its_parent_go() -> None:
    with trio.fail_after(5):
        parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        connections = HandedConnections(trio.socket.from_stdlib_socket(worker_end))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connections.accept)
            parent_end.close()
            await connections.parent_gone.wait()
            nursery.cancel_scope.cancel()
        await connections.aclose()


def test_children_are_named() -> None:
    assert _Child(0, "worker 0").ready is False
