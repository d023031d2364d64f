"""The controller's machinery: server processes, the worker pool, resource sampling.

Every server (the mock agent, each gateway) is a subprocess that prints
``<name>: serving on http://127.0.0.1:<port>`` once bound; :func:`start_server` waits
for that line (bounded) and keeps draining its output. :class:`WorkerPool` drives the
load-generator processes of :mod:`bench.loadgen` in lockstep. :class:`Usage` takes
CPU and memory readings of any process with psutil.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import trio

SERVING = re.compile(r"serving on (http://[\w.\-]+:\d+)")
#: a server may say, before it serves, which implementations it runs on (the seed baseline)
IMPLEMENTATION = re.compile(r": implementation (\{.*\})\s*$")
ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """The harness could not do what a scenario needs (a server did not start...)."""


@dataclass
class Server:
    label: str
    url: str
    process: trio.Process
    ps: psutil.Process
    output: list[str] = field(default_factory=list)
    #: what the server said it runs on (event loop, HTTP and websocket protocol classes)
    implementation: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants (worker processes of a gateway that has them)."""
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return [self.ps]

    def rss(self) -> int:
        total = 0
        for ps in self.tree():
            try:
                total += int(ps.memory_info().rss)
            except psutil.Error:
                pass
        return total

    def cpu(self) -> float:
        total = 0.0
        for ps in self.tree():
            try:
                times = ps.cpu_times()
            except psutil.Error:
                continue
            total += float(times.user + times.system)
        return total

    def written(self) -> int:
        """Bytes the process tree caused to be written to storage (the store's writes;
        sockets and pipes do not count)."""
        total = 0
        for ps in self.tree():
            try:
                total += int(ps.io_counters().write_bytes)
            except (psutil.Error, AttributeError):
                pass
        return total


def python() -> str:
    return sys.executable


def ours_command(db_path: str) -> list[str]:
    """``archon-chat serve``, imported from this work tree, so the benchmark always measures
    the code beside it, whatever the installed entry script points at."""
    entry = "import sys; from archon_chat.cli import main; sys.argv[0] = 'archon-chat'; main()"
    return [python(), "-c", entry, "serve", "--host", "127.0.0.1", "--port", "0", "--db", db_path]


def gateway_command(kind: str, agent_url: str, db_path: str) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment of gateway ``kind`` (ours, seed, seed-shared)."""
    env = {"AGENT_SERVICE_URL": agent_url, "ARCHON_CHAT_LOG_LEVEL": "WARNING"}
    if kind == "ours":
        # Every simulated client comes from 127.0.0.1: lift the per-address limits.
        env.update(
            {
                "ARCHON_CHAT_SESSIONS_PER_MINUTE": "0",
                "ARCHON_CHAT_HANDSHAKES_PER_MINUTE": "0",
                "ARCHON_CHAT_MAX_UNCONNECTED_PER_ADDRESS": "0",
                "ARCHON_CHAT_MAX_UNCONNECTED": "1000000",
                "ARCHON_CHAT_MAX_CONNECTIONS_PER_ADDRESS": "0",
            }
        )
        return ours_command(db_path), env
    argv = [python(), "-m", "bench.seed_baseline", "--port", "0", "--agent-url", agent_url]
    # As uvicorn[standard] runs by default; named, so that a missing one fails loudly.
    argv += ["--loop", "uvloop", "--http", "httptools"]
    if kind == "seed-shared":
        argv.append("--shared-client")
    return argv, env


@asynccontextmanager
async def start_server(
    label: str,
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    *,
    timeout: float = 30.0,
) -> AsyncIterator[Server]:
    """Run ``argv`` until the block ends; yields once it printed its serving line. Its
    output goes to ``<tmp>/archon-bench-<label>.log``.

    Raises :class:`BenchError` if it exits or stays silent for ``timeout`` seconds.
    On exit: SIGTERM, a grace of 5 s, then SIGKILL."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=str(ROOT),
    )
    assert process.stdout is not None
    stdout = process.stdout
    output: list[str] = []
    found: list[str] = []
    ready = trio.Event()
    log_path = Path(tempfile.gettempdir()) / f"archon-bench-{label}.log"

    async def drain() -> None:
        buf = b""
        with log_path.open("w") as log:
            async for data in stdout:
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    log.write(text + "\n")
                    log.flush()
                    output.append(text)
                    del output[:-200]
                    match = SERVING.search(text)
                    if match and not found:
                        found.append(match.group(1))
                        ready.set()
        ready.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.move_on_after(timeout):
                await ready.wait()
            if not found:
                tail = "\n".join(output[-20:])
                raise BenchError(f"{label} did not start ({' '.join(argv)}):\n{tail}")
            server = Server(
                label,
                found[0],
                process,
                psutil.Process(process.pid),
                output,
                implementation_of(output),
            )
            try:
                yield server
            finally:
                with trio.CancelScope(shield=True):
                    await stop_process(process)
                nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()


