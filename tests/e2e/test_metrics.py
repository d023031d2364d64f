"""Every metric on ``/metrics`` moves when what it counts happens, scraped from the real
gateway with Prometheus' own text parser.

Two gateways (one with a large outbox for stop and recovery, one with a tiny outbox for a
slow client), python-socketio clients and raw websockets. Ceiling: ``trio.fail_after(60)``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from archon_chat.server import Running
from tests.hardening.support import exchange, frame, upgrade

from .agents_fake import AgentsFake
from .support import (
    Client,
    chunks_at_least,
    create_session,
    joined_client,
    turn_done,
)
from .support import world as support_world


class Scraper:
    """Scrapes a gateway and remembers which families ever changed from the first scrape."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.first: dict[str, dict[str, float]] = {}
        self.moved: set[str] = set()
        self.families: set[str] = set()

    async def scrape(self) -> dict[str, dict[str, float]]:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{self.url}/metrics")
        assert r.status_code == 200
        out: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(r.text):
            if family.name.endswith("_created"):
                continue  # the creation time of each metric, not a metric of ours
            samples = out.setdefault(family.name, {})
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        if not self.first:
            self.first = out
        self.families |= set(out)
        for name, samples in out.items():
            if samples != self.first.get(name, {}) and any(samples.values()):
                self.moved.add(name)
        return out


@asynccontextmanager
async def world(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[AgentsFake, Running, Scraper]]:
    async with support_world(tmp_path, **overrides) as (agents, gw):
        scraper = Scraper(gw.url)
        await scraper.scrape()
        yield agents, gw, scraper


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


