"""Gateways of several processes and the Redis they share, for the scale scenario (7).

:func:`open_redis` yields the Redis a run uses: a private ``redis-server`` on a free port
when the binary is installed (``INFO``'s command counts and CPU are server-wide, so a
server of our own counts only the gateways' work), else the machine's at 127.0.0.1:6379
with a key prefix of the run's own, whose keys are deleted afterwards. :class:`RedisProbe`
reads the server's counters (``INFO commandstats``, ``cpu``, ``stats``) before and after a
measured window.

:func:`start_gateway` starts one of the scale scenario's gateways as a :class:`Group` of
server processes: ``ours-1`` (one ``archon-chat serve``, no Redis), ``ours-2`` (two nodes
on two ports sharing Redis and one SQLite file, or ``serve --workers 2`` on one port) and
``seed-2`` (the seed baseline with python-socketio's ``AsyncRedisManager``: two uvicorn
workers on one port, or two processes on two ports). A group's CPU, memory and disk
writes are those of every process of every member, children included.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import trio

from bench.runner import (
    BenchError,
    Server,
    gateway_command,
    ours_command,
    python,
    start_server,
    stop_process,
)

MACHINE_REDIS = ("127.0.0.1", 6379)
#: how long a private redis-server may take to answer PING after it starts
REDIS_READY_S = 10.0
REDIS_TIMEOUT_S = 5.0
#: keys deleted per SCAN round when cleaning the machine's Redis
CLEAN_BATCH = 500


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    db: int
    #: every key and channel of the run starts with it
    prefix: str
    #: a redis-server of the run's own (else the machine's, shared with others)
    private: bool

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, db=self.db, socket_timeout=REDIS_TIMEOUT_S
        )

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "prefix": self.prefix, "private": self.private}


def _answers(host: str, port: int) -> bool:
    try:
        client = redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1)
        return bool(client.ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def open_redis(
    prefer_private: bool = True, machine: tuple[str, int] = MACHINE_REDIS
) -> AsyncIterator[RedisTarget]:
    """The run's Redis (see the module's docstring); cleaned up or stopped on exit.

    Raises :class:`BenchError` if there is neither a redis-server binary nor a Redis
    answering on 127.0.0.1:6379."""
    prefix = f"bench{secrets.token_hex(4)}:"
    binary = shutil.which("redis-server")
    if binary is None or not prefer_private:
        if await trio.to_thread.run_sync(_answers, *machine):
            target = RedisTarget(*machine, db=0, prefix=prefix, private=False)
            try:
                yield target
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_delete_prefixed, target)
            return
        if binary is None:
            raise BenchError("no Redis: install redis-server or run one on 127.0.0.1:6379")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="archon-bench-redis-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    argv += ["no", "--dir", workdir, "--logfile", str(Path(workdir) / "redis.log")]
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with trio.move_on_after(REDIS_READY_S):
            while not await trio.to_thread.run_sync(_answers, "127.0.0.1", port):
                if process.returncode is not None:
                    break
                await trio.sleep(0.05)
        if not await trio.to_thread.run_sync(_answers, "127.0.0.1", port):
            raise BenchError(f"redis-server did not answer on port {port}")
        yield RedisTarget("127.0.0.1", port, db=0, prefix=prefix, private=True)
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _delete_prefixed(target: RedisTarget) -> None:
    client = target.client()
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{target.prefix}*", count=CLEAN_BATCH):
        batch.append(key)
        if len(batch) >= CLEAN_BATCH:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


class RedisProbe:
    """Server-wide counters of the run's Redis: command calls (every command but the
    probe's own ``INFO``; in all and per command, ``cmd:<name>``), CPU seconds (user +
    system) and network bytes (in + out)."""

    def __init__(self, target: RedisTarget) -> None:
        self.target = target

    def _read(self) -> dict[str, float]:
        client = self.target.client()
        stats: dict[str, Any] = client.info("commandstats")
        by_command = {
            f"cmd:{k.removeprefix('cmdstat_')}": float(v["calls"])
            for k, v in stats.items()
            if k != "cmdstat_info" and "calls" in v
        }
        calls = sum(by_command.values())
        cpu: dict[str, Any] = client.info("cpu")
        net: dict[str, Any] = client.info("stats")
        return by_command | {
            "commands": float(calls),
            "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "bytes": float(net["total_net_input_bytes"]) + float(net["total_net_output_bytes"]),
        }

    async def read(self) -> dict[str, float]:
        return await trio.to_thread.run_sync(self._read)


def redis_figures(
    before: dict[str, float], after: dict[str, float], chunks: int, turns: int
) -> dict[str, Any]:
    """Redis's share of a window: totals and per delivered chunk / per turn."""
    commands = after["commands"] - before["commands"]
    cpu = after["cpu_s"] - before["cpu_s"]
    sent = after["bytes"] - before["bytes"]
    by_command = {
        key.removeprefix("cmd:"): round(after[key] - before.get(key, 0.0))
        for key in after
        if key.startswith("cmd:") and after[key] != before.get(key, 0.0)
    }
    return {
        #: calls per command in the window, most first: where the Redis cost goes
        "redis_by_command": dict(sorted(by_command.items(), key=lambda kv: -kv[1])),
        "redis_commands": round(commands),
        "redis_commands_per_chunk": round(commands / chunks, 3) if chunks else None,
        "redis_commands_per_turn": round(commands / turns, 2) if turns else None,
        "redis_cpu_s": round(cpu, 3),
        "redis_cpu_per_chunk_us": round(1e6 * cpu / chunks, 1) if chunks else None,
        "redis_bytes": round(sent),
        "redis_bytes_per_chunk": round(sent / chunks, 1) if chunks else None,
    }


