"""One place for every setting: environment variables, overridden by command-line flags.

Each setting is a field of :class:`Settings` with its environment name, its default and a
parser. The seed's names (``AGENT_SERVICE_URL``, ``SOCKETIO_PING_TIMEOUT``,
``SOCKETIO_PING_INTERVAL``, ``SESSION_TTL_HOURS``, ``MAX_MESSAGES_PER_SESSION``) keep their
meaning and defaults; ours all start with ``ARCHON_CHAT_``. Durations are seconds (float,
``_s`` suffix); they go on the wire in milliseconds only where Engine.IO says so.

An invalid value stops start-up with a :class:`ConfigError` naming the variable.
Every bound (queue, buffer, limit) and timeout is a setting with its reason in ``help``.

Declared once. The parts that must not import this module (``actors``, the sans-IO
``archon_chat.protocol``) take their settings as small frozen dataclasses without defaults
whose fields are named as here (``HubSettings``, ``AgentsClientSettings``,
``ServerOptions``, ``EngineConfig``); :func:`derive` builds one by copying the same-named
fields, so a default lives only in :class:`Settings`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
from urllib.parse import urlsplit, urlunsplit

from archon_chat.origins import OriginPolicy


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


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be zero (off) or a positive integer")
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


def _public_origins(raw: str) -> tuple[str, ...]:
    origins = _origins(raw)
    if "*" in origins:
        raise ValueError("must list origins such as https://chat.example.com, not *")
    return origins


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be one of 1, true, yes, on, 0, false, no, off")


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


def _redis_url(raw: str) -> str:
    raw = raw.strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://host:port/db URL (or empty: one process, no Redis)")
    if parts.scheme != "unix":
        try:
            port = parts.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        if not parts.hostname or (port is not None and not 0 < port <= 65535):
            raise ValueError("must name a host, e.g. redis://127.0.0.1:6379/0")
    return raw


def _key_prefix(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 64 or any(c.isspace() or c in "{}" for c in value):
        raise ValueError("must be 1-64 characters without spaces or braces")
    return value


def _sid_prefix(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{0,16}", raw):
        raise ValueError("must be at most 16 of A-Z a-z 0-9 _ - .")
    return raw


def worker_sid_prefix(index: int) -> str:
    """The sid prefix of worker ``index`` of ``serve --workers`` (its Engine.IO sids start
    with it; the parent routes by it)."""
    return f"w{index}."


def redact_url(url: str) -> str:
    """``url`` without its userinfo (``http://user:pass@host`` -> ``http://***@host``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _text(raw: str) -> str:
    return raw.strip()


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return value


RECOVERY_MODES = ("opt-in", "all", "off")


def _recovery(raw: str) -> str:
    value = raw.strip().lower()
    if value not in RECOVERY_MODES:
        raise ValueError(f"must be one of {', '.join(RECOVERY_MODES)}")
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
    http_keep_alive_s: float = _setting(
        "ARCHON_CHAT_HTTP_KEEP_ALIVE_S",
        75.0,
        _positive_float,
        "an idle HTTP keep-alive connection is closed after this",
    )
    write_timeout_s: float = _setting(
        "ARCHON_CHAT_WRITE_TIMEOUT_S",
        10.0,
        _positive_float,
        "a connection whose peer stops reading for this long is aborted",
    )
    ws_write_bytes: int = _setting(
        "ARCHON_CHAT_WS_WRITE_BYTES",
        262_144,
        _positive_int,
        "most frame data one websocket write carries (a socket's pending frames go together)",
    )
    http_read_timeout_s: float = _setting(
        "ARCHON_CHAT_HTTP_READ_TIMEOUT_S",
        30.0,
        _positive_float,
        "an HTTP request's head and body must arrive within this time (slowloris)",
    )
    connect_timeout_s: float = _setting(
        "ARCHON_CHAT_CONNECT_TIMEOUT_S",
        45.0,
        _positive_float,
        "an Engine.IO session without a Socket.IO CONNECT by then is closed",
    )
    cors_origins: tuple[str, ...] = _setting(
        "ARCHON_CHAT_CORS_ORIGINS",
        (),
        _origins,
        "other origins allowed besides the page's own (comma separated; * for any)",
        "--cors-origins",
    )
    websocket_compression: bool = _setting(
        "ARCHON_CHAT_WEBSOCKET_COMPRESSION",
        False,
        _flag,
        "accept permessage-deflate (off as in Socket.IO's reference server: ~95 KiB and a "
        "deflate pass per frame for every websocket)",
    )
    public_origins: tuple[str, ...] = _setting(
        "ARCHON_CHAT_PUBLIC_ORIGINS",
        (),
        _public_origins,
        "the gateway's own origins as browsers see them (comma separated); unset: "
        "scheme://Host, with Host limited to loopback names and the bound address "
        "when no API key is set",
    )
    trusted_proxy: bool = _setting(
        "ARCHON_CHAT_TRUSTED_PROXY",
        False,
        _flag,
        "a proxy you trust fronts the gateway: honour X-Forwarded-Proto and "
        "X-Forwarded-For, and leave per-address limits to it",
    )
    sessions_per_minute: int = _setting(
        "ARCHON_CHAT_SESSIONS_PER_MINUTE",
        120,
        _non_negative_int,
        "sessions one client address may create a minute (burst as large); 0: no limit",
    )
    handshakes_per_minute: int = _setting(
        "ARCHON_CHAT_HANDSHAKES_PER_MINUTE",
        600,
        _non_negative_int,
        "Engine.IO handshakes one client address may make a minute; 0: no limit",
    )
    max_unconnected_per_address: int = _setting(
        "ARCHON_CHAT_MAX_UNCONNECTED_PER_ADDRESS",
        128,
        _non_negative_int,
        "Engine.IO sessions without a Socket.IO CONNECT yet, per client address; 0: no cap",
    )
    max_unconnected: int = _setting(
        "ARCHON_CHAT_MAX_UNCONNECTED",
        10_000,
        _positive_int,
        "Engine.IO sessions without a Socket.IO CONNECT yet, in all",
    )
    max_connections_per_address: int = _setting(
        "ARCHON_CHAT_MAX_CONNECTIONS_PER_ADDRESS",
        1024,
        _non_negative_int,
        "open TCP connections per client address (off behind a trusted proxy); 0: no cap",
    )
    rate_limit_addresses: int = _setting(
        "ARCHON_CHAT_RATE_LIMIT_ADDRESSES",
        10_000,
        _positive_int,
        "client addresses whose budgets are remembered (the least recent forgotten first)",
    )
    api_key: str = _setting(
        "ARCHON_CHAT_API_KEY",
        "",
        _text,
        "when set (and user mode is off), REST and Socket.IO need this key",
    )

    # users (user mode: on when a JWT secret or a JWKS URL is set)
    jwt_secret: str = _setting(
        "ARCHON_CHAT_JWT_SECRET",
        "",
        _text,
        "HS256 secret shared with the host application; REST and Socket.IO then need its "
        "tokens, whose 'sub' is the user",
    )
    jwks_url: str = _setting(
        "ARCHON_CHAT_JWKS_URL",
        "",
        _url_or_empty,
        "JSON Web Key Set of the host application (RS256/ES256 tokens, keys rotate)",
    )
    jwt_issuer: str = _setting(
        "ARCHON_CHAT_JWT_ISSUER", "", _text, "required 'iss' of tokens (empty: not checked)"
    )
    jwt_audience: str = _setting(
        "ARCHON_CHAT_JWT_AUDIENCE", "", _text, "required 'aud' of tokens (empty: not checked)"
    )
    jwt_leeway_s: float = _setting(
        "ARCHON_CHAT_JWT_LEEWAY_S",
        30.0,
        _non_negative_float,
        "clock difference allowed when checking a token's exp and nbf",
    )
    jwks_cache_s: float = _setting(
        "ARCHON_CHAT_JWKS_CACHE_S", 300.0, _positive_float, "JWKS kept this long, then fetched"
    )
    jwks_min_refresh_s: float = _setting(
        "ARCHON_CHAT_JWKS_MIN_REFRESH_S",
        10.0,
        _non_negative_float,
        "a token with an unknown key id fetches the JWKS again at most this often",
    )
    jwks_timeout_s: float = _setting(
        "ARCHON_CHAT_JWKS_TIMEOUT_S", 5.0, _positive_float, "deadline of one JWKS fetch"
    )
    max_jwks_bytes: int = _setting(
        "ARCHON_CHAT_MAX_JWKS_BYTES", 65_536, _positive_int, "largest JWKS document read"
    )
    token_refresh_window_s: float = _setting(
        "ARCHON_CHAT_TOKEN_REFRESH_WINDOW_S",
        30.0,
        _non_negative_float,
        "a socket is told (error token_expired) this long before its token expires, and "
        "disconnected at expiry unless it sends refresh_token",
    )
    user_messages_per_minute: int = _setting(
        "ARCHON_CHAT_USER_MESSAGES_PER_MINUTE",
        60,
        _non_negative_int,
        "chat messages one user may send a minute, all sockets and REST (burst as large); "
        "0: no limit",
    )
    user_concurrent_turns: int = _setting(
        "ARCHON_CHAT_USER_CONCURRENT_TURNS",
        4,
        _non_negative_int,
        "sessions of one user with a reply in progress at once; 0: no limit",
    )
    user_max_sessions: int = _setting(
        "ARCHON_CHAT_USER_MAX_SESSIONS",
        500,
        _non_negative_int,
        "unexpired sessions one user may have; 0: no limit",
    )
    user_max_connections: int = _setting(
        "ARCHON_CHAT_USER_MAX_CONNECTIONS",
        32,
        _non_negative_int,
        "Socket.IO connections one user may have at once; 0: no limit",
    )
    max_users: int = _setting(
        "ARCHON_CHAT_MAX_USERS",
        10_000,
        _positive_int,
        "users whose budgets and session owners are remembered (least recent forgotten)",
    )
    max_list_sessions: int = _setting(
        "ARCHON_CHAT_MAX_LIST_SESSIONS",
        100,
        _positive_int,
        "largest page of GET /sessions (the default page is 20)",
    )
    log_level: str = _setting(
        "ARCHON_CHAT_LOG_LEVEL", "INFO", _log_level, "log level", "--log-level"
    )

    # cluster (design.md section 8): unset ARCHON_CHAT_REDIS_URL means one process
    redis_url: str = _setting(
        "ARCHON_CHAT_REDIS_URL",
        "",
        _redis_url,
        "redis://host:port/db: run as one node of a cluster sharing this Redis and the store "
        "(empty: one process, nothing shared)",
    )
    redis_prefix: str = _setting(
        "ARCHON_CHAT_REDIS_PREFIX",
        "archon:",
        _key_prefix,
        "prefix of every Redis key and channel of this cluster (several clusters, one Redis)",
    )
    redis_timeout_s: float = _setting(
        "ARCHON_CHAT_REDIS_TIMEOUT_S",
        2.0,
        _positive_float,
        "a Redis command that takes longer fails (the link reconnects with backoff)",
    )
    lease_s: float = _setting(
        "ARCHON_CHAT_LEASE_S",
        6.0,
        _positive_float,
        "a session's owner holds it this long without renewing; a dead owner's turn is "
        "failed (owner_lost) within it",
    )
    node_id: str = _setting(
        "ARCHON_CHAT_NODE_ID",
        "",
        _text,
        "this node's name in the cluster (empty: host name, process id and a random part)",
    )
    cluster_rpc_timeout_s: float = _setting(
        "ARCHON_CHAT_CLUSTER_RPC_TIMEOUT_S",
        5.0,
        _positive_float,
        "how long a command routed to another node waits for its answer",
    )
    cluster_queue: int = _setting(
        "ARCHON_CHAT_CLUSTER_QUEUE",
        65_536,
        _positive_int,
        "events waiting to be published to other nodes; past it they are dropped (counted) "
        "and the nodes' clients resume with last_seq",
    )
    cluster_max_requests: int = _setting(
        "ARCHON_CHAT_CLUSTER_MAX_REQUESTS",
        1024,
        _positive_int,
        "commands from other nodes served at once; past it they are answered busy",
    )
    cluster_epochs_kept: int = _setting(
        "ARCHON_CHAT_CLUSTER_EPOCHS_KEPT",
        100_000,
        _positive_int,
        "sessions whose newest owner a node remembers (events of a deposed owner are dropped)",
    )
    cluster_batch_bytes: int = _setting(
        "ARCHON_CHAT_CLUSTER_BATCH_BYTES",
        262_144,
        _positive_int,
        "most bytes of events one Redis message to another node carries",
    )
    workers: int = _setting(
        "ARCHON_CHAT_WORKERS",
        1,
        _positive_int,
        "gateway processes on this machine sharing the port (more than 1 needs "
        "ARCHON_CHAT_REDIS_URL)",
        "--workers",
    )
    sid_prefix: str = _setting(
        "ARCHON_CHAT_SID_PREFIX",
        "",
        _sid_prefix,
        "starts every Engine.IO sid of this process (set by serve --workers for each worker, "
        "so polling requests are routed to the worker holding their sid)",
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
    health_timeout_s: float = _setting(
        "ARCHON_CHAT_HEALTH_TIMEOUT_S",
        2.0,
        _positive_float,
        "/healthz waits this long for the agents service's /health",
    )
    llm_max_connections: int = _setting(
        "ARCHON_CHAT_LLM_MAX_CONNECTIONS",
        100,
        _positive_int,
        "concurrent requests to the LLM (one connection each; more wait for a free one)",
    )
    llm_keepalive: int = _setting(
        "ARCHON_CHAT_LLM_KEEPALIVE",
        20,
        _positive_int,
        "idle keep-alive connections to the LLM (small: httpcore walks them per request)",
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
    agent_event_buffer: int = _setting(
        "ARCHON_CHAT_AGENT_EVENT_BUFFER",
        8,
        _positive_int,
        "agents service: events encoded but not yet written (small: backpressure reaches "
        "the agent quickly; a few let it work ahead by a phrase or two)",
    )
    agent_compute_threads: int = _setting(
        "ARCHON_CHAT_AGENT_COMPUTE_THREADS",
        2,
        _positive_int,
        "built-in agents: offline answers composed at once in worker threads",
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
    agent_keepalive_expiry_s: float = _setting(
        "ARCHON_CHAT_AGENT_KEEPALIVE_EXPIRY_S",
        5.0,
        _positive_float,
        "an idle keep-alive connection to the agents is closed after this",
    )
    agent_pools: int = _setting(
        "ARCHON_CHAT_AGENT_POOLS",
        32,
        _positive_int,
        "HTTP client pools to the agents, used round-robin (small pools are cheaper to walk)",
    )
    agent_max_event_chars: int = _setting(
        "ARCHON_CHAT_AGENT_MAX_EVENT_CHARS",
        1 << 20,
        _positive_int,
        "largest event of an agent's stream; past it the turn fails (agent_protocol_error)",
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
    upgrade_timeout_s: float = _setting(
        "ARCHON_CHAT_UPGRADE_TIMEOUT_S",
        10.0,
        _positive_float,
        "a polling-to-websocket upgrade must complete within this",
    )
    inbox_size: int = _setting(
        "ARCHON_CHAT_INBOX_SIZE",
        64,
        _positive_int,
        "events of one socket waiting for their handler before its transport is not read",
    )
    max_attachment_bytes: int = _setting(
        "ARCHON_CHAT_MAX_ATTACHMENT_BYTES",
        1_000_000,
        _positive_int,
        "bytes of binary attachments held for one packet (one pending per connection)",
    )
    max_json_depth: int = _setting(
        "ARCHON_CHAT_MAX_JSON_DEPTH",
        32,
        _positive_int,
        "deepest nesting of a REST JSON body or a message's context",
    )
    max_context_bytes: int = _setting(
        "ARCHON_CHAT_MAX_CONTEXT_BYTES",
        16_384,
        _positive_int,
        "largest context of a chat message, as UTF-8 JSON bytes",
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
    recovery: str = _setting(
        "ARCHON_CHAT_RECOVERY",
        "opt-in",
        _recovery,
        "connection state recovery: opt-in (clients sending auth {recover: true}), all "
        "(every client gets pid and offsets, as Node's connectionStateRecovery), off",
    )
    rate_limit_messages: int = _setting(
        "ARCHON_CHAT_RATE_LIMIT_MESSAGES", 20, _positive_int, "chat messages per connection..."
    )
    rate_limit_window_s: float = _setting(
        "ARCHON_CHAT_RATE_LIMIT_WINDOW_S", 10.0, _positive_float, "...within this many seconds"
    )
    rate_limit_keys: int = _setting(
        "ARCHON_CHAT_RATE_LIMIT_KEYS",
        10_000,
        _positive_int,
        "rate-limit budgets kept (connections, REST clients); idle ones pruned past it",
    )
    max_sessions_per_socket: int = _setting(
        "ARCHON_CHAT_MAX_SESSIONS_PER_SOCKET",
        64,
        _positive_int,
        "sessions one connection may have joined at once",
    )
    max_merged_chars: int = _setting(
        "ARCHON_CHAT_MAX_MERGED_CHARS",
        65_536,
        _positive_int,
        "largest stream_chunk made by merging unsent chunks in a socket's outbox",
    )
    join_buffer: int = _setting(
        "ARCHON_CHAT_JOIN_BUFFER",
        10_000,
        _positive_int,
        "live events held for a socket while its join replay is built (then session_busy)",
    )
    replay_limit: int = _setting(
        "ARCHON_CHAT_REPLAY_LIMIT",
        500,
        _positive_int,
        "finished messages replayed on join (at most half the outbox); past it the client "
        "is told to reload over REST",
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
    actor_reply_timeout_s: float = _setting(
        "ARCHON_CHAT_ACTOR_REPLY_TIMEOUT_S",
        10.0,
        _positive_float,
        "how long a request waits for its session actor's answer",
    )
    checkpoint_interval_s: float = _setting(
        "ARCHON_CHAT_CHECKPOINT_INTERVAL_S",
        5.0,
        _positive_float,
        "a streaming reply is saved this often (what a crash can lose)",
    )
    seq_block: int = _setting(
        "ARCHON_CHAT_SEQ_BLOCK",
        256,
        _positive_int,
        "seqs reserved per store write (the persisted high-water mark moves by this)",
    )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def origin_policy(self) -> OriginPolicy:
        """The one origin check REST and Socket.IO apply (:mod:`archon_chat.origins`)."""
        return OriginPolicy(
            allowlist=self.cors_origins,
            public_origins=self.public_origins,
            trusted_proxy=self.trusted_proxy,
            guard_host=not (self.api_key or self.user_mode),
            bound_host=self.host,
        )

    @property
    def user_mode(self) -> bool:
        """Tokens name the user (a JWT secret or JWKS URL is set): :mod:`archon_chat.auth`."""
        return bool(self.jwt_secret or self.jwks_url)

    @property
    def builtin_agents(self) -> bool:
        return not self.agent_service_url

    @property
    def worker_index(self) -> int | None:
        """Which worker of ``serve --workers`` this process is (``None``: not one)."""
        found = re.fullmatch(r"w(\d{1,6})\.", self.sid_prefix)
        return int(found[1]) if found else None

    @property
    def cluster_mode(self) -> bool:
        """One node of a cluster (a Redis URL is set): other processes own sessions too."""
        return bool(self.redis_url)


_Options = TypeVar("_Options", bound="DataclassInstance")


def derive(cls: type[_Options], source: object) -> _Options:
    """A ``cls`` (a dataclass) whose every field is copied from the same-named attribute
    of ``source``, usually :class:`Settings`.

    Raises :class:`TypeError` naming the fields ``source`` lacks.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [name for name in names if not hasattr(source, name)]
    if missing:
        raise TypeError(f"{type(source).__name__} has no {', '.join(missing)} for {cls.__name__}")
    options: _Options = cast(Any, cls)(**{name: getattr(source, name) for name in names})
    return options


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
    if s.workers > 1 and not s.redis_url:
        raise ConfigError(
            "--workers/ARCHON_CHAT_WORKERS above 1 needs ARCHON_CHAT_REDIS_URL: the workers "
            "form a cluster through Redis"
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
