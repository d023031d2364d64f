"""The exception tree of the agents service.

::

    AgentsError                 base of everything raised on purpose in this package
    ├── RequestRejected         a bad request: answered with a JSON error, no stream started
    └── AgentFailure            an agent could not answer: becomes an SSE ``error`` event
        └── LLMError            the LLM backend failed (status, unreachable, timeout, garbage)

Foreign exceptions (httpx, sqlite3, json) are mapped into this tree where they are caught;
anything else reaching the stream is a bug, logged and reported as an ``error`` event.
"""

from __future__ import annotations


class AgentsError(Exception):
    """Base of the agents service's own exceptions."""


class RequestRejected(AgentsError):
    """A request refused before its stream starts; ``status`` and ``code`` go on the wire."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class AgentFailure(AgentsError):
    """An agent cannot finish its answer; the text is shown to the user as is."""


class LLMError(AgentFailure):
    """The configured LLM endpoint failed; the text says how, without secrets."""
