"""Fixtures every test folder may use: Redis servers (tests/redis_server.py; the summary
line says which one ran)."""

from __future__ import annotations

import pytest

from tests.redis_server import (  # noqa: F401 (fixtures)
    SERVERS_USED,
    private_redis,
    redis_server,
    redis_url,
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for description in SERVERS_USED:
        terminalreporter.write_line(f"Redis tests ran on {description}")
