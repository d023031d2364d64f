"""Pure text machinery of the offline agents and request validation: synchronous tests,
no I/O, so no ceiling is needed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archon_chat.agents import document, rag, task
from archon_chat.agents import text as tx
from archon_chat.agents.errors import RequestRejected
from archon_chat.agents.render import Doc, Item
from archon_chat.agents.schema import AgentSpec, decode_body, parse_request


@given(st.text())
def test_deltas_concatenate_to_the_text(text: str) -> None:
    pieces = tx.deltas(text)
    assert "".join(pieces) == text
    assert all(pieces)


def test_deltas_are_word_sized() -> None:
    assert tx.deltas("one two three four five\n\nsix ") == [
        "one two",
        " three four",
        " five\n\nsix",
        " ",
    ]
    assert tx.deltas("") == []


def test_words_keep_identifiers_whole() -> None:
    assert tx.words("Set ARCHON_CHAT_KB_DIR, don't guess.") == [
        "Set",
        "ARCHON_CHAT_KB_DIR",
        "don't",
        "guess",
    ]
    assert tx.terms("What is the ARCHON_CHAT_KB_DIR for?") == ["archon_chat_kb_dir"]


def test_blocks_and_sentences_understand_markdown() -> None:
    source = (
        "# Title\n\nFirst one. Second **bold** one!\n\n- item a\n- item b\n\n"
        "```\ncode. Not prose.\n```\n"
    )
    assert tx.blocks(source) == [
        ("heading", "# Title"),
        ("paragraph", "First one. Second **bold** one!"),
        ("list", "item a"),
        ("list", "item b"),
        ("code", "code. Not prose."),
    ]
    assert tx.sentences(source) == ["First one.", "Second bold one!", "item a.", "item b."]


def test_summaries_keep_the_original_order() -> None:
    text = (
        "Cats sleep a lot. Dogs bark at cats and cats ignore dogs. The weather is mild. "
        "Cats and dogs can live together when cats have space."
    )
    summary = tx.summarize(text, 2)
    assert len(summary) == 2
    sentences = tx.sentences(text)
    assert [sentences.index(s) for s in summary] == sorted(sentences.index(s) for s in summary)
    assert "The weather is mild." not in summary
    assert tx.summarize("Only one sentence here.", 3) == ["Only one sentence here."]


def test_summaries_cover_several_points() -> None:
    # Two sentences repeat the dominant words; the second pick goes elsewhere.
    text = (
        "Caching keeps cached pages in a cache so cached reads are fast. "
        "The cache stores cached pages and cache entries for cached reads. "
        "Backups copy the database to another disk every night."
    )
    summary = tx.summarize(text, 2)
    assert summary[1] == "Backups copy the database to another disk every night."


def test_summaries_avoid_sentences_that_lean_on_the_one_before() -> None:
    text = (
        "The session actor owns the turn and the mailbox of the session. "
        "It owns the turn, the mailbox and the session store of the actor. "
        "A supervisor restarts a crashed session actor within its intensity."
    )
    assert not any(s.startswith("It ") for s in tx.summarize(text, 2))


def test_key_terms_prefer_phrases_that_carry_their_words() -> None:
    text = (
        "Session actors own turns. Session actors restart. Actors passivate. Actors stream. "
        "Actors sleep. Stores persist turns."
    )
    terms = dict(tx.key_terms(text, 5))
    assert terms["session actors"] == 2
    assert terms["actors"] == 5  # mostly used outside the phrase, so it stays
    assert "session" not in terms  # only used inside it
    assert "persist turns" not in terms  # said once is not a phrase
    assert tx.key_terms("", 5) == []


def test_reading_time_and_clip() -> None:
    assert tx.reading_time(100) == "under a minute"
    assert tx.reading_time(230) == "about 1 minute"
    assert tx.reading_time(231) == "about 2 minutes"
    assert tx.clip("one two three four", 10) == "one two…"
    assert tx.clip("short", 10) == "short"


def test_render_markdown_and_plain() -> None:
    doc = Doc()
    doc.heading("Title **x**", 1)
    doc.note("A note")
    doc.items([Item("a `b`", (Item("c"),)), "d"], ordered=True)
    assert doc.render("markdown") == "# Title **x**\n\n*A note*\n\n1. a `b`\n   - c\n2. d\n"
    assert doc.render("plain") == "TITLE X\n\nA note\n\n1. a b\n   • c\n2. d\n"


@pytest.mark.parametrize(
    ("prompt", "items"),
    [
        (
            "Add login, a settings page, and email notifications.",
            ["Add login", "Add a settings page", "Add email notifications"],
        ),
        ("Fix the crash and add a regression test", ["Fix the crash", "add a regression test"]),
        ("Implement search and replace", ["Implement search and replace"]),
        ("I need to migrate the database; then deploy it", ["migrate the database", "deploy it"]),
        ("Plan:\n- write docs\n- ship it", ["write docs", "ship it"]),
        ("Plan adding single sign-on", ["Add single sign-on"]),
        ("Break down a CSV export feature", ["Build a CSV export feature"]),
        (
            "Build a Slack bridge for the panel with OAuth login and message sync",
            ["Build a Slack bridge for the panel", "Build OAuth login", "Build message sync"],
        ),
        ("Document the REST API", ["Document the REST API"]),
    ],
)
def test_task_work_items(prompt: str, items: list[str]) -> None:
    _, found = task.decompose(prompt)
    assert [i.text.lower() for i in found] == [i.lower() for i in items]


def test_task_kinds() -> None:
    kinds = {
        i.obj: i.kind
        for i in task.decompose(
            "Fix the login crash, write the README, speed up the cache, design the schema"
        )[1]
    }
    assert kinds == {
        "the login crash": "bug",
        "the README": "docs",
        "up the cache": "performance",
        "the schema": "data",
    }


def test_task_waves_group_parallel_work() -> None:
    _, _, tasks = task.plan("Add a settings page and add a profile page", "medium")
    assert task.waves(tasks) == [["T1", "T4"], ["T2", "T5"], ["T3", "T6"], ["T7"]]


@pytest.mark.parametrize(
    ("prompt", "action"),
    [
        ("Write a guide about nurseries", "draft"),
        ("Summarize this:\n" + "Some long text. " * 20, "analyze"),
        ("Analyze: " + "word " * 20, "analyze"),
        ("nurseries", "draft"),
        ("x " * 100, "analyze"),
        ("First paragraph.\n\nSecond paragraph.", "analyze"),
    ],
)
def test_document_decides_what_is_asked(prompt: str, action: str) -> None:
    request = parse_request(document.SPEC, {"prompt": prompt}, 10_000)
    assert document.decide(request).action == action


def test_document_topics() -> None:
    assert document.topic("Write a short guide about configuring the gateway") == (
        "configuring the gateway"
    )
    assert document.topic("Draft an overview of the wire contract.") == "the wire contract"
    assert document.topic("session actors") == "session actors"
    assert document.document_name("Analyze the configuration.md document") == "configuration.md"
    assert document.document_name("Write about it") is None


def test_request_parsing_fills_defaults_and_records_what_was_given() -> None:
    request = parse_request(
        task.SPEC,
        {
            "prompt": "p",
            "context": {"detail_level": "high", "project_id": None},
            "history": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "session_id": "s",
        },
        10,
    )
    assert dict(request.context) == {"project_id": None, "detail_level": "high"}
    assert request.given == frozenset({"detail_level"})
    assert request.last("user") == "a"
    assert request.last("assistant") == "b"
    assert request.session_id == "s"


def test_decode_body() -> None:
    assert decode_body(b'{"a": 1}') == {"a": 1}
    for raw in (b"", b"[]", b"nul", b"\xff"):
        with pytest.raises(RequestRejected) as info:
            decode_body(raw)
        assert (info.value.status, info.value.code) == (400, "invalid_json")


@pytest.mark.parametrize("spec", [rag.SPEC, document.SPEC, task.SPEC], ids=lambda s: s.name)
def test_every_documented_value_is_accepted_and_nothing_else(spec: AgentSpec) -> None:
    def context(**values: object) -> dict[str, object]:
        return dict(parse_request(spec, {"prompt": "p", "context": values}, 10).context)

    for name, doc in spec.describe("offline")["context"].items():
        assert context(**{name: None})[name] == doc["default"]
        for choice in doc.get("choices", []):
            assert context(**{name: choice})[name] == choice
        bad: list[object] = [[], {}, 1.5]
        if doc["type"] == "integer":
            assert context(**{name: doc["minimum"]})[name] == doc["minimum"]
            assert context(**{name: doc["maximum"]})[name] == doc["maximum"]
            bad += [doc["minimum"] - 1, doc["maximum"] + 1, "3", True]
        else:
            bad += [3, True]
            if doc.get("choices"):
                bad.append("bogus")
            if doc.get("max_length"):
                assert context(**{name: "x" * doc["max_length"]})[name]
                bad.append("x" * (doc["max_length"] + 1))
        for value in bad:
            with pytest.raises(RequestRejected) as info:
                context(**{name: value})
            assert (info.value.status, info.value.code) == (422, "invalid_context")
