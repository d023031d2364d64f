"""Options objects built as the gateway builds them: from :class:`Settings`, with changes.

``derived(HubSettings, agent_turn_timeout_s=3)`` is the hub's settings of
``Settings().replace(agent_turn_timeout_s=3)``, so tests never restate a default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from archon_chat.config import Settings, derive

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Options = TypeVar("_Options", bound="DataclassInstance")


def derived(cls: type[_Options], **changes: Any) -> _Options:
    """``cls`` derived from the default settings with ``changes`` (Settings field names)."""
    return derive(cls, Settings().replace(**changes))
