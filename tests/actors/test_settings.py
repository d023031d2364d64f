"""HubSettings and AgentsClientSettings: derived from the gateway's settings, validated
(synchronous)."""

from __future__ import annotations

import pytest

from actors.chat.settings import AgentsClientSettings, HubSettings
from archon_chat.config import derive, load_settings

from ..derived import derived


def test_derived_from_the_gateway_settings() -> None:
    config = load_settings(
        {
            "ARCHON_CHAT_AGENT_FIRST_EVENT_TIMEOUT_S": "7",
            "ARCHON_CHAT_AGENT_IDLE_TIMEOUT_S": "3",
            "ARCHON_CHAT_AGENT_TURN_TIMEOUT_S": "50",
            "ARCHON_CHAT_MAILBOX_SIZE": "9",
            "MAX_MESSAGES_PER_SESSION": "12",
            "ARCHON_CHAT_SEQ_BLOCK": "16",
            "ARCHON_CHAT_AGENT_KEEPALIVE": "3",
        }
    )
    settings = derive(HubSettings, config)
    assert (
        settings.agent_first_event_timeout_s,
        settings.agent_idle_timeout_s,
        settings.agent_turn_timeout_s,
        settings.mailbox_size,
        settings.max_messages_per_session,
        settings.seq_block,
    ) == (7, 3, 50, 9, 12, 16)
    assert settings.idle_passivate_s == config.idle_passivate_s
    assert settings.restart_intensity == config.restart_intensity
    assert derive(AgentsClientSettings, config).agent_keepalive == 3


def test_derive_names_what_the_source_lacks() -> None:
    with pytest.raises(TypeError, match="object has no mailbox_size, max_queued_turns"):
        derive(HubSettings, object())


@pytest.mark.parametrize(
    "changes",
    [{"mailbox_size": 0}, {"max_queued_turns": 0}, {"seq_block": 0}, {"save_timeout_s": -1.0},
     {"agent_idle_timeout_s": float("nan")}, {"restart_period_s": 0.0}],
)  # fmt: skip
def test_invalid_hub_settings_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="HubSettings"):
        derived(HubSettings, **changes)


@pytest.mark.parametrize(
    "changes",
    [{"agent_pools": 0}, {"agent_pool_size": 0}, {"agent_keepalive": -1},
     {"agent_connect_timeout_s": float("nan")}, {"agent_max_event_chars": 0}],
)  # fmt: skip
def test_invalid_agents_client_settings_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="AgentsClientSettings"):
        derived(AgentsClientSettings, **changes)
