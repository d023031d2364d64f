"""Resume without gaps, disconnect grace, idempotent sends, limits, security, slow
clients and metrics, end to end against the real gateway (127.0.0.1 port 0, real
SQLite, scripted agents over real HTTP, python-socketio's client).

Ceiling: every test runs under ``trio.fail_after(30)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from archon_chat.server import Running

from .agents_fake import AgentsFake
from .support import (
    Client,
    create_session,
    gateway_settings,
    get_session,
    running_gateway,
    turn_done,
)

pytestmark = pytest.mark.slow


@asynccontextmanager
async def world(
    tmp_path: Path, delay_s: float = 0.05, **overrides: Any
) -> AsyncIterator[tuple[AgentsFake, Running]]:
    agents = AgentsFake(delay_s=delay_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(agents.serve)
        async with running_gateway(gateway_settings(tmp_path, agents.url, **overrides)) as gw:
            yield agents, gw
        nursery.cancel_scope.cancel()


def chunks_text(events: list[tuple[str, Any]]) -> str:
    return "".join(d["content"] for n, d in events if n == "stream_chunk")


async def test_resume_with_last_seq_has_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, delay_s=0.08, grace_s=5.0) as (agents, gw):
            session_id = await create_session(gw.url)
            first = Client(gw.url, transports=["websocket"])
            await first.connect()
            await first.call("join_chat", {"session_id": session_id})
            await first.call("chat_message", {"session_id": session_id, "message": "slow"})
            await first.wait_for(lambda evs: sum(n == "stream_chunk" for n, _ in evs) >= 3)
            await first.disconnect()
            before = first.snapshot()
            last_seq = max(d["seq"] for _, d in before)
            await trio.sleep(0.25)  # the turn goes on while nobody listens

            second = Client(gw.url, transports=["websocket"])
            await second.connect()
            await second.call("join_chat", {"session_id": session_id, "last_seq": last_seq})
            confirmed = await second.wait_event("connection_confirmed")
            await second.wait_for(turn_done)
            after = second.snapshot()
            seqs = [d["seq"] for _, d in before] + [d["seq"] for _, d in after]
            assert len(seqs) == len(set(seqs)), "duplicate events"
            assert all(d["seq"] > last_seq for _, d in after)
            assert chunks_text(before) + chunks_text(after) == "".join(f"w{i} " for i in range(10))
            agent = next(d["data"] for n, d in after if n == "message")
            assert agent["content"] == "".join(f"w{i} " for i in range(10))
            assert confirmed["typing"] is True and confirmed["turn"]["message_id"] == agent["id"]
            assert confirmed["last_seq"] >= last_seq
            assert agents.disconnects == []  # the grace kept the turn alive
            await second.disconnect()


async def test_join_without_last_seq_replays_turn_from_its_start(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, delay_s=0.08) as (agents, gw):
            session_id = await create_session(gw.url)
            first = Client(gw.url, transports=["websocket"])
            await first.connect()
            await first.call("join_chat", {"session_id": session_id})
            await first.call("chat_message", {"session_id": session_id, "message": "slow"})
            await first.wait_for(lambda evs: sum(n == "stream_chunk" for n, _ in evs) >= 3)
            late = Client(gw.url, transports=["polling"])
            await late.connect()
            await late.call("join_chat", {"session_id": session_id})
            await late.wait_for(turn_done)
            assert chunks_text(late.snapshot()) == "".join(f"w{i} " for i in range(10))
            for c in (first, late):
                await c.disconnect()


async def test_grace_keeps_turn_then_cancels_when_nobody_returns(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, delay_s=0.05, grace_s=0.3) as (agents, gw):
            session_id = await create_session(gw.url)
            client = Client(gw.url, transports=["websocket"])
            await client.connect()
            await client.call("join_chat", {"session_id": session_id})
            await client.call("chat_message", {"session_id": session_id, "message": "endless"})
            await client.wait_for(lambda evs: sum(n == "stream_chunk" for n, _ in evs) >= 2)
            await client.disconnect()
            with trio.fail_after(5):
                await agents.disconnected.wait()
            stored = await get_session(gw.url, session_id)
            assert stored["messages"][-1]["status"] == "cancelled"


async def test_idempotent_sends(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path) as (agents, gw):
            session_id = await create_session(gw.url)
            client = Client(gw.url, transports=["websocket"])
            await client.connect()
            await client.call("join_chat", {"session_id": session_id})
            body = {"session_id": session_id, "message": "once", "client_message_id": "c-1"}
            first = await client.call("chat_message", body)
            again = await client.call("chat_message", body)
            assert first == again and first["status"] == "sent"
            async with httpx.AsyncClient() as http:
                r = await http.post(
                    f"{gw.url}/api/agent-chat/sessions/{session_id}/messages",
                    json={"message": "once", "client_message_id": "c-1"},
                )
            assert r.status_code == 202 and r.json()["message_id"] == first["message_id"]
            await client.wait_for(turn_done)
            await trio.sleep(0.2)
            assert len(agents.requests) == 1
            stored = await get_session(gw.url, session_id)
            assert [m["content"] for m in stored["messages"]] == ["once", "Echo: once"]
            await client.disconnect()


async def test_limits_answer_their_codes_on_both_sides(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(
            tmp_path,
            max_messages_per_session=4,
            rate_limit_messages=3,
            rate_limit_window_s=60.0,
            max_queued_turns=1,
        ) as (agents, gw):
            prefix = f"{gw.url}/api/agent-chat/sessions"
            # session_full
            full = await create_session(gw.url)
            client = Client(gw.url, transports=["websocket"])
            await client.connect()
            await client.call("join_chat", {"session_id": full})
            for text in ("a", "b"):
                await client.call("chat_message", {"session_id": full, "message": text})
                await client.wait_for(
                    lambda evs, t=text: any(
                        n == "message" and d["data"]["content"] == f"Echo: {t}" for n, d in evs
                    )
                )
            ack = await client.call("chat_message", {"session_id": full, "message": "c"})
            assert ack["code"] == "session_full"
            async with httpx.AsyncClient() as http:
                r = await http.post(f"{prefix}/{full}/messages", json={"message": "c"})
            assert r.status_code == 409 and r.json()["code"] == "session_full"
            await client.disconnect()

            # rate_limited: the fourth message on one connection
            busy = await create_session(gw.url)
            client = Client(gw.url, transports=["websocket"])
            await client.connect()
            await client.call("join_chat", {"session_id": busy})
            acks = [
                await client.call("chat_message", {"session_id": busy, "message": "endless"})
                for _ in range(4)
            ]
            codes = [a.get("code") for a in acks]
            # one turn running, one queued, the third refused as busy, the fourth as rate
            assert codes == [None, None, "session_busy", "rate_limited"]
            async with httpx.AsyncClient() as http:
                r = await http.post(f"{prefix}/{busy}/messages", json={"message": "x"})
            assert r.status_code == 409 and r.json()["code"] == "session_busy"
            await client.call("stop_response", {"session_id": busy})
            await client.disconnect()


async def test_api_key_and_origins(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, api_key="s3cret", cors_origins="https://app.example") as (
            agents,
            gw,
        ):
            async with httpx.AsyncClient(base_url=gw.url) as http:
                r = await http.post("/api/agent-chat/sessions", json={})
                assert r.status_code == 401 and r.json()["code"] == "unauthorized"
                auth = {"Authorization": "Bearer s3cret"}
                r = await http.post("/api/agent-chat/sessions", json={}, headers=auth)
                assert r.status_code == 201
                session_id = r.json()["session_id"]
                for open_path in ("/", "/healthz", "/metrics"):
                    r = await http.get(open_path)
                    assert r.status_code in (200, 503), open_path
                r = await http.post(
                    "/api/agent-chat/sessions",
                    json={},
                    headers={**auth, "Origin": "https://evil.example"},
                )
                assert r.status_code == 403
                r = await http.post(
                    "/api/agent-chat/sessions",
                    json={},
                    headers={**auth, "Origin": "https://app.example"},
                )
                assert r.status_code == 201
                assert r.headers["access-control-allow-origin"] == "https://app.example"

            refused = Client(gw.url, transports=["websocket"])
            with pytest.raises(socketio.exceptions.ConnectionError):
                await refused.connect(auth={"token": "wrong"})
            foreign = Client(gw.url, transports=["websocket"])
            with pytest.raises(socketio.exceptions.ConnectionError):
                await foreign.connect(
                    auth={"token": "s3cret"}, headers={"Origin": "https://evil.example"}
                )
            client = Client(gw.url, transports=["websocket"])
            await client.connect(auth={"token": "s3cret"})
            ack = await client.call("join_chat", {"session_id": session_id})
            assert ack["status"] == "joined"
            await client.disconnect()


async def test_slow_client_is_merged_then_dropped_others_unaffected(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, outbox_size=32, grace_s=0.0) as (agents, gw):
            session_id = await create_session(gw.url)
            normal = Client(gw.url, transports=["websocket"])
            await normal.connect()
            await normal.call("join_chat", {"session_id": session_id})

            # A raw websocket client that joins and then never reads again.
            host = gw.url.split("//", 1)[1]
            url = f"ws://{host}/socket.io/?EIO=4&transport=websocket"
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.get_message()  # open packet
                await ws.send_message("40")
                await ws.get_message()  # CONNECT reply
                await ws.send_message(f'42["join_chat",{{"session_id":"{session_id}"}}]')
                await normal.call("chat_message", {"session_id": session_id, "message": "big"})
                await normal.wait_for(
                    lambda evs: sum(n == "stream_chunk" for n, _ in evs) >= 400, timeout=20
                )
                with trio.fail_after(20):
                    while gw.sio.stats().get("slow_disconnects", 0) < 1:
                        await trio.sleep(0.05)
                assert gw.sio.stats().get("merges", 0) > 0
            await normal.call("stop_response", {"session_id": session_id})
            await normal.wait_for(turn_done)
            assert normal.sio.connected
            await normal.disconnect()


async def test_metrics_move_with_a_turn(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path) as (agents, gw):

            async def scrape() -> dict[str, float]:
                async with httpx.AsyncClient() as http:
                    r = await http.get(f"{gw.url}/metrics")
                assert r.status_code == 200
                out: dict[str, float] = {}
                for family in text_string_to_metric_families(r.text):
                    for sample in family.samples:
                        key = sample.name + (
                            "{"
                            + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                            + "}"
                            if sample.labels
                            else ""
                        )
                        out[key] = sample.value
                return out

            before = await scrape()
            session_id = await create_session(gw.url)
            client = Client(gw.url, transports=["websocket"])
            await client.connect()
            await client.call("join_chat", {"session_id": session_id})
            await client.call("chat_message", {"session_id": session_id, "message": "hi"})
            await client.wait_for(turn_done)
            after = await scrape()
            assert (
                after["archon_chat_chunks_relayed_total"]
                - before.get("archon_chat_chunks_relayed_total", 0)
                == 3
            )
            assert after["archon_chat_turns_total{code=,status=complete}"] == 1
            assert after["archon_chat_connected_sockets"] >= 1
            assert after["archon_chat_first_chunk_seconds_count"] == 1
            await client.disconnect()


async def test_expired_session_answers_session_not_found(tmp_path: Path) -> None:
    with trio.fail_after(30):
        # 0.0002 h = 0.72 s of inactivity
        async with world(tmp_path, session_ttl_hours=0.0002, sweep_interval_s=0.2) as (_, gw):
            session_id = await create_session(gw.url)
            client = Client(gw.url, transports=["websocket"])
            await client.connect()
            ack = await client.call("join_chat", {"session_id": session_id})
            assert ack["status"] == "joined"
            await trio.sleep(1.0)
            ack = await client.call("join_chat", {"session_id": session_id})
            assert ack["code"] == "session_not_found"
            ack = await client.call("chat_message", {"session_id": session_id, "message": "hi"})
            assert ack["code"] == "session_not_found"
            async with httpx.AsyncClient() as http:
                r = await http.get(f"{gw.url}/api/agent-chat/sessions/{session_id}")
            assert r.status_code == 404
            await client.disconnect()
            stats = await gw.gateway.store.stats()
            assert stats["sessions"] == 0  # the sweeper removed it with its messages
