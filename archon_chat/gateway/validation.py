"""Validation of every client payload, shared by REST and Socket.IO.

Each function takes the decoded JSON (anything) and returns a typed value or raises
:class:`GatewayError` with ``invalid_request`` (or ``message_too_large``) and a message
that names the field. Nothing refused here may reach an actor: every string is valid
Unicode (no lone surrogates, which SQLite and httpx cannot encode), ``context`` is finite
JSON (no NaN or infinities, no bytes) within a depth and size bound, and every integer is
one JavaScript can hold. :func:`parse_json` reads request bodies with the same bounds.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from actors.chat.messages import AGENT_TYPES, AgentType, ErrorCode

from .errors import GatewayError, invalid

MAX_ID_CHARS = 128
MAX_CONTEXT_BYTES = 16_384
MAX_JSON_DEPTH = 32
MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """Bounds on client JSON: nesting depth (bodies and ``context``), ``context`` size."""

    max_depth: int = MAX_JSON_DEPTH
    max_context_bytes: int = MAX_CONTEXT_BYTES


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


def _is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode: no lone surrogate (``"\\ud800"`` from JSON)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _optional_str(data: dict[str, Any], key: str, limit: int = MAX_ID_CHARS) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"'{key}' must be a string")
    if len(value) > limit:
        raise invalid(f"'{key}' is longer than {limit} characters")
    if not _is_text(value):
        raise invalid(f"'{key}' is not valid Unicode text")
    return value


def session_id_of(data: Any) -> str:
    obj = _object(data)
    value = obj.get("session_id")
    if not isinstance(value, str) or not value:
        raise invalid("'session_id' is required and must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise invalid("'session_id' is too long")
    if not _is_text(value):
        raise invalid("'session_id' is not valid Unicode text")
    return value


def page_size(raw: Any, *, default: int, maximum: int) -> int:
    """``?limit=``: a page size from 1 to ``maximum`` (``default`` when absent)."""
    if raw is None:
        return min(default, maximum)
    if not isinstance(raw, str) or not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise invalid(f"'limit' must be an integer from 1 to {maximum}")
    return int(raw)


def cursor_of(updated_at: str, session_id: str) -> str:
    """The opaque ``before`` cursor of a session list page ending at that session."""
    raw = f"{updated_at}~{session_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_cursor(raw: Any) -> tuple[str, str] | None:
    """``?before=``: a cursor made by :func:`cursor_of` (``None`` when absent)."""
    if raw is None or raw == "":
        return None
    try:
        if not isinstance(raw, str) or len(raw) > 2 * MAX_ID_CHARS + 128:
            raise ValueError
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        updated_at, session_id = text.split("~")
    except ValueError:
        raise invalid("'before' is not a cursor this server made") from None
    return updated_at, session_id


def last_seq_of(data: dict[str, Any]) -> int | None:
    value = data.get("last_seq")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INTEGER:
        raise invalid(f"'last_seq' must be an integer from 0 to {MAX_SAFE_INTEGER}")
    return value


def _check_json(value: Any, key: str, depth: int, max_depth: int) -> None:
    """Refuse what is not finite JSON within ``max_depth`` (recursion bounded by it)."""
    if depth > max_depth:
        raise invalid(f"'{key}' is nested deeper than {max_depth} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise invalid(f"'{key}' holds an integer beyond {MAX_SAFE_INTEGER}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise invalid(f"'{key}' holds a number that is not finite")
    elif isinstance(value, str):
        if not _is_text(value):
            raise invalid(f"'{key}' holds text that is not valid Unicode")
    elif isinstance(value, list):
        for item in value:
            _check_json(item, key, depth + 1, max_depth)
    elif isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str) or not _is_text(name):
                raise invalid(f"'{key}' holds a key that is not valid Unicode text")
            _check_json(item, key, depth + 1, max_depth)
    else:
        raise invalid(f"'{key}' must be plain JSON (no binary data)")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def parse_json(raw: bytes | str, limits: JsonLimits = JsonLimits()) -> Any:
    """A request body as JSON: UTF-8, no NaN/Infinity or out-of-range numbers, nested at
    most ``limits.max_depth`` deep (checked before parsing, so no recursion blows up).
    Raises :class:`GatewayError` ``invalid_request`` (HTTP 400)."""
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "Body is not UTF-8", 400) from None
    if _nesting(text) > limits.max_depth:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST, f"JSON nested deeper than {limits.max_depth} levels", 400
        )
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise GatewayError(ErrorCode.INVALID_REQUEST, "Malformed JSON body", 400) from None


def _nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


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


def outgoing_message(
    data: Any,
    max_chars: int,
    session_id: str | None = None,
    limits: JsonLimits = JsonLimits(),
) -> OutgoingMessage:
    obj = _object(data)
    sid = session_id if session_id is not None else session_id_of(obj)
    message = obj.get("message")
    if not isinstance(message, str) or not message.strip():
        raise invalid("'message' is required and must be a non-empty string")
    if len(message) > max_chars:
        raise GatewayError(
            ErrorCode.MESSAGE_TOO_LARGE, f"Message is longer than {max_chars} characters"
        )
    if not _is_text(message):
        raise invalid("'message' is not valid Unicode text")
    context = obj.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise invalid("'context' must be an object")
    _check_json(context, "context", 1, limits.max_depth)
    size = len(json.dumps(context, ensure_ascii=False).encode("utf-8"))
    if size > limits.max_context_bytes:
        raise GatewayError(
            ErrorCode.MESSAGE_TOO_LARGE,
            f"'context' is larger than {limits.max_context_bytes} bytes",
        )
    return OutgoingMessage(
        session_id=sid,
        message=message,
        context=context,
        client_message_id=_optional_str(obj, "client_message_id"),
    )
