"""Real gateway processes for multi-node tests.

``cluster_nodes`` starts ``count`` processes of ``archon-chat serve`` (``python -m
archon_chat.cli serve``), each on a free port, sharing one store (a SQLite file in
``tmp_path`` unless ``database_url`` is given) and, when told, one Redis under the test's
key prefix. Node ``i`` is named ``n<i>``. Each node's stderr goes to ``n<i>.log`` in
``tmp_path`` (its stdout, after the "serving on" line, to ``n<i>.out``); a test that fails
inside the block gets every node's log tail printed.

Nodes can be killed (SIGKILL), paused (SIGSTOP) and resumed (SIGCONT), terminated
(SIGTERM, then SIGKILL past a deadline) and restarted with the same environment (on a new
port). At the end every node still alive is terminated.

The clients (``tests/e2e/support.py``: ``Client``, ``create_session``, ``joined_client``)
and the scripted agents service (``tests/e2e/agents_fake.py``, served by
``running_agents``) are the end-to-end tests' own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import trio

from tests.e2e.agents_fake import AgentsFake
from tests.redis_server import RedisTarget

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
TERMINATE_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40
LOG_POLL_S = 0.05
MAX_STARTUP_OUTPUT = 65_536  # stdout read while looking for the "serving on" line

#: sub-second timings so that failures and shutdowns show quickly (``env`` overrides them)
QUICK_ENV: dict[str, str] = {
    "ARCHON_CHAT_LOG_LEVEL": "INFO",
    "SOCKETIO_PING_INTERVAL": "0.5",
    "SOCKETIO_PING_TIMEOUT": "1.0",
    "ARCHON_CHAT_GRACE_S": "0.3",
    "ARCHON_CHAT_SHUTDOWN_GRACE_S": "1.0",
    "ARCHON_CHAT_AGENT_FIRST_EVENT_TIMEOUT_S": "2.0",
    "ARCHON_CHAT_AGENT_IDLE_TIMEOUT_S": "2.0",
}

# Settings read under other names than ARCHON_CHAT_*: never inherited from the test's own
# environment.
_FOREIGN_SETTINGS = ("AGENT_SERVICE_URL", "SOCKETIO_PING_INTERVAL", "SOCKETIO_PING_TIMEOUT")


class NodeStartError(AssertionError):
    """A node exited or stayed silent before printing the address it serves on."""


class Node:
    """One gateway process of a cluster test; ``url`` and ``port`` change on ``restart()``."""

    def __init__(
        self, node_id: str, env: dict[str, str], workdir: Path, nursery: trio.Nursery
    ) -> None:
        self.node_id = node_id
        self.env = env
        self.log_path = workdir / f"{node_id}.log"
        self.out_path = workdir / f"{node_id}.out"
        self.url = ""
        self.port = 0
        self.starts = 0
        self._workdir = workdir
        self._nursery = nursery
        self._process: trio.Process | None = None
        self._paused = False

    def __repr__(self) -> str:
        state = "alive" if self.alive else "ended"
        return f"<Node {self.node_id} {self.url or '-'} pid={self.pid} {state}>"

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.node_id} never started"
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def start(self) -> None:
        """Start the process and wait (``START_TIMEOUT_S``) for its "serving on" line."""
        assert not self.alive, f"{self.node_id} is running"
        self.starts += 1
        with self._open_log() as log:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "archon_chat.cli", "serve"],
                env=self.env,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._process = process
        self._paused = False
        assert process.stdout is not None
        buffer = b""
        marker = b"archon-chat: serving on "
        with trio.move_on_after(START_TIMEOUT_S) as waited:
            while marker not in buffer or not buffer.split(marker, 1)[1].count(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    await process.wait()
                    raise NodeStartError(
                        f"{self.node_id} exited ({process.returncode}) before serving:\n"
                        + self.log_tail()
                    )
                buffer += chunk
                if len(buffer) > MAX_STARTUP_OUTPUT:
                    await self.kill()
                    raise NodeStartError(f"{self.node_id} printed no address: {buffer[:400]!r}")
        if waited.cancelled_caught:
            await self.kill()
            raise NodeStartError(
                f"{self.node_id} printed no address in {START_TIMEOUT_S} s; stdout {buffer!r}:\n"
                + self.log_tail()
            )
        rest = buffer.split(marker, 1)[1]
        self.url = rest.split(b"\n", 1)[0].decode().strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        self._nursery.start_soon(self._drain_stdout, process, rest.split(b"\n", 1)[1])

    def _open_log(self) -> BinaryIO:
        # Appends, so that every start's stderr stays; the child writes to it directly.
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed by the caller)
        log.write(f"--- {self.node_id} start {self.starts} ---\n".encode())
        log.flush()
        return log

    async def _drain_stdout(self, process: trio.Process, already: bytes) -> None:
        # A full pipe would block the node: keep reading until it closes.
        assert process.stdout is not None
        async with await trio.open_file(self.out_path, "ab") as out:
            await out.write(already)
            while chunk := await process.stdout.receive_some(65536):
                await out.write(chunk)
                await out.flush()

    async def kill(self) -> None:
        """SIGKILL, and reap: the pid is gone when this returns."""
        if self._process is None:
            return
        if self._process.returncode is None:
            self._process.send_signal(signal.SIGKILL)
        await self._process.wait()
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the process stays, but answers nothing and renews nothing."""
        assert self.alive, f"{self.node_id} is not running"
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT: carry on from where ``pause()`` stopped it."""
        assert self.alive, f"{self.node_id} is not running"
        self._signal(signal.SIGCONT)
        self._paused = False

    async def terminate(self, timeout_s: float = TERMINATE_TIMEOUT_S) -> int:
        """SIGTERM (a graceful shutdown), then SIGKILL if it lasts past ``timeout_s``;
        the exit code (negative: the signal that ended it)."""
        assert self._process is not None, f"{self.node_id} never started"
        if self._process.returncode is None:
            self._signal(signal.SIGTERM)
            if self._paused:  # a stopped process would keep the signal pending
                self.resume()
            with trio.move_on_after(timeout_s):
                await self._process.wait()
            await self.kill()
        code = self._process.returncode
        assert code is not None
        return code

    async def restart(self) -> None:
        """End the process if it still runs (``terminate()``), then start it again with
        the same environment (``env``: a test may change it first); ``url`` and ``port``
        are the new process's."""
        if self.alive:
            await self.terminate()
        await self.start()

    def _signal(self, sig: signal.Signals) -> None:
        assert self._process is not None
        self._process.send_signal(sig)

    def log_text(self) -> str:
        """Its stderr so far, over every start."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_for_log(self, text: str, timeout_s: float = 10.0) -> None:
        """Return once ``text`` is in its stderr (any start); AssertionError past
        ``timeout_s``, with the log's tail."""
        with trio.move_on_after(timeout_s):
            while text not in self.log_text():
                await trio.sleep(LOG_POLL_S)
            return
        raise AssertionError(
            f"{self.node_id} did not log {text!r} in {timeout_s} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def node_env(
    tmp_path: Path,
    index: int,
    *,
    redis: RedisTarget | None,
    agents_url: str,
    env: Mapping[str, str],
    database_url: str,
) -> dict[str, str]:
    """The environment of node ``index``: the test's own minus every archon-chat setting,
    then the cluster's, then ``env``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ARCHON_CHAT_") and k not in _FOREIGN_SETTINGS
    }
    # The sources under test, whatever the working directory (the nodes run in tmp_path).
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    base.update(QUICK_ENV)
    base.update(
        {
            "ARCHON_CHAT_HOST": "127.0.0.1",
            "ARCHON_CHAT_PORT": "0",
            "ARCHON_CHAT_NODE_ID": f"n{index}",
            "AGENT_SERVICE_URL": agents_url,
            "ARCHON_CHAT_DB": str(tmp_path / "chat.db"),
            "ARCHON_CHAT_DATABASE_URL": database_url,
            "ARCHON_CHAT_KB_INDEX": str(tmp_path / f"kb-n{index}.db"),
            "ARCHON_CHAT_REDIS_URL": redis.url if redis else "",
        }
    )
    if redis:
        base["ARCHON_CHAT_REDIS_PREFIX"] = redis.prefix
    base.update(env)
    return base


@asynccontextmanager
async def running_agents(delay_s: float = 0.05) -> AsyncIterator[AgentsFake]:
    """The scripted agents service, served until the block ends."""
    agents = AgentsFake(delay_s=delay_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(agents.serve)
        yield agents
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def cluster_nodes(
    tmp_path: Path,
    count: int,
    *,
    redis: RedisTarget | None,
    agents_url: str,
    env: Mapping[str, str] | None = None,
    database_url: str = "",
) -> AsyncIterator[list[Node]]:
    """``count`` running nodes ``n0`` .. ``n<count-1>``; all terminated on the way out.

    Node 0 starts first (it creates the store's tables), the others then together.
    A failure inside the block prints every node's log tail before it propagates.
    """
    assert count >= 1
    async with trio.open_nursery() as nursery:
        nodes = [
            Node(
                f"n{i}",
                node_env(
                    tmp_path,
                    i,
                    redis=redis,
                    agents_url=agents_url,
                    env=env or {},
                    database_url=database_url,
                ),
                tmp_path,
                nursery,
            )
            for i in range(count)
        ]
        try:
            await nodes[0].start()
            async with trio.open_nursery() as starting:
                for node in nodes[1:]:
                    starting.start_soon(node.start)
            yield nodes
        except BaseException:
            print_logs(nodes)
            raise
        finally:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as ending:
                    for node in nodes:
                        if node.alive:
                            ending.start_soon(node.terminate)
            nursery.cancel_scope.cancel()


def print_logs(nodes: list[Node]) -> None:
    """Each node's log tail, on stdout (pytest shows it beside a failure)."""
    for node in nodes:
        print(f"===== {node!r}: last {LOG_TAIL_LINES} lines of {node.log_path} =====")
        print(node.log_tail())
