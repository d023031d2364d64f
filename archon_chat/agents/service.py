"""The agents service over HTTP: a quart-trio app served by hypercorn.

========================================  ===============================================
``POST /agents/{agent_type}/stream``      ``text/event-stream`` of the agent's answer
``GET /agents``                           agent types, their context parameters, limits
``GET /health``                           liveness, backend, streams in progress
========================================  ===============================================

Requests are validated completely before a stream starts (see :mod:`.schema`); errors are
JSON ``{"detail", "code"}``. A stream is ``stream_chunk`` deltas then ``stream_complete``,
or an ``error`` event, with ``: ping`` comments while the agent thinks (:mod:`.sse`).
A client that disconnects cancels its agent and the agent's LLM request.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from archon_chat.agents.base import Agent, Toolkit
from archon_chat.agents.document import DocumentAgent
from archon_chat.agents.errors import RequestRejected
from archon_chat.agents.kb import KnowledgeBase
from archon_chat.agents.llm import LLMBackend
from archon_chat.agents.rag import RagAgent
from archon_chat.agents.schema import decode_body, describe_request, parse_request
from archon_chat.agents.sse import EventStream
from archon_chat.agents.task import TaskAgent
from archon_chat.config import Settings
from archon_chat.transports import hypercorn_hooks

log = logging.getLogger("archon_chat.agents")

#: The body holds the prompt (up to 4 bytes per character in UTF-8) plus history and
#: envelope; history is the gateway's last turns, bounded by this margin.
BODY_MARGIN_BYTES = 8 * 1024 * 1024
#: Where the app keeps its :class:`Toolkit` (``app.extensions``).
EXTENSION = "archon_chat.agents"


def create_agents_app(settings: Settings, *, pacing_s: float | None = None) -> QuartTrio:
    """The agents service as a quart-trio app (mountable by the gateway, or served alone).

    ``pacing_s`` is the pause between two deltas of an offline answer (0: none; default
    ``settings.agent_pacing_s``). The
    knowledge-base index opens on first use and closes when the app's lifespan ends.
    """
    app = QuartTrio("archon_chat.agents", root_path=str(Path(__file__).resolve().parent))
    app.config["RESPONSE_TIMEOUT"] = None  # streams last as long as the agent needs
    app.config["MAX_CONTENT_LENGTH"] = settings.max_prompt_chars * 4 + BODY_MARGIN_BYTES
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]

    llm = None
    if settings.llm_base_url:
        llm = LLMBackend(
            settings.llm_base_url,
            settings.llm_model,
            settings.llm_api_key,
            settings.llm_timeout_s,
            max_connections=settings.llm_max_connections,
            keepalive=settings.llm_keepalive,
        )
    tools = Toolkit(
        kb=KnowledgeBase(settings.kb_dir or None, settings.kb_index_path),
        llm=llm,
        compute=trio.CapacityLimiter(settings.agent_compute_threads),
        pacing_s=settings.agent_pacing_s if pacing_s is None else pacing_s,
    )
    agents: dict[str, Agent] = {a.spec.name: a for a in (RagAgent(), DocumentAgent(), TaskAgent())}
    active = {"streams": 0}

    def refuse(status: int, code: str, detail: str) -> Response:
        response = jsonify({"detail": detail, "code": code})
        response.status_code = status
        return response

    @app.errorhandler(RequestRejected)
    async def rejected(exc: RequestRejected) -> Response:
        return refuse(exc.status, exc.code, exc.detail)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if isinstance(exc, RequestEntityTooLarge):
            return refuse(413, "request_too_large", "Request body is too large")
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        return refuse(status, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("agents service: unhandled error", exc_info=exc)
        return refuse(500, "internal_error", "Internal error in the agents service")

    @app.get("/health")
    async def health() -> Response:
        body: dict[str, Any] = {
            "status": "ok",
            "backend": tools.backend,
            "agents": list(agents),
            "active_streams": active["streams"],
        }
        if llm is not None:
            body["model"] = llm.model
        return jsonify(body)

    @app.get("/agents")
    async def list_agents() -> Response:
        return jsonify(
            {
                "agents": [a.spec.describe(tools.backend) for a in agents.values()],
                "request": describe_request(settings.max_prompt_chars),
            }
        )

    @app.post("/agents/<agent_type>/stream")
    async def stream(agent_type: str) -> Response:
        agent = agents.get(agent_type)
        if agent is None:
            raise RequestRejected(
                404,
                "agent_not_found",
                f"Unknown agent {agent_type!r}; available: {', '.join(agents)}",
            )
        body = decode_body(await request.get_data(False, False, False))
        parsed = parse_request(agent.spec, body, settings.max_prompt_chars)

        def opened() -> None:
            active["streams"] += 1

        def closed() -> None:
            active["streams"] -= 1

        events = EventStream(
            partial(agent.answer, parsed, tools),
            ping_interval_s=settings.agent_ping_interval_s,
            buffer=settings.agent_event_buffer,
            label=f"{agent_type} agent",
            on_open=opened,
            on_close=closed,
        )
        response = Response(events, status=200, content_type="text/event-stream; charset=utf-8")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
        response.timeout = None
        return response

    @app.after_serving
    async def close_resources() -> None:
        await tools.aclose()

    app.extensions[EXTENSION] = tools
    return app


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _port_of(bind: str) -> int:
    return int(bind.rsplit(":", 1)[1])


async def serve_agents(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    *,
    pacing_s: float | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the agents service on ``host:port`` (default: ``settings.agents_host`` and
    ``settings.agents_port``; port 0 picks a free one) until cancelled or until
    ``shutdown_trigger`` returns, then shut down gracefully within
    ``settings.shutdown_grace_s``.

    Use with ``await nursery.start(serve_agents, settings, host, port)``, which returns
    the bound port once connections are accepted. Raises ``OSError`` if it cannot bind.
    """
    config = HypercornConfig()
    port = settings.agents_port if port is None else port
    config.bind = [_bind(host or settings.agents_host, port)]
    config.backlog = settings.backlog
    config.graceful_timeout = settings.shutdown_grace_s
    config.accesslog = None
    # Our own logger, so hypercorn adds no handler of its own (that would print twice).
    config.errorlog = logging.getLogger("archon_chat.agents.http")
    # hypercorn's behaviour, its connections' errors contained and a response that ends
    # its connection (``Connection: close``) closing it at once.
    hypercorn_hooks.install(
        config, write_timeout_s=math.inf, read_timeout_s=math.inf, max_connections_per_address=0
    )
    app = create_agents_app(settings, pacing_s=pacing_s)
    tools: Toolkit = app.extensions[EXTENSION]
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger)
            )
            task_status.started(_port_of(binds[0]))
    finally:
        # Cancelled from outside, hypercorn skips the lifespan shutdown: close the index
        # and the LLM client here too (closing twice is harmless), waiting at most for a
        # query in flight.
        with trio.move_on_after(max(settings.shutdown_grace_s, 1.0)) as cleanup:
            cleanup.shield = True
            await tools.aclose()


def run_agents(settings: Settings) -> None:
    """Run the agents service alone (``archon-chat agents``) on ``settings.agents_host``
    and ``settings.agents_port`` until SIGINT or SIGTERM; blocks."""

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def first_signal() -> None:
                async for signum in signals:
                    log.info("agents service: %s, shutting down", signal.Signals(signum).name)
                    return

            async with trio.open_nursery() as nursery:
                port = await nursery.start(
                    partial(serve_agents, settings, shutdown_trigger=first_signal)
                )
                host = _bind(settings.agents_host, port)
                print(f"archon-chat agents: serving on http://{host}", flush=True)

    trio.run(main)
