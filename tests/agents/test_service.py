"""The agents service over real HTTP (hypercorn on 127.0.0.1 port 0, httpx): the listing,
health, refusals before any stream starts, stream framing, and what a client disconnect
does to the agent's work.

Ceiling: every test runs under ``trio.fail_after(10)``.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from archon_chat.agents import create_agents_app
from archon_chat.agents.schema import MAX_HISTORY_MESSAGES
from tests.sio.serving import serve_app

from .support import agents_settings, ask, read_stream, running_service, wait_idle, write_kb

CEILING = 10


async def post(client: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response:
    return await client.post(path, **kwargs)


async def test_listing_documents_every_agent_and_its_context(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with (
            running_service(agents_settings(tmp_path)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            response = await client.get("/agents")
            assert response.status_code == 200
            listing = response.json()
            agents = {a["agent_type"]: a for a in listing["agents"]}
            assert list(agents) == ["rag", "document", "task"]
            assert all(a["backend"] == "offline" for a in agents.values())
            assert agents["rag"]["context"]["match_count"] == {
                "type": "integer",
                "default": 5,
                "nullable": True,
                "description": "passages retrieved and cited",
                "minimum": 1,
                "maximum": 50,
            }
            assert agents["rag"]["context"]["source_filter"]["default"] is None
            doc = agents["document"]["context"]
            assert doc["format"]["choices"] == ["markdown", "plain"]
            assert doc["format"]["default"] == "markdown"
            assert doc["style"]["default"] == "technical"
            assert "concise" in doc["style"]["choices"]
            task = agents["task"]["context"]
            assert task["detail_level"]["choices"] == ["low", "medium", "high"]
            assert set(task) == {"project_id", "detail_level"}
            assert listing["request"]["max_prompt_chars"] == 100_000


async def test_health(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with (
            running_service(agents_settings(tmp_path)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            response = await client.get("/health")
            assert response.status_code == 200
            assert response.json() == {
                "status": "ok",
                "backend": "offline",
                "agents": ["rag", "document", "task"],
                "active_streams": 0,
            }


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/agents/poetry/stream", {"prompt": "hi"}, 404, "agent_not_found"),
        ("/agents/rag/stream", b"{not json", 400, "invalid_json"),
        ("/agents/rag/stream", b"\xff\xfe", 400, "invalid_json"),
        ("/agents/rag/stream", [1, 2], 400, "invalid_json"),
        ("/agents/rag/stream", {}, 422, "invalid_request"),
        ("/agents/rag/stream", {"prompt": "   "}, 422, "invalid_request"),
        ("/agents/rag/stream", {"prompt": 42}, 422, "invalid_request"),
        ("/agents/rag/stream", {"prompt": "hi", "context": []}, 422, "invalid_request"),
        ("/agents/rag/stream", {"prompt": "hi", "history": {}}, 422, "invalid_request"),
        (
            "/agents/rag/stream",
            {"prompt": "hi", "history": [{"role": "system", "content": "x"}]},
            422,
            "invalid_request",
        ),
        (
            "/agents/rag/stream",
            {"prompt": "hi", "history": [{"role": "user", "content": 1}]},
            422,
            "invalid_request",
        ),
        (
            "/agents/rag/stream",
            {"prompt": "hi", "history": [{"role": "user", "content": "x", "at": 1}]},
            422,
            "invalid_request",
        ),
        ("/agents/rag/stream", {"prompt": "hi", "session_id": 7}, 422, "invalid_request"),
        ("/agents/rag/stream", {"prompt": "hi", "agent_type": "task"}, 422, "invalid_request"),
        ("/agents/rag/stream", {"prompt": "hi", "stream": True}, 422, "invalid_request"),
        ("/agents/rag/stream", {"prompt": "hi", "context": {"style": "x"}}, 422, "invalid_context"),
        (
            "/agents/rag/stream",
            {"prompt": "hi", "context": {"match_count": "5"}},
            422,
            "invalid_context",
        ),
        (
            "/agents/rag/stream",
            {"prompt": "hi", "context": {"match_count": True}},
            422,
            "invalid_context",
        ),
        (
            "/agents/rag/stream",
            {"prompt": "hi", "context": {"match_count": 0}},
            422,
            "invalid_context",
        ),
        (
            "/agents/document/stream",
            {"prompt": "hi", "context": {"format": "html"}},
            422,
            "invalid_context",
        ),
        (
            "/agents/task/stream",
            {"prompt": "hi", "context": {"detail_level": "extreme"}},
            422,
            "invalid_context",
        ),
        (
            "/agents/task/stream",
            {"prompt": "hi", "context": {"match_count": 3}},
            422,
            "invalid_context",
        ),
        ("/agents/rag/stream", {"prompt": "x" * 101}, 422, "prompt_too_large"),
    ],
)
async def test_bad_requests_are_refused_before_any_stream(
    tmp_path: Path, path: str, body: object, status: int, code: str
) -> None:
    settings = agents_settings(tmp_path, max_prompt_chars=100)
    with trio.fail_after(CEILING):
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:
            if isinstance(body, bytes):
                response = await post(client, path, content=body)
            else:
                response = await post(client, path, json=body)
            assert response.status_code == status
            assert response.headers["content-type"].startswith("application/json")
            refusal = response.json()
            assert set(refusal) == {"detail", "code"}
            assert refusal["code"] == code
            assert refusal["detail"]


async def test_refusals_name_what_is_wrong(tmp_path: Path) -> None:
    settings = agents_settings(tmp_path, max_prompt_chars=100)
    with trio.fail_after(CEILING):
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:
            stray = await post(
                client, "/agents/rag/stream", json={"prompt": "hi", "context": {"colour": 1}}
            )
            assert "colour" in stray.json()["detail"]
            assert "match_count" in stray.json()["detail"]  # the allowed keys are listed
            big = await post(client, "/agents/rag/stream", json={"prompt": "x" * 101})
            assert "100" in big.json()["detail"]
            missing = await post(client, "/agents/rag/stream", json={"context": {}})
            assert "prompt" in missing.json()["detail"]


async def test_the_prompt_limit_is_inclusive(tmp_path: Path) -> None:
    settings = agents_settings(tmp_path, max_prompt_chars=100)
    with trio.fail_after(CEILING):
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:
            stream = await ask(client, "task", "Fix the crash " + "x" * 86)
            stream.check_shape()
            assert stream.last == {"type": "stream_complete"}


async def test_null_context_values_mean_the_defaults(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with (
            running_service(agents_settings(tmp_path)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stream = await ask(
                client, "task", "Fix the login crash", {"detail_level": None, "project_id": None}
            )
            assert stream.last == {"type": "stream_complete"}
            assert "Detail level: **medium**" in stream.text


async def test_history_beyond_its_bound_is_refused(tmp_path: Path) -> None:
    history = [{"role": "user", "content": "x"}] * (MAX_HISTORY_MESSAGES + 1)
    with trio.fail_after(CEILING):
        async with (
            running_service(agents_settings(tmp_path)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            response = await post(
                client, "/agents/rag/stream", json={"prompt": "hi", "history": history}
            )
            assert response.status_code == 422


async def test_an_oversized_body_is_413(tmp_path: Path) -> None:
    app = create_agents_app(agents_settings(tmp_path, max_prompt_chars=10))
    limit = app.config["MAX_CONTENT_LENGTH"]
    with trio.fail_after(CEILING):
        async with (
            running_service(agents_settings(tmp_path, max_prompt_chars=10)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            body = json.dumps({"prompt": "hi", "session_id": "x" * limit})
            response = await post(
                client,
                "/agents/rag/stream",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 413
            assert response.json()["code"] == "request_too_large"


async def test_unknown_routes_and_methods_answer_json(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with (
            running_service(agents_settings(tmp_path)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            missing = await client.get("/nowhere")
            assert missing.status_code == 404
            assert missing.json()["code"] == "not_found"
            wrong = await client.get("/agents/rag/stream")
            assert wrong.status_code == 405
            assert wrong.json()["code"] == "method_not_allowed"


async def test_stream_headers_and_framing(tmp_path: Path) -> None:
    settings = agents_settings(tmp_path, kb_dir=str(write_kb(tmp_path / "kb")))
    with trio.fail_after(CEILING):
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:
            body = {"prompt": "What is a nursery?", "session_id": None}
            async with client.stream("POST", "/agents/rag/stream", json=body) as response:
                assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
                assert response.headers["cache-control"] == "no-cache"
                raw = (await response.aread()).decode()
            # Every event is one ``data:`` line and a blank line.
            events = raw.split("\n\n")
            assert events[-1] == ""
            for event in events[:-1]:
                assert event.startswith("data: ")
                assert "\n" not in event
            assert json.loads(events[-2][6:]) == {"type": "stream_complete"}


async def test_a_disconnect_stops_the_agent(tmp_path: Path) -> None:
    # Paced at 50 ms per delta, the whole answer would take many seconds: the stream
    # count dropping to zero within the ceiling means the agent stopped, not finished.
    settings = agents_settings(tmp_path, kb_dir=str(write_kb(tmp_path / "kb")))
    with trio.fail_after(CEILING):
        async with (
            running_service(settings, pacing_s=0.05) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            body = {"prompt": "Plan: add a settings page", "context": {"detail_level": "high"}}
            async with client.stream("POST", "/agents/task/stream", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break
                assert (await client.get("/health")).json()["active_streams"] == 1
            await wait_idle(client)


async def test_concurrent_streams_are_independent(tmp_path: Path) -> None:
    settings = agents_settings(tmp_path, kb_dir=str(write_kb(tmp_path / "kb")))
    results: dict[str, str] = {}
    with trio.fail_after(CEILING):
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:

            async def one(agent: str, prompt: str) -> None:
                stream = await ask(client, agent, prompt)
                assert stream.last == {"type": "stream_complete"}
                results[agent] = stream.text

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, "rag", "How do nurseries work?")
                nursery.start_soon(one, "document", "Write a note about full-text search")
                nursery.start_soon(one, "task", "Fix the crash and add a test")
            solo = await ask(client, "task", "Fix the crash and add a test")
    assert results["task"] == solo.text
    assert "Nurseries" in results["rag"]


async def test_a_missing_knowledge_base_is_an_error_event(tmp_path: Path) -> None:
    settings = agents_settings(tmp_path, kb_dir=str(tmp_path / "absent"))
    with trio.fail_after(CEILING):
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:
            stream = await ask(client, "rag", "anything")
            stream.check_shape()
            assert stream.last["type"] == "error"
            assert "knowledge base is unavailable" in stream.last["error"]


@pytest.mark.slow
def test_run_agents_serves_until_sigterm(tmp_path: Path) -> None:
    # A subprocess (signals), so no trio here: the ceiling is the select() deadline.
    env = {
        **os.environ,
        "ARCHON_CHAT_AGENTS_PORT": "0",
        "ARCHON_CHAT_KB_INDEX": str(tmp_path / "index.db"),
    }
    code = "from archon_chat.agents import run_agents; from archon_chat.config import "
    code += "load_settings; run_agents(load_settings())"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        found = None
        seen = b""
        deadline = time.monotonic() + CEILING
        while found is None and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            data = os.read(proc.stdout.fileno(), 4096) if ready else b""
            if not data:
                break  # silent past the ceiling, or exited
            seen += data
            found = re.search(rb"serving on http://[^\s]+:(\d+)", seen)
        assert found is not None, f"the service did not report its port: {seen!r}"
        port = int(found.group(1))
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_stream_outlives_any_response_timeout(tmp_path: Path) -> None:
    """quart cuts a response after ``RESPONSE_TIMEOUT`` (60 s by default); a stream lasts
    as long as its agent needs, even where the app's timeout is set far shorter."""
    settings = agents_settings(tmp_path, kb_dir=str(write_kb(tmp_path / "kb")))
    app = create_agents_app(settings, pacing_s=0.02)
    app.config["RESPONSE_TIMEOUT"] = 0.2
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            port = await serve_app(nursery, app)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                started = trio.current_time()
                stream = await ask(client, "task", "Plan: add a settings page", {})
                took = trio.current_time() - started
            nursery.cancel_scope.cancel()
    stream.check_shape()
    assert stream.last == {"type": "stream_complete"}
    assert took > 0.4, "the answer was too short to outlast the timeout"


