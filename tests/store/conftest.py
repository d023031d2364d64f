"""Fixtures of the store tests: a real SQLite file in ``tmp_path``, a real PostgreSQL
server (tests/pg.py: the machine's, else a private one; the summary line says which), an
injectable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors.chat.messages import AgentType, ChatMessage, MessageStatus
from archon_chat.store import SqliteStore, open_store
from tests.pg import (  # noqa: F401 (fixtures)
    SERVERS_USED,
    pg_database,
    pg_server,
    pg_url,
    private_pg,
)

TTL_S = 3600.0


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for description in SERVERS_USED:
        terminalreporter.write_line(f"PostgreSQL store tests ran on {description}")


class FakeNow:
    """A wall clock that moves only when told to."""

    def __init__(self) -> None:
        self.value = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += timedelta(seconds=seconds)


@pytest.fixture
def now() -> FakeNow:
    return FakeNow()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "data" / "chat.db")


@pytest.fixture
async def store(db_path: str, now: FakeNow) -> AsyncIterator[SqliteStore]:
    async with open_store(db_path, ttl_s=TTL_S, now=now) as s:
        yield s


def user_msg(
    session_id: str,
    seq: int,
    content: str = "hello",
    *,
    id: str | None = None,
    client_message_id: str | None = None,
    agent_type: AgentType = "rag",
) -> ChatMessage:
    return ChatMessage(
        id=id or f"u{seq}-{session_id[:8]}",
        session_id=session_id,
        seq=seq,
        content=content,
        sender="user",
        timestamp="2026-03-01T12:00:00.000000+00:00",
        agent_type=agent_type,
        client_message_id=client_message_id,
    )


def agent_msg(
    session_id: str,
    id: str,
    seq: int,
    content: str = "reply",
    *,
    status: MessageStatus = MessageStatus.COMPLETE,
    error: tuple[str, str] | None = None,
    agent_type: AgentType = "rag",
) -> ChatMessage:
    return ChatMessage(
        id=id,
        session_id=session_id,
        seq=seq,
        content=content,
        sender="agent",
        timestamp="2026-03-01T12:00:01.000000+00:00",
        agent_type=agent_type,
        status=status,
        error=error,
    )
