"""Validation of client payloads (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from archon_chat.gateway import validation
from archon_chat.gateway.errors import GatewayError


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (None, "invalid_request"),
        ([], "invalid_request"),
        ({"session_id": "s"}, "invalid_request"),
        ({"session_id": "s", "message": ""}, "invalid_request"),
        ({"session_id": "s", "message": "   "}, "invalid_request"),
        ({"session_id": "s", "message": 1}, "invalid_request"),
        ({"session_id": "s", "message": "x", "context": "c"}, "invalid_request"),
        ({"session_id": "s", "message": "x", "client_message_id": 7}, "invalid_request"),
        ({"session_id": "s", "message": "x" * 11}, "message_too_large"),
        ({"session_id": "", "message": "x"}, "invalid_request"),
    ],
)
def test_outgoing_message_refusals(data: Any, code: str) -> None:
    with pytest.raises(GatewayError) as info:
        validation.outgoing_message(data, max_chars=10)
    assert info.value.code.value == code


def test_outgoing_message_accepts_and_defaults_context() -> None:
    out = validation.outgoing_message({"session_id": "s", "message": "hi"}, max_chars=10)
    assert out == validation.OutgoingMessage("s", "hi", {}, None)


def test_new_session_defaults_and_refusals() -> None:
    assert validation.new_session(None) == validation.NewSession("rag", None)
    assert validation.new_session({"agent_type": "task", "project_id": "p"}) == (
        validation.NewSession("task", "p")
    )
    for bad in ({"agent_type": "nope"}, {"project_id": 3}, {"extra": 1}, "x"):
        with pytest.raises(GatewayError):
            validation.new_session(bad)


def test_last_seq_must_be_a_non_negative_integer() -> None:
    assert validation.last_seq_of({"last_seq": 4}) == 4
    assert validation.last_seq_of({}) is None
    for bad in (-1, True, "3", 1.5):
        with pytest.raises(GatewayError):
            validation.last_seq_of({"last_seq": bad})