@dataclass
class Group(Server):
    """One gateway made of one or more server processes (``members``), reached at
    ``urls`` (one per port). CPU, memory and disk writes are summed over all of them."""

    members: list[Server] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    #: ``ports`` (one process per port) or ``one-port`` (one port shared by workers)
    form: str = "ports"
    #: whether it works through the shared Redis (its points get Redis figures)
    uses_redis: bool = True

    def cpu(self) -> float:
        return sum(m.cpu() for m in self.members)

    def rss(self) -> int:
        return sum(m.rss() for m in self.members)

    def written(self) -> int:
        return sum(m.written() for m in self.members)


SCALE_KINDS = ("ours-1", "ours-2", "seed-2")
LABELS = {
    "ours-1": "archon-chat serve, one process, no Redis",
    "ours-2": "archon-chat, two processes on one Redis and one SQLite store",
    "seed-2": "seed design with one shared httpx client per worker, two uvicorn workers, "
    "python-socketio's AsyncRedisManager on the same Redis",
}


def cluster_env(target: RedisTarget, node: str, lease_s: float) -> dict[str, str]:
    return {
        "ARCHON_CHAT_REDIS_URL": target.url,
        "ARCHON_CHAT_REDIS_PREFIX": target.prefix,
        "ARCHON_CHAT_NODE_ID": node,
        "ARCHON_CHAT_LEASE_S": f"{lease_s:g}",
    }


@asynccontextmanager
async def start_gateway(
    kind: str,
    agent_url: str,
    db_path: str,
    target: RedisTarget,
    *,
    form: str,
    lease_s: float,
    tag: str = "",
) -> AsyncIterator[Group]:
    """Gateway ``kind`` of :data:`SCALE_KINDS` in ``form`` (``ports`` or ``one-port``;
    ``ours-1`` is always one process) until the block ends. ``tag`` goes into its
    processes' log names (``<tmp>/archon-bench-<tag><kind>....log``).

    Raises :class:`BenchError` if a process does not start."""
    async with AsyncExitStack() as stack:
        members: list[Server] = []
        ours_argv, ours_env = gateway_command("ours", agent_url, db_path)
        if kind == "ours-1":
            members.append(
                await stack.enter_async_context(start_server(f"{tag}{kind}", ours_argv, ours_env))
            )
            form = "ports"
        elif kind == "ours-2" and form == "one-port":
            env = {**ours_env, **cluster_env(target, "", lease_s)}
            del env["ARCHON_CHAT_NODE_ID"]
            argv = [*ours_command(db_path), "--workers", "2"]
            members.append(await stack.enter_async_context(start_server(f"{tag}{kind}", argv, env)))
        elif kind == "ours-2":
            # One after the other: each creates or opens the shared store at start.
            for node in ("n0", "n1"):
                env = {**ours_env, **cluster_env(target, node, lease_s)}
                members.append(
                    await stack.enter_async_context(
                        start_server(f"{tag}{kind}-{node}", ours_argv, env)
                    )
                )
        elif kind == "seed-2":
            argv = [python(), "-m", "bench.seed_baseline", "--port", "0", "--agent-url", agent_url]
            argv += ["--loop", "uvloop", "--http", "httptools", "--shared-client"]
            argv += ["--redis-url", target.url, "--redis-channel", f"{target.prefix}socketio"]
            env = {"ARCHON_CHAT_LOG_LEVEL": "WARNING"}
            if form == "one-port":
                argv += ["--workers", "2"]
                members.append(
                    await stack.enter_async_context(start_server(f"{tag}{kind}", argv, env))
                )
            else:
                for i in range(2):
                    members.append(
                        await stack.enter_async_context(start_server(f"{tag}{kind}-{i}", argv, env))
                    )
        else:
            raise BenchError(f"unknown scale gateway {kind!r} (form {form!r})")
        first = members[0]
        implementation = next((m.implementation for m in members if m.implementation), {})
        yield Group(
            kind,
            first.url,
            first.process,
            first.ps,
            first.output,
            implementation,
            members=members,
            urls=[m.url for m in members],
            form=form,
            uses_redis=kind != "ours-1",
        )


def group_urls(group: Server) -> Sequence[str]:
    return group.urls if isinstance(group, Group) else [group.url]
