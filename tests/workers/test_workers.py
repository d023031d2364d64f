"""``archon-chat serve --workers 2`` as a user runs it: a real parent process, its two
workers and its one agents service, on 127.0.0.1 port 0 with a SQLite file and Redis.

Driven by python-socketio's client forced to polling, by the npm socket.io-client
(polling, then the upgrade) and by signals. Real clock; each test has a ceiling of
``trio.fail_after(150)`` (three gateway processes start on a shared 2-core machine,
about 4 s each, and 200 connections run one after another).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import trio

from tests.e2e.support import Client, turn_done, world

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "tests" / "workers" / "clients.js"
CONNECTIONS = 100
# "[node-w1] INFO archon_chat.sio.asgi: refused: Session ID unknown (w0.xyz)"
UNKNOWN_SID = re.compile(r"\[node-w(\d+)\] .*Session ID unknown \(w(\d+)\.")


@dataclass
class Cluster:
    process: trio.Process
    url: str
    log: Path

    def children(self) -> dict[int, str]:
        """The parent's child processes: pid -> command line."""
        pids: list[str] = []
        # A child belongs to the thread that started it (trio starts them in threads).
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                pids += (task / "children").read_text().split()
            except FileNotFoundError:
                continue
        found = {}
        for child in pids:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            found[int(child)] = cmdline.replace(b"\0", b" ").decode()
        return found

    def workers(self) -> set[int]:
        return {pid for pid, cmd in self.children().items() if cmd.endswith(" worker ")}

    def misrouted(self) -> list[tuple[str, str]]:
        """Requests a worker got for another worker's sid (from the workers' logs)."""
        text = self.log.read_text(errors="replace")
        return [(a, b) for a, b in UNKNOWN_SID.findall(text) if a != b]


