"""The three agents offline, over real HTTP, against a small knowledge base written by the
test: ranking, ``match_count``, ``source_filter``, formats and styles, detail levels,
deltas whose concatenation is the full answer, and follow-ups that use the history.

Ceiling: every async test runs under ``trio.fail_after(10)``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from archon_chat.agents import rag, task
from archon_chat.agents.kb import KnowledgeBase
from archon_chat.agents.schema import parse_request

from .support import agents_settings, ask, running_service, sources_of, write_kb

CEILING = 10


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = agents_settings(tmp_path, kb_dir=str(write_kb(tmp_path / "kb")))
    with trio.fail_after(CEILING):
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as c:
            yield c


async def complete(client: httpx.AsyncClient, agent: str, prompt: str, **kw: Any) -> str:
    with trio.fail_after(CEILING):
        stream = await ask(client, agent, prompt, **kw)
    stream.check_shape()
    assert stream.last == {"type": "stream_complete"}, stream.last
    return stream.text


# -- rag


async def test_rag_cites_the_relevant_passage_first(client: httpx.AsyncClient) -> None:
    text = await complete(client, "rag", "How does a nursery supervise child tasks?")
    assert text.startswith("*Extractive answer: no language model is configured")
    first = text.split("**1. ", 1)[1].split("**", 1)[0]
    assert first == "Trio › Nurseries"
    assert "it waits for every child" in text
    assert sources_of(text)[0] == "trio.md"
    assert "[1]" in text


@pytest.mark.parametrize("count", [1, 2, 3])
async def test_rag_honours_match_count(client: httpx.AsyncClient, count: int) -> None:
    text = await complete(client, "rag", "install trio sqlite", context={"match_count": count})
    assert len(sources_of(text)) == count
    assert f"[{count}]" in text
    assert f"[{count + 1}]" not in text


async def test_rag_defaults_to_five_passages(client: httpx.AsyncClient) -> None:
    text = await complete(client, "rag", "install trio sqlite")
    assert len(sources_of(text)) == 5


async def test_rag_honours_source_filter(client: httpx.AsyncClient) -> None:
    text = await complete(
        client, "rag", "How do I install trio or sqlite?", context={"source_filter": "sqlite"}
    )
    assert set(sources_of(text)) == {"sqlite.md"}
    garden = await complete(
        client, "rag", "watering", context={"source_filter": "garden.example.com"}
    )
    assert sources_of(garden) == ["gardening.md"]
    assert "garden.example.com/tomatoes" in garden  # the declared source is cited


async def test_rag_says_when_nothing_matches(client: httpx.AsyncClient) -> None:
    text = await complete(client, "rag", "quantum chromodynamics")
    assert "Nothing in the knowledge base matches" in text
    assert "4 document(s)" in text
    assert "Growing tomatoes" in text
    filtered = await complete(client, "rag", "trio", context={"source_filter": "zzz"})
    assert "among sources matching “zzz”" in filtered


async def test_rag_follow_up_uses_the_previous_question(client: httpx.AsyncClient) -> None:
    alone = await complete(client, "rag", "How do I install it?")
    assert sources_of(alone)[0] == "trio.md"
    history = [
        {"role": "user", "content": "What is SQLite?"},
        {"role": "assistant", "content": "SQLite is an embedded SQL database engine."},
    ]
    follow = await complete(client, "rag", "How do I install it?", history=history)
    assert sources_of(follow)[0] == "sqlite.md"
    assert "**1. SQLite › Installing SQLite**" in follow
    assert "read together with your previous question" in follow


async def test_rag_deltas_concatenate_to_the_full_answer(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    prompt = "How does a nursery supervise child tasks?"
    with trio.fail_after(CEILING):
        stream = await ask(client, "rag", prompt, context={"match_count": 3})
        # The same answer, composed directly from an index of the same folder.
        kb = KnowledgeBase(tmp_path / "kb", tmp_path / "other-index.db")
        await kb.refresh()
        passages = await kb.search(prompt, 3, None)
        await kb.aclose()
    request = parse_request(rag.SPEC, {"prompt": prompt, "context": {"match_count": 3}}, 1000)
    assert stream.text == rag.compose(request, prompt, passages, [])
    assert len(stream.chunks) > 20
    assert all(len(c.split()) <= 2 for c in stream.chunks)


# -- document


LETTER = """Summarize this:
The harbour town of Kestrel relies on fishing. Fishing boats leave before dawn and return
at noon. The fish market opens when the boats return, and restaurants buy most of the
catch. Tourism grows every summer, and tourists eat the fish in the restaurants.

