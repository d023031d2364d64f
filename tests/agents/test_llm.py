"""The LLM path: the agents service streaming from a fake OpenAI-compatible server (real
HTTP on 127.0.0.1 port 0, see ``support.FakeLLM``), its failures turned into ``error``
events, and a client disconnect closing the upstream request.

Ceiling: every test runs under ``trio.fail_after(10)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from archon_chat.agents.llm import completions_url

from .support import (
    FakeLLM,
    agents_settings,
    ask,
    running_llm,
    running_service,
    sources_of,
    wait_idle,
    write_kb,
)

CEILING = 10


def llm_settings(tmp_path: Path, fake: FakeLLM, **changes: Any) -> Any:
    return agents_settings(
        tmp_path,
        kb_dir=str(write_kb(tmp_path / "kb")),
        llm_base_url=fake.base_url,
        llm_model="fake-model",
        llm_api_key="sk-test",
        **changes,
    )


async def test_tokens_stream_as_deltas(tmp_path: Path) -> None:
    fake = FakeLLM(tokens=["Plan", ":", " first", " do", " this", "."])
    with trio.fail_after(CEILING):
        async with (
            running_llm(fake),
            running_service(llm_settings(tmp_path, fake)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stream = await ask(client, "task", "Add a login page", {"detail_level": "high"})
            listing = (await client.get("/agents")).json()
            health = (await client.get("/health")).json()
    stream.check_shape()
    assert stream.chunks == ["Plan", ":", " first", " do", " this", "."]
    assert stream.last == {"type": "stream_complete"}
    assert {a["backend"] for a in listing["agents"]} == {"llm"}
    assert health["backend"] == "llm"
    assert health["model"] == "fake-model"

    (request,) = fake.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "fake-model"
    assert body["stream"] is True
    system, user = body["messages"]
    assert system["role"] == "system"
    assert "Detail level high" in system["content"]
    assert user == {"role": "user", "content": "Add a login page"}


async def test_history_goes_to_the_model_between_system_and_prompt(tmp_path: Path) -> None:
    fake = FakeLLM()
    history = [
        {"role": "user", "content": "What is trio?"},
        {"role": "assistant", "content": "A concurrency library."},
    ]
    with trio.fail_after(CEILING):
        async with (
            running_llm(fake),
            running_service(llm_settings(tmp_path, fake)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stream = await ask(client, "document", "Write a short guide to it", history=history)
    assert stream.last == {"type": "stream_complete"}
    messages = fake.requests[0]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1:3] == history
    assert "technical style" in messages[0]["content"]


async def test_rag_gives_the_model_its_passages_and_cites_them(tmp_path: Path) -> None:
    fake = FakeLLM(tokens=["Nurseries supervise tasks [1]."])
    with trio.fail_after(CEILING):
        async with (
            running_llm(fake),
            running_service(llm_settings(tmp_path, fake)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stream = await ask(client, "rag", "How do trio nurseries work?", {"match_count": 2})
    assert stream.last == {"type": "stream_complete"}
    assert stream.chunks[0] == "Nurseries supervise tasks [1]."
    assert stream.text.startswith("Nurseries supervise tasks [1].\n\n**Sources**")
    assert sources_of(stream.text)[0] == "trio.md"
    assert len(sources_of(stream.text)) == 2
    prompt = fake.requests[0]["body"]["messages"][-1]["content"]
    assert "[1] Trio › Nurseries (trio.md)" in prompt
    assert "A nursery supervises child tasks" in prompt
    assert prompt.endswith("Question: How do trio nurseries work?")


async def test_document_and_task_parameters_reach_the_model(tmp_path: Path) -> None:
    fake = FakeLLM()
    with trio.fail_after(CEILING):
        async with (
            running_llm(fake),
            running_service(llm_settings(tmp_path, fake)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            analysis = await ask(
                client,
                "document",
                "Analyse it",
                {"document": "trio", "format": "plain", "style": "formal"},
            )
            plan = await ask(
                client, "task", "Add a login page", {"project_id": "p-7", "detail_level": "low"}
            )
    assert analysis.last == plan.last == {"type": "stream_complete"}
    doc_messages = fake.requests[0]["body"]["messages"]
    assert "formal style" in doc_messages[0]["content"]
    assert "plain text with no markdown markup" in doc_messages[0]["content"]
    assert doc_messages[-1]["content"].startswith("Analyse `trio.md` (Trio)")
    assert "A nursery supervises child tasks" in doc_messages[-1]["content"]
    task_system = fake.requests[1]["body"]["messages"][0]["content"]
    assert "project p-7" in task_system
    assert "Detail level low" in task_system


async def test_a_plain_json_completion_is_accepted(tmp_path: Path) -> None:
    fake = FakeLLM(mode="json", tokens=["All ", "at ", "once."])
    with trio.fail_after(CEILING):
        async with (
            running_llm(fake),
            running_service(llm_settings(tmp_path, fake)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stream = await ask(client, "task", "Fix the crash")
    assert stream.text == "All at once."
    assert stream.last == {"type": "stream_complete"}


@pytest.mark.parametrize(
    ("fake", "expected"),
    [
        (FakeLLM(mode="status", status=500), "LLM service error: 500: model overloaded"),
        (FakeLLM(mode="status", status=404), "check ARCHON_CHAT_LLM_BASE_URL"),
        (FakeLLM(mode="status", status=401), "check ARCHON_CHAT_LLM_API_KEY"),
        (FakeLLM(mode="hang"), "timed out (no data for 0.3 s)"),
        (FakeLLM(mode="garbage"), "sent a malformed stream: unexpected line"),
        (FakeLLM(mode="badjson"), "sent a malformed stream: invalid JSON"),
        (FakeLLM(mode="truncated"), "ended the stream before the reply was done"),
        (FakeLLM(mode="cut"), "broke the connection: peer closed connection"),
    ],
    ids=["500", "404", "401", "hang", "garbage", "badjson", "truncated", "cut"],
)
async def test_upstream_failures_become_error_events(
    tmp_path: Path, fake: FakeLLM, expected: str
) -> None:
    with trio.fail_after(CEILING):
        async with (
            running_llm(fake),
            running_service(llm_settings(tmp_path, fake, llm_timeout_s=0.3)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stream = await ask(client, "task", "Fix the crash")
            assert (await client.get("/health")).json()["active_streams"] == 0
    stream.check_shape()
    assert stream.last["type"] == "error"
    assert expected in stream.last["error"]
    assert "sk-test" not in stream.last["error"]
    if fake.mode in ("badjson", "truncated", "cut"):
        assert stream.chunks == ["Hello"]  # what came before the failure is kept


async def test_an_unreachable_llm_is_an_error_event(tmp_path: Path) -> None:
    fake = FakeLLM()
    async with running_llm(fake):
        pass  # the port is now closed: nothing listens there
    with trio.fail_after(CEILING):
        async with (
            running_service(llm_settings(tmp_path, fake)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stream = await ask(client, "task", "Fix the crash")
    assert stream.last["type"] == "error"
    assert f"LLM service at http://127.0.0.1:{fake.port} is unreachable" in stream.last["error"]


async def test_pings_flow_while_the_model_thinks(tmp_path: Path) -> None:
    fake = FakeLLM(first_delay_s=0.5)
    with trio.fail_after(CEILING):
        async with (
            running_llm(fake),
            running_service(llm_settings(tmp_path, fake, agent_ping_interval_s=0.05)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stream = await ask(client, "task", "Fix the crash")
    assert stream.pings >= 1
    assert stream.text == "Hello, world!"
    assert stream.last == {"type": "stream_complete"}


async def test_a_client_disconnect_closes_the_llm_request(tmp_path: Path) -> None:
    fake = FakeLLM(mode="hold")
    with trio.fail_after(CEILING):
        async with (
            running_llm(fake),
            running_service(llm_settings(tmp_path, fake)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            body = {"prompt": "Fix the crash"}
            async with client.stream("POST", "/agents/task/stream", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        assert '"Hello"' in line
                        break
                assert not fake.closed.is_set()
            await fake.closed.wait()
            await wait_idle(client)


async def test_streams_share_one_client_and_its_connections(tmp_path: Path) -> None:
    """One client per backend: sequential replies reuse a kept-alive connection, and the
    connection is closed when the service shuts down."""
    fake = FakeLLM(keep_alive=True)
    with trio.fail_after(CEILING):
        async with running_llm(fake):
            async with (
                running_service(llm_settings(tmp_path, fake)) as url,
                httpx.AsyncClient(base_url=url) as client,
            ):
                for _ in range(5):
                    stream = await ask(client, "task", "Fix the crash")
                    assert stream.text == "Hello, world!"
                assert len(fake.requests) == 5
                assert fake.connections == 1
                assert fake.open_connections == 1
            while fake.open_connections:  # the service closed its client on the way out
                await trio.sleep(0.01)


async def test_concurrent_streams_respect_the_connection_limit(tmp_path: Path) -> None:
    fake = FakeLLM(keep_alive=True, first_delay_s=0.1)
    texts: list[str] = []
    with trio.fail_after(CEILING):
        async with (
            running_llm(fake),
            running_service(
                llm_settings(tmp_path, fake, llm_max_connections=3, llm_keepalive=3)
            ) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):

            async def one() -> None:
                stream = await ask(client, "task", "Fix the crash")
                texts.append(stream.text or str(stream.last))

            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(one)
    assert texts == ["Hello, world!"] * 12
    assert fake.connections == 3


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://h:1/v1", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1/", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1/chat/completions", "http://h:1/v1/chat/completions"),
    ],
)
def test_completions_url(base: str, url: str) -> None:
    assert completions_url(base) == url
