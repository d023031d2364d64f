"""Resume without gaps, disconnect grace, idempotent sends, limits, security, slow
clients and metrics, end to end against the real gateway (127.0.0.1 port 0, real
SQLite, scripted agents over real HTTP, python-socketio's client).

Ceiling: every test runs under ``trio.fail_after(30)``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from .support import (
    Client,
    chunks_at_least,
    create_session,
    get_session,
    joined_client,
    turn_done,
    world,
)

pytestmark = pytest.mark.slow


def chunks_text(events: list[tuple[str, Any]]) -> str:
    return "".join(d["content"] for n, d in events if n == "stream_chunk")


async def test_resume_with_last_seq_has_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, delay_s=0.08, grace_s=5.0) as (agents, gw):
            session_id = await create_session(gw.url)
            first = await joined_client(gw.url, session_id)
            await first.call("chat_message", {"session_id": session_id, "message": "slow"})
            await first.wait_for(chunks_at_least(3))
            await first.disconnect()
            before = first.snapshot()
            last_seq = max(d["seq"] for _, d in before)
            sent = agents.chunks_sent
            while agents.chunks_sent < min(sent + 2, 10):  # the turn goes on unwatched
                await trio.sleep(0.01)

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
            first = await joined_client(gw.url, session_id)
            await first.call("chat_message", {"session_id": session_id, "message": "slow"})
            await first.wait_for(chunks_at_least(3))
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
            client = await joined_client(gw.url, session_id)
            await client.call("chat_message", {"session_id": session_id, "message": "endless"})
            await client.wait_for(chunks_at_least(2))
            await client.disconnect()
            dropped = trio.current_time()
            with trio.fail_after(5):
                await agents.disconnected.wait()
            # Cancelled when the grace ran out, not by the disconnect itself.
            assert trio.current_time() - dropped >= 0.2  # grace 0.3 s, less thread latency
            stored = await get_session(gw.url, session_id)
            assert stored["messages"][-1]["status"] == "cancelled"


async def test_idempotent_sends(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path) as (agents, gw):
            session_id = await create_session(gw.url)
            client = await joined_client(gw.url, session_id)
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
            # Turns of a session run in order: had a duplicate been queued, it would have
            # reached the agents before this later message's turn has ended.
            await client.call("chat_message", {"session_id": session_id, "message": "later"})
            await client.wait_for(lambda events: len([e for e in events if turn_done([e])]) >= 2)
            assert len(agents.requests) == 2
            stored = await get_session(gw.url, session_id)
            assert [m["content"] for m in stored["messages"]] == [
                "once",
                "Echo: once",
                "later",
                "Echo: later",
            ]
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
            client = await joined_client(gw.url, full)
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
            client = await joined_client(gw.url, busy)
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
                # One rule for REST and websockets: the page's own origin includes its
                # scheme, so https:// on the gateway's http:// host and port is foreign.
                own = gw.url.rstrip("/")
                for origin, status in ((own, 201), (own.replace("http:", "https:", 1), 403)):
                    r = await http.post(
                        "/api/agent-chat/sessions", json={}, headers={**auth, "Origin": origin}
                    )
                    assert r.status_code == status, origin

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


def _masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 65536
    mask = os.urandom(4)
    header = bytes([0x81]) + (
        bytes([0x80 | len(payload)])
        if len(payload) < 126
        else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def silent_join(url: str, session_id: str) -> trio.SocketStream:
    """A websocket client written by hand that connects, joins ``session_id``, and then
    never reads again (closing it is immediate, whatever the server still sends)."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    await stream.send_all(_masked_text_frame("40"))
    await stream.send_all(_masked_text_frame(f'42["join_chat",{{"session_id":"{session_id}"}}]'))
    return stream


