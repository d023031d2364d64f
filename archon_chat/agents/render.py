"""A tiny document model the offline agents write answers in, rendered as markdown or as
plain text (no markup at all: the ``plain`` format of the document agent)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from archon_chat.agents.text import strip_inline

Format = Literal["markdown", "plain"]


@dataclass(frozen=True, slots=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True, slots=True)
class Para:
    text: str


@dataclass(frozen=True, slots=True)
class Note:
    """A remark about the answer itself (e.g. that it is extractive): italic in markdown."""

    text: str


@dataclass(frozen=True, slots=True)
class Item:
    text: str
    children: tuple[Item, ...] = ()


@dataclass(frozen=True, slots=True)
class Items:
    items: tuple[Item, ...]
    ordered: bool = False


@dataclass(frozen=True, slots=True)
class Code:
    text: str


Block = Heading | Para | Note | Items | Code


@dataclass
class Doc:
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Heading(text, level))

    def para(self, text: str) -> None:
        self.blocks.append(Para(text))

    def note(self, text: str) -> None:
        self.blocks.append(Note(text))

    def items(self, items: Sequence[str | Item], ordered: bool = False) -> None:
        if items:
            built = tuple(i if isinstance(i, Item) else Item(i) for i in items)
            self.blocks.append(Items(built, ordered))

    def code(self, text: str) -> None:
        self.blocks.append(Code(text))

    def render(self, fmt: Format = "markdown") -> str:
        return render(self.blocks, fmt)


def render(blocks: Sequence[Block], fmt: Format = "markdown") -> str:
    parts = [_markdown(b) if fmt == "markdown" else _plain(b) for b in blocks]
    return "\n\n".join(p for p in parts if p) + "\n"


def _markdown(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Para):
        return block.text
    if isinstance(block, Note):
        return f"*{block.text}*"
    if isinstance(block, Code):
        return f"```\n{block.text}\n```"
    return "\n".join(_list_lines(block.items, block.ordered, "", markdown=True))


def _plain(block: Block) -> str:
    if isinstance(block, Heading):
        text = strip_inline(block.text)
        return text.upper() if block.level == 1 else text
    if isinstance(block, Para | Note):
        return strip_inline(block.text)
    if isinstance(block, Code):
        return "\n".join(f"    {line}" for line in block.text.splitlines())
    return "\n".join(_list_lines(block.items, block.ordered, "", markdown=False))


def _list_lines(items: Sequence[Item], ordered: bool, indent: str, *, markdown: bool) -> list[str]:
    lines = []
    for number, item in enumerate(items, 1):
        marker = f"{number}. " if ordered else ("- " if markdown else "• ")
        text = item.text if markdown else strip_inline(item.text)
        lines.append(f"{indent}{marker}{text}")
        if item.children:
            lines.extend(
                _list_lines(item.children, False, indent + " " * len(marker), markdown=markdown)
            )
    return lines
