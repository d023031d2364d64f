"""One place for every setting: environment variables, overridden by command-line flags.

Each setting is a field of :class:`Settings` with its environment name, its default and a
parser. The seed's names (``AGENT_SERVICE_URL``, ``SOCKETIO_PING_TIMEOUT``,
``SOCKETIO_PING_INTERVAL``, ``SESSION_TTL_HOURS``, ``MAX_MESSAGES_PER_SESSION``) keep their
meaning and defaults; ours all start with ``ARCHON_CHAT_``. Durations are seconds (float,
``_s`` suffix); they go on the wire in milliseconds only where Engine.IO says so.

An invalid value stops start-up with a :class:`ConfigError` naming the variable.
Every bound (queue, buffer, limit) is a setting with its reason in ``help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the variable."""


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0 or value != value or value == float("inf"):
        raise ValueError("must be zero or a positive number")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return value


def _url_or_empty(raw: str) -> str:
    raw = raw.strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return raw.rstrip("/")


def _origins(raw: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in raw.split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        if item != "*":
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{item!r} is not an origin such as https://example.com")
        out.append(item)
    return tuple(out)


def _database_url(raw: str) -> str:
    raw = raw.strip()
    if not raw:
        return ""
    if urlsplit(raw).scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// URL (or empty: the SQLite file)")
    from psycopg import conninfo

    try:
        parts = conninfo.conninfo_to_dict(raw)
    except Exception as exc:  # psycopg.ProgrammingError: libpq refused the string
        raise ValueError(f"is not a valid PostgreSQL URL: {str(exc).strip()}") from None
    for port in str(parts.get("port") or "5432").split(","):
        if not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"has an invalid port {port!r}")
    return raw


def _text(raw: str) -> str:
    return raw.strip()


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return value


def _setting(
    env: str,
    default: Any,
    parse: Callable[[str], Any],
    help: str,
    flag: str | None = None,
) -> Any:
    return field(
        default=default,
        metadata={"env": env, "parse": parse, "help": help, "flag": flag},
    )


