"""Settings from the environment and flags, validated with messages naming the variable."""

from __future__ import annotations

import pytest

from archon_chat.cli import build_parser
from archon_chat.config import ConfigError, load_settings, settings_from_args


def test_defaults_follow_the_seed() -> None:
    s = load_settings({})
    assert (s.ping_interval_s, s.ping_timeout_s) == (25.0, 60.0)
    assert (s.session_ttl_hours, s.max_messages_per_session) == (24.0, 1000)
    assert s.port == 8080
    assert s.agent_service_url == ""
    assert s.builtin_agents


def test_environment_is_parsed_including_fractions() -> None:
    s = load_settings(
        {
            "SOCKETIO_PING_INTERVAL": "0.25",
            "AGENT_SERVICE_URL": "http://agents:8052/",
            "ARCHON_CHAT_CORS_ORIGINS": "https://a.example, https://b.example",
            "MAX_MESSAGES_PER_SESSION": "5",
            "ARCHON_CHAT_RECOVERY": " All ",
        }
    )
    assert s.ping_interval_s == 0.25
    assert s.agent_service_url == "http://agents:8052"
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert s.max_messages_per_session == 5
    assert not s.websocket_compression
    assert load_settings({"ARCHON_CHAT_WEBSOCKET_COMPRESSION": " On"}).websocket_compression
    assert not load_settings({"ARCHON_CHAT_WEBSOCKET_COMPRESSION": "0"}).websocket_compression
    assert s.recovery == "all"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SOCKETIO_PING_TIMEOUT", "soon"),
        ("SOCKETIO_PING_INTERVAL", "-1"),
        ("ARCHON_CHAT_PORT", "70000"),
        ("AGENT_SERVICE_URL", "ftp://x"),
        ("ARCHON_CHAT_CORS_ORIGINS", "not-an-origin"),
        ("MAX_MESSAGES_PER_SESSION", "0"),
        ("ARCHON_CHAT_LOG_LEVEL", "LOUD"),
        ("SESSION_TTL_HOURS", "nan"),
        ("ARCHON_CHAT_WEBSOCKET_COMPRESSION", "maybe"),
        ("ARCHON_CHAT_RECOVERY", "sometimes"),
        ("ARCHON_CHAT_DATABASE_URL", "mysql://db.example/chat"),
        ("ARCHON_CHAT_DATABASE_URL", "postgresql://db.example:port/chat"),
        ("ARCHON_CHAT_DATABASE_URL", "postgresql://db.example/chat?color=blue"),
        ("ARCHON_CHAT_DB_POOL_SIZE", "0"),
        ("ARCHON_CHAT_DB_CONNECT_TIMEOUT_S", "-1"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_cross_checks() -> None:
    with pytest.raises(ConfigError, match="ARCHON_CHAT_MAX_MESSAGE_CHARS"):
        load_settings({"ARCHON_CHAT_MAX_MESSAGE_CHARS": "1000000"})
    with pytest.raises(ConfigError, match="ARCHON_CHAT_LLM_MODEL"):
        load_settings({"ARCHON_CHAT_LLM_BASE_URL": "http://127.0.0.1:11434/v1"})


def test_flags_override_the_environment() -> None:
    args = build_parser().parse_args(["serve", "--port", "9000", "--db", "/tmp/x.db"])
    s = settings_from_args(args, {"ARCHON_CHAT_PORT": "8000", "ARCHON_CHAT_HOST": "0.0.0.0"})
    assert (s.port, s.db_path, s.host) == (9000, "/tmp/x.db", "0.0.0.0")
    args = build_parser().parse_args(["serve", "--port", "nope"])
    with pytest.raises(ConfigError, match="--port"):
        settings_from_args(args, {})
