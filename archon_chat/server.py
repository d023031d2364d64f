"""``archon-chat serve``: the root nursery owning every long-lived part of the gateway.

We own the root nursery (design.md section 2): hypercorn runs inside it beside the store,
the built-in agents service, the session hub, the Socket.IO server, the fan-out, the
grace timer and the sweeper. A crash of any of them fails the process loudly; nothing
important lives in quart's lifespan nursery. Hypercorn's process-wide hooks (write
deadline, permessage-deflate declined) are installed here, at start-up, and nowhere else.

Shutdown (SIGTERM/SIGINT, or :meth:`Running.stop`): stop accepting connections, cancel
turns in flight (stored ``cancelled``, their end events emitted), give sockets a moment to
flush, close them, close the store; all within ``shutdown_grace_s``, then cancel.
"""

from __future__ import annotations

import gc
import logging
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from actors.chat.agents_client import open_agents_client
from actors.chat.hub import open_session_hub
from actors.chat.messages import SessionEvent
from actors.chat.settings import AgentsClientSettings, HubSettings
from archon_chat.agents import serve_agents
from archon_chat.cluster.serve import attach_recovery, new_node, open_redis
from archon_chat.config import Settings, derive, redact_url
from archon_chat.gateway import sockets
from archon_chat.gateway.core import Gateway
from archon_chat.gateway.emitter import LocalEmitter
from archon_chat.gateway.metrics import Metrics
from archon_chat.sio import Outgoing, ServerOptions, SocketIOServer
from archon_chat.sio.asgi import EngineIOApp
from archon_chat.store_api import GatewayStore, open_configured_store
from archon_chat.transports import hypercorn_hooks
from archon_chat.transports.rest import configure, create_rest_blueprint
from archon_chat.transports.static import create_static_blueprint

log = logging.getLogger("archon_chat")


@dataclass
class Running:
    """Handed to ``task_status`` once the gateway accepts connections."""

    url: str
    port: int
    agents_url: str
    gateway: Gateway
    sio: SocketIOServer
    _stop: trio.Event

    def stop(self) -> None:
        self._stop.set()


def compose(sio_app: Any, web_app: Any) -> Any:
    """Route ``/socket.io/`` to the raw ASGI Engine.IO app, everything else to quart."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("path", "").startswith(
            "/socket.io"
        ):
            await sio_app(scope, receive, send)
        else:
            await web_app(scope, receive, send)

    return app


async def _agents_health(client: httpx.AsyncClient, url: str, timeout_s: float) -> bool:
    try:
        response = await client.get(f"{url}/health", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def serve(
    settings: Settings,
    *,
    handle_signals: bool = True,
    connections: trio.abc.Listener[trio.SocketStream] | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until stopped (signal or :meth:`Running.stop`); on the connections
    ``connections`` accepts if given (a worker of ``serve --workers``), else on a socket
    bound to ``settings.host`` and ``settings.port``."""
    # Thousands of sessions keep many long-lived objects: the default young-generation
    # threshold makes the collector rescan them so often that it doubles the CPU per chunk.
    gc.set_threshold(10_000, 50, 50)
    if not settings.websocket_compression:
        hypercorn_hooks.refuse_permessage_deflate()
    stop = trio.Event()
    async with trio.open_nursery() as root:
        if handle_signals:
            root.start_soon(_watch_signals, stop)
        agents_url = settings.agent_service_url
        if not agents_url:
            port = await root.start(serve_agents, settings, "127.0.0.1", 0)
            agents_url = f"http://127.0.0.1:{port}"
        async with open_configured_store(settings) as store:
            await _serve_gateway(settings, store, agents_url, stop, connections, task_status)
        root.cancel_scope.cancel()


