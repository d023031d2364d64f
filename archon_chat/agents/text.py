"""Plain-text machinery of the offline agents: words, sentences, summaries, deltas.

Everything here is pure, deterministic and synchronous: the agents call it from a worker
thread when the input may be large.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

#: A word: letters and digits, joined by apostrophes or underscores (so that identifiers
#: such as ``ARCHON_CHAT_KB_DIR`` stay one word, as in the knowledge-base index).
WORD = re.compile(r"[^\W_]+(?:(?:_+|['’])[^\W_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9`*])")
_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_INLINE = re.compile(r"(\*\*|__|`|\*(?=\S)|(?<=\S)\*)")
WORDS_PER_MINUTE = 230
#: Summaries prefer sentences a reader takes in at once.
LONG_SENTENCE_WORDS = 30

_STOPWORDS = """
    a about above after again against all also am an and any are aren't as at be because
    been before being below between both but by can can't cannot could couldn't did didn't
    do does doesn't doing don't down during each either else etc even ever every few for
    from further get gets got had hadn't has hasn't have haven't having he her here hers
    herself him himself his how however i if in into is isn't it it's its itself just let
    let's like many may me might more most much must mustn't my myself need no nor not now
    of off on once one only or other ought our ours ourselves out over own per please
    rather really same shall she should shouldn't since so some such than that that's the
    their theirs them themselves then there there's these they this those though through
    thus to too under until up upon us use used using very via was wasn't we were weren't
    what what's when where which while who whom whose why will with within without won't
    would wouldn't yes yet you your yours yourself yourselves tell show give explain
    describe want know
