"""The ASGI transports over real sockets: Engine.IO's answers to good and bad requests.

A real hypercorn on 127.0.0.1 port 0, httpx and trio-websocket as clients; real clock with
sub-second settings. Ceiling: ``trio.fail_after(10)`` per test.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from archon_chat.sio import ServerOptions, SocketIOServer

from ..derived import derived
from .serving import serve_app, serve_sio, serve_sio_hooked

QUERY = "/socket.io/?EIO=4&transport=polling"


async def handshake(client: httpx.AsyncClient) -> str:
    response = await client.get(QUERY)
    assert response.status_code == 200
    assert response.text[0] == "0"
    return str(json.loads(response.text[1:])["sid"])


async def connected(client: httpx.AsyncClient) -> str:
    """A polling session with the default namespace connected; returns its Engine.IO sid."""
    sid = await handshake(client)
    assert (await client.post(f"{QUERY}&sid={sid}", content=b"40")).text == "ok"
    reply = await client.get(f"{QUERY}&sid={sid}")
    assert reply.text.startswith('40{"sid":')
    return sid


def error(response: httpx.Response) -> tuple[int, dict[str, Any]]:
    return response.status_code, response.json()


async def poll_pending(sio: SocketIOServer, sid: str) -> None:
    """Until the server holds a GET poll of ``sid`` (the caller sets a deadline)."""
    while not sio.get_connection(sid).eio.poll_pending:
        await trio.sleep(0.005)


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[SocketIOServer, int]:
    return await serve_sio(
        nursery, ping_interval_s=0.5, ping_timeout_s=0.5, max_http_buffer_size=1000
    )


@pytest.fixture
async def client(server: tuple[SocketIOServer, int]) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server[1]}", timeout=5) as c:
        yield c


async def test_polling_round_trip(
    server: tuple[SocketIOServer, int], client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        sio, _ = server

        @sio.on("echo")
        async def echo(sid: str, data: Any) -> Any:
            return data

        sid = await connected(client)
        response = await client.post(f"{QUERY}&sid={sid}", content=b'421["echo",{"a":"\\u00e9"}]')
        assert response.text == "ok"
        answer = await client.get(f"{QUERY}&sid={sid}")
        assert answer.text == '431[{"a":"\\u00e9"}]'
        assert answer.headers["content-type"] == "text/plain; charset=UTF-8"


@pytest.mark.parametrize(
    ("method", "url", "status", "body"),
    [
        (
            "GET",
            "/socket.io/?EIO=4&transport=pigeon",
            400,
            {"code": 0, "message": "Transport unknown"},
        ),
        ("GET", f"{QUERY}&sid=nope", 400, {"code": 1, "message": "Session ID unknown"}),
        ("POST", f"{QUERY}&sid=nope", 400, {"code": 1, "message": "Session ID unknown"}),
        ("POST", QUERY, 400, {"code": 2, "message": "Bad handshake method"}),
        (
            "GET",
            "/socket.io/?EIO=3&transport=polling",
            400,
            {"code": 5, "message": "Unsupported protocol version"},
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=websocket",
            400,
            {"code": 3, "message": "Bad request"},
        ),
        ("DELETE", f"{QUERY}&sid=x", 400, {"code": 3, "message": "Bad request"}),
    ],
)
async def test_refused_requests(
    client: httpx.AsyncClient, method: str, url: str, status: int, body: dict[str, Any]
) -> None:
    with trio.fail_after(10):
        response = await client.request(method, url)
        assert error(response) == (status, body)
        assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "payload",
    [b"9", b"4a\x1e\x1e4b", b"\xff", b"b!!", b"42garbage", b'42["x"', b"45[]", b"43"],
)
async def test_malformed_post_closes_that_session_only(
    client: httpx.AsyncClient, payload: bytes
) -> None:
    with trio.fail_after(10):
        healthy = await connected(client)
        victim = await connected(client)
        response = await client.post(f"{QUERY}&sid={victim}", content=payload)
        assert error(response) == (400, {"code": 3, "message": "Bad request"})
        gone = await client.get(f"{QUERY}&sid={victim}")
        assert gone.status_code == 400
        assert gone.json()["code"] == 1
        assert (await client.post(f"{QUERY}&sid={healthy}", content=b"3")).text == "ok"


async def test_oversized_post(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        sid = await connected(client)
        response = await client.post(f"{QUERY}&sid={sid}", content=b"4" + b"x" * 1000)
        assert error(response) == (413, {"code": 3, "message": "Bad request"})
        assert (await client.get(f"{QUERY}&sid={sid}")).json()["code"] == 1


async def test_oversized_chunked_post(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        sid = await connected(client)

        async def body() -> Any:
            for _ in range(20):
                yield b"4" + b"x" * 99

        response = await client.post(f"{QUERY}&sid={sid}", content=body())
        assert response.status_code == 413


async def test_second_concurrent_poll(
    server: tuple[SocketIOServer, int], client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        sid = await connected(client)
        first: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:

            async def pending() -> None:
                first.append(await client.get(f"{QUERY}&sid={sid}"))

            nursery.start_soon(pending)
            await poll_pending(server[0], sid)
            second = await client.get(f"{QUERY}&sid={sid}")
        assert error(second) == (400, {"code": 3, "message": "Bad request"})
        assert first[0].text == "1"  # the session is closed; the first poll is told


async def test_client_close_ends_the_pending_poll_with_a_noop(
    server: tuple[SocketIOServer, int], client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        sid = await connected(client)
        polled: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:

            async def pending() -> None:
                polled.append(await client.get(f"{QUERY}&sid={sid}"))

            nursery.start_soon(pending)
            await poll_pending(server[0], sid)
            assert (await client.post(f"{QUERY}&sid={sid}", content=b"1")).text == "ok"
        assert polled[0].status_code == 200
        assert polled[0].text == "6"
        gone = await client.get(f"{QUERY}&sid={sid}")
        assert error(gone) == (400, {"code": 1, "message": "Session ID unknown"})


async def test_cors(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        _, port = await serve_sio(nursery, cors_origins=("https://app.example",))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            own = await c.get(QUERY, headers={"Origin": f"http://127.0.0.1:{port}"})
            assert own.status_code == 200
            listed = await c.get(QUERY, headers={"Origin": "https://app.example"})
            assert listed.headers["access-control-allow-origin"] == "https://app.example"
            assert listed.headers["access-control-allow-credentials"] == "true"
            other = await c.get(QUERY, headers={"Origin": "https://evil.example"})
            assert error(other) == (403, {"code": 4, "message": "Forbidden"})
            assert "access-control-allow-origin" not in other.headers
            preflight = await c.options(
                QUERY,
                headers={
                    "Origin": "https://app.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type",
                },
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-headers"] == "content-type"
            assert "POST" in preflight.headers["access-control-allow-methods"]
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(
                    f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
                    extra_headers=[(b"origin", b"https://evil.example")],
                ):
                    pass
            assert rejected.value.status_code == 403
            # The page's own origin includes its scheme (the rule REST shares).
            other_scheme = f"https://127.0.0.1:{port}"
            refused = await c.get(QUERY, headers={"Origin": other_scheme})
            assert error(refused) == (403, {"code": 4, "message": "Forbidden"})
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(
                    f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
                    extra_headers=[(b"origin", other_scheme.encode())],
                ):
                    pass
            assert rejected.value.status_code == 403
            async with open_websocket_url(
                f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
                extra_headers=[(b"origin", f"http://127.0.0.1:{port}".encode())],
            ) as ws:
                assert (await ws.get_message()).startswith("0{")


async def test_any_origin_when_configured(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        _, port = await serve_sio(nursery, cors_origins=("*",))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            response = await c.get(QUERY, headers={"Origin": "https://anywhere.example"})
            assert response.status_code == 200


async def test_not_serving_yet(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sio = SocketIOServer(derived(ServerOptions))
        port = await serve_app(nursery, sio.asgi)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            assert (await c.get(QUERY)).status_code == 503


# --- websocket ------------------------------------------------------------------------------


async def drain(ws: WebSocketConnection) -> None:
    while True:
        await ws.get_message()


def ws_url(port: int, query: str = "EIO=4&transport=websocket") -> str:
    return f"ws://127.0.0.1:{port}/socket.io/?{query}"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("EIO=4&transport=websocket&sid=nope", 1),
        ("EIO=2&transport=websocket", 5),
        ("EIO=4&transport=polling", 3),
        ("EIO=4&transport=tin-can", 0),
    ],
)
async def test_refused_websockets(
    server: tuple[SocketIOServer, int], query: str, code: int
) -> None:
    with trio.fail_after(10):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(ws_url(server[1], query)):
                pass
        assert rejected.value.status_code == 400
        assert rejected.value.body is not None
        assert json.loads(rejected.value.body)["code"] == code


async def test_websocket_session(server: tuple[SocketIOServer, int]) -> None:
    with trio.fail_after(10):
        sio, port = server

        @sio.on("echo")
        async def echo(sid: str, data: Any) -> Any:
            return data

        async with open_websocket_url(ws_url(port)) as ws:
            hello = await ws.get_message()
            assert isinstance(hello, str)
            assert json.loads(hello[1:])["upgrades"] == []
            await ws.send_message("40")
            assert (await ws.get_message()).startswith('40{"sid":')
            await ws.send_message('427["echo",[1,2]]')
            assert await ws.get_message() == "437[[1,2]]"
            assert await ws.get_message() == "2"  # the server pings (0.5 s)
            await ws.send_message("3")


@pytest.mark.parametrize(("frame", "code"), [("42[", 1002), ("4" + "x" * 1001, 1009), ("", 1002)])
async def test_bad_websocket_frames_close_with_a_code(
    server: tuple[SocketIOServer, int], frame: str, code: int
) -> None:
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(server[1])) as ws:
            await ws.get_message()
            await ws.send_message("40")
            await ws.get_message()
            await ws.send_message(frame)
            with pytest.raises(ConnectionClosed) as closed:
                await drain(ws)
            assert closed.value.reason.code == code


async def test_upgrade_and_second_upgrade(
    server: tuple[SocketIOServer, int], client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        sio, port = server

        @sio.on("echo")
        async def echo(sid: str, data: Any) -> Any:
            return data

        sid = await connected(client)
        url = ws_url(port, f"EIO=4&transport=websocket&sid={sid}")
        async with trio.open_nursery() as nursery:
            polled: list[str] = []

            async def pending_poll() -> None:
                polled.append((await client.get(f"{QUERY}&sid={sid}")).text)

            nursery.start_soon(pending_poll)
            await poll_pending(sio, sid)
            async with open_websocket_url(url) as ws:
                await ws.send_message("2probe")
                assert await ws.get_message() == "3probe"
                # A second websocket while the first probes: accepted, then closed.
                async with open_websocket_url(url) as surplus:
                    with pytest.raises(ConnectionClosed) as closed:
                        await drain(surplus)
                    assert closed.value.reason.code == 1000
                while not polled:
                    await trio.sleep(0.005)
                assert polled == ["6"]  # released with a noop
                await ws.send_message("5")
                await ws.send_message("3")
                # And once upgraded, the same (the reference server does not refuse it).
                async with open_websocket_url(url) as surplus:
                    with pytest.raises(ConnectionClosed) as closed:
                        await drain(surplus)
                    assert closed.value.reason.code == 1000
                stale = await client.get(f"{QUERY}&sid={sid}")
                assert error(stale) == (400, {"code": 3, "message": "Bad request"})
                await ws.send_message('421["echo","still here"]')  # the first one works on
                while (reply := await ws.get_message()) == "2":
                    await ws.send_message("3")
                assert reply == '431["still here"]'


async def test_one_bad_input_one_log_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        sid = await connected(client)
        with caplog.at_level(logging.INFO, logger="archon_chat"):
            await client.post(f"{QUERY}&sid={sid}", content=b"42[")
            await client.get(f"{QUERY}&sid=unknown")
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("archon_chat")]
        assert len(lines) == 2, lines
        assert sid in lines[0]


async def test_permessage_deflate_is_declined(server: tuple[SocketIOServer, int]) -> None:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", server[1])
        async with stream:
            await stream.send_all(
                b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some()
        status, *headers = head.split(b"\r\n\r\n")[0].lower().split(b"\r\n")
        assert status.startswith(b"http/1.1 101")
        assert not [h for h in headers if h.startswith(b"sec-websocket-extensions")]


@pytest.mark.parametrize("hooked", [False, True], ids=["send", "send_many"])
async def test_a_burst_reaches_the_client_whole_and_in_order(
    nursery: trio.Nursery, hooked: bool
) -> None:
    """Many frames pending for one socket: through hypercorn as shipped, one
    ``websocket.send`` each; with our hooks, ``websocket.send_many`` runs of at most
    ``ws_write_bytes`` (200 here, so a burst takes several). The client sees the same."""
    sent: list[dict[str, Any]] = []

    def recording(app: Any) -> Any:
        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            async def recorded(message: dict[str, Any]) -> None:
                sent.append(message)
                await send(message)

            await app(scope, receive, recorded)

        return wrapped

    with trio.fail_after(10):
        serve = serve_sio_hooked if hooked else serve_sio
        sio, port = await serve(nursery, recording, ws_write_bytes=200)

        @sio.on("burst")
        async def burst(sid: str, count: int) -> str:
            for index in range(count):
                sio.emit_nowait("n", index, to=sid)
            return "done"

        async with open_websocket_url(ws_url(port)) as ws:
            await ws.get_message()
            await ws.send_message("40")
            assert (await ws.get_message()).startswith('40{"sid":')
            await ws.send_message('420["burst",300]')
            received = [await ws.get_message() for _ in range(301)]
        assert received == [f'42["n",{index}]' for index in range(300)] + ['430["done"]']
    kinds = {message["type"] for message in sent}
    if not hooked:
        assert "websocket.send_many" not in kinds
        return
    assert "websocket.send" not in kinds
    batches = [message["frames"] for message in sent if message["type"] == "websocket.send_many"]
    frames = [frame for batch in batches for frame in batch]
    assert [frame for frame in frames if frame.startswith('42["n"')] == received[:300]
    assert max(map(len, batches)) > 1
    assert all(sum(map(len, batch)) <= 200 for batch in batches)