async def test_a_prompt_of_four_byte_characters_at_the_limit_fits_the_body(
    tmp_path: Path,
) -> None:
    settings = agents_settings(tmp_path, kb_dir=str(write_kb(tmp_path / "kb")))
    with trio.fail_after(CEILING):
        async with (
            running_service(settings.replace(max_prompt_chars=50_000)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stream = await ask(client, "task", "\U0001f600" * 50_000, {})
    assert stream.status == 200
    assert stream.last == {"type": "stream_complete"}


async def test_framing_survives_awkward_text(tmp_path: Path) -> None:
    # Newlines, quotes and non-ASCII in a prompt end up JSON-escaped on one data line.
    with trio.fail_after(CEILING):
        async with (
            running_service(agents_settings(tmp_path)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            prompt = 'Analyze this:\nLine "one" — ünïcode.\n\ndata: not an event\n\nEnd.'
            stream = await ask(client, "document", prompt, {"mode": "analyze"})
            stream.check_shape()
            assert stream.last == {"type": "stream_complete"}


async def test_read_stream_rejects_foreign_lines() -> None:
    # The helper itself must fail on anything but data lines and pings.
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"event: x\n\n"))
    with trio.fail_after(CEILING):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/")
            with pytest.raises(AssertionError):
                await read_stream(response)