"""
STOPWORDS = frozenset(_STOPWORDS.split())


def words(text: str) -> list[str]:
    """The words of ``text``, in order, as written."""
    return WORD.findall(text)


def terms(text: str) -> list[str]:
    """Lower-cased content words of ``text`` in order, stopwords and single letters dropped."""
    out = []
    for word in words(text):
        low = word.lower().replace("’", "'")
        if low in STOPWORDS or (len(low) < 2 and not low.isdigit()):
            continue
        out.append(low)
    return out


def unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def strip_inline(text: str) -> str:
    """``text`` without inline markdown: links keep their text, emphasis and code marks go."""
    return _INLINE.sub("", _LINK.sub(r"\1", text))


def blocks(text: str) -> list[tuple[str, str]]:
    """Split markdown (or plain text) into ``(kind, text)`` blocks in order.

    Kinds: ``heading`` (text prefixed by ``#`` marks), ``paragraph``, ``list`` (one item),
    ``code`` (a fenced block, kept verbatim).
    """
    out: list[tuple[str, str]] = []
    para: list[str] = []
    fence: str | None = None
    code: list[str] = []

    def flush() -> None:
        if para:
            out.append(("paragraph", " ".join(para)))
            para.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith(fence):
                out.append(("code", "\n".join(code)))
                code.clear()
                fence = None
            else:
                code.append(line)
            continue
        fence_match = _FENCE.match(stripped)
        if fence_match:
            flush()
            fence = fence_match.group(1)
            continue
        if not stripped:
            flush()
            continue
        heading = _HEADING.match(stripped)
        if heading:
            flush()
            out.append(("heading", stripped))
            continue
        if _LIST_ITEM.match(line):
            flush()
            out.append(("list", _LIST_ITEM.sub("", line, count=1).strip()))
            continue
        if out and out[-1][0] == "list" and not para and line[:1].isspace():
            # A continuation line of the previous list item.
            out[-1] = ("list", f"{out[-1][1]} {stripped}")
            continue
        para.append(stripped)
    flush()
    if fence is not None and code:
        out.append(("code", "\n".join(code)))
    return out


def heading_level(block: str) -> tuple[int, str]:
    match = _HEADING.match(block)
    if match is None:
        return 0, block
    return len(match.group(1)), match.group(2)


def sentences(text: str) -> list[str]:
    """Sentences of the prose in ``text`` (markdown marks removed, code blocks skipped)."""
    return [s for s, _ in _sentences(text)]


def _sentences(text: str) -> list[tuple[str, bool]]:
    """``(sentence, opens its paragraph or list item)`` of the prose in ``text``."""
    out: list[tuple[str, bool]] = []
    for kind, body in blocks(text):
        if kind in ("code", "heading"):
            continue
        plain = strip_inline(body).strip()
        if kind == "list" and plain and plain[-1] not in ".!?:":
            plain += "."
        parts = [s.strip() for s in _SENTENCE_END.split(plain) if s.strip()]
        out.extend((s, n == 0) for n, s in enumerate(parts))
    return out


_DANGLING = re.compile(r"(?:it|its|this|that|these|those|they|them|he|she|such)\b", re.I)


def _identifier_share(sentence: str) -> float:
    tokens = sentence.split()
    odd = sum(1 for t in tokens if "_" in t or "{" in t or "}" in t or "/" in t)
    return odd / len(tokens) if tokens else 0.0


def summarize(text: str, count: int, focus: Sequence[str] = ()) -> list[str]:
    """The ``count`` most representative sentences of ``text``, in their original order.

    SumBasic, with a reader's priorities: a sentence scores the mean probability of its
    content words in the text, and after each pick the words it used count for less (their
    probability is squared), so the summary covers several points instead of repeating
    one. Words of ``focus`` (query terms) weigh more; opening the text or a paragraph
    (where writers put their point) is a bonus; very short sentences, long ones (in
    proportion), ones dense with identifiers or paths and ones opening with a pronoun are
    discounted. Ties keep the earlier sentence.
    """
    candidates = _sentences(text)
    if len(candidates) <= count:
        return [s for s, _ in candidates]
    counts = Counter(terms(text))
    total = sum(counts.values()) or 1
    weight = {t: n / total for t, n in counts.items()}
    focus_set = set(focus)
    prior = []
    for index, (sentence, opens) in enumerate(candidates):
        factor = 2.0 if index == 0 else 1.3 if opens else 1.0
        length = len(sentence.split())
        if len(terms(sentence)) < 4:
            factor *= 0.5
        elif length > LONG_SENTENCE_WORDS:
            factor *= LONG_SENTENCE_WORDS / length
        if _identifier_share(sentence) > 0.2:
            factor *= 0.5
        if _DANGLING.match(sentence):
            factor *= 0.5  # "It owns ..." means little without the sentence before
        prior.append(factor)
    chosen: list[int] = []
    for _ in range(count):
        best: tuple[float, int] | None = None
        for index, (sentence, _) in enumerate(candidates):
            content = terms(sentence)
            if index in chosen or not content:
                continue
            mean = sum(weight[t] for t in content) / len(content)
            bonus = sum(1 for t in set(content) if t in focus_set) / len(set(content))
            score = (mean * (1 + 2 * bonus)) * prior[index]
            if best is None or score > best[0]:
                best = (score, index)
        if best is None:
            break
        chosen.append(best[1])
        for t in set(terms(candidates[best[1]][0])):
            weight[t] *= weight[t]
    return [candidates[i][0] for i in sorted(chosen)]


def key_terms(text: str, count: int) -> list[tuple[str, int]]:
    """The ``count`` most frequent content words and repeated two-word phrases of ``text``.

    A phrase replaces its words when it accounts for most of their uses. Ties keep the term
    that appears first.
    """
    prose = " ".join(s for k, s in blocks(text) if k != "code")
    content = terms(prose)
    if not content:
        return []
    first: dict[str, int] = {}
    for index, term in enumerate(content):
        first.setdefault(term, index)
    single = Counter(content)
    # Phrases are two content words written next to each other (no stopword between).
    lowered = [w.lower().replace("’", "'") for w in words(prose)]
    pairs = Counter(
        f"{a} {b}" for a, b in itertools.pairwise(lowered) if a != b and a in single and b in single
    )
    scores: dict[str, int] = {}
    for pair, n in pairs.items():
        a, b = pair.split(" ")
        if n >= 2 and n * 2 >= min(single[a], single[b]):
            scores[pair] = n
            first[pair] = min(first[a], first[b])
    # A word most of whose uses are inside a kept phrase is represented by the phrase.
    covered = {w for p, n in scores.items() for w in p.split(" ") if n * 2 >= single[w]}
    for term, n in single.items():
        if term not in covered and not term.isdigit():
            scores[term] = n
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], first[kv[0]]))
    return ranked[:count]


def reading_time(word_count: int) -> str:
    minutes = word_count / WORDS_PER_MINUTE
    if minutes < 1:
        return "under a minute"
    rounded = math.ceil(minutes)
    return f"about {rounded} minute{'s' if rounded != 1 else ''}"


def clip(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters, marked with …"""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "…"


def title_case(phrase: str) -> str:
    small = {"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to"}
    out = []
    for index, word in enumerate(phrase.split()):
        if index and word.lower() in small:
            out.append(word.lower())
        elif word[:1].islower():
            out.append(word[:1].upper() + word[1:])
        else:
            out.append(word)
    return " ".join(out)


_TOKEN = re.compile(r"\s*\S+")


def deltas(text: str, words_per_delta: int = 2) -> list[str]:
    """Split ``text`` into word-sized pieces whose concatenation is exactly ``text``.

    Each piece carries up to ``words_per_delta`` words with the whitespace before them,
    so line breaks travel with the following word; trailing whitespace is the last piece.
    """
    pieces: list[str] = []
    tokens = _TOKEN.findall(text)
    for index in range(0, len(tokens), words_per_delta):
        pieces.append("".join(tokens[index : index + words_per_delta]))
    consumed = sum(len(p) for p in pieces)
    if consumed < len(text):
        pieces.append(text[consumed:])
    return pieces


def number(n: int) -> str:
    return f"{n:,}"
