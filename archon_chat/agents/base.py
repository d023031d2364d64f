"""What every agent gets to work with: the knowledge base, the LLM (if configured), a
worker-thread pool for blocking work, and paced delta streaming."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import trio

from archon_chat.agents.errors import AgentFailure
from archon_chat.agents.kb import Document, KnowledgeBase, Passage
from archon_chat.agents.llm import LLMBackend
from archon_chat.agents.schema import AgentRequest, AgentSpec
from archon_chat.agents.text import deltas

log = logging.getLogger("archon_chat.agents")

Emit = Callable[[str], Awaitable[None]]
T = TypeVar("T")


class Agent(Protocol):
    spec: AgentSpec

    async def answer(self, request: AgentRequest, tools: Toolkit, emit: Emit) -> None:
        """Stream the answer to ``request`` through ``emit``; raise AgentFailure if it
        cannot be given."""
        ...


@dataclass
class Toolkit:
    kb: KnowledgeBase
    llm: LLMBackend | None
    compute: trio.CapacityLimiter
    pacing_s: float

    @property
    def backend(self) -> str:
        return "llm" if self.llm is not None else "offline"

    async def aclose(self) -> None:
        """Close the knowledge-base index and the LLM client (closing twice is harmless)."""
        try:
            await self.kb.aclose()
        finally:
            if self.llm is not None:
                await self.llm.aclose()

    async def in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run CPU-bound work off the event loop, a bounded number at a time."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.compute)

    async def stream_text(self, text: str, emit: Emit) -> None:
        """Emit ``text`` as word-sized deltas, ``pacing_s`` apart (so a reader sees it come)."""
        for piece in deltas(text):
            await emit(piece)
            if self.pacing_s:
                await trio.sleep(self.pacing_s)

    async def retrieve(self, query: str, limit: int, source_filter: str | None) -> list[Passage]:
        """Passages for ``query`` from a freshly refreshed index; AgentFailure if the
        knowledge base cannot be read."""
        try:
            await self.kb.refresh()
            return await self.kb.search(query, limit, source_filter)
        except (OSError, sqlite3.Error) as exc:
            log.warning("knowledge base %s: %s", self.kb.root, exc)
            raise AgentFailure(f"The knowledge base is unavailable: {exc}") from None

    async def find_document(self, name: str) -> Document | None:
        try:
            await self.kb.refresh()
            return await self.kb.document(name)
        except (OSError, sqlite3.Error) as exc:
            raise AgentFailure(f"The knowledge base is unavailable: {exc}") from None

    async def document(self, name: str) -> Document:
        try:
            await self.kb.refresh()
            found = await self.kb.document(name)
            if found is not None:
                return found
            catalogue = await self.kb.catalogue()
        except (OSError, sqlite3.Error) as exc:
            raise AgentFailure(f"The knowledge base is unavailable: {exc}") from None
        names = ", ".join(path for path, _ in catalogue[:20]) or "none"
        raise AgentFailure(
            f"No single knowledge-base document matches {name!r} (documents: {names})"
        )

    async def llm_stream(self, messages: Sequence[Mapping[str, str]], emit: Emit) -> None:
        assert self.llm is not None
        await self.llm.stream(messages, emit)


def chat_history(request: AgentRequest) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in request.history]


OFFLINE_NOTE = "no language model is configured"
