"""What a stream request may contain, checked before any stream starts.

Each agent declares its context parameters (:class:`Param`): type, allowed values, bounds
and default. ``GET /agents`` publishes the same declarations, so what the service
documents is exactly what it enforces. A ``null`` context value means "the default".

Refusals (:class:`~archon_chat.agents.errors.RequestRejected`), all ``{"detail", "code"}``:

====  ======================  ============================================================
400   ``invalid_json``        the body is not a JSON object
404   ``agent_not_found``     no agent of that type
413   ``request_too_large``   the body exceeds the service's byte limit
422   ``invalid_request``     a missing or unknown field, or a field of the wrong type
422   ``invalid_context``     an unknown context key, or a value of the wrong type or range
422   ``prompt_too_large``    the prompt is longer than ``max_prompt_chars``
====  ======================  ============================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from archon_chat.agents.errors import RequestRejected

AgentName = Literal["rag", "document", "task"]
Role = Literal["user", "assistant"]

#: More history than this is a client bug, not a conversation (the gateway sends at most
#: ``history_turns`` complete turns).
MAX_HISTORY_MESSAGES = 1000
MAX_SESSION_ID_CHARS = 256
REQUEST_FIELDS = ("agent_type", "prompt", "context", "history", "session_id")


@dataclass(frozen=True, slots=True)
class Param:
    """One context parameter of an agent."""

    name: str
    type: Literal["integer", "string"]
    default: int | str | None
    description: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "default": self.default,
            "nullable": True,
            "description": self.description,
        }
        if self.choices:
            out["choices"] = list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.max_length is not None:
            out["max_length"] = self.max_length
        return out

    def parse(self, value: object) -> int | str | None:
        if value is None:
            return self.default
        where = f"context.{self.name}"
        if self.type == "integer":
            # bool is an int subclass in Python, never in JSON Schema.
            if not isinstance(value, int) or isinstance(value, bool):
                raise _context(f"{where} must be an integer")
            if self.minimum is not None and value < self.minimum:
                raise _context(f"{where} must be at least {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise _context(f"{where} must be at most {self.maximum}")
            return value
        if not isinstance(value, str):
            raise _context(f"{where} must be a string")
        if self.choices and value not in self.choices:
            raise _context(f"{where} must be one of: {', '.join(self.choices)}")
        if self.max_length is not None and len(value) > self.max_length:
            raise _context(f"{where} must be at most {self.max_length} characters")
        return value


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """An agent type as ``GET /agents`` lists it."""

    name: AgentName
    title: str
    description: str
    params: tuple[Param, ...]

    def describe(self, backend: str) -> dict[str, Any]:
        return {
            "agent_type": self.name,
            "title": self.title,
            "description": self.description,
            "backend": backend,
            "context": {p.name: p.describe() for p in self.params},
        }


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """A validated stream request. ``context`` holds every parameter of the agent, defaults
    filled in; ``given`` names the ones the client set (not null)."""

    agent_type: AgentName
    prompt: str
    context: Mapping[str, int | str | None]
    given: frozenset[str]
    history: tuple[Turn, ...]
    session_id: str | None

    def text(self, name: str) -> str | None:
        value = self.context.get(name)
        return value if isinstance(value, str) else None

    def integer(self, name: str) -> int:
        value = self.context.get(name)
        if not isinstance(value, int):
            raise KeyError(name)
        return value

    def last(self, role: Role) -> str | None:
        """The content of the latest history message of ``role``."""
        for turn in reversed(self.history):
            if turn.role == role:
                return turn.content
        return None


def _invalid(detail: str) -> RequestRejected:
    return RequestRejected(422, "invalid_request", detail)


def _context(detail: str) -> RequestRejected:
    return RequestRejected(422, "invalid_context", detail)


def decode_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or :class:`RequestRejected` 400."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestRejected(400, "invalid_json", f"Body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestRejected(400, "invalid_json", "Body must be a JSON object")
    return body


def parse_request(spec: AgentSpec, body: Mapping[str, Any], max_prompt_chars: int) -> AgentRequest:
    """Check ``body`` against the contract and ``spec``; raises :class:`RequestRejected`."""
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise _invalid(
            f"Unknown field(s): {', '.join(unknown)}; allowed: {', '.join(REQUEST_FIELDS)}"
        )

    agent_type = body.get("agent_type")
    if agent_type is not None and agent_type != spec.name:
        raise _invalid(f"agent_type {agent_type!r} does not match the URL's {spec.name!r}")

    if "prompt" not in body:
        raise _invalid("Missing field: prompt")
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        raise _invalid("prompt must be a string")
    if not prompt.strip():
        raise _invalid("prompt must not be empty")
    if len(prompt) > max_prompt_chars:
        raise RequestRejected(
            422,
            "prompt_too_large",
            f"prompt is {len(prompt)} characters; the limit is {max_prompt_chars}",
        )

    context = body.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise _invalid("context must be an object")
    names = {p.name for p in spec.params}
    stray = sorted(set(context) - names)
    if stray:
        allowed = ", ".join(sorted(names))
        raise _context(
            f"Unknown context key(s) for the {spec.name} agent: {', '.join(stray)}; "
            f"allowed: {allowed}"
        )
    values = {p.name: p.parse(context.get(p.name)) for p in spec.params}
    given = frozenset(k for k, v in context.items() if v is not None)

    session_id = body.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise _invalid("session_id must be a string or null")
    if session_id is not None and len(session_id) > MAX_SESSION_ID_CHARS:
        raise _invalid(f"session_id must be at most {MAX_SESSION_ID_CHARS} characters")

    return AgentRequest(
        agent_type=spec.name,
        prompt=prompt,
        context=values,
        given=given,
        history=_parse_history(body.get("history")),
        session_id=session_id,
    )


def _parse_history(raw: object) -> tuple[Turn, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid("history must be a list")
    if len(raw) > MAX_HISTORY_MESSAGES:
        raise _invalid(f"history holds more than {MAX_HISTORY_MESSAGES} messages")
    turns = []
    for index, item in enumerate(raw):
        where = f"history[{index}]"
        if not isinstance(item, dict):
            raise _invalid(f"{where} must be an object with role and content")
        extra = sorted(set(item) - {"role", "content"})
        if extra:
            raise _invalid(f"{where} has unknown field(s): {', '.join(extra)}")
        role, content = item.get("role"), item.get("content")
        if role not in ("user", "assistant"):
            raise _invalid(f"{where}.role must be 'user' or 'assistant'")
        if not isinstance(content, str):
            raise _invalid(f"{where}.content must be a string")
        turns.append(Turn(role, content))
    return tuple(turns)


def describe_request(max_prompt_chars: int) -> dict[str, Any]:
    """The request contract, for ``GET /agents``."""
    return {
        "method": "POST",
        "path": "/agents/{agent_type}/stream",
        "fields": {
            "agent_type": "optional; must match the path",
            "prompt": f"required string, 1 to {max_prompt_chars} characters",
            "context": "optional object; only the agent's context keys (null: the default)",
            "history": (
                f"optional list of at most {MAX_HISTORY_MESSAGES} "
                '{"role": "user"|"assistant", "content": string}, oldest first'
            ),
            "session_id": f"optional string of at most {MAX_SESSION_ID_CHARS} characters",
        },
        "max_prompt_chars": max_prompt_chars,
        "response": "text/event-stream: stream_chunk deltas, then stream_complete or error",
    }
