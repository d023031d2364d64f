"""A Redis for the worker tests: the one on 127.0.0.1:6379, a key prefix of the test's
own, its keys deleted afterwards."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from uuid import uuid4

import coredis
import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture
async def redis_env() -> AsyncIterator[dict[str, str]]:
    """``ARCHON_CHAT_REDIS_URL`` and a unique ``ARCHON_CHAT_REDIS_PREFIX`` for a gateway."""
    try:
        socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"these tests need Redis on {REDIS_HOST}:{REDIS_PORT}: {exc}")
    prefix = f"t{uuid4().hex[:8]}:"
    yield {
        "ARCHON_CHAT_REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
        "ARCHON_CHAT_REDIS_PREFIX": prefix,
    }
    client = coredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    async with client:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(keys)
