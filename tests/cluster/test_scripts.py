"""The cluster's Lua scripts on a real Redis: each decision is one atomic step."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import coredis
import pytest

from archon_chat.cluster import scripts
from tests.redis_server import RedisTarget

LEASE_MS = "60000"


@pytest.fixture
async def redis(redis_url: RedisTarget) -> AsyncIterator[tuple[coredis.Redis[bytes], str]]:
    client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url.url, decode_responses=False)
    async with client:
        yield client, redis_url.prefix


async def take(r: coredis.Redis[bytes], p: str, node: str, force: str = "0") -> Any:
    return await r.eval(scripts.TAKE, [f"{p}lease:s", f"{p}room:s"], [node, LEASE_MS, force])


async def test_a_free_lease_is_taken_with_a_growing_epoch_and_the_watchers(
    redis: tuple[coredis.Redis[bytes], str],
) -> None:
    r, p = redis
    await r.hset(f"{p}room:s", {"n2": "c"})
    first = await take(r, p, "n1")
    assert first[0] == 1 and list(first[2]) == [b"n2"]
    epoch = int(first[1])
    assert scripts.parse_lease(await r.get(f"{p}lease:s")) == ("n1", epoch)
    refused = await take(r, p, "n3")
    assert refused[0] == 0 and scripts.parse_lease(refused[1]) == ("n1", epoch)
    # our own name from an earlier run: only taken when forced, with a newer epoch
    assert (await take(r, p, "n1"))[0] == 0
    again = await take(r, p, "n1", force="1")
    assert again[0] == 1 and int(again[1]) > epoch


async def test_renewal_keeps_ours_takes_back_a_vanished_one_and_reports_the_lost(
    redis: tuple[coredis.Redis[bytes], str],
) -> None:
    r, p = redis
    e1 = int((await take(r, p, "n1"))[1])
    await r.set(f"{p}lease:other", "n9 5")
    keys = [f"{p}alive:n1", f"{p}nodes:all", f"{p}lease:s", f"{p}lease:gone", f"{p}lease:other"]
    out = await r.eval(scripts.RENEW, keys, ["n1", LEASE_MS, str(e1), "7", "3"])
    assert list(out) == [1, 3]  # heartbeat was missing; the third lease is someone else's
    assert scripts.parse_lease(await r.get(f"{p}lease:gone")) == ("n1", 7)
    assert await r.pttl(f"{p}lease:s") > 50_000
    out = await r.eval(scripts.RENEW, keys[:3], ["n1", LEASE_MS, str(e1)])
    assert list(out) == [0]
    assert await r.sismember(f"{p}nodes:all", "n1")


async def test_release_deletes_only_the_lease_it_names(
    redis: tuple[coredis.Redis[bytes], str],
) -> None:
    r, p = redis
    epoch = (await take(r, p, "n1"))[1].decode()
    assert await r.eval(scripts.RELEASE, [f"{p}lease:s"], [f"n1 {int(epoch) - 1}"]) == 0
    assert await r.eval(scripts.RELEASE, [f"{p}lease:s"], [f"n1 {epoch}"]) == 1
    assert await r.get(f"{p}lease:s") is None


async def test_left_counts_connected_members_of_live_nodes_only(
    redis: tuple[coredis.Redis[bytes], str],
) -> None:
    r, p = redis
    room, lease = f"{p}room:s", f"{p}lease:s"
    for node in ("n1", "n2", "n3"):
        assert await r.eval(scripts.WATCH, [room, lease], [node, LEASE_MS]) is None
    await r.set(f"{p}alive:n1", "1")
    await r.set(f"{p}alive:n2", "1")  # n3 is dead: its entry does not count
    out = await r.eval(scripts.LEFT, [room, lease], ["n1", "-", p])
    assert out[0] == 0  # n2 still has a connected member
    out = await r.eval(scripts.LEFT, [room, lease], ["n2", "g", p])
    assert out[0] == 1  # only members in grace on n2, and dead n3
    assert await r.hgetall(room) == {b"n2": b"g", b"n3": b"c"}
