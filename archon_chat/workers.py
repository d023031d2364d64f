"""``archon-chat serve --workers N``: N gateway processes on one port, behind one parent.

Theory of operation
    The parent binds the public port and accepts every connection. It peeks (``MSG_PEEK``:
    the bytes stay in the kernel for the worker) at the HTTP request line, at most
    ``PEEK_BYTES`` within ``http_read_timeout_s``. A ``/socket.io/`` request naming a
    ``sid`` goes to the worker that made that sid: each worker's Engine.IO sids start with
    its prefix ``w<i>.`` (``ARCHON_CHAT_SID_PREFIX``). Anything else goes to the next live
    worker, round-robin. The connection's file descriptor travels to the worker over a Unix
    ``SOCK_SEQPACKET`` pair (``SCM_RIGHTS``); the worker acknowledges it as it takes it and
    the parent then closes its copy: it never reads nor proxies a byte, its cost is per
    connection only. A worker that dies with connections sent and not yet taken (their
    bytes still unread) does not lose them: they go to another worker. A peer that closes
    or stays silent before its request line is complete is closed; garbage and oversized
    lines go to a worker, whose HTTP server answers them.

    Each worker is an ordinary ``serve`` (``archon_chat.server``) with its own node id
    (``<node id or host name>-w<i>``) whose HTTP server takes its connections from that Unix
    socket instead of a bound one. Requests on one keep-alive connection stay with the
    worker it was handed to: a polling request on it naming another worker's sid gets that
    worker's "unknown sid" answer and the client opens a new session. Clients keep one
    connection per sid in practice (measured by the tests: 100 connections each of
    python-socketio and the npm client, polling, never hit it).

Supervision
    A worker that dies is started again (same index, same sid prefix) after a backoff
    (``BACKOFF_S`` doubling up to ``MAX_BACKOFF_S``); meanwhile its connections go to the
    others and its sids are unknown everywhere, so its clients reconnect. More than
    ``RESTART_INTENSITY`` restarts within ``RESTART_PERIOD_S``, or ``START_ATTEMPTS`` deaths
    in a row before being ready, stop everything and the parent exits 1. SIGTERM or SIGINT
    to the parent: stop accepting, SIGTERM to every worker, wait ``shutdown_grace_s`` plus
    ``SHUTDOWN_MARGIN_S``, SIGKILL what is left, exit 0. Children run in their own session,
    so a terminal's Ctrl-C reaches the parent alone; a worker whose parent is gone (its
    Unix socket at end of file) shuts down by itself.

Agents
    Unless ``AGENT_SERVICE_URL`` is set, the parent starts one built-in agents service (what
    ``archon-chat agents`` runs, on a free port of 127.0.0.1), supervised like a worker and
    started again on the same port, and passes its URL to every worker. It is a child of
    the same kind as a worker (its settings and readiness on a Unix socket), so it too stops
    when the parent is gone, even killed.

Each worker's ``/healthz`` and ``/metrics`` describe that worker only: ``?worker=<i>`` sends
the request to worker ``i``, whose answer closes the connection, so that the next scrape
(even one a client would send on the same keep-alive connection) is routed afresh.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import unquote_to_bytes

import trio

from archon_chat.config import Settings, worker_sid_prefix
from archon_chat.logs import setup_logging

__all__ = [
    "PEEK_BYTES",
    "HandedConnections",
    "WorkersFailedError",
    "peek_request_line",
    "run_workers",
    "serve_workers",
    "sid_prefix",
    "worker_of",
]

log = logging.getLogger("archon_chat.workers")

# Bytes of a connection peeked at for its request line; a polling request line is ~100.
PEEK_BYTES = 2048
# How long a child may take to be ready (import, store, bind) before it counts as dead.
START_TIMEOUT_S = 60.0
# Restart policy of a child (OTP's intensity and period), and the pause before a restart.
RESTART_INTENSITY = 5
RESTART_PERIOD_S = 60.0
START_ATTEMPTS = 3
BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
# Waited past shutdown_grace_s for the workers to exit before they are killed.
SHUTDOWN_MARGIN_S = 2.0
# Largest message on a worker's Unix socket: the pickled settings, once.
MAX_SETTINGS_BYTES = 1 << 20
_READY = b"ready"
# What a child is told to be.
_WORKER, _AGENTS = "worker", "agents"
_FD_SIZE = array.array("i").itemsize


class WorkersFailedError(Exception):
    """A child kept dying (at start, or more often than the restart intensity allows)."""


#: the prefix of every Engine.IO sid worker ``index`` makes
sid_prefix = worker_sid_prefix


def worker_of(head: bytes, workers: int) -> int | None:
    """The worker an HTTP request's head names, from its request line: the one holding the
    sid of a ``/socket.io/`` request (``GET /socket.io/?EIO=4&transport=polling&sid=w1.xyz
    HTTP/1.1``), or the one a ``/metrics`` or ``/healthz`` request asks for
    (``GET /metrics?worker=1``); ``None`` when the request names no worker of ``workers``,
    or is no HTTP request at all. Never raises."""
    line = head.split(b"\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    path, _, query = parts[1].partition(b"?")
    if path in (b"/metrics", b"/healthz"):
        for pair in query.split(b"&"):
            key, _, value = pair.partition(b"=")
            if key == b"worker":
                digits = value
                if not digits.isdigit() or len(digits) > 6:
                    return None
                return int(digits) if int(digits) < workers else None
        return None
    if not path.startswith(b"/socket.io"):
        return None
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key != b"sid":
            continue
        sid = unquote_to_bytes(value)
        if not sid.startswith(b"w"):
            return None
        digits, dot, _ = sid[1:].partition(b".")
        if not dot or not digits.isdigit() or len(digits) > 6:
            return None
        index = int(digits)
        return index if index < workers else None
    return None


def _head_complete(data: bytes, limit: int) -> bool:
    """Whether ``data`` is enough to route by: a whole line, ``limit`` bytes, or a byte no
    request line holds (binary: routed at once, its worker answers it)."""
    if b"\n" in data or len(data) >= limit:
        return True
    return any(byte >= 0x7F or (byte < 0x20 and byte not in (9, 13)) for byte in data)


async def peek_request_line(
    sock: trio.socket.SocketType, limit: int, timeout_s: float
) -> bytes | None:
    """The first bytes of ``sock`` up to its first line feed (or ``limit`` bytes, or up to a
    byte no request line holds), left unread in the socket; ``None`` if the peer closes,
    fails or has not sent that much within ``timeout_s``. A checkpoint; never raises
    ``OSError``."""
    delay = 0.001
    with trio.move_on_after(timeout_s):
        try:
            while True:
                data = await sock.recv(limit, socket.MSG_PEEK)
                if not data:
                    return None
                if _head_complete(data, limit):
                    return data
                # Peeking returns at once while any byte is pending: poll for the rest.
                await trio.sleep(delay)
                delay = min(delay * 2, 0.05)
        except OSError:
            return None
    return None


@dataclass(eq=False)
class _Handoff:
    """A connection sent to a worker: the parent keeps its copy until the worker says it
    has it (``taken``) or is gone (not taken: its bytes are unread, it goes elsewhere)."""

    done: trio.Event = field(default_factory=trio.Event)
    taken: bool = False


@dataclass(eq=False)
class _Child:
    """One supervised process: a worker (``index`` >= 0) or the agents service (-1)."""

    index: int
    name: str
    process: trio.Process | None = None
    unix: trio.socket.SocketType | None = None
    ready: bool = False
    up: trio.Event = field(default_factory=trio.Event)  # set on its first successful start
    # Connections sent to it and not acknowledged yet, oldest first.
    pending: deque[_Handoff] = field(default_factory=deque)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    restarts: deque[float] = field(default_factory=deque)


class _Pool:
    def __init__(self, settings: Settings, port: int, stop: trio.Event) -> None:
        self.settings = settings
        self.port = port
        self.stop = stop
        self.stopping = False
        self.failure: str | None = None
        self.agents_url = settings.agent_service_url
        self.agents: _Child | None = None
        self.workers = [_Child(i, f"worker {i}") for i in range(settings.workers)]
        self.ready_once = trio.Event()
        self._next = 0

    # -- supervision -------------------------------------------------------------------

    async def supervise(
        self,
        child: _Child,
        start: Callable[[_Child], Awaitable[None]],
    ) -> None:
        """Keep ``child`` running until the pool stops (``child.up`` once it first is)."""
        failed_starts = 0
        while not self.stopping:
            try:
                with trio.fail_after(START_TIMEOUT_S):
                    await start(child)
                failed_starts = 0
            except (OSError, EOFError, trio.TooSlowError) as exc:
                log.warning("%s did not start: %r", child.name, exc)
                await self._reap(child)
                failed_starts += 1
                if failed_starts >= START_ATTEMPTS:
                    self._fail(f"{child.name} died {failed_starts} times at start")
                    return
            else:
                child.up.set()
                assert child.process is not None and child.unix is not None
                async with trio.open_nursery() as running:
                    # The acknowledgements end with the socket, after the process.
                    running.start_soon(self.collect_acks, child, child.unix)
                    await child.process.wait()
                child.ready = False
                if self.stopping:
                    return
                log.warning("%s exited with %s", child.name, child.process.returncode)
                await self._reap(child)
            now = time.monotonic()
            child.restarts.append(now)
            while child.restarts and child.restarts[0] < now - RESTART_PERIOD_S:
                child.restarts.popleft()
            if len(child.restarts) > RESTART_INTENSITY:
                self._fail(f"{child.name} restarted more than {RESTART_INTENSITY} times")
                return
            delay = min(BACKOFF_S * 2 ** (len(child.restarts) - 1), MAX_BACKOFF_S)
            await trio.sleep(delay)

    def _fail(self, reason: str) -> None:
        log.error("%s: stopping", reason)
        if self.failure is None:
            self.failure = reason
        self.stop.set()

    async def _reap(self, child: _Child) -> None:
        child.ready = False
        if child.unix is not None:
            child.unix.close()
            child.unix = None
        if child.process is not None and child.process.returncode is None:
            child.process.kill()
            with trio.CancelScope(shield=True):
                await child.process.wait()

    async def _spawn(self, child: _Child, role: str, settings: Settings) -> bytes:
        """Start ``child`` as ``role`` with ``settings``; its ready message."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            child.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "archon_chat.workers", str(child_end.fileno()), role],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            child_end.close()
        child.unix = trio.socket.from_stdlib_socket(parent_end)
        await child.unix.send(pickle.dumps(settings))
        reply = await child.unix.recv(64)
        if not reply.startswith(_READY):
            raise EOFError(f"{child.name} exited before it was ready")
        return reply

    async def start_worker(self, child: _Child) -> None:
        await self._spawn(child, _WORKER, self.worker_settings(child.index))
        child.ready = True
        assert child.process is not None
        log.info("%s ready (pid %s)", child.name, child.process.pid)

    def worker_settings(self, index: int) -> Settings:
        base = self.settings.node_id or socket.gethostname()
        return self.settings.replace(
            workers=1,
            port=self.port,
            node_id=f"{base}-w{index}",
            sid_prefix=sid_prefix(index),
            agent_service_url=self.agents_url,
        )

    async def start_agents(self, child: _Child) -> None:
        # Started again on the port it had: the workers know its URL.
        port = int(self.agents_url.rsplit(":", 1)[1]) if self.agents_url else 0
        settings = self.settings.replace(agents_host="127.0.0.1", agents_port=port)
        reply = await self._spawn(child, _AGENTS, settings)
        self.agents_url = f"http://127.0.0.1:{int(reply[len(_READY) :])}"
        child.ready = True
        assert child.process is not None
        log.info("agents service ready on %s (pid %s)", self.agents_url, child.process.pid)

    # -- routing -----------------------------------------------------------------------

    async def route(self, stream: trio.SocketStream, slots: trio.Semaphore) -> None:
        """Hand one accepted connection to its worker, then close the parent's copy."""
        try:
            head = await peek_request_line(
                stream.socket, PEEK_BYTES, self.settings.http_read_timeout_s
            )
            if head is not None:
                await self.hand(stream.socket, worker_of(head, len(self.workers)))
        finally:
            stream.socket.close()
            slots.release()

    async def collect_acks(self, child: _Child, unix: trio.socket.SocketType) -> None:
        """Settle ``child``'s handoffs as it acknowledges them (one message each, in order);
        once its socket ends, the rest as not taken."""
        try:
            while True:
                try:
                    ack = await unix.recv(64)
                except (OSError, trio.ClosedResourceError):  # closed by the shutdown
                    ack = b""
                if not ack:
                    return
                if child.pending:
                    handoff = child.pending.popleft()
                    handoff.taken = True
                    handoff.done.set()
        finally:
            child.ready = False
            while child.pending:
                child.pending.popleft().done.set()

    async def hand(self, sock: trio.socket.SocketType, index: int | None) -> bool:
        """Pass ``sock`` to worker ``index`` if it is ready, else to the next ready one, and
        wait until one has it (at most ``http_read_timeout_s``: a worker that does not
        answer keeps what it was sent); whether a worker took it."""
        count = len(self.workers)
        order: list[int] = [] if index is None else [index]
        if index is None or not self.workers[index].ready:
            start = self._next
            self._next = (self._next + 1) % count
        else:
            start = index  # the rest only if the sid's worker fails now
        order += [(start + k) % count for k in range(count) if (start + k) % count != index]
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
        for i in order:
            child = self.workers[i]
            handoff = _Handoff()
            async with child.send_lock:
                if not child.ready or child.unix is None:
                    continue
                child.pending.append(handoff)
                try:
                    await child.unix.sendmsg([b"c"], fds)
                except (OSError, trio.ClosedResourceError):
                    child.ready = False  # dying: its supervisor restarts it
                    if handoff in child.pending:
                        child.pending.remove(handoff)
                    continue
            with trio.move_on_after(self.settings.http_read_timeout_s):
                await handoff.done.wait()
            if handoff.taken or not handoff.done.is_set():
                return True
        return False

    async def accept(self, listener: trio.SocketListener) -> None:
        # Connections waiting for their request line: past this many, the kernel's backlog
        # holds the next ones.
        slots = trio.Semaphore(self.settings.backlog)
        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                try:
                    stream = await listener.accept()
                except BaseException:
                    slots.release()
                    raise
                nursery.start_soon(self.route, stream, slots)

    # -- shutdown ----------------------------------------------------------------------

    async def terminate_children(self) -> None:
        """SIGTERM every child, wait for the grace, then SIGKILL the rest. Workers go first:
        they may still talk to the agents service while they stop."""
        self.stopping = True
        for group in (self.workers, [self.agents] if self.agents else []):
            processes = [c.process for c in group if c.process and c.process.returncode is None]
            for process in processes:
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(self.settings.shutdown_grace_s + SHUTDOWN_MARGIN_S):
                for process in processes:
                    await process.wait()
            for process in processes:
                if process.returncode is None:
                    log.warning("pid %s did not stop in time: killed", process.pid)
                    process.kill()
                    await process.wait()
            for child in group:
                child.ready = False
                if child.unix is not None:
                    child.unix.close()
                    child.unix = None


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_workers(
    settings: Settings,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``settings.workers`` gateway workers behind one port until SIGTERM/SIGINT;
    reports the URL once every worker is ready. Raises :class:`WorkersFailedError` when a
    child keeps dying, after stopping the others; ``OSError`` if the port cannot be bound."""
    sock = _bind(settings.host, settings.port, settings.backlog)
    port = sock.getsockname()[1]
    host = f"[{settings.host.strip('[]')}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{port}"
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    stop = trio.Event()
    pool = _Pool(settings, port, stop)
    try:
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(_watch_signals, stop)
            try:
                await _start_all(pool, nursery)
                if pool.failure is None:
                    async with trio.open_nursery() as accepting:
                        accepting.start_soon(pool.accept, listener)
                        print(f"archon-chat: serving on {url}", flush=True)
                        task_status.started(url)
                        await stop.wait()
                        accepting.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
                    await pool.terminate_children()
                nursery.cancel_scope.cancel()
    finally:
        sock.close()
    if pool.failure is not None:
        raise WorkersFailedError(pool.failure)


async def _start_all(pool: _Pool, nursery: trio.Nursery) -> None:
    """Start the agents service (when built in), then every worker; return when all are
    ready or one gave up starting (``pool.failure``)."""
    async with trio.open_nursery() as starting:

        async def watch_failure() -> None:
            await pool.stop.wait()
            starting.cancel_scope.cancel()

        starting.start_soon(watch_failure)
        if pool.settings.builtin_agents:
            pool.agents = _Child(-1, "agents service")
            nursery.start_soon(pool.supervise, pool.agents, pool.start_agents)
            await pool.agents.up.wait()
        for child in pool.workers:
            nursery.start_soon(pool.supervise, child, pool.start_worker)
        for child in pool.workers:
            await child.up.wait()
        starting.cancel_scope.cancel()


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


def run_workers(settings: Settings) -> int:
    """``archon-chat serve --workers N``: blocks until stopped; the exit status."""
    try:
        trio.run(partial(serve_workers, settings))
    except WorkersFailedError as exc:
        print(f"archon-chat: {exc}", file=sys.stderr)
        return 1
    return 0


# -- the worker side ----------------------------------------------------------------------


class HandedConnections(trio.abc.Listener[trio.SocketStream]):
    """Connections whose file descriptors arrive on a Unix socket from the parent.

    ``parent_gone`` is set when that socket reaches its end (the parent exited); accept()
    then waits for ever, and whoever serves should stop."""

    def __init__(self, unix: trio.socket.SocketType) -> None:
        self._unix = unix
        self.parent_gone = trio.Event()

    async def accept(self) -> trio.SocketStream:
        while True:
            try:
                data, ancillary, _, _ = await self._unix.recvmsg(1, socket.CMSG_SPACE(4 * _FD_SIZE))
            except (OSError, trio.ClosedResourceError):
                data, ancillary = b"", []
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
            if not data and not fds:
                self.parent_gone.set()
                await trio.sleep_forever()
            for extra in fds[1:]:
                os.close(extra)
            if fds:
                sock = socket.socket(fileno=fds[0])
                with contextlib.suppress(OSError):  # the parent gone: seen on the next one
                    await self._unix.send(b"a")
                return trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    async def aclose(self) -> None:
        self._unix.close()
        await trio.lowlevel.checkpoint()


async def _serve_worker(settings: Settings, unix: trio.socket.SocketType) -> None:
    from archon_chat.server import Running, serve

    connections = HandedConnections(unix)
    async with trio.open_nursery() as nursery:

        async def gateway(task_status: trio.TaskStatus[Running]) -> None:
            await serve(settings, connections=connections, task_status=task_status)
            nursery.cancel_scope.cancel()

        running: Running = await nursery.start(gateway)
        await unix.send(_READY)
        await connections.parent_gone.wait()
        log.warning("the parent process is gone: shutting down")
        running.stop()


async def _serve_agents(settings: Settings, unix: trio.socket.SocketType) -> None:
    """The built-in agents service, until SIGTERM, SIGINT or the parent's end."""
    from archon_chat.agents import serve_agents

    async def stopped() -> None:
        async with trio.open_nursery() as nursery:

            async def parent_gone() -> None:
                with contextlib.suppress(OSError):
                    while await unix.recv(64):
                        pass
                log.warning("the parent process is gone: shutting down")
                nursery.cancel_scope.cancel()

            async def signalled() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(parent_gone)
            nursery.start_soon(signalled)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_agents, settings, shutdown_trigger=stopped))
        await unix.send(_READY + str(port).encode())


def _child_main(fd: int, role: str) -> int:
    """A child of the parent: its settings come first on the Unix socket ``fd``."""
    unix = socket.socket(fileno=fd)
    settings = pickle.loads(unix.recv(MAX_SETTINGS_BYTES))
    if not isinstance(settings, Settings) or role not in (_WORKER, _AGENTS):
        return 2
    tag = settings.node_id if role == _WORKER else "agents"
    setup_logging(settings, f"[{tag}] ")
    run = _serve_worker if role == _WORKER else _serve_agents
    trio.run(run, settings, trio.socket.from_stdlib_socket(unix))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(int(sys.argv[1]), sys.argv[2]))
