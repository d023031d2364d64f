"""The PostgreSQL store's own behaviours: versioned migrations under a lock, refusal of a
foreign or newer schema, start-up against an unreachable or late database, grouped writes
and their errors, cancellation, and a database restart in the middle of a turn.

A real server (tests/pg.py): the machine's for most tests, a private one for the tests
that stop and start it. Real clock; every test runs under ``trio.fail_after``.
"""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import LiteralString

import psycopg
import pytest
import trio
import trio.lowlevel

from actors.chat.hub import SessionHub, open_session_hub
from actors.chat.messages import ErrorCode, MessageStatus, SessionEvent, SubmitMessage
from actors.chat.settings import HubSettings
from actors.chat.store import ConflictError, StoreError, interrupted_text
from archon_chat.store_postgres import (
    SCHEMA_VERSION,
    PostgresStore,
    SchemaError,
    open_postgres_store,
)
from tests.actors.fakes import COMPLETE, Recorder, Sleep, Upstream, agents_over, chunk
from tests.derived import derived
from tests.pg import PostgresServer

from .conftest import TTL_S, agent_msg, user_msg

CEILING_S = 10
ROOT = Path(__file__).resolve().parents[2]
STAMP = "2026-03-01T12:00:01.000000+00:00"


def opened(
    url: str, *, connect_timeout_s: float = 5.0, timeout_s: float = 5.0
) -> AbstractAsyncContextManager[PostgresStore]:
    return open_postgres_store(
        url, ttl_s=TTL_S, pool_size=4, connect_timeout_s=connect_timeout_s, timeout_s=timeout_s
    )


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``predicate`` (the caller's ``fail_after`` bounds the wait)."""
    while not await predicate():
        await trio.sleep(0.05)


def schema_versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM archon_chat_schema ORDER BY version")
        return [int(r[0]) for r in rows]


# -- schema -------------------------------------------------------------------------


async def test_processes_starting_together_migrate_once(pg_url: str) -> None:
    opened_stores: list[int] = []

    async def start() -> None:
        async with opened(pg_url) as store:
            await store.create_session("rag", None)
            opened_stores.append(1)

    with trio.fail_after(CEILING_S):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(start)
    assert len(opened_stores) == 4
    assert schema_versions(pg_url) == list(range(1, SCHEMA_VERSION + 1))


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    with trio.fail_after(CEILING_S):
        async with opened(pg_url):
            pass
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("INSERT INTO archon_chat_schema (version) VALUES (%s)", (99,))
        with pytest.raises(SchemaError, match="newer archon-chat"):
            async with opened(pg_url):
                pass


async def test_another_applications_tables_are_refused(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE sessions (token text)")
    with trio.fail_after(CEILING_S), pytest.raises(SchemaError, match="another application"):
        async with opened(pg_url):
            pass
    with psycopg.connect(pg_url) as conn:  # left as it was
        found = conn.execute("SELECT to_regclass('archon_chat_schema')").fetchone()
        assert found == (None,)


# -- start-up -----------------------------------------------------------------------


@pytest.mark.slow
async def test_an_unreachable_database_is_retried_then_named(unused_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{unused_port}/chat"
    with trio.fail_after(CEILING_S):
        started = trio.current_time()
        with pytest.raises(StoreError, match="ARCHON_CHAT_DATABASE_URL") as caught:
            async with opened(url, connect_timeout_s=1.5):
                pass
        assert 1.5 <= trio.current_time() - started < 5
    assert f"127.0.0.1:{unused_port}/chat" in str(caught.value)


async def test_a_refusal_by_the_server_is_not_retried(pg_server: PostgresServer) -> None:
    with trio.fail_after(CEILING_S):
        started = trio.current_time()
        with pytest.raises(StoreError, match=r"ARCHON_CHAT_DATABASE_URL.*refused"):
            async with opened(pg_server.url("no_such_database_here"), connect_timeout_s=30):
                pass
        assert trio.current_time() - started < 5


@pytest.mark.slow
async def test_a_database_coming_up_late_is_waited_for(private_pg: PostgresServer) -> None:
    dbname = private_pg.create_database()
    try:
        await trio.to_thread.run_sync(private_pg.stop)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def start_later() -> None:
                    await trio.sleep(1)
                    await trio.to_thread.run_sync(private_pg.start)

                nursery.start_soon(start_later)
                async with opened(private_pg.url(dbname), connect_timeout_s=30) as store:
                    assert await store.stats() == {"sessions": 0, "messages": 0}
    finally:
        private_pg.start_if_stopped()
        private_pg.drop_database(dbname)


# -- writes -------------------------------------------------------------------------


async def test_one_failing_write_does_not_fail_its_batch(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CEILING_S):
        async with opened(pg_url) as store:
            sessions = [(await store.create_session("rag", None)).session_id for _ in range(20)]
            taken = sessions[0]
            first = user_msg(taken, 1, id="taken-1")
            await store.add_user_message(first, fence=0)
            await store.begin_turn(taken, "r", "rag", STAMP, reply_to=first.id, fence=0)
            failures: list[Exception] = []

            async def write(sid: str, n: int) -> None:
                try:
                    if sid == taken:  # seq 1 is the user message's: the UPDATE fails
                        await store.finish_turn(agent_msg(sid, "r", 1), fence=0)
                    else:
                        await store.add_user_message(user_msg(sid, n, id=f"{sid}-{n}"), fence=0)
                except Exception as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                for n, sid in enumerate(sessions, start=1):
                    nursery.start_soon(write, sid, n)
            assert [type(f) for f in failures] == [ConflictError]
            assert await store.stats() == {"sessions": 20, "messages": 20}
            (placeholder,) = [m for m in await store.session_messages(taken)]
            assert placeholder.id == first.id  # the reply is still in progress
    # The failed transaction was ended by the store, not left to the pool to roll back.
    # (psycopg itself may warn that it ignored the aborted pipeline's second error, when
    # the failure surfaced inside the pipeline block rather than at its end: timing.)
    assert not [r for r in caplog.records if r.name.startswith("psycopg.pool")]


async def test_connections_the_server_closed_are_replaced_before_use(pg_url: str) -> None:
    with trio.fail_after(CEILING_S):
        async with opened(pg_url) as store:
            sid = (await store.create_session("rag", None)).session_id
            first = await store.acquire(sid)
            assert first is not None

            def terminate(which: LiteralString) -> int:
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT count(pg_terminate_backend(pid, 5000)) FROM (SELECT pid"
                        " FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid != pg_backend_pid() AND backend_type = 'client backend'"
                        " AND " + which + ") AS chosen"
                    ).fetchone()
                    return 0 if row is None else int(row[0])

            holds_a_lock: LiteralString = (
                "pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')"
            )
            # The owner lock's connection, and one of the pool's.
            assert await trio.to_thread.run_sync(terminate, holds_a_lock) == 1
            assert await trio.to_thread.run_sync(terminate, "NOT " + holds_a_lock + " LIMIT 1") == 1
            # No call fails: the checkout that draws it notices the server's goodbye
            # without a query, and the pool hands out another connection.
            for n in range(1, 9):
                assert await store.get_session(sid) is not None
                await store.add_user_message(user_msg(sid, n), fence=first.fence)
            owned = await store.acquire(sid)
            assert owned is not None
            await store.add_user_message(user_msg(sid, 9), fence=owned.fence)
            assert len(await store.session_messages(sid)) == 9


async def test_a_cancelled_write_still_lands(pg_url: str) -> None:
    with trio.fail_after(CEILING_S):
        async with opened(pg_url) as store:
            sid = (await store.create_session("rag", None)).session_id
            with trio.CancelScope() as scope:
                scope.cancel()
                await store.add_user_message(user_msg(sid, 1), fence=0)
            assert scope.cancelled_caught
            assert [m.seq for m in await store.session_messages(sid)] == [1]


async def test_closing_finishes_writes_already_called(pg_url: str) -> None:
    with trio.fail_after(CEILING_S):
        async with opened(pg_url) as store:
            sid = (await store.create_session("rag", None)).session_id
            async with trio.open_nursery() as nursery:
                for n in range(1, 51):
                    nursery.start_soon(partial(store.add_user_message, user_msg(sid, n), fence=0))
                await trio.lowlevel.checkpoint()
        async with opened(pg_url) as store:
            assert len(await store.session_messages(sid)) == 50


# -- a database restart during a turn -------------------------------------------------


def partial_text(url: str) -> str | None:
    """The text of the reply in progress, if one is."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT content FROM messages WHERE status = 'streaming'").fetchone()
        return None if row is None else str(row[0])


@asynccontextmanager
async def hub_on(
    store: PostgresStore, upstream: Upstream
) -> AsyncIterator[tuple[SessionHub, Recorder]]:
    settings = derived(
        HubSettings,
        checkpoint_interval_s=0.05,
        restart_intensity=2,
        restart_period_s=60,
        save_timeout_s=2,
    )
    recorder = Recorder()
    send, receive = trio.open_memory_channel[SessionEvent](1024)
    async with trio.open_nursery() as nursery, agents_over(upstream) as agents:
        nursery.start_soon(recorder.run, receive)
        async with open_session_hub(store, agents, send, settings) as hub:
            yield hub, recorder
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_database_restart_during_a_turn_fails_it_and_the_next_message_works(
    private_pg: PostgresServer,
) -> None:
    replies = [
        [chunk("so"), Sleep(0.2), chunk(" far"), Sleep(1.5), chunk(" and more"), COMPLETE],
        [chunk("back again"), COMPLETE],
    ]
    upstream = Upstream(script=lambda body: replies.pop(0))
    dbname = private_pg.create_database()
    try:
        with trio.fail_after(90):
            url = private_pg.url(dbname)
            async with opened(url, timeout_s=0.5) as store:
                sid = (await store.create_session("rag", None)).session_id
                async with hub_on(store, upstream) as (hub, recorder):
                    await hub.deliver(sid, SubmitMessage("first"))

                    async def checkpointed() -> bool:
                        return await trio.to_thread.run_sync(partial_text, url) == "so far"

                    await wait_until(checkpointed)
                    # The database goes down before the next chunk, and comes back later.
                    await trio.to_thread.run_sync(private_pg.stop)

                    async def given_up() -> bool:
                        return not hub.is_live(sid)

                    await wait_until(given_up)  # its writes failed, again after restarts
                    await trio.to_thread.run_sync(private_pg.start)

                    async def reachable() -> bool:
                        try:
                            await store.stats()
                        except StoreError:
                            return False
                        return True

                    await wait_until(reachable)  # the pool reconnected
                    await hub.deliver(sid, SubmitMessage("second"))
                    # The new actor first tells the room how the interrupted turn ended.
                    lost, ended = await recorder.turns_ended(2, sid)
                    assert (lost.status, lost.code) == (
                        MessageStatus.FAILED,
                        ErrorCode.INTERNAL_ERROR,
                    )
                    assert ended.status is MessageStatus.COMPLETE  # the second turn's

                messages = await store.session_messages(sid)
                assert [(m.sender, m.status, m.content) for m in messages] == [
                    ("user", MessageStatus.COMPLETE, "first"),
                    ("agent", MessageStatus.FAILED, "so far"),
                    ("user", MessageStatus.COMPLETE, "second"),
                    ("agent", MessageStatus.COMPLETE, "back again"),
                ]
                assert messages[1].error == (
                    ErrorCode.INTERNAL_ERROR.value,
                    interrupted_text(ErrorCode.INTERNAL_ERROR),
                )
                seqs = [m.seq for m in messages]
                assert seqs == sorted(set(seqs))
                record = await store.get_session(sid)
                assert record is not None
                assert record.message_count == 4
                assert [m.content for m in await store.history(sid, 10)] == [
                    "second",
                    "back again",
                ]
                assert await trio.to_thread.run_sync(partial_text, url) is None
    finally:
        private_pg.start_if_stopped()
        private_pg.drop_database(dbname)


# -- replies whose process died ---------------------------------------------------------

CRASHING_OWNER = textwrap.dedent(
    """
    import os, sys, trio
    from archon_chat.store_postgres import open_postgres_store
    from tests.store.conftest import user_msg

    async def main():
        async with open_postgres_store(
            sys.argv[1], ttl_s=3600, pool_size=2, connect_timeout_s=5, timeout_s=5
        ) as store:
            sid = (await store.create_session("rag", None)).session_id
            owned = await store.acquire(sid)
            question = user_msg(sid, 1, "tell me")
            await store.add_user_message(question, fence=owned.fence)
            await store.reserve_seq(sid, 16, fence=owned.fence)
            await store.begin_turn(
                sid, "reply", "rag", "2026-03-01T12:00:01.000000+00:00",
                reply_to=question.id, fence=owned.fence,
            )
            await store.checkpoint_turn(sid, "reply", "so far so good", fence=owned.fence)
            print(sid, flush=True)
            os._exit(3)  # no close: the server sees the connections drop

    trio.run(main)
    """
)


@pytest.mark.slow
async def test_a_reply_whose_process_died_is_failed_by_another_process(pg_url: str) -> None:
    with trio.fail_after(30):
        async with opened(pg_url) as store:
            # A live owner's reply in progress is left alone.
            live = (await store.create_session("rag", None)).session_id
            owned = await store.acquire(live)
            assert owned is not None
            await store.add_user_message(user_msg(live, 1), fence=owned.fence)
            await store.begin_turn(
                live, "live", "rag", STAMP, reply_to=user_msg(live, 1).id, fence=owned.fence
            )

            done = await trio.run_process(
                [sys.executable, "-c", CRASHING_OWNER, pg_url],
                cwd=ROOT,
                capture_stdout=True,
                check=False,
            )
            assert done.returncode == 3
            dead = done.stdout.decode().strip()

            async def recovered() -> bool:  # once the server noticed the dead connections
                return await store.recover_orphans() == 1

            await wait_until(recovered)
            messages = await store.session_messages(dead)
            assert [(m.seq, m.content, m.status) for m in messages] == [
                (1, "tell me", MessageStatus.COMPLETE),
                (17, "so far so good", MessageStatus.FAILED),
            ]
            assert await store.recover_orphans() == 0
            await store.checkpoint_turn(live, "live", "still mine", fence=owned.fence)

        # A process starting later finds nothing left to recover, and the live reply's
        # owner is gone now: that one is recovered at start-up.
        async with opened(pg_url) as store:
            (_, reply) = await store.session_messages(live)
            assert (reply.status, reply.content) == (MessageStatus.FAILED, "still mine")
