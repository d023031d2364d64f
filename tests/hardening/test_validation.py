"""Input the actors cannot store or forward is refused before them, with an answer:
``invalid_request`` in the ack and an ``error`` event on Socket.IO, a 4xx on REST. Each
case is sent while a reply streams in the same session, which must still end
``complete`` (it used to crash the session actor and fail the reply).

Ceiling: every test runs under ``trio.fail_after(40)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.agents_fake import AgentsFake
from tests.e2e.support import (
    chunks_at_least,
    create_session,
    gateway_settings,
    joined_client,
    running_gateway,
    turn_done,
)

pytestmark = pytest.mark.slow

PREFIX = "/api/agent-chat"


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"x": value}
    return value


def socket_cases(session_id: str) -> list[tuple[str, Any]]:
    message = {"session_id": session_id, "message": "hi"}
    return [
        ("chat_message", {**message, "message": "a\ud800b"}),
        ("chat_message", {**message, "client_message_id": "\udfff"}),
        ("chat_message", {"session_id": "\ud800", "message": "hi"}),
        ("chat_message", {**message, "context": {"x": float("nan")}}),
        ("chat_message", {**message, "context": {"x": float("inf")}}),
        ("chat_message", {**message, "context": {"x": [float("-inf")]}}),
        ("chat_message", {**message, "context": {"x": b"\x00\x01"}}),
        ("chat_message", {**message, "context": {"\ud800": 1}}),
        ("chat_message", {**message, "context": {"x": 2**70}}),
        ("chat_message", {**message, "context": deep(40)}),
        ("chat_message", (message, message, message)),
        ("join_chat", {"session_id": session_id, "last_seq": 2**70}),
        ("join_chat", {"session_id": session_id, "last_seq": -1}),
        ("join_chat", ({"session_id": session_id}, 2)),
        ("leave_chat", {"session_id": "\ud800"}),
    ]


async def test_bad_socket_input_is_refused_while_a_reply_completes(tmp_path: Path) -> None:
    with trio.fail_after(40):
        agents = AgentsFake(delay_s=0.1)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with running_gateway(gateway_settings(tmp_path, agents.url)) as gw:
                session_id = await create_session(gw.url)
                client = await joined_client(gw.url, session_id)
                ack = await client.call(
                    "chat_message", {"session_id": session_id, "message": "slow"}
                )
                assert ack["status"] == "sent", ack
                await client.wait_for(chunks_at_least(1))
                cases = socket_cases(session_id)
                for event, data in cases:
                    ack = await client.call(event, data)
                    assert ack["status"] == "error", (event, data, ack)
                    assert ack["code"] == "invalid_request", (event, data, ack)
                events = await client.wait_for(turn_done, timeout=10)
                errors = [d for n, d in events if n == "error"]
                assert len(errors) == len(cases)
                assert {e["code"] for e in errors} == {"invalid_request"}
                replies = [
                    d["data"]
                    for n, d in events
                    if n == "message" and d["data"]["sender"] == "agent"
                ]
                assert [(r["status"], r["content"]) for r in replies] == [
                    ("complete", "".join(f"w{i} " for i in range(10)))
                ]
                # The session still takes good input.
                ack = await client.call("chat_message", {"session_id": session_id, "message": "ok"})
                assert ack["status"] == "sent", ack
                await client.disconnect()
            nursery.cancel_scope.cancel()


REST_BODIES: list[tuple[str, bytes, int]] = [
    ("sessions", b'{"project_id": "\\ud800"}', 422),
    ("messages", b'{"message": "a\\ud800"}', 422),
    ("messages", b'{"message": "x", "client_message_id": "\\udfff"}', 422),
    ("messages", b'{"message": "x", "context": {"x": NaN}}', 400),
    ("messages", b'{"message": "x", "context": {"x": Infinity}}', 400),
    ("messages", b'{"message": "x", "context": {"x": -Infinity}}', 400),
    ("messages", b'{"message": "x", "context": {"x": 1e999999}}', 400),
    ("messages", b'{"message": "x", "context": {"x": 1180591620717411303424}}', 422),
    ("messages", b'{"message": "x", "context": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, 400),
    ("messages", b"[" * 6000 + b"]" * 6000, 400),
    ("sessions", b"[" * 6000 + b"]" * 6000, 400),
    ("messages", b'{"message": "x"', 400),
    ("messages", b'{"message": "\xff"}', 400),
]


async def test_bad_rest_input_is_a_4xx_while_a_reply_completes(tmp_path: Path) -> None:
    with trio.fail_after(40):
        agents = AgentsFake(delay_s=0.1)
        async with trio.open_nursery() as nursery:
            await nursery.start(agents.serve)
            async with running_gateway(gateway_settings(tmp_path, agents.url)) as gw:
                session_id = await create_session(gw.url)
                client = await joined_client(gw.url, session_id)
                ack = await client.call(
                    "chat_message", {"session_id": session_id, "message": "slow"}
                )
                assert ack["status"] == "sent", ack
                await client.wait_for(chunks_at_least(1))
                async with httpx.AsyncClient(base_url=gw.url) as http:
                    for target, body, status in REST_BODIES:
                        path = (
                            f"{PREFIX}/sessions"
                            if target == "sessions"
                            else f"{PREFIX}/sessions/{session_id}/messages"
                        )
                        response = await http.post(
                            path, content=body, headers={"Content-Type": "application/json"}
                        )
                        assert response.status_code == status, (body[:80], response.text)
                        assert response.json()["code"] == "invalid_request", response.text
                    for path in ("/static/%00", "/static/" + "a" * 5000, "/static/a%00b.js"):
                        response = await http.get(path)
                        assert response.status_code == 404, (path, response.text)
                    response = await http.get(f"{PREFIX}/sessions/" + "s" * 5000)
                    assert response.status_code == 404, response.text
                events = await client.wait_for(turn_done, timeout=10)
                replies = [
                    d["data"]
                    for n, d in events
                    if n == "message" and d["data"]["sender"] == "agent"
                ]
                assert [r["status"] for r in replies] == ["complete"]
                await client.disconnect()
            nursery.cancel_scope.cancel()