class RawSocket:
    """A hand-driven Socket.IO client over a websocket that reads only when asked."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.frames: list[str] = []

    @classmethod
    async def handshake(cls, nursery: trio.Nursery, url: str) -> tuple[RawSocket, str]:
        """An Engine.IO session only: no Socket.IO CONNECT."""
        host = url.split("//", 1)[1]
        ws = await trio_websocket.connect_websocket_url(
            nursery, f"ws://{host}/socket.io/?EIO=4&transport=websocket", message_queue_size=1
        )
        return cls(ws), str(await ws.get_message())

    @classmethod
    async def open(
        cls, nursery: trio.Nursery, url: str, auth: dict[str, Any] | None = None
    ) -> tuple[RawSocket, dict[str, Any]]:
        host = url.split("//", 1)[1]
        ws = await trio_websocket.connect_websocket_url(
            nursery, f"ws://{host}/socket.io/?EIO=4&transport=websocket", message_queue_size=1
        )
        sock = cls(ws)
        await ws.get_message()  # Engine.IO open
        await ws.send_message("40" + (json.dumps(auth) if auth else ""))
        reply = str(await ws.get_message())
        assert reply.startswith("40"), reply
        return sock, json.loads(reply[2:])

    async def send(self, frame: str) -> None:
        await self.ws.send_message(frame)

    async def read_until(self, done: Callable[[list[str]], bool]) -> None:
        while not done(self.frames):
            message = str(await self.ws.get_message())
            if message == "2":
                await self.ws.send_message("3")
            else:
                self.frames.append(message)


def typing_off(frames: list[str]) -> bool:
    return any(f.startswith('42["typing"') and '"is_typing":false' in f for f in frames)


async def test_every_metric_moves(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            world(
                tmp_path / "a",
                grace_s=0.3,
                replay_limit=2,
                outbox_size=100_000,
                connect_timeout_s=0.5,
            ) as (
                agents,
                gw,
                scraper,
            ),
            trio.open_nursery() as nursery,
        ):
            # A turn, watched from its start and joined late (a replay of the turn).
            session_id = await create_session(gw.url)
            first = await joined_client(gw.url, session_id)
            await first.call("chat_message", {"session_id": session_id, "message": "slow"})
            await first.wait_for(chunks_at_least(2))
            during = await scraper.scrape()
            assert during["archon_chat_turns_in_flight"] == {"archon_chat_turns_in_flight{}": 1}
            late = await joined_client(gw.url, session_id)
            await first.wait_for(turn_done)
            await late.wait_for(turn_done)
            await scraper.scrape()

            # A stop, and chunks of the stopped turn dropped from a slow reader's outbox.
            slow, _ = await RawSocket.open(nursery, gw.url)
            await slow.send(f'420["join_chat",{{"session_id":"{session_id}"}}]')
            await slow.read_until(lambda fs: any(f.startswith("430") for f in fs))
            merges = gw.sio.stats()["merges"]
            await first.call("chat_message", {"session_id": session_id, "message": "big"})
            await wait_until(lambda: gw.sio.stats()["merges"] > merges + 2)
            ack = await first.call("stop_response", {"session_id": session_id})
            assert ack["cancelled"] is True
            await first.wait_for(lambda evs: sum(turn_done([e]) for e in evs) == 2)
            await slow.read_until(lambda fs: typing_off(fs[-3:]))
            await slow.ws.aclose()

            # A leave by the last member, then a drop whose grace runs out.
            for client, text in ((first, "endless"), (late, None)):
                if text:
                    await client.call("chat_message", {"session_id": session_id, "message": text})
            await first.wait_for(chunks_at_least(1))
            await late.call("leave_chat", {"session_id": session_id})
            ack = await first.call("leave_chat", {"session_id": session_id})
            assert ack["cancelled"] is True
            other = await create_session(gw.url)
            leaving = await joined_client(gw.url, other)
            await leaving.call("chat_message", {"session_id": other, "message": "endless"})
            await leaving.wait_for(chunks_at_least(1))
            await leaving.disconnect()
            await wait_until(lambda: gw.sio.stats()["ghosts"] == 1)
            await scraper.scrape()
            await wait_until(lambda: other in agents.disconnects)

            # An upstream failure, refusals, a rejoin told to reload, a recovery.
            failing = await create_session(gw.url)
            watcher = await joined_client(gw.url, failing)
            await watcher.call("chat_message", {"session_id": failing, "message": "fail503"})
            await watcher.wait_for(turn_done)
            async with httpx.AsyncClient() as http:
                r = await http.get(f"{gw.url}/api/agent-chat/sessions/{'0' * 32}")
                assert r.status_code == 404
                r = await http.post(f"{gw.url}/api/agent-chat/sessions", json={"agent_type": 1})
                assert r.status_code == 422
            reloading = Client(gw.url, transports=["websocket"])
            await reloading.connect()
            await reloading.call("join_chat", {"session_id": session_id, "last_seq": 0})
            assert (await reloading.wait_event("connection_confirmed"))["reload"] is True

            keen, reply = await RawSocket.open(nursery, gw.url, {"recover": True})
            await keen.ws.aclose()
            await wait_until(lambda: gw.sio.stats()["ghosts"] >= 1)
            again, recovered = await RawSocket.open(
                nursery, gw.url, {"pid": reply["pid"], "offset": reply["offset"]}
            )
            assert recovered["sid"] == reply["sid"]

            # A session that never sends CONNECT (counted, then closed), and a broken byte
            # stream (an upgrade with a frame before the 101), aborted on its own.
            silent, _ = await RawSocket.handshake(nursery, gw.url)
            await wait_until(lambda: gw.sio.stats()["unconnected"] >= 1)
            await scraper.scrape()
            await wait_until(lambda: gw.sio.stats()["connect_timeouts"] >= 1)
            await silent.ws.aclose()
            await exchange(gw.port, upgrade() + frame(b"40"), read_for_s=0.5)

            # A handler of ours that raises is counted (a bug, but an operator sees it).
            async def explode(sid: str, data: Any) -> None:
                raise RuntimeError("a handler bug")

            gw.sio.on("explode", explode)
            await again.send('42["explode",{}]')
            await wait_until(lambda: gw.sio.stats()["handler_errors"] == 1)
            await again.ws.aclose()
            final = await scraper.scrape()
            cancels = final["archon_chat_cancels"]
            for reason in ("stop", "leave", "grace_over"):
                assert cancels[f"archon_chat_cancels_total{{reason={reason}}}"] >= 1
            refusals = final["archon_chat_refusals"]
            for code in ("session_not_found", "invalid_request"):
                assert refusals[f"archon_chat_refusals_total{{code={code}}}"] >= 1
            errors = final["archon_chat_upstream_errors"]
            assert errors == {"archon_chat_upstream_errors_total{code=agent_unavailable}": 1}
            for client in (first, late, watcher, reloading):
                await client.disconnect()
            moved, families = set(scraper.moved), set(scraper.families)
            nursery.cancel_scope.cancel()

        # A slow client cut once its outbox overflows.
        async with (
            world(tmp_path / "b", outbox_size=8, max_merged_chars=16_384, grace_s=0.0) as (
                _,
                gw,
                scraper,
            ),
            trio.open_nursery() as nursery,
        ):
            session_id = await create_session(gw.url)
            silent, _ = await RawSocket.open(nursery, gw.url)
            await silent.send(f'420["join_chat",{{"session_id":"{session_id}"}}]')
            await silent.read_until(lambda fs: any(f.startswith("430") for f in fs))
            async with httpx.AsyncClient() as http:
                r = await http.post(
                    f"{gw.url}/api/agent-chat/sessions/{session_id}/messages",
                    json={"message": "big"},
                )
                assert r.status_code == 202
            await wait_until(lambda: gw.sio.stats()["slow_disconnects"] == 1)
            await scraper.scrape()
            moved |= scraper.moved
            families |= scraper.families
            nursery.cancel_scope.cancel()

    assert families - moved == set()
    assert len(families) >= 24
