"""The seed's chat server as its documentation describes it: the benchmark's baseline.

python-socketio's ``AsyncServer`` in ASGI mode on uvicorn (asyncio), the documented
handlers ``join_chat`` / ``chat_message`` / ``leave_chat``, REST ``POST /sessions``,
``GET /sessions/{id}``, ``POST /sessions/{id}/messages`` under ``/api/agent-chat`` with
sessions in a dict, and the documented SSE proxy: a new ``httpx.AsyncClient`` per reply,
every ``data:`` line emitted as a ``stream_chunk`` with ``chunk_data.get('content', '')``.

Kept as the seed has it, on purpose: the SSE event type is ignored (the final
``stream_complete`` line goes out as an empty chunk), nothing is ever cancelled (a
client leaving keeps its agent stream running to the end), joins are confirmed for any
session id, events carry no ``seq`` or ``session_id``, python-socketio's per-socket
queues are unbounded. Where the seed's snippets stop, the documented events fill in:
``connection_confirmed {session_id}`` to the joining socket, the user's ``message`` to
the room, ``typing``, the agent's ``message`` with the whole reply, ``stream_complete``,
and ``error {"error": "Agent service error: <status>"}`` or ``"Agent response timeout"``.

``--shared-client`` is the labelled variant: one ``httpx.AsyncClient`` for every reply
(unbounded connections, 20 kept alive: design.md section 6's pool trap).

It runs as uvicorn normally runs once installed as ``uvicorn[standard]``: the uvloop event
loop and the httptools HTTP parser (``--loop`` / ``--http`` choose others, ``auto`` takes
whatever is installed). Before its serving line it prints the implementations it really
got, ``seed-baseline: implementation {"loop": ..., "http": ..., "ws": ...}``, so that the
benchmark records them; a requested implementation that is missing stops it with an error.

Scaled out the way its users scale it (the benchmark's scenario 7): ``--redis-url`` puts
python-socketio's ``AsyncRedisManager`` behind the server (every emit is published on one
Redis channel, ``--redis-channel``, and every process emits to its own members of the room),
and ``--workers N`` runs N such processes on one port, as ``uvicorn --workers N`` does: this
process binds the socket and starts N children that accept on it (the kernel hands each
connection to one of them; no sid routing, so websocket-only clients). It prints its serving
line once every child is ready and stops them all when it is stopped.

Run: ``python -m bench.seed_baseline --port 0 --agent-url http://127.0.0.1:8052``; it
prints ``seed-baseline: serving on http://127.0.0.1:<port>`` once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import httpx
import socketio
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _now() -> str:
    return datetime.now(UTC).isoformat()


#: how long ``--workers`` waits for every child to be ready before giving up
WORKERS_READY_TIMEOUT_S = 30.0
#: how long a stopped ``--workers`` parent waits for its children to exit before killing them
WORKERS_STOP_GRACE_S = 5.0


def create_app(
    agent_url: str,
    *,
    shared_client: bool = False,
    redis_url: str = "",
    redis_channel: str = "socketio",
) -> socketio.ASGIApp:
    manager = socketio.AsyncRedisManager(redis_url, channel=redis_channel) if redis_url else None
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=manager,
        cors_allowed_origins="*",
        ping_timeout=int(os.environ.get("SOCKETIO_PING_TIMEOUT", "60")),
        ping_interval=int(os.environ.get("SOCKETIO_PING_INTERVAL", "25")),
    )
    sessions: dict[str, dict[str, Any]] = {}
    background: set[asyncio.Task[None]] = set()
    shared = (
        httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=20))
        if shared_client
        else None
    )

    def chat_message_record(session_id: str, content: str, sender: str) -> dict[str, Any]:
        session = sessions.get(session_id)
        message = {
            "id": str(uuid.uuid4()),
            "content": content,
            "sender": sender,
            "timestamp": _now(),
            "agent_type": session["agent_type"] if session else "rag",
        }
        if session is not None:
            session["messages"].append(message)
        return message

    async def stream_reply(
        client: httpx.AsyncClient, url: str, body: dict[str, Any], room: str
    ) -> str:
        content = ""
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await sio.emit(
                    "error",
                    {"type": "error", "error": f"Agent service error: {response.status_code}"},
                    room=room,
                )
                return content
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    chunk_data = json.loads(line[6:])
                    content += chunk_data.get("content", "")
                    await sio.emit(
                        "stream_chunk",
                        {"type": "stream_chunk", "content": chunk_data.get("content", "")},
                        room=room,
                    )
        return content

    async def process_agent_response(
        session_id: str, message: str, context: dict[str, Any]
    ) -> None:
        room = f"chat_{session_id}"
        session = sessions.get(session_id)
        agent_type = session["agent_type"] if session else "rag"
        url = f"{agent_url}/agents/{agent_type}/stream"
        body = {"prompt": message, "context": context}
        await sio.emit("typing", {"type": "typing", "is_typing": True}, room=room)
        content = ""
        try:
            if shared is not None:
                content = await stream_reply(shared, url, body, room)
            else:
                async with httpx.AsyncClient() as client:
                    content = await stream_reply(client, url, body, room)
        except httpx.ReadTimeout:
            await sio.emit("error", {"type": "error", "error": "Agent response timeout"}, room=room)
        except httpx.HTTPError as exc:
            await sio.emit(
                "error",
                {"type": "error", "error": f"Agent service error: {type(exc).__name__}"},
                room=room,
            )
        reply = chat_message_record(session_id, content, "agent")
        await sio.emit("message", {"type": "message", "data": reply}, room=room)
        await sio.emit("stream_complete", {"type": "stream_complete"}, room=room)
        await sio.emit("typing", {"type": "typing", "is_typing": False}, room=room)

    async def handle_message(session_id: str, message: str, context: dict[str, Any]) -> None:
        user = chat_message_record(session_id, message, "user")
        await sio.emit("message", {"type": "message", "data": user}, room=f"chat_{session_id}")
        await process_agent_response(session_id, message, context)

    async def join_chat(sid: str, data: dict[str, Any]) -> None:
        session_id = data.get("session_id")
        await sio.enter_room(sid, f"chat_{session_id}")
        await sio.emit(
            "connection_confirmed",
            {"type": "connection_confirmed", "session_id": session_id},
            to=sid,
        )

    async def leave_chat(sid: str, data: dict[str, Any]) -> None:
        await sio.leave_room(sid, f"chat_{data.get('session_id')}")

    async def chat_message(sid: str, data: dict[str, Any]) -> None:
        await handle_message(
            data.get("session_id", ""), data.get("message", ""), data.get("context", {})
        )

    sio.on("join_chat", join_chat)
    sio.on("leave_chat", leave_chat)
    sio.on("chat_message", chat_message)

    async def rest(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        status, payload = route(scope["method"], scope["path"], body)
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    def route(method: str, path: str, raw: bytes) -> tuple[int, Any]:
        prefix = "/api/agent-chat/sessions"
        if not path.startswith(prefix):
            return 404, {"detail": "Not Found"}
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return 422, {"detail": "invalid JSON"}
        rest_path = path[len(prefix) :].strip("/").split("/") if path != prefix else []
        if method == "POST" and not rest_path:
            session_id = str(uuid.uuid4())
            sessions[session_id] = {
                "session_id": session_id,
                "project_id": body.get("project_id"),
                "agent_type": body.get("agent_type", "rag"),
                "created_at": _now(),
                "messages": [],
            }
            return 200, {"session_id": session_id}
        session = sessions.get(rest_path[0]) if rest_path else None
        if session is None:
            return 404, {"detail": "Session not found"}
        if method == "GET" and len(rest_path) == 1:
            return 200, session
        if method == "POST" and rest_path[1:] == ["messages"]:
            task = asyncio.ensure_future(
                handle_message(
                    session["session_id"], body.get("message", ""), body.get("context", {})
                )
            )
            background.add(task)
            task.add_done_callback(background.discard)
            return 200, {"status": "sent"}
        return 404, {"detail": "Not Found"}

    return socketio.ASGIApp(sio, other_asgi_app=rest)


def make_config(
    agent_url: str,
    shared_client: bool,
    loop: str,
    http: str,
    *,
    redis_url: str = "",
    redis_channel: str = "socketio",
) -> uvicorn.Config:
    """The uvicorn configuration, loaded: its protocol classes are resolved.

    Raises :class:`ImportError` naming the missing package if ``http`` asks for an
    implementation that is not installed (uvicorn itself would exit without a word), or
    ``redis`` when ``redis_url`` is set without it."""
    if http == "httptools":
        import httptools  # noqa: F401 (only its presence is checked)
    if redis_url:
        import redis  # noqa: F401 (AsyncRedisManager imports it only when it connects)
    config = uvicorn.Config(
        create_app(
            agent_url,
            shared_client=shared_client,
            redis_url=redis_url,
            redis_channel=redis_channel,
        ),
        loop=loop,
        http=http,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )
    config.load()
    return config


def loop_factory(config: uvicorn.Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory ``config.loop`` names (``None``: asyncio's default).

    Raises :class:`ImportError` if it names uvloop and uvloop is not installed."""
    if config.loop == "uvloop":
        import uvloop  # noqa: F401 (only its presence is checked)
    return config.get_loop_factory()


