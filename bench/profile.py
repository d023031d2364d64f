"""Sampling profiles of a gateway under load, with py-spy (``pip install py-spy``).

:func:`open_profile` records one process while its block runs (py-spy's raw "collapsed
stacks" format, stopped with SIGINT so it writes its file); :func:`hot_spots` folds the
stacks into the functions that take the most samples, by themselves (self) and with
what they call (inclusive), with paths shortened to the package.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

FRAME = re.compile(r"(.*?) \((.*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@asynccontextmanager
async def open_profile(pid: int, out: Path, rate: int = 100) -> AsyncIterator[Path]:
    """Record ``pid`` into ``out`` until the block ends. Raises ``FileNotFoundError``
    without py-spy."""
    tool = py_spy()
    if tool is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    out.parent.mkdir(parents=True, exist_ok=True)
    process = await trio.lowlevel.open_process(
        [tool, "record", "-p", str(pid), "-r", str(rate), "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield out
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _name(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    function, path = match.groups()
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = re.sub(r"^.*?/(archon_chat|actors|bench)/", r"\1/", path)
    return f"{function} ({path})"


def hot_spots(path: Path, top: int = 25) -> dict[str, Any]:
    """The ``top`` functions by self and by inclusive share of the samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names = [_name(frame) for frame in stack.split(";")]
        total += count
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "self_pct": shares(own), "inclusive_pct": shares(inclusive)}


def hot_spots_text(spots: dict[str, Any], top: int = 15) -> str:
    lines = [f"Profile of our gateway ({spots['samples']} samples)", "  self:"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in spots["self_pct"][:top]]
    lines.append("  inclusive:")
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in spots["inclusive_pct"][:top]]
    return "\n".join(lines)
