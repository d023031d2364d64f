"""The ``document`` agent: analysis of a text, and structured drafts on a topic.

What the request asks for (``mode: auto``) is decided from the prompt:

* ``context.document`` names a knowledge-base document: analyse it;
* the prompt carries a text (an instruction line such as "Summarize this:" followed by
  the text, or a long prompt of its own): analyse that text;
* an analysis verb ("summarize", "review", ...) pointing back ("summarize that") at the
  previous answer: analyse the previous answer; naming a knowledge-base document
  ("analyze configuration.md"): analyse that document;
* anything else is a topic: draft a structured document on it from the knowledge base
  (a follow-up such as "expand on that" drafts on the previous request's topic).

``mode: analyze`` or ``mode: draft`` forces the choice. Offline, an analysis reports
length and reading time, an outline, an extractive summary and key terms; a draft
assembles the best knowledge-base passages into titled sections with their sources.
``format`` (markdown or plain) and ``style`` shape both. With an LLM the same material
goes to the model with the same parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from archon_chat.agents import text as tx
from archon_chat.agents.base import OFFLINE_NOTE, Emit, Toolkit, chat_history
from archon_chat.agents.kb import Passage
from archon_chat.agents.render import Doc, Format, Item
from archon_chat.agents.schema import AgentRequest, AgentSpec, Param

STYLES = ("technical", "concise", "friendly", "formal")

SPEC = AgentSpec(
    name="document",
    title="Documents",
    description=(
        "Analyses a text or a knowledge-base document (outline, summary, key terms, length, "
        "reading time) and drafts structured documents on a topic from the knowledge base."
    ),
    params=(
        Param("format", "string", "markdown", "output format", choices=("markdown", "plain")),
        Param("style", "string", "technical", "writing style", choices=STYLES),
        Param(
            "document",
            "string",
            None,
            "a knowledge-base document to analyse: its path or title",
            max_length=300,
        ),
        Param(
            "mode",
            "string",
            "auto",
            "analyze the given text or document, draft on a topic, or decide from the prompt",
            choices=("auto", "analyze", "draft"),
        ),
    ),
)

_ANALYZE = re.compile(
    r"^\s*(?:please\s+|can you\s+|could you\s+)?(analy[sz]e|summari[sz]e|review|outline|"
    r"assess|evaluate|examine|inspect|critique|proofread|check|give me (?:a|an) "
    r"(?:summary|analysis|outline))\b",
    re.IGNORECASE,
)
_DRAFT_LEAD = re.compile(
    r"^\s*(?:please\s+|can you\s+|could you\s+)?(?:(?:write|draft|create|compose|generate|"
    r"produce|prepare|make|author|start|expand(?: on)?|elaborate(?: on)?)\s+)?(?:me\s+)?"
    r"(?:(?:a|an|the|some|my|our)\s+)?(?:(?:short|brief|new|first|detailed|technical|"
    r"formal|friendly|concise|simple|quick)\s+)*(?:(?:document|doc|page|guide|article|"
    r"overview|note|notes|report|section|introduction|intro|readme|description|draft|"
    r"explanation|summary|memo|post)\s+)?(?:(?:about|on|for|of|explaining|describing|"
    r"covering|regarding|that explains|to explain)\s+)?",
    re.IGNORECASE,
)
_POINTS_BACK = re.compile(
    r"\b(it|that|this|above|previous|last (?:answer|reply|message)|your (?:answer|reply))\b",
    re.IGNORECASE,
)
_DOC_WORDS = re.compile(
    r"\b(the|a|an|document|doc|page|file|article|guide|of|in|knowledge base|kb)\b", re.IGNORECASE
)
#: A prompt this long is a text to analyse, not a request.
TEXT_WORDS = 80
#: Text given to the LLM to analyse, at most (the model's context is finite).
LLM_TEXT_CHARS = 24_000
DRAFT_PASSAGES = 8


@dataclass(frozen=True, slots=True)
class Job:
    action: Literal["analyze", "draft"]
    subject: str  # what the answer calls the text, or the draft's topic
    text: str = ""  # the text to analyse
    document: str | None = None  # a knowledge-base document to fetch first
    source_filter: str | None = None  # drafts: only these documents


class DocumentAgent:
    spec = SPEC

    async def answer(self, request: AgentRequest, tools: Toolkit, emit: Emit) -> None:
        job = decide(request)
        if job.document is None and job.action == "analyze" and not job.text:
            # "Summarize <name>": the document of that name, else a draft on the subject.
            named = document_name(request.prompt)
            found = await tools.find_document(named) if named else None
            if found is not None:
                job = Job("analyze", f"`{found.path}` ({found.title})", text=found.text)
            elif request.text("mode") == "analyze":
                job = Job("analyze", "your text", text=request.prompt)
            else:
                job = Job("draft", job.subject)
        if job.document is not None:
            doc = await tools.document(job.document)
            if job.action == "analyze":
                job = Job("analyze", f"`{doc.path}` ({doc.title})", text=doc.text)
            else:
                job = Job("draft", job.subject, source_filter=doc.path)
        fmt: Format = "plain" if request.text("format") == "plain" else "markdown"
        style = request.text("style") or "technical"
        passages: list[Passage] = []
        if job.action == "draft":
            passages = await tools.retrieve(job.subject, DRAFT_PASSAGES, job.source_filter)
        if tools.llm is not None:
            await tools.llm_stream(llm_messages(request, job, passages, fmt, style), emit)
            return
        if job.action == "analyze":
            text = await tools.in_thread(analyze, job.text, job.subject, fmt, style)
        else:
            text = await tools.in_thread(draft, job.subject, passages, fmt, style)
        await tools.stream_text(text, emit)


def split_instruction(prompt: str) -> tuple[str, str]:
    """``(instruction, text)``: "Summarize this:\\n<text>" → ("Summarize this:", "<text>")."""
    stripped = prompt.strip()
    first, _, rest = stripped.partition("\n")
    instruction_like = first.rstrip().endswith(":") or _ANALYZE.match(first)
    if rest.strip() and len(first.split()) <= 20 and instruction_like:
        return first.strip(), rest.strip()
    head, sep, tail = stripped.partition(":")
    if sep and _ANALYZE.match(head) and len(head.split()) <= 12 and len(tail.split()) >= 8:
        return head.strip() + ":", tail.strip()
    return stripped, ""


def decide(request: AgentRequest) -> Job:
    """What to do for ``request`` (see the module docstring); no I/O."""
    mode = request.text("mode") or "auto"
    named = request.text("document")
    instruction, given = split_instruction(request.prompt)
    if named:
        return Job("draft" if mode == "draft" else "analyze", topic(instruction), document=named)
    wants_analysis = bool(_ANALYZE.match(instruction))
    previous_answer = request.last("assistant")
    points_back = bool(_POINTS_BACK.search(instruction))
    if mode == "draft":
        return Job("draft", _draft_topic(request, instruction, points_back))
    if given:
        return Job("analyze", "your text", text=given)
    if mode == "analyze" or wants_analysis:
        if points_back and previous_answer:
            return Job("analyze", "the previous answer", text=previous_answer)
        if len(tx.words(instruction)) >= TEXT_WORDS:
            return Job("analyze", "your text", text=request.prompt)
        # "Summarize <something>": a document if one is named (resolved by the agent,
        # which falls back to the prompt itself in analyze mode, else to a draft).
        return Job("analyze", topic(instruction))
    if len(tx.words(request.prompt)) >= TEXT_WORDS or "\n\n" in request.prompt.strip():
        return Job("analyze", "your text", text=request.prompt)
    return Job("draft", _draft_topic(request, instruction, points_back))


def _draft_topic(request: AgentRequest, instruction: str, points_back: bool) -> str:
    subject = topic(instruction)
    previous = request.last("user")
    if previous and (points_back or not tx.terms(subject)):
        earlier = topic(split_instruction(previous)[0])
        return f"{earlier} {subject}".strip() if tx.terms(subject) and not points_back else earlier
    return subject


def topic(instruction: str) -> str:
    """The subject of "Write a short guide about configuring the gateway" → "configuring
    the gateway"; "Draft an overview of the wire contract" → "the wire contract"."""
    stripped = _DRAFT_LEAD.sub("", instruction.strip(), count=1)
    stripped = _ANALYZE.sub("", stripped, count=1)
    stripped = re.sub(r"^\s*(?:this|that|it)\b", "", stripped, flags=re.IGNORECASE)
    stripped = stripped.strip(" \t:.?!\"'")
    return stripped or instruction.strip(" \t:.?!")


