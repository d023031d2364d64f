"""HubSettings: validation, and the gateway's configuration maps onto it (synchronous)."""

from __future__ import annotations

import pytest

from actors.chat.settings import HubSettings
from archon_chat.config import load_settings


def test_from_config_takes_the_gateway_settings() -> None:
    config = load_settings(
        {
            "ARCHON_CHAT_AGENT_FIRST_EVENT_TIMEOUT_S": "7",
            "ARCHON_CHAT_AGENT_IDLE_TIMEOUT_S": "3",
            "ARCHON_CHAT_AGENT_TURN_TIMEOUT_S": "50",
            "ARCHON_CHAT_MAILBOX_SIZE": "9",
            "MAX_MESSAGES_PER_SESSION": "12",
        }
    )
    settings = HubSettings.from_config(config)
    assert (
        settings.first_event_timeout_s,
        settings.gap_timeout_s,
        settings.turn_timeout_s,
        settings.mailbox_size,
        settings.max_messages_per_session,
    ) == (7, 3, 50, 9, 12)
    assert settings.idle_passivate_s == config.idle_passivate_s
    assert settings.restart_intensity == config.restart_intensity


@pytest.mark.parametrize(
    "changes",
    [{"mailbox_size": 0}, {"turn_buffer": 0}, {"save_timeout_s": -1.0},
     {"gap_timeout_s": float("nan")}, {"restart_period_s": 0.0}],
)  # fmt: skip
def test_invalid_values_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="HubSettings"):
        HubSettings(**changes)  # type: ignore[arg-type]