async def test_slow_client_is_merged_then_dropped_others_unaffected(tmp_path: Path) -> None:
    # Two raw websocket clients in one room: one reads (and answers pings) as fast as it
    # can, the other never reads again. Heartbeats are slow here so that only the outbox
    # bound can drop the silent one.
    with trio.fail_after(30):
        async with (
            world(tmp_path, outbox_size=32, grace_s=0.0, ping_interval_s=20, ping_timeout_s=20) as (
                agents,
                gw,
            ),
            trio.open_nursery() as nursery,
        ):
            session_id = await create_session(gw.url)
            host = gw.url.split("//", 1)[1]
            reader = await trio_websocket.connect_websocket_url(
                nursery, f"ws://{host}/socket.io/?EIO=4&transport=websocket"
            )
            await reader.get_message()  # Engine.IO open
            await reader.send_message("40")
            await reader.get_message()  # Socket.IO CONNECT reply
            await reader.send_message(f'42["join_chat",{{"session_id":"{session_id}"}}]')
            silent = await silent_join(gw.url, session_id)
            received = 0
            progress = trio.Event()

            async def read() -> None:
                nonlocal received, progress
                while True:
                    message = await reader.get_message()
                    if message == "2":
                        await reader.send_message("3")
                    elif isinstance(message, str) and '"stream_chunk"' in message:
                        received += len(message)
                        progress.set()
                        progress = trio.Event()

            nursery.start_soon(read)
            async with httpx.AsyncClient() as http:
                r = await http.post(
                    f"{gw.url}/api/agent-chat/sessions/{session_id}/messages",
                    json={"message": "big"},
                )
            assert r.status_code == 202
            while gw.sio.stats().get("slow_disconnects", 0) < 1:
                await progress.wait()
            assert gw.sio.stats().get("merges", 0) > 0
            # The reader goes on receiving the reply after the other one was dropped.
            after_drop = received
            while received < after_drop + 1_000_000:
                await progress.wait()
            assert gw.sio.stats().get("slow_disconnects", 0) == 1
            await silent.aclose()
            nursery.cancel_scope.cancel()


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
            client = await joined_client(gw.url, session_id)
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
        # The actor passivates (0.2 s) long before its session expires (0.72 s), as with
        # the defaults (60 s and 24 h).
        async with world(
            tmp_path, session_ttl_hours=0.0002, sweep_interval_s=0.2, idle_passivate_s=0.2
        ) as (_, gw):
            session_id = await create_session(gw.url)
            client = Client(gw.url, transports=["websocket"])
            await client.connect()
            ack = await client.call("join_chat", {"session_id": session_id})
            assert ack["status"] == "joined"
            while (await gw.gateway.store.stats())["sessions"]:  # until the sweeper ran
                await trio.sleep(0.05)
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


async def test_joining_an_idle_session_starts_no_actor_and_replays_history(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, idle_passivate_s=0.2) as (_, gw):
            session_id = await create_session(gw.url)
            first = await joined_client(gw.url, session_id)
            assert not gw.gateway.hub.is_live(session_id)  # joined, yet no task
            await first.call("chat_message", {"session_id": session_id, "message": "hi"})
            await first.wait_for(turn_done)
            last_seq = max(d["seq"] for _, d in first.snapshot())
            while gw.gateway.hub.is_live(session_id):
                await trio.sleep(0.05)  # passivates after 0.2 s idle
            await first.disconnect()

            late = Client(gw.url, transports=["websocket"])
            await late.connect()
            ack = await late.call("join_chat", {"session_id": session_id, "last_seq": 0})
            assert ack["last_seq"] == last_seq
            assert not gw.gateway.hub.is_live(session_id)
            replayed = [d["data"]["content"] for n, d in late.snapshot() if n == "message"]
            assert replayed == ["hi", "Echo: hi"]
            confirmed = await late.wait_event("connection_confirmed")
            assert confirmed["typing"] is False and "turn" not in confirmed
            await late.disconnect()


async def test_one_socket_joins_a_bounded_number_of_sessions(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, max_sessions_per_socket=8) as (_, gw):
            client = Client(gw.url, transports=["websocket"])
            await client.connect()
            bound = 8
            sessions = [await create_session(gw.url) for _ in range(bound + 1)]
            for session_id in sessions[:bound]:
                ack = await client.call("join_chat", {"session_id": session_id})
                assert ack["status"] == "joined"
            ack = await client.call("join_chat", {"session_id": sessions[bound]})
            assert ack["code"] == "invalid_request"
            # Joining one already joined again is fine; leaving one makes room.
            ack = await client.call("join_chat", {"session_id": sessions[0]})
            assert ack["status"] == "joined"
            await client.call("leave_chat", {"session_id": sessions[0]})
            ack = await client.call("join_chat", {"session_id": sessions[bound]})
            assert ack["status"] == "joined"
            await client.disconnect()