def document_name(prompt: str) -> str | None:
    """A document named after an analysis verb: "Analyze configuration.md" → "configuration.md"."""
    instruction, given = split_instruction(prompt)
    if given or not _ANALYZE.match(instruction):
        return None
    rest = _DOC_WORDS.sub(" ", _ANALYZE.sub("", instruction, count=1))
    name = " ".join(rest.strip(" \t:.?!\"'`").split())
    return name or None


# -- offline analysis


def analyze(text: str, subject: str, fmt: Format, style: str) -> str:
    """A rule-based analysis of ``text``: length, reading time, outline, summary, terms."""
    all_blocks = tx.blocks(text)
    word_count = len(tx.words(text))
    sents = tx.sentences(text)
    paragraphs = sum(1 for kind, _ in all_blocks if kind == "paragraph")
    code_blocks = sum(1 for kind, _ in all_blocks if kind == "code")
    headings = [tx.heading_level(b) for kind, b in all_blocks if kind == "heading"]
    avg = round(word_count / len(sents)) if sents else 0
    long_sentences = sum(1 for s in sents if len(tx.words(s)) > 35)
    counts = {"concise": (2, 5), "friendly": (3, 6), "formal": (4, 8)}.get(style, (4, 10))
    summary = tx.summarize(text, counts[0])
    terms = tx.key_terms(text, counts[1])
    reading = tx.reading_time(word_count)

    doc = Doc()
    doc.heading(f"Analysis of {subject}", 1)
    doc.note(
        f"Rule-based analysis ({OFFLINE_NOTE}): counts, outline, an extractive summary "
        "and key terms computed from the text itself."
    )
    if style == "friendly":
        doc.para(
            f"Here's what I found: the text has {tx.number(word_count)} words, so it takes "
            f"{reading} to read."
        )
    elif style == "formal":
        doc.para(
            f"The text comprises {tx.number(word_count)} words in {len(sents)} sentences and "
            f"{paragraphs} paragraphs; its estimated reading time is {reading}."
        )
    doc.heading("Length")
    if style == "concise":
        doc.para(f"{tx.number(word_count)} words, {len(sents)} sentences; {reading} to read.")
    else:
        doc.items(
            [
                f"Words: {tx.number(word_count)}; characters: {tx.number(len(text))}",
                f"Sentences: {len(sents)} (average {avg} words; {long_sentences} longer than 35)",
                f"Paragraphs: {paragraphs}; headings: {len(headings)}; code blocks: {code_blocks}",
                f"Reading time: {reading} (at {tx.WORDS_PER_MINUTE} words per minute)",
            ]
        )
    doc.heading("Outline")
    outline = _outline(headings, all_blocks, style)
    if outline:
        doc.items(outline, ordered=not headings)
    else:
        doc.para("The text is a single passage without sections.")
    doc.heading("Summary")
    if summary:
        doc.para(" ".join(summary))
    else:
        doc.para("There is no prose to summarise (only headings or code).")
    doc.heading("Key terms")
    if terms:
        if style == "technical":
            doc.para(", ".join(f"`{t}` ({n})" for t, n in terms))
        else:
            doc.para(", ".join(t for t, _ in terms))
    else:
        doc.para("No recurring terms.")
    if style in ("technical", "formal") and long_sentences:
        doc.heading("Observations")
        doc.items(
            [f"{long_sentences} sentence(s) exceed 35 words; splitting them would help readers."]
        )
    return doc.render(fmt)