async def _serve_gateway(
    settings: Settings,
    store: GatewayStore,
    agents_url: str,
    stop: trio.Event,
    connections: trio.abc.Listener[trio.SocketStream] | None,
    task_status: trio.TaskStatus[Running],
) -> None:
    metrics = Metrics()
    events_send, events_receive = trio.open_memory_channel[SessionEvent](
        settings.events_channel_size
    )
    async with (
        open_agents_client(agents_url, derive(AgentsClientSettings, settings)) as agents,
        httpx.AsyncClient() as probe,
        # The fan-out outlives the hub: actors stopping at shutdown still emit their turns'
        # end events, and must never wait on a channel nobody drains.
        trio.open_nursery() as drain,
    ):
        sio = SocketIOServer(derive(ServerOptions, settings), settings.origin_policy())
        async with (
            open_session_hub(store, agents, events_send, derive(HubSettings, settings)) as hub,
            open_redis(settings) as redis,  # None: one process, no cluster
            trio.open_nursery() as nursery,
        ):
            node = None
            if redis is not None:
                node = new_node(settings, redis, hub, metrics)
                gateway = Gateway(
                    settings, store, node.routing_hub, LocalEmitter(sio), metrics, cluster=node
                )
                node.attach(gateway)
                attach_recovery(node, sio, gateway, settings)
                await nursery.start(node.run)
            else:
                gateway = Gateway(settings, store, hub, LocalEmitter(sio), metrics)
            sio.set_outbox_merger(gateway.merge)

            def sent(item: Outgoing) -> None:
                gateway.observe_sent(item.data)

            sio.on_sent = sent
            sockets.install(sio, gateway)
            metrics.on_scrape(gateway.refresh_gauges)
            metrics.watch_sockets(sio.stats)
            metrics.stored_sessions.set((await store.stats()).get("sessions", 0))

            async def health() -> tuple[bool, dict[str, Any]]:
                agents_ok = await _agents_health(probe, agents_url, settings.health_timeout_s)
                counts = await store.stats()
                metrics.stored_sessions.set(counts.get("sessions", 0))
                return agents_ok, {
                    "status": "ok" if agents_ok else "degraded",
                    "agents": {"url": redact_url(agents_url), "reachable": agents_ok},
                    "sessions": counts.get("sessions", 0),
                    "live_sessions": hub.live_sessions(),
                    "connected_sockets": sio.stats().get("connected", 0),
                }

            # The hooks installed above let the app write a socket's pending frames at once.
            engine = EngineIOApp(sio, send_many_bytes=settings.ws_write_bytes)
            web = QuartTrio("archon_chat", root_path=str(Path(__file__).parent), static_folder=None)
            configure(web, settings.max_http_buffer_size)
            web.register_blueprint(create_rest_blueprint(gateway, health))
            web.register_blueprint(create_static_blueprint())

            await nursery.start(sio.serve)
            drain.start_soon(gateway.fan_out, events_receive)
            await nursery.start(gateway.sweep)
            await nursery.start(gateway.expire_tokens, sio.disconnect)

            config = HypercornConfig()
            config.bind = [f"{_host(settings.host)}:{settings.port}"]
            config.backlog = settings.backlog
            config.graceful_timeout = max(settings.shutdown_grace_s, 0.1)
            config.accesslog = None
            config.errorlog = logging.getLogger("archon_chat.http")
            config.websocket_max_message_size = settings.max_http_buffer_size
            config.keep_alive_timeout = settings.http_keep_alive_s
            hypercorn_hooks.install(
                config,
                write_timeout_s=settings.write_timeout_s,
                read_timeout_s=settings.http_read_timeout_s,
                max_connections_per_address=(
                    0 if settings.trusted_proxy else settings.max_connections_per_address
                ),
                on_error=lambda kind: metrics.connection_errors.labels(kind).inc(),
            )
            http_closed = trio.Event()

            async def shutdown_trigger() -> None:
                await http_closed.wait()

            if connections is None:
                binds: list[str] = await nursery.start(
                    lambda task_status: hypercorn_serve(
                        compose(engine, web),
                        config,
                        shutdown_trigger=shutdown_trigger,
                        task_status=task_status,
                    )
                )
                url = binds[0]
                port = int(url.rsplit(":", 1)[1])
                print(f"archon-chat: serving on {url}", flush=True)
            else:
                # Whoever hands the connections in bound the port and announces it.
                await nursery.start(
                    partial(
                        hypercorn_hooks.serve_connections,
                        compose(engine, web),
                        config,
                        connections,
                        shutdown_trigger=shutdown_trigger,
                    )
                )
                port = settings.port
                url = f"http://{_host(settings.host)}:{port}"
            task_status.started(Running(url, port, agents_url, gateway, sio, stop))

            await stop.wait()
            log.info("shutting down")
            with trio.move_on_after(settings.shutdown_grace_s) as grace:
                grace.shield = True
                await hub.shutdown()
                # Let the sockets' writers send the turns' end events.
                await trio.sleep(min(0.2, settings.shutdown_grace_s / 4))
                if node is not None:
                    await node.leave()
            http_closed.set()
            nursery.cancel_scope.cancel()
        # The hub has stopped every actor: no more events.
        events_send.close()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return