def implementation_of(lines: Sequence[str]) -> dict[str, str]:
    """The implementation a server announced in its output (empty if it said nothing)."""
    for line in lines:
        match = IMPLEMENTATION.search(line)
        if match:
            try:
                found = json.loads(match.group(1))
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
    return {}


async def stop_process(process: trio.Process, grace: float = 5.0) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    with trio.move_on_after(grace):
        await process.wait()
        return
    process.kill()
    with trio.move_on_after(grace):
        await process.wait()


class Worker:
    def __init__(self, index: int, process: trio.Process) -> None:
        self.index = index
        self.process = process
        self.ps = psutil.Process(process.pid)
        self.results: trio.MemorySendChannel[dict[str, Any]]
        self.results, self.receive = trio.open_memory_channel[dict[str, Any]](16)
        self.progress: dict[str, Any] = {}

    def cpu(self) -> float:
        try:
            times = self.ps.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def read(self) -> None:
        assert self.process.stdout is not None
        buf = b""
        async for data in self.process.stdout:
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                message = json.loads(line)
                if message.get("op") == "progress":
                    self.progress = message
                else:
                    await self.results.send(message)
        await self.results.aclose()


class WorkerPool:
    """Load-generator processes, driven in lockstep."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.on_progress: Callable[[int, int], None] | None = None

    def cpu(self) -> list[float]:
        return [w.cpu() for w in self.workers]

    async def step(
        self, commands: Sequence[dict[str, Any]], timeout: float
    ) -> list[dict[str, Any]]:
        """Send one command to each worker; wait for every answer.

        Raises :class:`BenchError` if a worker dies or misses ``timeout``."""
        for worker, command in zip(self.workers, commands, strict=True):
            worker.progress = {}
            await worker.send(command)
        results: list[dict[str, Any]] = [{} for _ in self.workers]

        async def collect(i: int, worker: Worker) -> None:
            try:
                results[i] = await worker.receive.receive()
            except trio.EndOfChannel:
                raise BenchError(f"load generator {i} exited") from None

        async def report() -> None:
            while True:
                await trio.sleep(0.25)
                if self.on_progress is not None:
                    chunks = sum(int(w.progress.get("chunks", 0)) for w in self.workers)
                    done = sum(int(w.progress.get("done", 0)) for w in self.workers)
                    self.on_progress(chunks, done)

        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report)
                async with trio.open_nursery() as inner:
                    for i, worker in enumerate(self.workers):
                        inner.start_soon(collect, i, worker)
                nursery.cancel_scope.cancel()
        return results


@asynccontextmanager
async def open_worker_pool(count: int) -> AsyncIterator[WorkerPool]:
    processes: list[trio.Process] = []
    try:
        async with trio.open_nursery() as nursery:
            workers = []
            for i in range(count):
                process = await trio.lowlevel.open_process(
                    [python(), "-m", "bench.loadgen", str(i)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=str(ROOT),
                )
                processes.append(process)
                worker = Worker(i, process)
                workers.append(worker)
                nursery.start_soon(worker.read)
            try:
                yield WorkerPool(workers)
            finally:
                with trio.CancelScope(shield=True):
                    for worker in workers:
                        try:
                            await worker.send({"op": "exit"})
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                    for process in processes:
                        await stop_process(process, grace=3)
                nursery.cancel_scope.cancel()
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()


class Sampler:
    """Peak RSS of one process, sampled every ``interval`` seconds while running."""

    def __init__(self, server: Server, interval: float = 0.1) -> None:
        self.server = server
        self.interval = interval
        self.peak = 0
        self.samples = 0

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, self.server.rss())
            self.samples += 1
            await trio.sleep(self.interval)


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def temp_db() -> str:
    handle, path = tempfile.mkstemp(prefix="archon-bench-", suffix=".db")
    os.close(handle)
    os.unlink(path)
    return path


def remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def now() -> float:
    return time.monotonic()
