"""What the SQLite and PostgreSQL stores share: their rows as the actors' records, the
check of an agent type, the text of a reply interrupted by a restart. Both stores select
their columns in the orders below."""

from __future__ import annotations

from collections.abc import Sequence
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
    "INTERRUPTED_TEXT",
    "MESSAGE_COLUMNS",
    "SESSION_COLUMNS",
    "check_agent_type",
    "message_from_row",
    "session_from_row",
]

INTERRUPTED_TEXT: Final = "Interrupted by a server restart"

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
