"""What a client is promised about replay, stop and leave, tried against the real gateway
with python-socketio's client and a raw websocket.

Ceiling: every test runs under ``trio.fail_after(30)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket

from .support import (
    Client,
    agent_said,
    chunks_at_least,
    create_session,
    get_session,
    joined_client,
    turn_done,
    world,
)


async def send_rest(url: str, session_id: str, text: str) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{url}/api/agent-chat/sessions/{session_id}/messages", json={"message": text}
        )
    assert r.status_code == 202, r.text


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_replay_is_complete_or_tells_the_client_to_reload(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, replay_limit=4) as (_, gw):
            session_id = await create_session(gw.url)
            watcher = await joined_client(gw.url, session_id)
            for text in ("a", "b"):
                await send_rest(gw.url, session_id, text)
                await watcher.wait_for(agent_said(f"Echo: {text}"))
            await watcher.wait_for(lambda evs: sum(turn_done([e]) for e in evs) == 2)

            # Four messages missed, four may be replayed: all of them come.
            fresh = Client(gw.url, transports=["websocket"])
            await fresh.connect()
            await fresh.call("join_chat", {"session_id": session_id, "last_seq": 0})
            confirmed = await fresh.wait_event("connection_confirmed")
            assert "reload" not in confirmed
            replayed = [d["data"]["content"] for n, d in fresh.snapshot() if n == "message"]
            assert replayed == ["a", "Echo: a", "b", "Echo: b"]

            await send_rest(gw.url, session_id, "c")
            await watcher.wait_for(agent_said("Echo: c"))
            await watcher.wait_for(lambda evs: sum(turn_done([e]) for e in evs) == 3)

            # Six missed: none replayed, and the client is told to reload over REST.
            late = Client(gw.url, transports=["websocket"])
            await late.connect()
            await late.call("join_chat", {"session_id": session_id, "last_seq": 0})
            confirmed = await late.wait_event("connection_confirmed")
            assert confirmed["reload"] is True
            assert [n for n, _ in late.snapshot()] == []
            body = await get_session(gw.url, session_id)
            assert [m["content"] for m in body["messages"]] == [
                "a", "Echo: a", "b", "Echo: b", "c", "Echo: c",
            ]  # fmt: skip
            # Typing events have seqs but no stored row: the store may lag behind them.
            assert body["messages"][-1]["seq"] <= body["last_seq"] <= confirmed["last_seq"]
            for client in (watcher, fresh, late):
                await client.disconnect()


async def test_nothing_of_a_stopped_turn_follows_the_stop_acknowledgement(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with (
            world(tmp_path, outbox_size=100_000, replay_limit=10) as (agents, gw),
            trio.open_nursery() as nursery,
        ):
            session_id = await create_session(gw.url)
            host = gw.url.split("//", 1)[1]
            # A reader that stops reading: its queue of one message fills, then TCP's
            # buffers, then its outbox on the gateway, where chunks wait (merged).
            ws = await trio_websocket.connect_websocket_url(
                nursery,
                f"ws://{host}/socket.io/?EIO=4&transport=websocket",
                message_queue_size=1,
            )
            await ws.get_message()  # Engine.IO open
            await ws.send_message("40")
            await ws.get_message()  # Socket.IO CONNECT reply
            await ws.send_message(f'420["join_chat",{{"session_id":"{session_id}"}}]')
            frames: list[str] = []
            while not any(f.startswith("430") for f in frames):
                frames.append(str(await ws.get_message()))
            before = gw.sio.stats()["merges"]
            await ws.send_message(
                f'421["chat_message",{{"session_id":"{session_id}","message":"big"}}]'
            )
            await wait_until(lambda: gw.sio.stats()["merges"] > before + 2)
            dropped_before = gw.gateway.metrics.chunks_dropped._value.get()
            await ws.send_message(f'422["stop_response",{{"session_id":"{session_id}"}}]')
            while not any(f.startswith('42["typing"') and '"is_typing":false' in f for f in frames):
                message = await ws.get_message()
                if message == "2":
                    await ws.send_message("3")
                    continue
                frames.append(str(message))
            ack = next(i for i, f in enumerate(frames) if f.startswith("432"))
            assert json.loads(frames[ack][3:])[0]["cancelled"] is True
            after_ack = [json.loads(f[2:])[0] for f in frames[ack + 1 :] if f.startswith("42")]
            assert [name for name in after_ack] == ["message", "stream_complete", "typing"]
            final = json.loads(frames[ack + 1][2:])[1]["data"]
            assert final["status"] == "cancelled"
            shown = "".join(
                json.loads(f[2:])[1]["content"]
                for f in frames[:ack]
                if f.startswith('42["stream_chunk"')
            )
            # The stored reply is everything the agent sent: what was shown is its start.
            assert final["content"].startswith(shown) and len(final["content"]) > len(shown)
            assert gw.gateway.metrics.chunks_dropped._value.get() > dropped_before
            await wait_until(lambda: agents.disconnects == [session_id])
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def test_leave_by_the_last_connected_member_does_not_wait_for_one_in_grace(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with world(tmp_path, delay_s=0.05, grace_s=20.0) as (agents, gw):
            session_id = await create_session(gw.url)
            gone = await joined_client(gw.url, session_id)
            stays = await joined_client(gw.url, session_id)
            await stays.call("chat_message", {"session_id": session_id, "message": "endless"})
            await stays.wait_for(chunks_at_least(2))
            await gone.disconnect()  # in its grace period for 20 s
            await wait_until(lambda: gw.sio.stats()["ghosts"] == 1)
            ack = await stays.call("leave_chat", {"session_id": session_id})
            assert ack == {"status": "left", "session_id": session_id, "cancelled": True}
            await wait_until(lambda: agents.disconnects == [session_id], timeout=5)
            body = await get_session(gw.url, session_id)
            assert body["messages"][-1]["status"] == "cancelled"
            await stays.disconnect()