def _outline(
    headings: list[tuple[int, str]], all_blocks: list[tuple[str, str]], style: str
) -> list[Item]:
    limit = 4 if style == "concise" else 12
    top = min((level for level, _ in headings), default=0)
    if sum(1 for level, _ in headings if level == top) == 1 and len(headings) > 1:
        # A single top heading is the document's title: outline what it contains.
        headings = [(level, h) for level, h in headings if level != top]
    if headings:
        top = min(level for level, _ in headings)
        roots: list[tuple[str, list[str]]] = []
        for level, heading in headings:
            label = tx.strip_inline(heading)
            if level == top or not roots:
                roots.append((label, []))
            elif level == top + 1 and style != "concise":
                roots[-1][1].append(label)
        return [
            Item(label, tuple(Item(c) for c in children[:limit]))
            for label, children in roots[:limit]
        ]
    firsts = []
    for kind, body in all_blocks:
        if kind == "paragraph":
            opening = tx.sentences(body)
            if opening:
                firsts.append(Item(tx.clip(opening[0], 100)))
    return firsts[:limit] if len(firsts) > 1 else []


# -- offline drafts


def draft(subject: str, passages: list[Passage], fmt: Format, style: str) -> str:
    """A structured draft on ``subject`` assembled from knowledge-base ``passages`` (best
    first): the best passage opens it, the others become sections in reading order."""
    title = tx.title_case(tx.clip(_without_article(subject), 80))
    focus = tx.terms(subject)
    doc = Doc()
    doc.heading(title, 1)
    if not passages:
        doc.note(
            f"Rule-based draft ({OFFLINE_NOTE}): nothing in the knowledge base matches this "
            "topic, so this is an outline of what the document should answer."
        )
        sections = {
            "Purpose": f"What {subject} is, and who needs to know about it.",
            "Background": "The problem it solves and the context it lives in.",
            "How it works": "The main parts, and how they fit together.",
            "Open questions": "What is still undecided, and who decides it.",
        }
        for heading, prompt in sections.items():
            doc.heading(heading)
            doc.para(prompt)
        return doc.render(fmt)

    doc.note(
        f"Rule-based draft ({OFFLINE_NOTE}): assembled from {len(passages)} knowledge-base "
        "passage(s) by extraction; review and edit before use."
    )
    if style == "friendly":
        doc.para(f"Here is a first draft about {subject}, pieced together from the knowledge base.")
    overview = tx.summarize(passages[0].body, 2 if style == "concise" else 3, focus=focus)
    if style == "formal":
        doc.heading("1. Purpose")
        doc.para(f"This document describes {subject}.")
        doc.heading("2. Overview")
    else:
        doc.heading("Overview")
    doc.para(" ".join(overview))

    max_sections = 2 if style == "concise" else 4
    per_section = 1 if style == "concise" else 3
    chosen = _distinct(passages[1:])[:max_sections]
    # Sections follow the documents' own order: grouped by document, in rank order of
    # the documents, and by position within each.
    rank = {p.path: n for n, p in reversed(list(enumerate(chosen)))}
    chosen.sort(key=lambda p: (rank[p.path], p.position))
    used = set(overview)
    number = 3
    for passage in chosen:
        picked = [
            s for s in tx.summarize(passage.body, per_section + 1, focus=focus) if s not in used
        ][:per_section]
        if not picked:
            continue
        used.update(picked)
        label = passage.label.split(" › ")[-1]
        doc.heading(f"{number}. {label}" if style == "formal" else label)
        number += 1
        doc.para(" ".join(picked))

    if style == "technical":
        terms = tx.key_terms("\n\n".join(p.body for p in passages), 8)
        if terms:
            doc.heading("Key terms")
            doc.para(", ".join(f"`{t}`" for t, _ in terms))
    if style == "friendly":
        doc.heading("Next steps")
        doc.items(
            [
                "Check each section against the sources below.",
                "Add an example your readers will recognise.",
                "Cut what your audience does not need.",
            ]
        )
    doc.heading(f"{number}. References" if style == "formal" else "Sources")
    doc.items(
        [f"{p.label} (`{p.path}`)" for p in _distinct(passages)],
        ordered=style == "formal",
    )
    return doc.render(fmt)


