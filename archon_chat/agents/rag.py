"""The ``rag`` agent: questions answered from the knowledge base, sources cited.

Retrieval is BM25 over the FTS5 index (``match_count`` passages, ``source_filter``).
A follow-up that points back at the previous question ("how do I configure it?") is
searched together with that question, so "it" finds the right subject. Offline the answer
quotes the best passages (the most relevant sentences of long ones) with numbered
citations; with an LLM the same passages are the model's context and the same source list
closes the answer.
"""

from __future__ import annotations

import re

from archon_chat.agents import text as tx
from archon_chat.agents.base import OFFLINE_NOTE, Emit, Toolkit, chat_history
from archon_chat.agents.kb import Passage
from archon_chat.agents.schema import AgentRequest, AgentSpec, Param

SPEC = AgentSpec(
    name="rag",
    title="Knowledge base",
    description=(
        "Answers questions from the knowledge base (full-text search, BM25 ranking) and "
        "cites the passages it used."
    ),
    params=(
        Param("match_count", "integer", 5, "passages retrieved and cited", minimum=1, maximum=50),
        Param(
            "source_filter",
            "string",
            None,
            "only documents whose path, source or title contains this text (case insensitive)",
            max_length=200,
        ),
    ),
)

#: Passages up to this size are quoted whole; longer ones by their best sentences.
QUOTE_WHOLE_CHARS = 700
QUOTE_SENTENCES = 3
_POINTS_BACK = re.compile(
    r"\b(it|its|that|this|these|those|them|they|he|she|there|above|previous|more|also)\b",
    re.IGNORECASE,
)


class RagAgent:
    spec = SPEC

    async def answer(self, request: AgentRequest, tools: Toolkit, emit: Emit) -> None:
        query = search_query(request)
        passages = await tools.retrieve(
            query, request.integer("match_count"), request.text("source_filter")
        )
        if tools.llm is not None:
            await tools.llm_stream(llm_messages(request, passages), emit)
            if passages:
                await tools.stream_text("\n\n" + sources(passages), emit)
            return
        catalogue = [] if passages else await tools.kb.catalogue()
        text = await tools.in_thread(compose, request, query, passages, catalogue)
        await tools.stream_text(text, emit)


def search_query(request: AgentRequest) -> str:
    """The prompt, plus the previous question when the prompt leans on it."""
    previous = request.last("user")
    if previous and (_POINTS_BACK.search(request.prompt) or not tx.terms(request.prompt)):
        return f"{request.prompt}\n{previous}"
    return request.prompt


def excerpt(passage: Passage, query: str) -> str:
    if len(passage.body) <= QUOTE_WHOLE_CHARS:
        return passage.body
    return " ".join(tx.summarize(passage.body, QUOTE_SENTENCES, focus=tx.terms(query)))


def sources(passages: list[Passage]) -> str:
    lines = ["**Sources**", ""]
    for number, p in enumerate(passages, 1):
        where = f"`{p.path}`" if p.source == p.path else f"`{p.path}`, {p.source}"
        lines.append(f"{number}. {p.label} ({where})")
    return "\n".join(lines) + "\n"


def compose(
    request: AgentRequest, query: str, passages: list[Passage], catalogue: list[tuple[str, str]]
) -> str:
    follow_up = query != request.prompt
    scope = " (read together with your previous question)" if follow_up else ""
    if not passages:
        where = ""
        if request.text("source_filter"):
            where = f" among sources matching “{request.text('source_filter')}”"
        titles = ", ".join(title for _, title in catalogue[:12]) or "no documents"
        return (
            f"*Extractive search: {OFFLINE_NOTE}, so I can only quote the knowledge base.*\n\n"
            f"Nothing in the knowledge base matches “{tx.clip(request.prompt, 120)}”{where}"
            f"{scope}. It holds {len(catalogue)} document(s): {titles}. "
            "Try other words, or drop `source_filter`.\n"
        )
    parts = [
        f"*Extractive answer: {OFFLINE_NOTE}, so these are the {len(passages)} passage(s) of "
        f"the knowledge base that best match your question{scope}, quoted as written.*"
    ]
    for number, passage in enumerate(passages, 1):
        parts.append(f"**{number}. {passage.label}**\n\n{excerpt(passage, query)} [{number}]")
    parts.append(sources(passages))
    return "\n\n".join(parts)


def llm_messages(request: AgentRequest, passages: list[Passage]) -> list[dict[str, str]]:
    system = (
        "You are the knowledge-base assistant of archon-chat. Answer the user's question "
        "using the numbered context passages. Cite the passages you rely on by number in "
        "square brackets, like [1]. If the passages do not contain the answer, say so "
        "plainly instead of guessing. Answer in markdown."
    )
    if passages:
        context = "\n\n".join(
            f"[{n}] {p.label} ({p.path})\n{p.body}" for n, p in enumerate(passages, 1)
        )
    else:
        context = "(no passage of the knowledge base matches this question)"
    user = f"Context passages:\n\n{context}\n\nQuestion: {request.prompt}"
    return [
        {"role": "system", "content": system},
        *chat_history(request),
        {"role": "user", "content": user},
    ]
