"""The seed's REST + Socket.IO contract end to end: the real gateway on 127.0.0.1 port 0,
a real SQLite file, a scripted agents service over real HTTP, python-socketio's client.

Ceiling: every test runs under ``trio.fail_after(30)``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate

from archon_chat.sio import ServerOptions, SocketIOServer

from ..derived import derived
from .agents_fake import AgentsFake
from .support import (
    Client,
    agent_said,
    chunks_at_least,
    create_session,
    gateway_settings,
    get_session,
    joined_client,
    running_gateway,
    turn_done,
)

pytestmark = pytest.mark.slow

TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"], "upgrade": None}


def names(events: list[tuple[str, Any]]) -> list[str]:
    """Event names, consecutive stream_chunks counted once: a socket's outbox may merge
    the chunks it has not sent yet (content concatenated, the later seq)."""
    out: list[str] = []
    for n, _ in events:
        if not (n == "stream_chunk" and out and out[-1] == "stream_chunk"):
            out.append(n)
    return out


def check_seqs(events: list[tuple[str, Any]]) -> None:
    seqs = [d["seq"] for _, d in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_complete_turn_exact_sequence(tmp_path: Path, transport: str) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with running_gateway(gateway_settings(tmp_path, agents.url)) as gw:
                session_id = await create_session(gw.url)
                client = Client(gw.url, transports=TRANSPORTS[transport])
                await client.connect()
                ack = await client.call("join_chat", {"session_id": session_id})
                assert ack["status"] == "joined"
                confirmed = await client.wait_event("connection_confirmed")
                assert confirmed == {
                    "type": "connection_confirmed",
                    "session_id": session_id,
                    "last_seq": 0,
                    "typing": False,
                }
                ack = await client.call(
                    "chat_message",
                    {"session_id": session_id, "message": "hello", "context": {"k": 1}},
                )
                assert ack["status"] == "sent"
                user_id = ack["message_id"]
                await client.wait_for(turn_done)
                events = client.snapshot()
                assert names(events) == [
                    "message",
                    "typing",
                    "stream_chunk",
                    "message",
                    "stream_complete",
                    "typing",
                ]
                check_seqs(events)
                assert all(d["session_id"] == session_id for _, d in events)
                assert all(d["type"] == n for n, d in events)
                user = events[0][1]["data"]
                assert user["id"] == user_id
                assert user["sender"] == "user" and user["content"] == "hello"
                assert user["status"] == "complete" and user["agent_type"] == "rag"
                assert user["seq"] == events[0][1]["seq"]
                agent = events[-3][1]["data"]
                assert agent["sender"] == "agent" and agent["status"] == "complete"
                assert agent["content"] == "Echo: hello"
                assert "".join(d["content"] for n, d in events if n == "stream_chunk") == (
                    "Echo: hello"
                )
                assert {d["message_id"] for n, d in events if n == "stream_chunk"} == {agent["id"]}
                assert events[-2][1]["status"] == "complete"
                assert events[-2][1]["message_id"] == agent["id"]
                assert events[1][1]["is_typing"] is True
                assert agent["timestamp"].endswith("+00:00")
                request = agents.requests[-1]
                assert request["prompt"] == "hello"
                assert request["agent_type"] == "rag"
                assert request["session_id"] == session_id
                assert request["context"] == {"k": 1}
                assert request["history"] == []

                # A follow-up carries the first turn as history.
                await client.call("chat_message", {"session_id": session_id, "message": "again"})
                await client.wait_for(lambda evs: sum(map(turn_done_one, evs)) == 2)
                assert agents.requests[-1]["history"] == [
                    {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "Echo: hello"},
                ]
                stored = await get_session(gw.url, session_id)
                assert [m["content"] for m in stored["messages"]] == [
                    "hello",
                    "Echo: hello",
                    "again",
                    "Echo: again",
                ]
                assert stored["last_seq"] >= stored["messages"][-1]["seq"]
                await client.disconnect()
            nursery.cancel_scope.cancel()


def turn_done_one(event: tuple[str, Any]) -> bool:
    name, data = event
    return name == "typing" and data.get("is_typing") is False


@pytest.mark.parametrize(
    ("prompt", "code", "text"),
    [
        ("fail503", "agent_unavailable", "Agent service error: 503"),
        ("garbage", "agent_protocol_error", None),
        ("truncated", "agent_protocol_error", None),
        ("agenterr", "agent_error", "the agent broke"),
        ("hang", "agent_timeout", "Agent response timeout"),
    ],
)
async def test_failed_turns(tmp_path: Path, prompt: str, code: str, text: str | None) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            settings = gateway_settings(
                tmp_path, agents.url, agent_first_event_timeout_s=0.5, agent_idle_timeout_s=0.5
            )
            async with running_gateway(settings) as gw:
                session_id = await create_session(gw.url)
                client = await joined_client(gw.url, session_id)
                await client.call("chat_message", {"session_id": session_id, "message": prompt})
                await client.wait_for(turn_done)
                events = client.snapshot()
                order = names(events)
                assert order[:2] == ["message", "typing"]
                assert order[-4:] == ["error", "message", "stream_complete", "typing"]
                check_seqs(events)
                error = events[-4][1]
                assert error["code"] == code
                if text is not None:
                    assert error["error"] == text
                agent = events[-3][1]["data"]
                assert agent["status"] == "failed"
                assert agent["error"]["code"] == code
                assert error["message_id"] == agent["id"]
                assert events[-2][1]["status"] == "failed"
                streamed = "".join(d["content"] for n, d in events if n == "stream_chunk")
                assert agent["content"] == streamed

                # The gateway keeps serving: the next turn in the same session completes.
                await client.call("chat_message", {"session_id": session_id, "message": "ok"})
                await client.wait_for(agent_said("Echo: ok"))
                await client.disconnect()
            nursery.cancel_scope.cancel()


async def test_agents_service_down(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_gateway(gateway_settings(tmp_path, "http://127.0.0.1:9")) as gw:
            session_id = await create_session(gw.url)
            client = await joined_client(gw.url, session_id)
            await client.call("chat_message", {"session_id": session_id, "message": "hi"})
            error = await client.wait_event("error")
            assert error["code"] == "agent_unavailable"
            await client.wait_for(turn_done)
            await client.disconnect()


async def test_health_waits_for_the_agents_as_long_as_its_setting_says(tmp_path: Path) -> None:
    answer_after_s = 2.5  # beyond the default health_timeout_s of 2

    async def slow_health(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            request += chunk
        await trio.sleep(answer_after_s)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await stream.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, slow_health, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            settings = gateway_settings(
                tmp_path,
                f"http://127.0.0.1:{port}",
                health_timeout_s=answer_after_s + 5,
                api_key="k",  # the detail (agents reachable or not) is for operators
            )
            async with running_gateway(settings) as gw, httpx.AsyncClient(timeout=20) as c:
                response = await c.get(f"{gw.url}/healthz", headers={"Authorization": "Bearer k"})
            assert response.status_code == 200
            assert response.json()["agents"]["reachable"] is True
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("compression", [False, True])
async def test_hypercorn_is_configured_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: bool
) -> None:
    # Start from hypercorn's own handshake, whatever earlier tests in this process did.
    monkeypatch.setattr(ws_stream, "PerMessageDeflate", PerMessageDeflate)
    sio = SocketIOServer(derived(ServerOptions))
    assert sio.asgi is sio.asgi
    assert ws_stream.PerMessageDeflate is PerMessageDeflate  # reading .asgi changes nothing
    settings = gateway_settings(tmp_path, "http://127.0.0.1:9", websocket_compression=compression)
    with trio.fail_after(30):
        async with running_gateway(settings):
            assert (ws_stream.PerMessageDeflate is PerMessageDeflate) is compression


async def test_leave_cancels_and_stores_partial_reply(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake(delay_s=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with running_gateway(gateway_settings(tmp_path, agents.url)) as gw:
                session_id = await create_session(gw.url)
                watcher = await joined_client(gw.url, session_id)
                await watcher.call("chat_message", {"session_id": session_id, "message": "endless"})
                await watcher.wait_for(chunks_at_least(3))
                ack = await watcher.call("leave_chat", {"session_id": session_id})
                assert ack["cancelled"] is True
                with trio.fail_after(5):
                    await agents.disconnected.wait()
                assert agents.disconnects == [session_id]
                seen = len(watcher.snapshot())
                # Until the cancelled reply is stored: the turn is over, nothing of it is left
                # to emit. Then one more round trip on the same socket, whose answer comes
                # after anything queued for it before.
                while (stored := await get_session(gw.url, session_id))["messages"][-1][
                    "sender"
                ] != "agent":
                    await trio.sleep(0.02)
                await watcher.call("leave_chat", {"session_id": session_id})
                assert len(watcher.snapshot()) == seen, "events after leave_chat"
                agent = stored["messages"][-1]
                assert agent["status"] == "cancelled"
                streamed = "".join(
                    d["content"] for n, d in watcher.snapshot() if n == "stream_chunk"
                )
                assert agent["content"].startswith(streamed)
                assert agent["content"]
                await watcher.disconnect()
            nursery.cancel_scope.cancel()


async def test_two_members_stop_and_leave(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake(delay_s=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with running_gateway(gateway_settings(tmp_path, agents.url)) as gw:
                session_id = await create_session(gw.url)
                other_session = await create_session(gw.url)
                a, b, outsider = (Client(gw.url, transports=["websocket"]) for _ in range(3))
                for c in (a, b, outsider):
                    await c.connect()
                await a.call("join_chat", {"session_id": session_id})
                await b.call("join_chat", {"session_id": session_id})
                await outsider.call("join_chat", {"session_id": other_session})

                # REST send streams to the room like a Socket.IO send.
                async with httpx.AsyncClient() as http:
                    response = await http.post(
                        f"{gw.url}/api/agent-chat/sessions/{session_id}/messages",
                        json={"message": "endless"},
                    )
                assert response.status_code == 202
                assert response.json()["status"] == "sent"
                for c in (a, b):
                    await c.wait_for(chunks_at_least(2))

                # One of two members leaving cancels nothing.
                ack = await a.call("leave_chat", {"session_id": session_id})
                assert ack["cancelled"] is False
                count = len(b.snapshot())
                await b.wait_for(
                    lambda evs: len([e for e in evs if e[0] in ("stream_chunk",)]) > count
                )
                # stop_response cancels whoever else watches.
                ack = await b.call("stop_response", {"session_id": session_id})
                assert ack["cancelled"] is True
                await b.wait_for(turn_done)
                complete = await b.wait_event("stream_complete")
                assert complete["status"] == "cancelled"
                with trio.fail_after(5):
                    await agents.disconnected.wait()
                assert outsider.snapshot() == []
                for c in (a, b, outsider):
                    await c.disconnect()
            nursery.cancel_scope.cancel()


async def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with running_gateway(gateway_settings(tmp_path, agents.url)) as gw:
                session_id = await create_session(gw.url)
                client = Client(gw.url, transports=["websocket"])
                await client.connect()
                cases: list[tuple[str, Any, str]] = [
                    ("join_chat", {}, "invalid_request"),
                    ("join_chat", "nope", "invalid_request"),
                    ("join_chat", {"session_id": 5}, "invalid_request"),
                    ("join_chat", {"session_id": "x" * 1000}, "invalid_request"),
                    ("join_chat", {"session_id": "unknown"}, "session_not_found"),
                    ("join_chat", {"session_id": session_id, "last_seq": "1"}, "invalid_request"),
                    ("chat_message", {"session_id": session_id}, "invalid_request"),
                    ("chat_message", {"session_id": session_id, "message": 3}, "invalid_request"),
                    (
                        "chat_message",
                        {"session_id": session_id, "message": "x", "context": []},
                        "invalid_request",
                    ),
                    ("chat_message", {"session_id": "nope", "message": "x"}, "session_not_found"),
                    (
                        "chat_message",
                        {"session_id": session_id, "message": "x" * 40_000},
                        "message_too_large",
                    ),
                    ("leave_chat", None, "invalid_request"),
                    ("stop_response", {"session_id": "nope"}, "session_not_found"),
                ]
                for event, data, code in cases:
                    ack = await client.call(event, data)
                    assert ack["status"] == "error" and ack["code"] == code, (event, data, ack)
                errors = [d for n, d in client.events if n == "error"]
                assert [e["code"] for e in errors] == [code for _, _, code in cases]
                assert all("seq" not in e for e in errors)

                async with httpx.AsyncClient(base_url=gw.url) as http:
                    prefix = "/api/agent-chat"
                    r = await http.post(f"{prefix}/sessions", content=b"{nope")
                    assert r.status_code == 400 and r.json()["code"] == "invalid_request"
                    r = await http.post(f"{prefix}/sessions", json={"agent_type": "x"})
                    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
                    r = await http.post(f"{prefix}/sessions", json=[1])
                    assert r.status_code == 422
                    r = await http.get(f"{prefix}/sessions/nope")
                    assert r.status_code == 404
                    assert r.json() == {"detail": "Session not found", "code": "session_not_found"}
                    r = await http.post(f"{prefix}/sessions/{session_id}/messages", json={})
                    assert r.status_code == 422
                    r = await http.post(
                        f"{prefix}/sessions/{session_id}/messages", json={"message": "y" * 40_000}
                    )
                    assert r.status_code == 413 and r.json()["code"] == "message_too_large"
                    r = await http.post(
                        f"{prefix}/sessions/{session_id}/messages", content=b"\xff\xfe"
                    )
                    assert r.status_code == 400
                    r = await http.post(
                        f"{prefix}/sessions",
                        content=b"x" * 2_000_000,
                        headers={"content-type": "application/json"},
                    )
                    assert r.status_code == 413
                    r = await http.post(f"{prefix}/sessions", json={"agent_type": "task"})
                    assert r.status_code == 201 and r.json()["agent_type"] == "task"

                # Nothing was stored by the refused requests; the session still works.
                stored = await get_session(gw.url, session_id)
                assert stored["messages"] == []
                await client.call("join_chat", {"session_id": session_id})
                await client.call("chat_message", {"session_id": session_id, "message": "ok"})
                await client.wait_for(turn_done)
                await client.disconnect()
            nursery.cancel_scope.cancel()


def dumps(obj: Any) -> str:
    return json.dumps(obj)