def implementation(config: uvicorn.Config) -> dict[str, str]:
    """What really serves: the running event loop's class and uvicorn's protocol classes."""
    loop = type(asyncio.get_running_loop())
    ws = config.ws_protocol_class
    return {
        "loop": f"{loop.__module__}.{loop.__qualname__}",
        "http": f"{config.http_protocol_class.__module__}.{config.http_protocol_class.__name__}",
        "ws": "none" if ws is None else f"{ws.__module__}.{ws.__name__}",
    }


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def serve(host: str, sock: socket.socket, config: uvicorn.Config, label: str) -> None:
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(f"{label}: implementation {json.dumps(implementation(config))}", flush=True)
        print(f"{label}: serving on http://{host}:{sock.getsockname()[1]}", flush=True)
    await task


def supervise(argv: list[str], workers: int, host: str, port: int, label: str) -> None:
    """``--workers N``: bind here, run N children accepting on the same socket (each its
    own event loop, app and Redis manager), print the serving line once all are ready,
    and on SIGTERM or a child's exit stop them all."""
    sock = bind(host, port)
    sock.listen(4096)
    child_argv = [sys.executable, "-m", "bench.seed_baseline", *argv, "--fd", str(sock.fileno())]
    children = [
        subprocess.Popen(
            [*child_argv, "--worker-index", str(i)],
            pass_fds=(sock.fileno(),),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(workers)
    ]
    ready = threading.Semaphore(0)
    stopping = threading.Event()

    def relay(child: subprocess.Popen[bytes]) -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if ": serving on " in line:
                ready.release()
                continue
            print(line, flush=True)
        stopping.set()

    for child in children:
        threading.Thread(target=relay, args=(child,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        started = all(ready.acquire(timeout=WORKERS_READY_TIMEOUT_S) for _ in children)
        if started and not stopping.is_set():
            print(f"{label}: serving on http://{host}:{sock.getsockname()[1]}", flush=True)
            stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(WORKERS_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.seed_baseline", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--agent-url", default=os.environ.get("AGENT_SERVICE_URL", "http://127.0.0.1:8052")
    )
    parser.add_argument(
        "--shared-client", action="store_true", help="one httpx client for every reply"
    )
    parser.add_argument(
        "--loop", default="uvloop", choices=("uvloop", "asyncio", "auto"), help="event loop"
    )
    parser.add_argument(
        "--http", default="httptools", choices=("httptools", "h11", "auto"), help="HTTP parser"
    )
    parser.add_argument(
        "--redis-url", default="", help="scale out: python-socketio's AsyncRedisManager on it"
    )
    parser.add_argument(
        "--redis-channel", default="socketio", help="the AsyncRedisManager's pub/sub channel"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (needs --redis-url)"
    )
    parser.add_argument("--fd", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    label = "seed-baseline-shared" if args.shared_client else "seed-baseline"
    if args.workers > 1 and args.fd < 0:
        if not args.redis_url:
            parser.error("--workers above 1 needs --redis-url: the workers share rooms through it")
        own = list(sys.argv[1:] if argv is None else argv)
        supervise(own, args.workers, args.host, args.port, label)
        return
    if args.worker_index >= 0:
        label = f"{label}-{args.worker_index}"
    try:
        config = make_config(
            args.agent_url.rstrip("/"),
            args.shared_client,
            args.loop,
            args.http,
            redis_url=args.redis_url,
            redis_channel=args.redis_channel,
        )
        factory = loop_factory(config)
    except ImportError as exc:
        # The bench extra installs uvicorn[standard]; without it the figures would be
        # those of a slower seed than the one users run.
        print(f"{label}: {exc.name or exc} is not installed (pip install 'uvicorn[standard]')")
        sys.exit(2)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            sock = socket.socket(fileno=args.fd) if args.fd >= 0 else bind(args.host, args.port)
            runner.run(serve(args.host, sock, config, label))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
