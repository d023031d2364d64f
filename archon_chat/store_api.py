"""The store the gateway depends on: the actors' :class:`~actors.chat.store.ChatStore`
plus what the gateway itself calls, as a :class:`typing.Protocol`.

Two implementations: :class:`archon_chat.store.SqliteStore` (one file, the default) and
:class:`archon_chat.store_postgres.PostgresStore` (a shared database, for several
gateway processes). :func:`open_configured_store` opens the one the settings select. The
gateway, the server and the hub see only this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol

from actors.chat.messages import AgentType, ChatMessage, SessionRecord
from actors.chat.store import ChatStore

if TYPE_CHECKING:
    from actors.chat.memory_store import MemoryStore
    from archon_chat.store import SqliteStore
    from archon_chat.store_postgres import PostgresStore

__all__ = ["GatewayStore", "StoreSettings", "open_configured_store"]


class GatewayStore(ChatStore, Protocol):
    """A :class:`ChatStore` with the calls of the gateway's REST API and sweeper."""

    async def create_session(
        self, agent_type: AgentType, project_id: str | None, owner: str | None = None
    ) -> SessionRecord:
        """Store a new session with a fresh id of 128 random bits, belonging to ``owner``
        (a user id; ``None`` outside user mode)."""
        ...

    async def list_sessions(
        self, owner: str, limit: int, before: tuple[str, str] | None = None
    ) -> list[SessionRecord]:
        """The unexpired sessions of ``owner``, most recently active first (by
        ``updated_at``, then id), at most ``limit``; ``before`` = ``(updated_at,
        session_id)`` of the last one of the previous page starts after it."""
        ...

    async def count_sessions(self, owner: str) -> int:
        """How many unexpired sessions ``owner`` has."""
        ...

    async def session_messages(self, session_id: str) -> list[ChatMessage]:
        """Every finished message of the session (not STREAMING), by seq."""
        ...

    async def delete_expired(self) -> int:
        """Delete the sessions idle for longer than the TTL (a session with a reply
        streaming is kept), and their messages. Returns how many sessions went."""
        ...

    async def stats(self) -> dict[str, int]:
        """``{"sessions": stored sessions, "messages": their finished messages}``."""
        ...


if TYPE_CHECKING:  # mypy proves every store implements the protocol

    def _conforms(
        sqlite: SqliteStore, postgres: PostgresStore, memory: MemoryStore
    ) -> tuple[GatewayStore, GatewayStore, GatewayStore]:
        return sqlite, postgres, memory


class StoreSettings(Protocol):
    """The settings :func:`open_configured_store` reads (``config.Settings`` has them)."""

    @property
    def database_url(self) -> str: ...
    @property
    def db_path(self) -> str: ...
    @property
    def session_ttl_hours(self) -> float: ...
    @property
    def db_pool_size(self) -> int: ...
    @property
    def db_connect_timeout_s(self) -> float: ...
    @property
    def db_timeout_s(self) -> float: ...
    @property
    def redis_url(self) -> str: ...


@asynccontextmanager
async def open_configured_store(settings: StoreSettings) -> AsyncIterator[GatewayStore]:
    """The PostgreSQL store if ``database_url`` is set, else the SQLite file at
    ``db_path``. Closed on exit. In cluster mode (``redis_url`` set) other processes may
    share the SQLite file, so opening it recovers nothing: ``acquire`` does, per session."""
    ttl_s = settings.session_ttl_hours * 3600
    if settings.database_url:
        from archon_chat.store_postgres import open_postgres_store

        async with open_postgres_store(
            settings.database_url,
            ttl_s=ttl_s,
            pool_size=settings.db_pool_size,
            connect_timeout_s=settings.db_connect_timeout_s,
            timeout_s=settings.db_timeout_s,
            # In a cluster, a dead node's turns are failed by the node that reaps it.
            recover_orphans=not settings.redis_url,
        ) as pg:
            yield pg
    else:
        from archon_chat.store import open_store

        async with open_store(
            settings.db_path, ttl_s=ttl_s, recover_at_open=not settings.redis_url
        ) as sqlite:
            yield sqlite
