"""The worker tests' Redis: the shared test server (tests/redis_server.py: the machine's,
or a private one), a key prefix of the test's own, its keys deleted afterwards."""

from __future__ import annotations

import pytest

from tests.redis_server import RedisTarget


@pytest.fixture
def redis_env(redis_url: RedisTarget) -> dict[str, str]:
    """``ARCHON_CHAT_REDIS_URL`` and a unique ``ARCHON_CHAT_REDIS_PREFIX`` for a gateway."""
    return {"ARCHON_CHAT_REDIS_URL": redis_url.url, "ARCHON_CHAT_REDIS_PREFIX": redis_url.prefix}
