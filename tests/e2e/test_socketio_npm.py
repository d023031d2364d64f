"""The npm ``socket.io-client`` against our server, over polling, websocket and upgrade.

A real hypercorn on 127.0.0.1 port 0; each scenario of ``tests/node/client.js`` runs in a
``node`` subprocess (from the repository root, so ``node_modules`` resolves) and prints one
JSON line. Real clock, sub-second heartbeats. Ceiling: ``trio.fail_after(30)`` per test;
the script has its own 15 s deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from archon_chat.sio import ConnectInfo, ConnectRefused, SocketIOServer
from tests.sio.serving import serve_sio

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "node" / "client.js"

TRANSPORTS = [
    pytest.param(["polling"], "polling", id="polling"),
    pytest.param(["websocket"], "websocket", id="websocket"),
    pytest.param(None, "websocket", id="upgrade"),
]


async def run_node(
    url: str, scenario: str, transports: list[str] | None, **env: str
) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is needed for the npm client tests"
    result = await trio.run_process(
        [node, str(SCRIPT), url, scenario, json.dumps(transports)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    lines = result.stdout.decode().strip().splitlines()
    assert result.returncode == 0 and lines, (result.returncode, result.stdout, result.stderr)
    out: dict[str, Any] = json.loads(lines[-1])
    return out


class App:
    def __init__(self, sio: SocketIOServer, nursery: trio.Nursery) -> None:
        self.sio = sio
        self.connects: list[tuple[str, ConnectInfo]] = []
        self.disconnects: list[tuple[str, str]] = []
        self.rejoined = trio.Event()
        sio.register_namespace("/admin")

        for namespace in ("/", "/admin"):

            @sio.on("connect", namespace=namespace)
            async def connect(sid: str, info: ConnectInfo, auth: Any) -> None:
                self.connects.append((sid, info))
                if not isinstance(auth, dict) or auth.get("token") != "secret":
                    raise ConnectRefused({"message": "unauthorized"})

            @sio.on("whoami", namespace=namespace)
            async def whoami(sid: str, ns: str = namespace) -> list[str]:
                return [ns, sid]

        @sio.on("disconnect")
        async def disconnect(sid: str, reason: str) -> None:
            self.disconnects.append((sid, reason))

        @sio.on("echo")
        async def echo(sid: str, data: Any) -> Any:
            return data

        @sio.on("provoke")
        async def provoke(sid: str) -> Any:
            await sio.emit("news", (1, {"b": 2}), to=sid)
            return await sio.call("question", {"n": 21}, to=sid)

        @sio.on("reverse")
        async def reverse(sid: str, blob: bytes) -> bytes:
            await sio.emit("file", ({"name": "f.bin"}, b"\x00\xfe\xff"), to=sid)
            return blob[::-1]

        @sio.on("join")
        async def join(sid: str, room: str) -> bool:
            sio.enter_room(sid, room)
            return True

        @sio.on("shout")
        async def shout(sid: str, room: str, text: str) -> bool:
            await sio.emit("heard", {"text": text}, room=room, skip_sid=sid)
            return True

        @sio.on("start_ticks")
        async def start_ticks(sid: str, room: str) -> bool:
            nursery.start_soon(self.ticker, room)
            return True

        @sio.on("rejoined")
        async def rejoined(sid: str) -> None:
            self.rejoined.set()

    async def ticker(self, room: str) -> None:
        for n in (1, 2, 3):
            await self.sio.emit("tick", n, room=room)
        # The client cuts its transport on tick 3: wait until the server has seen it go.
        while not (self.disconnects or self.sio.stats()["ghosts"]):
            await trio.sleep(0.005)
        for n in (4, 5, 6):
            await self.sio.emit("tick", n, room=room)
        await self.rejoined.wait()
        for n in (7, 8, 9):
            await self.sio.emit("tick", n, room=room)


@pytest.fixture
async def served(nursery: trio.Nursery) -> tuple[App, str]:
    sio, port = await serve_sio(nursery, ping_interval_s=0.5, ping_timeout_s=1, grace_s=5)
    return App(sio, nursery), f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_connect_emit_and_acks_both_ways(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    app, url = served
    with trio.fail_after(30):
        out = await run_node(url, "basic", transports)
        assert out["transport"] == final
        assert out["echo"] == {"a": [1, "é", None]}
        assert out["news"] == [1, {"b": 2}]
        assert out["answer"] == {"double": 42}
        assert [sid for sid, _ in app.connects] == [out["id"]]


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_auth_refusal(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    app, url = served
    with trio.fail_after(30):
        out = await run_node(url, "refusal", transports)
        assert out == {"message": "unauthorized", "active": False}
        assert app.disconnects == []


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_namespaces(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    _, url = served
    with trio.fail_after(30):
        out = await run_node(url, "namespaces", transports)
        assert out["whoRoot"] == ["/", out["rootId"]]
        assert out["whoAdmin"] == ["/admin", out["adminId"]]
        assert out["rootId"] != out["adminId"]
        assert out["nope"] == "Invalid namespace"


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_binary_both_ways(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    _, url = served
    with trio.fail_after(30):
        out = await run_node(url, "binary", transports)
        assert out == {
            "back": [255, 3, 2, 1],
            "meta": {"name": "f.bin"},
            "blob": [0, 254, 255],
            "isBuffer": True,
        }


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_rooms(served: tuple[App, str], transports: list[str] | None, final: str) -> None:
    _, url = served
    with trio.fail_after(30):
        out = await run_node(url, "rooms", transports)
        assert out == {"a": [], "b": ["hello"], "c": []}


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_recovery_after_the_transport_is_cut(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    app, url = served
    with trio.fail_after(30):
        out = await run_node(url, "drop", transports, RECOVER="1")
        assert out["ticks"] == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # every one, once, in order
        assert out["arities"] == [2] * 9  # each with its offset
        offsets = [int(o, 16) for o in out["offsets"]]
        assert offsets == sorted(set(offsets))
        first, second = out["connects"]
        assert first == {"id": first["id"], "recovered": False}
        assert second == {"id": first["id"], "recovered": True}
        assert len(out["reasons"]) == 1
        assert [info.recovered for _, info in app.connects] == [False, True]
        # The drop is a disconnect, then the same sid connects again, recovered; the
        # script's own goodbye may follow.
        assert app.disconnects[0] == (first["id"], "transport close")
        assert {reason for _, reason in app.disconnects[1:]} <= {"client namespace disconnect"}
        assert app.sio.stats()["recoveries"] == 1


@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_the_same_drop_without_opting_in(
    served: tuple[App, str], transports: list[str] | None, final: str
) -> None:
    app, url = served
    with trio.fail_after(30):
        out = await run_node(url, "drop", transports)
        assert out["ticks"] == [1, 2, 3, 7, 8, 9]  # what was emitted while away is gone
        assert out["arities"] == [1] * 6  # no offsets
        first, second = out["connects"]
        assert first["recovered"] is False and second["recovered"] is False
        assert first["id"] != second["id"]
        assert app.disconnects[0][0] == first["id"]
        assert app.sio.stats()["recoveries"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(("transports", "final"), TRANSPORTS)
async def test_a_recovery_too_late_is_a_fresh_connection(
    nursery: trio.Nursery, transports: list[str] | None, final: str
) -> None:
    sio, port = await serve_sio(nursery, ping_interval_s=0.5, ping_timeout_s=1, grace_s=0.2)
    app = App(sio, nursery)
    with trio.fail_after(30):
        out = await run_node(
            f"http://127.0.0.1:{port}", "drop", transports, RECOVER="1", RECONNECT_DELAY_MS="700"
        )
        assert out["ticks"] == [1, 2, 3, 7, 8, 9]  # the grace ended before the client was back
        first, second = out["connects"]
        assert first["recovered"] is False and second["recovered"] is False
        assert first["id"] != second["id"]
        assert (first["id"], "transport close") in app.disconnects
        assert sio.stats()["recoveries"] == 0
        assert sio.stats()["recovery_misses"] == 1


def test_the_node_harness_reports_failures() -> None:
    node = shutil.which("node")
    assert node
    result = subprocess.run(
        [node, str(SCRIPT), "http://127.0.0.1:9", "nonexistent", "null"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown scenario" in result.stdout.decode()
