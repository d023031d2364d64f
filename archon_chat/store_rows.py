"""What the SQLite and PostgreSQL stores share: their rows as the actors' records, the
check of an agent type. Both stores select their columns in the orders below."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from actors.chat.messages import (
    AGENT_TYPES,
    AgentType,
    ChatMessage,
    MessageStatus,
    Sender,
    SessionRecord,
)

__all__ = [
    "MESSAGE_COLUMNS",
    "SESSION_COLUMNS",
    "check_agent_type",
    "message_from_row",
    "new_session",
    "session_from_row",
    "utc_text",
]

MESSAGE_COLUMNS: Final = (
    "id, session_id, seq, content, sender, timestamp, agent_type, status, "
    "error_code, error_text, client_message_id"
)
SESSION_COLUMNS: Final = (
    "id, agent_type, project_id, created_at, updated_at, last_seq, message_count, user_id"
)


def message_from_row(row: Sequence[Any]) -> ChatMessage:
    """A message from a row of :data:`MESSAGE_COLUMNS`."""
    error = None if row[8] is None else (str(row[8]), str(row[9] or ""))
    return ChatMessage(
        id=row[0],
        session_id=row[1],
        seq=row[2],
        content=row[3],
        sender=cast(Sender, row[4]),
        timestamp=row[5],
        agent_type=cast(AgentType, row[6]),
        status=MessageStatus(row[7]),
        error=error,
        client_message_id=row[10],
    )


def session_from_row(row: Sequence[Any]) -> SessionRecord:
    """A session from a row of :data:`SESSION_COLUMNS`."""
    return SessionRecord(
        session_id=row[0],
        agent_type=cast(AgentType, row[1]),
        project_id=row[2],
        created_at=row[3],
        updated_at=row[4],
        last_seq=int(row[5]),
        message_count=int(row[6]),
        owner=row[7],
    )


def check_agent_type(agent_type: str) -> None:
    """Raise ``ValueError`` unless ``agent_type`` is one the actors know."""
    if agent_type not in AGENT_TYPES:
        raise ValueError(f"agent_type must be one of {', '.join(AGENT_TYPES)}, not {agent_type!r}")


def utc_text(now: datetime, delta: timedelta = timedelta(0)) -> str:
    """``now - delta`` as the stores write times: ISO 8601 UTC with microseconds and
    offset (fixed width, so text order is time order). Raises ``ValueError`` for a naive
    ``now``."""
    if now.tzinfo is None:
        raise ValueError("now() must return an aware datetime")
    return (now.astimezone(UTC) - delta).isoformat(timespec="microseconds")


def new_session(
    agent_type: AgentType, project_id: str | None, owner: str | None, created_at: str
) -> SessionRecord:
    """A new session with a fresh id of 128 random bits. Raises ``ValueError`` for an
    agent type the actors do not know."""
    check_agent_type(agent_type)
    return SessionRecord(
        session_id=secrets.token_hex(16),
        agent_type=agent_type,
        project_id=project_id,
        created_at=created_at,
        updated_at=created_at,
        last_seq=0,
        message_count=0,
        owner=owner,
    )
