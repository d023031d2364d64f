"""Fixtures of the store tests: a real SQLite file in ``tmp_path``, a real PostgreSQL
server (tests/pg.py: the machine's, else a private one; the summary line says which), an
injectable clock."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from actors.chat.messages import AgentType, ChatMessage, MessageStatus
from archon_chat.store import SqliteStore, open_store
from tests.pg import PostgresServer, any_server, private_server

TTL_S = 3600.0

#: the PostgreSQL servers this run used, for the summary
_SERVERS_USED: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for description in _SERVERS_USED:
        terminalreporter.write_line(f"PostgreSQL store tests ran on {description}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with any_server() as server:
        _SERVERS_USED.append(server.description)
        yield server


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PostgresServer]:
    """A server of this run's own, which a test may stop and start."""
    with private_server() as server:
        _SERVERS_USED.append(server.description + ", for the restart tests")
        yield server


def _database(server: PostgresServer) -> Iterator[tuple[PostgresServer, str]]:
    name = server.create_database()
    try:
        yield server, name
    finally:
        server.drop_database(name)


@pytest.fixture(scope="session")
def pg_database(pg_server: PostgresServer) -> Iterator[tuple[PostgresServer, str]]:
    """This run's database on :func:`pg_server`, dropped at the end."""
    yield from _database(pg_server)


@pytest.fixture
def pg_url(pg_database: tuple[PostgresServer, str]) -> Iterator[str]:
    """A URL whose tables land in a schema of this test's own."""
    server, dbname = pg_database
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server.url(dbname), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield server.url(dbname, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(server.url(dbname), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


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