Storms close the harbour a few days each winter. When storms close the harbour, the
fishing boats stay in and the market stays shut. The town council plans a new breakwater
to protect the harbour from storms."""


async def test_document_analyses_a_given_text(client: httpx.AsyncClient) -> None:
    text = await complete(client, "document", LETTER)
    assert text.startswith("# Analysis of your text\n\n*Rule-based analysis")
    body = LETTER.split("\n", 1)[1]
    assert f"Words: {len(body.split())}" in text
    assert "Reading time: under a minute" in text
    assert "## Outline" in text
    assert "## Summary" in text
    terms = text.split("## Key terms", 1)[1]
    assert "`harbour`" in terms
    assert "`fishing`" in terms or "`fish`" in terms


async def test_document_plain_format_has_no_markup(client: httpx.AsyncClient) -> None:
    text = await complete(client, "document", LETTER, context={"format": "plain"})
    assert text.startswith("ANALYSIS OF YOUR TEXT\n")
    assert not re.search(r"[#*`]", text)
    assert "Summary\n" in text


async def test_document_styles_shape_the_answer(client: httpx.AsyncClient) -> None:
    technical = await complete(client, "document", LETTER)
    concise = await complete(client, "document", LETTER, context={"style": "concise"})
    friendly = await complete(client, "document", LETTER, context={"style": "friendly"})
    formal = await complete(client, "document", LETTER, context={"style": "formal"})
    assert len(concise) < len(technical)
    assert "Here's what I found" in friendly
    assert "The text comprises" in formal
    assert len({technical, concise, friendly, formal}) == 4


async def test_document_analyses_a_named_knowledge_base_document(
    client: httpx.AsyncClient,
) -> None:
    text = await complete(client, "document", "Analyse it", context={"document": "trio"})
    assert text.startswith("# Analysis of `trio.md` (Trio)")
    outline = text.split("## Outline", 1)[1].split("##", 1)[0]
    assert "Installing trio" in outline
    assert "Nurseries" in outline
    by_prompt = await complete(client, "document", "Analyze sqlite.md")
    assert by_prompt.startswith("# Analysis of `sqlite.md` (SQLite)")


async def test_document_names_the_documents_when_one_is_missing(
    client: httpx.AsyncClient,
) -> None:
    with trio.fail_after(CEILING):
        stream = await ask(client, "document", "Analyse it", context={"document": "nope"})
    stream.check_shape()
    assert stream.last["type"] == "error"
    assert "'nope'" in stream.last["error"]
    assert "trio.md" in stream.last["error"]


async def test_document_drafts_from_the_knowledge_base(client: httpx.AsyncClient) -> None:
    text = await complete(client, "document", "Write a short guide about trio nurseries")
    assert text.startswith("# Trio Nurseries\n\n*Rule-based draft")
    assert "## Overview" in text
    assert "A nursery supervises child tasks" in text
    sources = text.split("## Sources", 1)[1]
    assert "Trio › Nurseries (`trio.md`)" in sources
    formal = await complete(
        client, "document", "Write about trio nurseries", context={"style": "formal"}
    )
    assert "## 1. Purpose" in formal
    assert "References" in formal


async def test_document_draft_without_material_says_so(client: httpx.AsyncClient) -> None:
    text = await complete(client, "document", "Write a page about quantum chromodynamics")
    assert "nothing in the knowledge base matches this topic" in text
    assert "## Purpose" in text


async def test_document_follow_up_analyses_the_previous_answer(
    client: httpx.AsyncClient,
) -> None:
    previous = LETTER.split("\n", 1)[1]
    history = [
        {"role": "user", "content": "Tell me about Kestrel"},
        {"role": "assistant", "content": previous},
    ]
    text = await complete(client, "document", "Summarize that", history=history)
    assert text.startswith("# Analysis of the previous answer")
    summary = text.split("## Summary", 1)[1].split("##", 1)[0]
    assert "harbour" in summary


async def test_document_mode_forces_the_choice(client: httpx.AsyncClient) -> None:
    drafted = await complete(client, "document", "SQLite", context={"mode": "draft"})
    assert drafted.startswith("# SQLite\n\n*Rule-based draft")
    analysed = await complete(
        client, "document", "Short words only here.", context={"mode": "analyze"}
    )
    assert analysed.startswith("# Analysis of your text")
    assert "Words: 4" in analysed
    named = await complete(client, "document", "Analyze sqlite.md", context={"mode": "analyze"})
    assert named.startswith("# Analysis of `sqlite.md` (SQLite)")


# -- task


async def test_task_levels_deepen_the_plan(client: httpx.AsyncClient) -> None:
    prompt = "Add login, a settings page and email notifications"
    counts = {}
    for level in ("low", "medium", "high"):
        text = await complete(client, "task", prompt, context={"detail_level": level})
        assert text.startswith("# Plan: Add login, a settings page and email notifications")
        assert "*Rule-based plan (no language model is configured)" in text
        assert f"Detail level: **{level}**" in text
        counts[level] = len(re.findall(r"^\d+\. \*\*T\d+ · ", text, re.MULTILINE))
    assert counts["low"] == 3
    assert counts["low"] < counts["medium"] < counts["high"]


async def test_task_items_inherit_the_verb(client: httpx.AsyncClient) -> None:
    text = await complete(
        client,
        "task",
        "Add login, a settings page and email notifications",
        context={"detail_level": "low"},
    )
    titles = re.findall(r"\*\*T\d+ · (.+?)\*\*", text)
    assert titles == ["Add login", "Add a settings page", "Add email notifications"]


async def test_task_dependencies_point_backwards(client: httpx.AsyncClient) -> None:
    text = await complete(
        client,
        "task",
        "Design the database schema, build the REST API and write the user guide",
        context={"detail_level": "high", "project_id": "proj-42"},
    )
    assert "Project: `proj-42`" in text
    ids = re.findall(r"\*\*(T\d+) · ", text)
    assert ids == [f"T{n}" for n in range(1, len(ids) + 1)]
    deps = re.findall(r"\*\*(T\d+) · .*?\n\s+- Depends on: (.+)", text)
    assert len(deps) == len(ids)
    for tid, depends in deps:
        if depends != "none":
            for dep in depends.split(", "):
                assert int(dep[1:]) < int(tid[1:])
    # Layers: the API waits for the schema, the guide for the API.
    titles = dict(re.findall(r"\*\*(T\d+) · (.+?)\*\*", text))
    first_api = next(
        t for t, title in titles.items() if "REST API" in title and not title.startswith("Agree")
    )
    depends_of = dict(deps)
    assert "database schema" in titles[depends_of[first_api]]
    assert "## Order of work" in text
    assert text.count("Acceptance criteria:") == len(ids)


async def test_task_bugs_get_a_failing_test_first(client: httpx.AsyncClient) -> None:
    text = await complete(client, "task", "Fix the crash on startup")
    assert "**T1 · Reproduce the crash on startup with a failing test**" in text


async def test_task_plans_are_deterministic_and_stream_their_full_text(
    client: httpx.AsyncClient,
) -> None:
    prompt = "Migrate the store to PostgreSQL, then benchmark it and document the results."
    with trio.fail_after(CEILING):
        first = await ask(client, "task", prompt, context={"detail_level": "high"})
        second = await ask(client, "task", prompt, context={"detail_level": "high"})
    assert first.text == second.text
    assert first.text == task.compose(prompt, "high", None)
    assert len(first.chunks) > 50


async def test_task_follow_up_adds_detail_to_the_previous_request(
    client: httpx.AsyncClient,
) -> None:
    request = "Fix the login crash and add a settings page"
    earlier = await complete(client, "task", request)
    history = [{"role": "user", "content": request}, {"role": "assistant", "content": earlier}]
    deeper = await complete(client, "task", "More detail please", history=history)
    assert "Detail level: **high**" in deeper
    assert "Re-planned your previous request at detail level high." in deeper
    assert "settings page" in deeper
    assert deeper.count("**T") > earlier.count("**T")
    explicit = await complete(
        client, "task", "More detail please", history=history, context={"detail_level": "low"}
    )
    assert "Detail level: **low**" in explicit
    # The panel always sends its setting: the previous plan's level is no request.
    same = await complete(
        client, "task", "More detail please", history=history, context={"detail_level": "medium"}
    )
    assert "Detail level: **high**" in same


async def test_task_follow_up_extends_the_previous_request(client: httpx.AsyncClient) -> None:
    history = [
        {"role": "user", "content": "Add a settings page"},
        {"role": "assistant", "content": "(plan)"},
    ]
    text = await complete(
        client,
        "task",
        "Also write the user guide",
        history=history,
        context={"detail_level": "low"},
    )
    titles = re.findall(r"\*\*T\d+ · (.+?)\*\*", text)
    assert titles == ["Add a settings page", "Write the user guide"]