def _without_article(phrase: str) -> str:
    return re.sub(r"^(?:the|a|an)\s+", "", phrase.strip(), flags=re.IGNORECASE) or phrase


def _distinct(passages: list[Passage]) -> list[Passage]:
    seen: set[str] = set()
    out = []
    for p in passages:
        if p.label not in seen:
            seen.add(p.label)
            out.append(p)
    return out


# -- LLM


def llm_messages(
    request: AgentRequest, job: Job, passages: list[Passage], fmt: Format, style: str
) -> list[dict[str, str]]:
    shape = (
        "markdown"
        if fmt == "markdown"
        else "plain text with no markdown markup at all (no #, *, backticks or links)"
    )
    system = (
        "You are the document agent of archon-chat: you analyse documents and write new "
        f"ones. Write in a {style} style. Format your whole answer as {shape}."
    )
    if job.action == "analyze":
        body = job.text[:LLM_TEXT_CHARS]
        cut = "" if len(job.text) <= LLM_TEXT_CHARS else "\n\n(the text continues; truncated)"
        user = (
            f"Analyse {job.subject}: give its length and reading time, an outline, a "
            f"summary, its key terms and your observations.\n\n---\n{body}{cut}\n---\n\n"
            f"The request was: {request.prompt if not job.text else tx.clip(request.prompt, 300)}"
        )
    else:
        if passages:
            refs = "\n\n".join(
                f"[{n}] {p.label} ({p.path})\n{p.body}" for n, p in enumerate(passages, 1)
            )
        else:
            refs = "(the knowledge base has nothing on this topic)"
        user = (
            f"Write a structured document (title, sections, sources) on: {job.subject}\n\n"
            f"Reference passages from the knowledge base, cite them by number:\n\n{refs}\n\n"
            f"The request was: {request.prompt}"
        )
    return [
        {"role": "system", "content": system},
        *chat_history(request),
        {"role": "user", "content": user},
    ]
