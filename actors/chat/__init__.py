"""The chat session actors, their hub and the agents client (no web framework here)."""

from __future__ import annotations

from actors.chat.agents_client import (
    AgentEvent,
    AgentProtocolError,
    AgentReportedError,
    AgentRequest,
    AgentsClient,
    AgentsError,
    AgentStream,
    AgentTimeout,
    AgentUnavailable,
    ChunkReceived,
    Heartbeat,
    HistoryEntry,
    StreamFinished,
    make_http_client,
    open_agents_client,
)
from actors.chat.hub import (
    HubClosed,
    HubError,
    SessionBusy,
    SessionHub,
    SessionNotFound,
    open_session_hub,
)
from actors.chat.memory_store import MemoryStore
from actors.chat.settings import AgentsClientSettings, HubSettings

__all__ = [
    "AgentEvent",
    "AgentProtocolError",
    "AgentReportedError",
    "AgentRequest",
    "AgentStream",
    "AgentTimeout",
    "AgentUnavailable",
    "AgentsClient",
    "AgentsClientSettings",
    "AgentsError",
    "ChunkReceived",
    "Heartbeat",
    "HistoryEntry",
    "HubClosed",
    "HubError",
    "HubSettings",
    "MemoryStore",
    "SessionBusy",
    "SessionHub",
    "SessionNotFound",
    "StreamFinished",
    "make_http_client",
    "open_agents_client",
    "open_session_hub",
]
