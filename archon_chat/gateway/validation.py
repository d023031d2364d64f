"""Validation of every client payload, shared by REST and Socket.IO.

Each function takes the decoded JSON (anything) and returns a typed value or raises
:class:`GatewayError` with ``invalid_request`` (or ``message_too_large``) and a message
that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.chat.messages import AGENT_TYPES, AgentType, ErrorCode

from .errors import GatewayError, invalid

MAX_ID_CHARS = 128
MAX_CONTEXT_BYTES = 16_384


@dataclass(frozen=True, slots=True)
class NewSession:
    agent_type: AgentType
    project_id: str | None


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    session_id: str
    message: str
    context: dict[str, Any]
    client_message_id: str | None


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise invalid("Expected a JSON object")
    return data


def _optional_str(data: dict[str, Any], key: str, limit: int = MAX_ID_CHARS) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"'{key}' must be a string")
    if len(value) > limit:
        raise invalid(f"'{key}' is longer than {limit} characters")
    return value


def session_id_of(data: Any) -> str:
    obj = _object(data)
    value = obj.get("session_id")
    if not isinstance(value, str) or not value:
        raise invalid("'session_id' is required and must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise invalid("'session_id' is too long")
    return value


def last_seq_of(data: dict[str, Any]) -> int | None:
    value = data.get("last_seq")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid("'last_seq' must be a non-negative integer")
    return value


def new_session(data: Any) -> NewSession:
    obj = {} if data is None else _object(data)
    unknown = set(obj) - {"project_id", "agent_type"}
    if unknown:
        raise invalid(f"Unknown field(s): {', '.join(sorted(unknown))}")
    agent_type = obj.get("agent_type", "rag")
    if agent_type is None:
        agent_type = "rag"
    if agent_type not in AGENT_TYPES:
        raise invalid(f"'agent_type' must be one of {', '.join(AGENT_TYPES)}")
    return NewSession(agent_type=agent_type, project_id=_optional_str(obj, "project_id"))


def outgoing_message(data: Any, max_chars: int, session_id: str | None = None) -> OutgoingMessage:
    obj = _object(data)
    sid = session_id if session_id is not None else session_id_of(obj)
    message = obj.get("message")
    if not isinstance(message, str) or not message.strip():
        raise invalid("'message' is required and must be a non-empty string")
    if len(message) > max_chars:
        raise GatewayError(
            ErrorCode.MESSAGE_TOO_LARGE, f"Message is longer than {max_chars} characters"
        )
    context = obj.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise invalid("'context' must be an object")
    if len(repr(context)) > MAX_CONTEXT_BYTES:
        raise GatewayError(ErrorCode.MESSAGE_TOO_LARGE, "'context' is too large")
    return OutgoingMessage(
        session_id=sid,
        message=message,
        context=context,
        client_message_id=_optional_str(obj, "client_message_id"),
    )