@asynccontextmanager
async def cluster(tmp_path: Path, redis_env: dict[str, str], **env: str) -> AsyncIterator[Cluster]:
    log = tmp_path / "gateway.log"
    environment = {
        **os.environ,
        **redis_env,
        "ARCHON_CHAT_DB": str(tmp_path / "chat.db"),
        "ARCHON_CHAT_KB_INDEX": str(tmp_path / "kb.db"),
        "ARCHON_CHAT_NODE_ID": "node",
        "ARCHON_CHAT_LOG_LEVEL": "INFO",
        "ARCHON_CHAT_GRACE_S": "0.3",
        "ARCHON_CHAT_SHUTDOWN_GRACE_S": "1",
        **env,
    }
    environment.pop("AGENT_SERVICE_URL", None)
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "archon_chat.cli", "serve", "--workers", "2", "--port", "0"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        buffer = b""
        with trio.fail_after(60):
            while b"serving on" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"exited before serving: {log.read_text()[-3000:]}"
                buffer += chunk
        line = next(x for x in buffer.decode().splitlines() if "serving on" in x)
        yield Cluster(process, line.split("serving on ", 1)[1].strip(), log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def create_session(url: str) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/api/agent-chat/sessions", json={"agent_type": "rag"})
    assert response.status_code == 201, response.text
    session_id: str = response.json()["session_id"]
    return session_id


def python_polling_clients(url: str, session_id: str, count: int) -> list[str]:
    """``count`` consecutive python-socketio clients on polling, each joining the session
    and getting the ack; their Engine.IO sids."""
    sids = []
    for _ in range(count):
        client = socketio.Client(reconnection=False)
        client.connect(url, transports=["polling"], wait_timeout=5)
        try:
            assert client.transport() == "polling"
            ack = client.call("join_chat", {"session_id": session_id}, timeout=5)
            assert ack["status"] == "joined", ack
            sids.append(client.eio.sid)
        finally:
            client.disconnect()
    return sids


async def npm_clients(url: str, session_id: str, count: int) -> list[dict[str, Any]]:
    node = shutil.which("node")
    assert node, "node is needed for the npm client tests"
    result = await trio.run_process(
        [node, str(CLIENTS), url, session_id, str(count)],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    lines = result.stdout.decode().strip().splitlines()
    assert result.returncode == 0 and lines, (result.returncode, result.stdout, result.stderr)
    done: list[dict[str, Any]] = json.loads(lines[-1])["done"]
    return done


async def test_polling_requests_reach_the_worker_holding_their_sid(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    with trio.fail_after(150):
        async with cluster(tmp_path, redis_env) as gateway:
            session_id = await create_session(gateway.url)
            sids = await trio.to_thread.run_sync(
                python_polling_clients, gateway.url, session_id, CONNECTIONS
            )
            assert len(set(sids)) == CONNECTIONS
            by_worker = Counter(sid[:3] for sid in sids)
            assert set(by_worker) == {"w0.", "w1."}, by_worker

            done = await npm_clients(gateway.url, session_id, CONNECTIONS)
            assert len(done) == CONNECTIONS
            assert {d["transport"] for d in done} == {"websocket"}
            assert set(Counter(d["sid"][:3] for d in done)) == {"w0.", "w1."}

            assert gateway.misrouted() == []


async def test_a_killed_worker_is_replaced_and_sigterm_stops_everything(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    with trio.fail_after(150):
        async with cluster(tmp_path, redis_env) as gateway:
            children = gateway.children()
            workers = gateway.workers()
            assert len(workers) == 2 and len(children) == 3  # and one agents service
            session_id = await create_session(gateway.url)

            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            # At once (connections sent to it as it dies go to the other worker), and while
            # it is replaced, the port keeps serving.
            sids = await trio.to_thread.run_sync(python_polling_clients, gateway.url, session_id, 5)
            assert len(sids) == 5
            while len(gateway.workers() - {victim}) < 2:
                await trio.sleep(0.1)
            replaced = gateway.workers()
            assert victim not in replaced
            # Once it is up again both workers serve.
            while True:
                sids = await trio.to_thread.run_sync(
                    python_polling_clients, gateway.url, session_id, 4
                )
                if {sid[:3] for sid in sids} == {"w0.", "w1."}:
                    break
                await trio.sleep(0.2)

            everyone = set(gateway.children())
            gateway.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):  # shutdown grace 1 s, plus the parent's margin
                await gateway.process.wait()
            assert gateway.process.returncode == 0
            with trio.fail_after(5):
                while any(_alive(pid) for pid in everyone):
                    await trio.sleep(0.05)
            assert gateway.misrouted() == []


async def test_workers_that_keep_dying_at_start_fail_the_parent(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    with trio.fail_after(60):
        # A directory where the SQLite file should be: every worker fails to open its store.
        (tmp_path / "chat.db").mkdir()
        log = tmp_path / "gateway.log"
        with log.open("wb") as stderr:
            result = await trio.run_process(
                [sys.executable, "-m", "archon_chat.cli", "serve", "--workers", "2"],
                env={
                    **os.environ,
                    **redis_env,
                    "ARCHON_CHAT_PORT": "0",
                    "ARCHON_CHAT_DB": str(tmp_path / "chat.db"),
                    "ARCHON_CHAT_KB_INDEX": str(tmp_path / "kb.db"),
                },
                capture_stdout=True,
                stderr=stderr,
                check=False,
            )
        assert result.returncode == 1, log.read_text()[-3000:]
        assert b"serving on" not in result.stdout
        assert "died 3 times at start" in log.read_text()


async def test_children_stop_when_the_parent_is_killed(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    with trio.fail_after(60):
        async with cluster(tmp_path, redis_env) as gateway:
            children = set(gateway.children())
            assert len(children) == 3
            gateway.process.kill()
            await gateway.process.wait()
            with trio.fail_after(10):  # their own graceful stop, 1 s of grace
                while any(_alive(pid) for pid in children):
                    await trio.sleep(0.05)


async def test_workers_are_one_cluster_a_turn_reaches_both(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    """Two members of one session on different workers: the turn started from one reaches
    both, whole."""
    with trio.fail_after(90):
        async with cluster(tmp_path, redis_env) as gateway:
            session_id = await create_session(gateway.url)
            on: dict[str, Client] = {}
            for _ in range(12):  # new connections go round-robin: one lands on each worker
                client = Client(gateway.url, transports=["websocket"])
                await client.connect()
                worker = str(client.sio.eio.sid).split(".", 1)[0]
                if worker in on:
                    await client.disconnect()
                    continue
                on[worker] = client
                if len(on) == 2:
                    break
            assert sorted(on) == ["w0", "w1"], on
            a, b = on["w0"], on["w1"]
            for client in (a, b):
                ack = await client.call("join_chat", {"session_id": session_id})
                assert ack["status"] == "joined", ack
            ack = await a.call("chat_message", {"session_id": session_id, "message": "hello"})
            assert ack["status"] == "sent", ack
            finals = []
            for client in (a, b):
                events = await client.wait_for(turn_done, timeout=20)
                finals.append(
                    next(
                        d["data"]["content"]
                        for n, d in events
                        if n == "message" and d["data"]["sender"] == "agent"
                    )
                )
            assert finals[0] == finals[1] and finals[0]
            for client in (a, b):
                await client.disconnect()


async def test_each_worker_answers_the_scrapes_that_name_it(
    tmp_path: Path, redis_env: dict[str, str]
) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path, redis_env) as gateway, httpx.AsyncClient() as http:
            # One client, as Prometheus scraping both targets over its connection pool.
            for index in (0, 1, 1, 0, 0, 1):
                response = await http.get(f"{gateway.url}/metrics", params={"worker": index})
                assert response.status_code == 200, response.text
                assert response.headers["connection"] == "close"
                assert f'archon_chat_cluster_node_info{{node="node-w{index}"}} 1.0' in (
                    response.text
                )
                health = await http.get(f"{gateway.url}/healthz", params={"worker": index})
                assert health.status_code == 200 and health.json()["status"] == "ok"
            # Without a worker named, whichever worker the connection went to answers.
            response = await http.get(f"{gateway.url}/metrics")
            assert response.status_code == 200
            assert re.search(r'archon_chat_cluster_node_info\{node="node-w[01]"\}', response.text)


async def test_a_worker_refuses_a_scrape_meant_for_another_and_closes(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, sid_prefix="w0.") as (_, gateway), httpx.AsyncClient() as http:
            wrong = await http.get(f"{gateway.url}/metrics", params={"worker": 1})
            assert wrong.status_code == 421, wrong.text
            assert wrong.json()["code"] == "misdirected"
            assert wrong.headers["connection"] == "close"
            right = await http.get(f"{gateway.url}/healthz", params={"worker": 0})
            assert right.status_code == 200 and right.headers["connection"] == "close"
            # the number the parent routes by, however it is written
            padded = await http.get(f"{gateway.url}/metrics", params={"worker": "00"})
            assert padded.status_code == 200, padded.text
            garbage = await http.get(f"{gateway.url}/metrics", params={"worker": "x"})
            assert garbage.status_code == 421
        # A process that is no worker keeps its connections open as usual.
        async with world(tmp_path / "one") as (_, gateway), httpx.AsyncClient() as http:
            plain = await http.get(f"{gateway.url}/metrics", params={"worker": 1})
            assert plain.status_code == 200 and "connection" not in plain.headers
