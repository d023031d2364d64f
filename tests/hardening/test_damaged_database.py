"""A damaged database file stops ``archon-chat serve`` with one line naming the file and
what is wrong, and no traceback.

Ceiling: each start-up is bounded by ``subprocess.run(timeout=30)``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from archon_chat.store import open_store

pytestmark = pytest.mark.slow


def good_database(path: Path) -> bytes:
    async def create() -> None:
        async with open_store(str(path), ttl_s=3600) as store:
            for _ in range(50):
                await store.create_session("rag", "p" * 100)

    trio.run(create)
    return path.read_bytes()


def serve(db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARCHON_CHAT_DB": str(db), "ARCHON_CHAT_PORT": "0"}
    env["ARCHON_CHAT_LOG_LEVEL"] = "WARNING"
    return subprocess.run(
        [sys.executable, "-m", "archon_chat.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("truncated", "is damaged (database disk image is malformed)"),
        ("header_only", "is damaged"),
        ("garbage", "is not an archon-chat database (file is not a database)"),
    ],
)
def test_a_damaged_database_stops_start_up_with_one_line(
    tmp_path: Path, damage: str, says: str
) -> None:
    good = good_database(tmp_path / "good.db")
    db = tmp_path / "chat.db"
    content = {
        "truncated": good[: len(good) // 2],
        "header_only": good[:100],
        "garbage": b"\x13not sqlite at all" * 500,
    }[damage]
    db.write_bytes(content)
    result = serve(db)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"archon-chat: {db} {says}"), lines
    assert db.read_bytes() == content  # refused, not "repaired"
