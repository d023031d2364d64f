"""The npm ``socket.io-client`` as a test client with the same calls as the
python-socketio :class:`tests.e2e.support.Client`: a node process running
``tests/node/driven.js``, told what to emit on its stdin, reporting what it saw on its
stdout. Events are read as the test waits for them."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from .support import TURN_EVENTS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "node" / "driven.js"


def node_binary() -> str:
    """Node.js, which `make setup` needs anyway (npm ci): missing, the test fails."""
    node = shutil.which("node")
    assert node, "node is needed for the npm client tests"
    return node


class NpmClient:
    def __init__(self, url: str, *, transports: list[str] | None = None) -> None:
        self.url = url
        self.transports = transports
        self.events: list[tuple[str, Any]] = []
        self.sid: str | None = None
        self._acks: dict[int, dict[str, Any]] = {}
        self._ids = 0
        self._buffer = b""
        self._process: trio.Process | None = None

    async def connect(self, timeout: float = 10.0) -> None:
        self._process = await trio.lowlevel.open_process(
            [node_binary(), str(SCRIPT), self.url, json.dumps(self.transports)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        errors: list[str] = []
        await self._read_until(lambda: self.sid is not None or bool(errors), timeout, errors)
        assert self.sid is not None, errors

    async def call(self, event: str, data: Any, timeout: float = 5.0) -> Any:
        self._ids += 1
        call_id = self._ids
        await self._send({"id": call_id, "emit": event, "data": data})
        await self._read_until(lambda: call_id in self._acks, timeout)
        answer = self._acks.pop(call_id)
        assert "error" not in answer, f"{event}: {answer['error']}"
        return answer["data"]

    async def disconnect(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        try:
            await self._send_to(process, {"close": True})
            with trio.move_on_after(5):
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    await pipe.aclose()

    def snapshot(self, names: tuple[str, ...] = TURN_EVENTS) -> list[tuple[str, Any]]:
        return [(n, d) for n, d in self.events if n in names]

    async def wait_for(
        self, predicate: Callable[[list[tuple[str, Any]]], bool], timeout: float = 5.0
    ) -> list[tuple[str, Any]]:
        await self._read_until(lambda: predicate(self.events), timeout)
        return list(self.events)

    async def _send(self, command: dict[str, Any]) -> None:
        assert self._process is not None, "not connected"
        await self._send_to(self._process, command)

    @staticmethod
    async def _send_to(process: trio.Process, command: dict[str, Any]) -> None:
        assert process.stdin is not None
        await process.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def _read_until(
        self, done: Callable[[], bool], timeout: float, errors: list[str] | None = None
    ) -> None:
        """Read the client's reports until ``done()``; fails at ``timeout`` or if the
        client exits first."""
        with trio.move_on_after(timeout) as scope:
            while not done():
                await self._read_some(errors)
        if scope.cancelled_caught:
            raise AssertionError(f"timed out; events so far: {json.dumps(self.events)[:4000]}")

    async def _read_some(self, errors: list[str] | None) -> None:
        assert self._process is not None and self._process.stdout is not None
        data = await self._process.stdout.receive_some(65536)
        if not data:
            raise AssertionError(f"the npm client exited; events: {json.dumps(self.events)[:4000]}")
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            report = json.loads(line)
            if "event" in report:
                self.events.append((report["event"], report["data"]))
            elif "ack" in report:
                self._acks[report["ack"]] = report
            elif "connected" in report:
                self.sid = report["connected"]
            elif "connect_error" in report and errors is not None:
                errors.append(report["connect_error"])
