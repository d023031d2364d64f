"""The knowledge-base index (SQLite FTS5 in worker threads, so the real clock): ranking,
limits, filters, re-indexing by mtime, size and hash, and document lookup.

Ceiling: every async test runs under ``trio.fail_after(10)``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from archon_chat.agents.kb import (
    SHIPPED_KB,
    KnowledgeBase,
    match_expression,
    parse_document,
    split_passages,
)

from .support import write_kb

CEILING = 10


@pytest.fixture
async def kb(tmp_path: Path) -> AsyncIterator[KnowledgeBase]:
    base = KnowledgeBase(write_kb(tmp_path / "kb"), tmp_path / "index" / "kb.db")
    with trio.fail_after(CEILING):
        await base.refresh()
    yield base
    with trio.fail_after(CEILING):
        await base.aclose()


async def test_the_most_relevant_passage_ranks_first(kb: KnowledgeBase) -> None:
    with trio.fail_after(CEILING):
        hits = await kb.search("How does a nursery supervise child tasks?", 5, None)
        assert hits[0].path == "trio.md"
        assert hits[0].heading == "Trio › Nurseries"
        assert [h.score for h in hits] == sorted(h.score for h in hits)
        fts = await kb.search("full-text bm25 ranking", 5, None)
        assert fts[0].heading == "SQLite › Full-text search"


async def test_stemming_matches_word_forms(kb: KnowledgeBase) -> None:
    with trio.fail_after(CEILING):
        hits = await kb.search("pruned shoot", 5, None)
        assert hits[0].heading == "Growing tomatoes › Pruning"


async def test_limit_and_source_filter(kb: KnowledgeBase) -> None:
    with trio.fail_after(CEILING):
        # Every passage of both documents matches (their titles do).
        assert len(await kb.search("install trio sqlite", 10, None)) == 6
        assert len(await kb.search("install trio sqlite", 5, None)) == 5
        assert len(await kb.search("install trio sqlite", 2, None)) == 2
        only = await kb.search("install trio sqlite", 5, "SQLITE")
        assert {h.path for h in only} == {"sqlite.md"}
        # The front matter's source is matched too.
        garden = await kb.search("watering tomatoes", 5, "garden.example.com")
        assert {h.path for h in garden} == {"gardening.md"}
        assert garden[0].source == "garden.example.com/tomatoes"
        assert await kb.search("watering tomatoes", 5, "no-such-source") == []


async def test_front_matter_and_plain_text(kb: KnowledgeBase) -> None:
    with trio.fail_after(CEILING):
        catalogue = await kb.catalogue()
        assert catalogue == [
            ("gardening.md", "Growing tomatoes"),
            ("notes/cooking.txt", "Cooking"),
            ("sqlite.md", "SQLite"),
            ("trio.md", "Trio"),
        ]
        pasta = await kb.search("pasta water", 5, None)
        assert pasta[0].path == "notes/cooking.txt"


async def test_questions_without_content_words_still_search(kb: KnowledgeBase) -> None:
    with trio.fail_after(CEILING):
        assert match_expression("What is it?") == '"what" OR "is" OR "it"'
        assert match_expression("???") == ""
        assert await kb.search("???", 5, None) == []


async def test_changed_files_are_reindexed(tmp_path: Path, kb: KnowledgeBase) -> None:
    with trio.fail_after(CEILING):
        assert await kb.search("zeppelin", 5, None) == []
        path = tmp_path / "kb" / "trio.md"
        path.write_text(path.read_text() + "\n## Airships\n\nA zeppelin is an airship.\n")
        await kb.refresh()
        hits = await kb.search("zeppelin", 5, None)
        assert [h.heading for h in hits] == ["Trio › Airships"]


async def test_a_change_that_keeps_size_and_mtime_is_found_by_nothing_else(
    tmp_path: Path, kb: KnowledgeBase
) -> None:
    # Same size, mtime restored: the scan (mtime + size) cannot see it, by design.
    with trio.fail_after(CEILING):
        path = tmp_path / "kb" / "trio.md"
        st = path.stat()
        path.write_text(path.read_text().replace("Nurseries", "Nurseriez"))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        await kb.refresh()
        assert (await kb.search("nurseriez", 5, None)) == []
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        await kb.refresh()
        assert (await kb.search("nurseriez", 5, None))[0].path == "trio.md"


def passage_ids(index: Path, path: str) -> list[int]:
    with sqlite3.connect(index) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM passages WHERE path = ?", (path,))]


async def test_a_touched_file_with_the_same_content_is_not_resplit(
    tmp_path: Path, kb: KnowledgeBase
) -> None:
    index = tmp_path / "index" / "kb.db"
    with trio.fail_after(CEILING):
        before = passage_ids(index, "gardening.md")
        path = tmp_path / "kb" / "gardening.md"
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        await kb.refresh()
        assert passage_ids(index, "gardening.md") == before
        path.write_text(path.read_text() + "\nMulch keeps the soil moist.\n")
        await kb.refresh()
        assert passage_ids(index, "gardening.md") != before


async def test_deleted_files_leave_the_index(tmp_path: Path, kb: KnowledgeBase) -> None:
    with trio.fail_after(CEILING):
        (tmp_path / "kb" / "sqlite.md").unlink()
        await kb.refresh()
        assert await kb.search("sqlite", 5, None) == []
        assert "sqlite.md" not in {p for p, _ in await kb.catalogue()}


async def test_hidden_large_and_foreign_files_are_skipped(tmp_path: Path) -> None:
    root = write_kb(
        tmp_path / "kb",
        {
            "a.md": "# A\n\nvisible words\n",
            ".hidden.md": "# H\n\nvisible words\n",
            ".git/x.md": "# G\n\nvisible words\n",
            "data.json": '{"visible": "words"}',
        },
    )
    with trio.fail_after(CEILING):
        kb = KnowledgeBase(root, tmp_path / "kb.db")
        await kb.refresh()
        assert await kb.catalogue() == [("a.md", "A")]
        await kb.aclose()


async def test_an_index_of_another_folder_is_rebuilt(tmp_path: Path) -> None:
    index = tmp_path / "kb.db"
    first = write_kb(tmp_path / "one", {"a.md": "# Alpha\n\nalpha words\n"})
    second = write_kb(tmp_path / "two", {"b.md": "# Beta\n\nbeta words\n"})
    with trio.fail_after(CEILING):
        kb = KnowledgeBase(first, index)
        await kb.refresh()
        await kb.aclose()
        kb = KnowledgeBase(second, index)
        await kb.refresh()
        assert await kb.catalogue() == [("b.md", "Beta")]
        await kb.aclose()


async def test_an_index_of_another_schema_version_is_rebuilt(tmp_path: Path) -> None:
    index = tmp_path / "kb.db"
    with sqlite3.connect(index) as conn:
        conn.execute("CREATE TABLE files (junk)")
        conn.execute("PRAGMA user_version = 999")
    with trio.fail_after(CEILING):
        kb = KnowledgeBase(write_kb(tmp_path / "kb"), index)
        await kb.refresh()
        assert len(await kb.catalogue()) == 4
        await kb.aclose()


async def test_document_lookup(kb: KnowledgeBase) -> None:
    with trio.fail_after(CEILING):
        for name in ("trio.md", "trio", "TRIO", "Trio"):
            found = await kb.document(name)
            assert found is not None
            assert found.path == "trio.md"
            assert "## Nurseries" in found.text
        tomatoes = await kb.document("tomatoes")
        assert tomatoes is not None
        assert tomatoes.path == "gardening.md"
        assert not tomatoes.text.startswith("---")  # front matter stripped
        assert await kb.document("cooking") is not None  # by path, in a subfolder
        assert await kb.document(".md") is None  # ambiguous
        assert await kb.document("nothing like it") is None


async def test_the_shipped_documentation_answers_what_is_archon(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        kb = KnowledgeBase(None, tmp_path / "kb.db")
        assert kb.root == SHIPPED_KB
        await kb.refresh()
        hits = await kb.search("What is Archon?", 5, None)
        assert hits[0].heading.endswith("What is Archon?")
        assert "real-time chat gateway" in hits[0].body
        names = {p for p, _ in await kb.catalogue()}
        assert {
            "overview.md",
            "architecture.md",
            "wire-contract.md",
            "configuration.md",
            "agents.md",
            "operations.md",
        } <= names
        await kb.aclose()


async def test_a_closed_index_refuses_work(tmp_path: Path, kb: KnowledgeBase) -> None:
    with trio.fail_after(CEILING):
        await kb.aclose()
        await kb.aclose()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            await kb.search("trio", 5, None)


def test_documents_split_along_their_headings() -> None:
    doc = parse_document(
        "guide.md",
        "---\ntitle: Guide\n---\n# Ignored title\n\nIntro text.\n\n## Setup\n\n- one\n- two\n\n"
        "```\n# not a heading\n```\n\n### Deeper\n\nDeep text.\n\n## Empty\n## Last\n\nEnd.\n",
    )
    assert doc.title == "Guide"
    assert split_passages(doc) == [
        ("Guide", "Intro text."),
        ("Guide › Setup", "- one\n- two\n\n```\n# not a heading\n```"),
        ("Guide › Setup › Deeper", "Deep text."),
        ("Guide › Last", "End."),
    ]


def test_long_sections_are_cut_at_block_boundaries() -> None:
    para = "word " * 100
    doc = parse_document("long.md", "# Long\n\n" + "\n\n".join([para.strip()] * 6))
    passages = split_passages(doc)
    assert len(passages) == 6  # two 500-character paragraphs exceed a passage
    assert all(len(body) <= 1000 for _, body in passages)
    assert all(heading == "Long" for heading, _ in passages)


def test_titles_fall_back_to_the_file_name() -> None:
    assert parse_document("notes/release-notes_v2.md", "Some text.").title == "Release notes v2"
    assert parse_document("x.md", "# **Bold** title\n\ntext").title == "Bold title"