@dataclass(frozen=True)
class Settings:
    """All settings of the gateway and the built-in agents service."""

    # network
    host: str = _setting("ARCHON_CHAT_HOST", "127.0.0.1", _text, "address to bind", "--host")
    port: int = _setting("ARCHON_CHAT_PORT", 8080, _port, "gateway port (0: any free)", "--port")
    agents_host: str = _setting(
        "ARCHON_CHAT_AGENTS_HOST", "127.0.0.1", _text, "agents service address", "--agents-host"
    )
    agents_port: int = _setting(
        "ARCHON_CHAT_AGENTS_PORT", 8052, _port, "port of `archon-chat agents`", "--agents-port"
    )
    backlog: int = _setting(
        "ARCHON_CHAT_BACKLOG", 4096, _positive_int, "listen backlog: bursts of connects"
    )
    write_timeout_s: float = _setting(
        "ARCHON_CHAT_WRITE_TIMEOUT_S",
        10.0,
        _positive_float,
        "a connection whose peer stops reading for this long is aborted",
    )
    cors_origins: tuple[str, ...] = _setting(
        "ARCHON_CHAT_CORS_ORIGINS",
        (),
        _origins,
        "other origins allowed besides the page's own (comma separated; * for any)",
        "--cors-origins",
    )
    api_key: str = _setting(
        "ARCHON_CHAT_API_KEY", "", _text, "when set, REST and Socket.IO need this key"
    )
    log_level: str = _setting(
        "ARCHON_CHAT_LOG_LEVEL", "INFO", _log_level, "log level", "--log-level"
    )

    # storage
    db_path: str = _setting(
        "ARCHON_CHAT_DB",
        "var/archon-chat.db",
        _text,
        "SQLite file of sessions and messages (unless ARCHON_CHAT_DATABASE_URL is set)",
        "--db",
    )
    database_url: str = _setting(
        "ARCHON_CHAT_DATABASE_URL",
        "",
        _database_url,
        "postgresql://user@host:port/db: keep sessions in PostgreSQL instead of the SQLite file",
    )
    db_pool_size: int = _setting(
        "ARCHON_CHAT_DB_POOL_SIZE",
        4,
        _positive_int,
        "PostgreSQL: connections of the store, and its worker threads (writes use one)",
    )
    db_connect_timeout_s: float = _setting(
        "ARCHON_CHAT_DB_CONNECT_TIMEOUT_S",
        30.0,
        _positive_float,
        "PostgreSQL: how long start-up retries an unreachable database before it exits",
    )
    db_timeout_s: float = _setting(
        "ARCHON_CHAT_DB_TIMEOUT_S",
        5.0,
        _positive_float,
        "PostgreSQL: longest wait for a working connection of the pool (a call fails then)",
    )
    kb_dir: str = _setting(
        "ARCHON_CHAT_KB_DIR",
        "",
        _text,
        "knowledge-base folder of the rag agent (empty: the shipped documentation)",
        "--kb-dir",
    )
    kb_index_path: str = _setting(
        "ARCHON_CHAT_KB_INDEX", "var/kb-index.db", _text, "SQLite FTS5 index of the knowledge base"
    )

    # agents service and LLM
    agent_service_url: str = _setting(
        "AGENT_SERVICE_URL",
        "",
        _url_or_empty,
        "agents service base URL (empty: the built-in one, in process)",
        "--agent-service-url",
    )
    llm_base_url: str = _setting(
        "ARCHON_CHAT_LLM_BASE_URL", "", _url_or_empty, "OpenAI-compatible endpoint, e.g. .../v1"
    )
    llm_model: str = _setting("ARCHON_CHAT_LLM_MODEL", "", _text, "model name for the LLM")
    llm_api_key: str = _setting("ARCHON_CHAT_LLM_API_KEY", "", _text, "bearer key for the LLM")
    llm_timeout_s: float = _setting(
        "ARCHON_CHAT_LLM_TIMEOUT_S", 60.0, _positive_float, "longest wait for the LLM's next token"
    )
    agent_ping_interval_s: float = _setting(
        "ARCHON_CHAT_AGENT_PING_INTERVAL_S",
        10.0,
        _positive_float,
        "agents service: `: ping` comment interval while thinking",
    )
    agent_pacing_s: float = _setting(
        "ARCHON_CHAT_AGENT_PACING_S",
        0.004,
        _non_negative_float,
        "built-in agents: pause between two deltas of an offline answer",
    )
    max_prompt_chars: int = _setting(
        "ARCHON_CHAT_MAX_PROMPT_CHARS", 100_000, _positive_int, "agents service: longest prompt"
    )

    # agent stream timeouts (per turn)
    agent_connect_timeout_s: float = _setting(
        "ARCHON_CHAT_AGENT_CONNECT_TIMEOUT_S", 5.0, _positive_float, "connecting to the agents"
    )
    agent_first_event_timeout_s: float = _setting(
        "ARCHON_CHAT_AGENT_FIRST_EVENT_TIMEOUT_S",
        60.0,
        _positive_float,
        "from request to the first upstream event",
    )
    agent_idle_timeout_s: float = _setting(
        "ARCHON_CHAT_AGENT_IDLE_TIMEOUT_S",
        60.0,
        _positive_float,
        "longest gap between upstream events (heartbeats count)",
    )
    agent_turn_timeout_s: float = _setting(
        "ARCHON_CHAT_AGENT_TURN_TIMEOUT_S", 600.0, _positive_float, "whole turn"
    )
    agent_pool_size: int = _setting(
        "ARCHON_CHAT_AGENT_POOL_SIZE",
        20_000,
        _positive_int,
        "concurrent upstream streams (one connection each)",
    )
    agent_keepalive: int = _setting(
        "ARCHON_CHAT_AGENT_KEEPALIVE",
        64,
        _positive_int,
        "idle keep-alive connections kept in all pools (small: httpcore walks a pool's "
        "connections on every request)",
    )
    agent_pools: int = _setting(
        "ARCHON_CHAT_AGENT_POOLS",
        32,
        _positive_int,
        "HTTP client pools to the agents, used round-robin (small pools are cheaper to walk)",
    )
    history_turns: int = _setting(
        "ARCHON_CHAT_HISTORY_TURNS", 20, _positive_int, "complete turns sent to the agent"
    )

    # Socket.IO / Engine.IO
    ping_interval_s: float = _setting(
        "SOCKETIO_PING_INTERVAL", 25.0, _positive_float, "Engine.IO ping interval"
    )
    ping_timeout_s: float = _setting(
        "SOCKETIO_PING_TIMEOUT", 60.0, _positive_float, "Engine.IO ping timeout"
    )
    max_http_buffer_size: int = _setting(
        "ARCHON_CHAT_MAX_HTTP_BUFFER_SIZE",
        1_000_000,
        _positive_int,
        "largest Engine.IO message or polling payload (maxPayload), bytes",
    )
    max_message_chars: int = _setting(
        "ARCHON_CHAT_MAX_MESSAGE_CHARS",
        32_000,
        _positive_int,
        "longest chat message; sits below the buffer size so the socket is not dropped",
    )
    max_attachments: int = _setting(
        "ARCHON_CHAT_MAX_ATTACHMENTS", 10, _positive_int, "binary attachments per packet"
    )
    outbox_size: int = _setting(
        "ARCHON_CHAT_OUTBOX_SIZE",
        1024,
        _positive_int,
        "events queued per socket before a slow client is disconnected",
    )
    recovery_buffer: int = _setting(
        "ARCHON_CHAT_RECOVERY_BUFFER",
        2048,
        _positive_int,
        "events kept per opted-in socket for connection state recovery",
    )
    grace_s: float = _setting(
        "ARCHON_CHAT_GRACE_S",
        30.0,
        _non_negative_float,
        "disconnect grace and recovery window",
    )
    rate_limit_messages: int = _setting(
        "ARCHON_CHAT_RATE_LIMIT_MESSAGES", 20, _positive_int, "chat messages per connection..."
    )
    rate_limit_window_s: float = _setting(
        "ARCHON_CHAT_RATE_LIMIT_WINDOW_S", 10.0, _positive_float, "...within this many seconds"
    )

    # sessions and actors
    session_ttl_hours: float = _setting(
        "SESSION_TTL_HOURS", 24.0, _positive_float, "sessions expire after this idle time"
    )
    max_messages_per_session: int = _setting(
        "MAX_MESSAGES_PER_SESSION", 1000, _positive_int, "messages stored per session"
    )
    mailbox_size: int = _setting(
        "ARCHON_CHAT_MAILBOX_SIZE", 64, _positive_int, "commands queued per session actor"
    )
    max_queued_turns: int = _setting(
        "ARCHON_CHAT_MAX_QUEUED_TURNS", 8, _positive_int, "messages waiting for their turn"
    )
    turn_buffer: int = _setting(
        "ARCHON_CHAT_TURN_BUFFER",
        4096,
        _positive_int,
        "events of the turn in progress kept for rejoining clients (merged past it)",
    )
    events_channel_size: int = _setting(
        "ARCHON_CHAT_EVENTS_CHANNEL_SIZE",
        1024,
        _positive_int,
        "actor-to-gateway events in flight (backpressure on actors past it)",
    )
    idle_passivate_s: float = _setting(
        "ARCHON_CHAT_IDLE_PASSIVATE_S",
        60.0,
        _positive_float,
        "an idle session actor ends after this (state stays in the store)",
    )
    sweep_interval_s: float = _setting(
        "ARCHON_CHAT_SWEEP_INTERVAL_S", 300.0, _positive_float, "expired-session sweeper period"
    )
    restart_intensity: int = _setting(
        "ARCHON_CHAT_RESTART_INTENSITY", 5, _positive_int, "actor restarts allowed..."
    )
    restart_period_s: float = _setting(
        "ARCHON_CHAT_RESTART_PERIOD_S", 10.0, _positive_float, "...within this many seconds"
    )
    shutdown_grace_s: float = _setting(
        "ARCHON_CHAT_SHUTDOWN_GRACE_S",
        5.0,
        _non_negative_float,
        "graceful shutdown deadline before tasks are cancelled",
    )
    save_timeout_s: float = _setting(
        "ARCHON_CHAT_SAVE_TIMEOUT_S", 5.0, _positive_float, "shielded save of a cancelled reply"
    )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def builtin_agents(self) -> bool:
        return not self.agent_service_url


def _fields() -> Sequence[dataclasses.Field[Any]]:
    return dataclasses.fields(Settings)


def load_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Read settings from ``env`` (default: ``os.environ``), then apply ``overrides``.

    Raises :class:`ConfigError` naming the variable of the first invalid value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in _fields():
        name = f.metadata["env"]
        raw = env.get(name)
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        f = next(x for x in _fields() if x.name == key)
        try:
            values[key] = f.metadata["parse"](str(raw)) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise ConfigError(f"{f.metadata['flag'] or key}={raw!r} is invalid: {exc}") from None
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if s.max_message_chars * 4 + 1024 > s.max_http_buffer_size:
        raise ConfigError(
            "ARCHON_CHAT_MAX_MESSAGE_CHARS is too large for ARCHON_CHAT_MAX_HTTP_BUFFER_SIZE: "
            "a message of that many characters (4 bytes each in UTF-8, plus its envelope) "
            "must fit in one Engine.IO packet"
        )
    if s.llm_base_url and not s.llm_model:
        raise ConfigError("ARCHON_CHAT_LLM_MODEL must be set when ARCHON_CHAT_LLM_BASE_URL is")


def add_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Add the command-line flags of the named settings (each overrides its variable)."""
    by_name = {f.name: f for f in _fields()}
    for name in names:
        f = by_name[name]
        parser.add_argument(
            f.metadata["flag"],
            dest=name,
            default=None,
            help=f"{f.metadata['help']} (env {f.metadata['env']}, default {f.default!r})",
        )


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in _fields()}
    return load_settings(env, overrides)


def describe() -> str:
    """A table of every variable, its default and its meaning (for ``--help`` and README)."""
    lines = []
    for f in _fields():
        lines.append(f"{f.metadata['env']:<42} {f.default!r:<22} {f.metadata['help']}")
    return "\n".join(lines)


def db_parent(path: str) -> Path:
    return Path(path).expanduser().resolve().parent
