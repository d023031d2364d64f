"""The SQLite store's own behaviours: durability across restarts and crashes, the schema,
expiry, cancellation of reads and writes, grouped writes and its errors.

Real SQLite files in ``tmp_path`` and the real clock (the store works in threads); time for
expiry comes from an injected ``now``. Every async test runs under ``trio.fail_after``:
5 s, 20 s for two stores sharing one file, 30 s for the one that starts a Python
subprocess.
"""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

import archon_chat.store as store_module
from actors.chat.messages import ChatMessage, ErrorCode, MessageStatus
from actors.chat.store import ChatStore, interrupted_text
from archon_chat.store import (
    DELETE_CHUNK,
    SCHEMA_VERSION,
    ConflictError,
    FencedError,
    SchemaError,
    SqliteStore,
    StoreError,
    open_store,
)

from .conftest import TTL_S, FakeNow, agent_msg, user_msg

CEILING_S = 5
ROOT = Path(__file__).resolve().parents[2]
STAMP = "2026-03-01T12:00:01.000000+00:00"


def test_sqlite_store_is_a_chat_store() -> None:
    def as_chat_store(store: SqliteStore) -> ChatStore:  # checked by mypy
        return store

    assert as_chat_store.__annotations__["return"] == "ChatStore"


# -- files, schema, restarts ----------------------------------------------------------


async def test_open_creates_the_folder_and_a_versioned_wal_file(db_path: str) -> None:
    with trio.fail_after(CEILING_S):
        async with open_store(db_path, ttl_s=TTL_S) as store:
            await store.create_session("rag", None)
        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("PRAGMA application_id").fetchone() != (0,)
        finally:
            conn.close()


async def test_an_empty_sqlite_file_is_initialised(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with trio.fail_after(CEILING_S):
        async with open_store(str(path), ttl_s=TTL_S) as store:
            assert await store.stats() == {"sessions": 0, "messages": 0}


async def test_a_newer_schema_is_refused(db_path: str) -> None:
    with trio.fail_after(CEILING_S):
        async with open_store(db_path, ttl_s=TTL_S):
            pass
        conn = sqlite3.connect(db_path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        with pytest.raises(SchemaError, match="newer archon-chat"):
            async with open_store(db_path, ttl_s=TTL_S):
                pass


async def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    conn.close()
    with trio.fail_after(CEILING_S), pytest.raises(SchemaError, match="another application"):
        async with open_store(str(path), ttl_s=TTL_S):
            pass
    conn = sqlite3.connect(path)
    try:  # left as it was
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
    finally:
        conn.close()


async def test_a_version_1_file_reads_the_same_and_gets_fencing(tmp_path: Path) -> None:
    # Version 1 inferred which message a turn answered, in the same reply_to column.
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(store_module._SCHEMA_V1)
    conn.execute(f"PRAGMA application_id = {store_module.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    stamp = "2026-03-01T12:00:00.000000+00:00"
    conn.execute(
        "INSERT INTO sessions (id, agent_type, created_at, updated_at, last_seq, hwm,"
        " message_count, answered_seq, last_turn_seq, last_turn_status)"
        " VALUES ('s1', 'rag', ?, ?, 2, 2, 2, 1, 2, 'complete')",
        (stamp, stamp),
    )
    conn.executemany(
        "INSERT INTO messages (id, session_id, seq, sender, agent_type, status, timestamp,"
        " content, reply_to) VALUES (?, 's1', ?, ?, 'rag', 'complete', ?, ?, ?)",
        [("u1", 1, "user", stamp, "old question", None), ("a1", 2, "agent", stamp, "old", "u1")],
    )
    conn.commit()
    conn.close()
    with trio.fail_after(CEILING_S):
        async with open_store(str(path), ttl_s=1e9) as store:
            assert [m.content for m in await store.history("s1", 5)] == ["old question", "old"]
            owned = await store.acquire("s1")
            assert owned is not None
            assert (owned.fence, owned.session.last_seq) == (1, 2)
            await complete_turn_at(store, "s1", 3, 4, fence=owned.fence)
            assert len(await store.history("s1", 5)) == 4
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
        assert "fence" in columns
        assert "answered_seq" not in columns
    finally:
        conn.close()


async def test_a_version_2_file_gets_owners_and_keeps_its_sessions_ownerless(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript(store_module._SCHEMA_V1)
    conn.executescript(store_module._SCHEMA_V2)
    conn.execute(f"PRAGMA application_id = {store_module.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    stamp = "2026-03-01T12:00:00.000000+00:00"
    conn.execute(
        "INSERT INTO sessions (id, agent_type, created_at, updated_at) VALUES ('s1', 'rag', ?, ?)",
        (stamp, stamp),
    )
    conn.commit()
    conn.close()
    with trio.fail_after(CEILING_S):
        async with open_store(str(path), ttl_s=1e9) as store:
            old = await store.get_session("s1")
            assert old is not None and old.owner is None
            new = await store.create_session("rag", None, "alice")
            assert [r.session_id for r in await store.list_sessions("alice", 10)] == [
                new.session_id
            ]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(sessions)")}
        assert "sessions_by_user" in indexes
        plan = " ".join(
            str(row[3])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM sessions WHERE user_id = 'alice'"
                " ORDER BY updated_at DESC, id DESC LIMIT 5"
            )
        )
        assert "sessions_by_user" in plan
    finally:
        conn.close()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the pages you are looking for " * 100)
    with trio.fail_after(CEILING_S), pytest.raises(SchemaError, match="not an archon-chat"):
        async with open_store(str(path), ttl_s=TTL_S):
            pass


async def test_sessions_and_messages_survive_a_restart(db_path: str, now: FakeNow) -> None:
    with trio.fail_after(CEILING_S):
        async with open_store(db_path, ttl_s=TTL_S, now=now) as store:
            created = await store.create_session("task", "project-7")
            sid = created.session_id
            await store.add_user_message(
                user_msg(sid, 1, "plan it", client_message_id="c1"), fence=0
            )
            await store.begin_turn(sid, "r1", "task", STAMP, reply_to=user_msg(sid, 1).id, fence=0)
            await store.finish_turn(agent_msg(sid, "r1", 5, "1. do it", agent_type="task"), fence=0)
            await store.save_last_seq(sid, 7, fence=0)
            before = await store.session_messages(sid)
        async with open_store(db_path, ttl_s=TTL_S, now=now) as store:
            record = await store.get_session(sid)
            assert record is not None
            assert (record.agent_type, record.project_id, record.created_at) == (
                "task",
                "project-7",
                created.created_at,
            )
            assert (record.last_seq, record.message_count) == (7, 2)
            assert await store.session_messages(sid) == before
            assert [m.seq for m in before] == [1, 5]
            assert store.recovered_turns == 0


async def test_session_ids_are_128_random_bits(store: SqliteStore) -> None:
    with trio.fail_after(CEILING_S):
        ids = {(await store.create_session("rag", None)).session_id for _ in range(50)}
        assert len(ids) == 50
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


# -- crash recovery -------------------------------------------------------------------


async def test_a_reply_streaming_at_open_becomes_failed_above_the_mark(db_path: str) -> None:
    with trio.fail_after(CEILING_S):
        async with open_store(db_path, ttl_s=TTL_S) as store:
            one = (await store.create_session("rag", None)).session_id
            two = (await store.create_session("document", None)).session_id
            idle = (await store.create_session("rag", None)).session_id
            await store.add_user_message(user_msg(one, 1), fence=0)
            await store.reserve_seq(one, 256, fence=0)
            await store.begin_turn(
                one, "r-one", "rag", STAMP, reply_to=user_msg(one, 1).id, fence=0
            )
            await store.checkpoint_turn(one, "r-one", "The answer is", fence=0)
            await store.checkpoint_turn(one, "r-one", "The answer is forty", fence=0)
            await store.add_user_message(user_msg(two, 1, agent_type="document"), fence=0)
            await store.reserve_seq(two, 4, fence=0)
            await store.begin_turn(
                two, "r-two", "document", STAMP, reply_to=user_msg(two, 1).id, fence=0
            )  # no checkpoint yet
            await complete_turn_at(store, idle, 1, 2)
            await store.reserve_seq(idle, 12, fence=0)
            # the block ends without finishing the turns, as a crash would leave them

        async with open_store(db_path, ttl_s=TTL_S) as store:
            assert store.recovered_turns == 2
            (recovered,) = await store.messages_after(one, 1, 10)
            assert recovered == ChatMessage(
                id="r-one",
                session_id=one,
                seq=257,
                content="The answer is forty",
                sender="agent",
                timestamp=STAMP,
                agent_type="rag",
                status=MessageStatus.FAILED,
                error=("internal_error", interrupted_text(ErrorCode.INTERNAL_ERROR)),
            )
            record = await store.get_session(one)
            assert record is not None
            assert (record.last_seq, record.message_count) == (257, 2)

            (empty,) = await store.messages_after(two, 1, 10)
            assert (empty.seq, empty.content, empty.status) == (5, "", MessageStatus.FAILED)

            # no reply in flight, but seqs up to the mark may have gone out (typing, ...)
            record = await store.get_session(idle)
            assert record is not None
            assert (record.last_seq, record.message_count) == (12, 2)

        async with open_store(db_path, ttl_s=TTL_S) as store:  # recovery happens once
            assert store.recovered_turns == 0
            assert [m.seq for m in await store.session_messages(one)] == [1, 257]


async def test_a_shared_file_leaves_replies_in_flight_to_acquire(db_path: str) -> None:
    """Cluster mode: a process opening the file does not fail the replies another one
    is streaming; the session's next owner does, and the old owner is fenced out."""
    with trio.fail_after(CEILING_S):
        async with open_store(db_path, ttl_s=TTL_S, recover_at_open=False) as first:
            sid = (await first.create_session("rag", None)).session_id
            mine = await first.acquire(sid)
            assert mine is not None
            question = user_msg(sid, 1)
            await first.add_user_message(question, fence=mine.fence)
            await first.reserve_seq(sid, 20, fence=mine.fence)
            await first.begin_turn(
                sid, "live", "rag", STAMP, reply_to=question.id, fence=mine.fence
            )
            async with open_store(db_path, ttl_s=TTL_S, recover_at_open=False) as second:
                assert second.recovered_turns == 0
                # Still streaming, and still its owner's to write.
                await first.checkpoint_turn(sid, "live", "still going", fence=mine.fence)
                assert await second.messages_after(sid, 0, 10) == [question]
                taken = await second.acquire(sid, interrupted=ErrorCode.OWNER_LOST)
                assert taken is not None
                assert [(m.id, m.seq, m.content, m.error) for m in taken.recovered] == [
                    (
                        "live",
                        21,
                        "still going",
                        ("owner_lost", interrupted_text(ErrorCode.OWNER_LOST)),
                    )
                ]
                with pytest.raises(FencedError):
                    await first.finish_turn(agent_msg(sid, "live", 21, "late"), fence=mine.fence)

        async with open_store(db_path, ttl_s=TTL_S, recover_at_open=False) as store:
            assert store.recovered_turns == 0
            assert [m.status for m in await store.session_messages(sid)] == [
                MessageStatus.COMPLETE,
                MessageStatus.FAILED,
            ]


async def test_two_stores_on_one_file_write_at_once(tmp_path: Path) -> None:
    """Two connections (as two processes would have) writing their own sessions at the
    same time: each waits for the other's short transactions instead of failing with
    "database is locked"."""
    path = str(tmp_path / "shared.db")
    sessions, turns = 16, 16

    async def chat(store: SqliteStore, sid: str) -> None:
        owned = await store.acquire(sid)
        assert owned is not None
        for n in range(turns):
            await complete_turn_at(store, sid, 2 * n + 1, 2 * n + 2, fence=owned.fence)

    with trio.fail_after(CEILING_S * 4):
        async with (
            open_store(path, ttl_s=TTL_S, recover_at_open=False) as one,
            open_store(path, ttl_s=TTL_S, recover_at_open=False) as two,
        ):
            mine = {
                store: [
                    (await store.create_session("rag", None)).session_id for _ in range(sessions)
                ]
                for store in (one, two)
            }
            async with trio.open_nursery() as nursery:
                for store, sids in mine.items():
                    for sid in sids:
                        nursery.start_soon(chat, store, sid)
            for store, sids in mine.items():
                for sid in sids:
                    record = await (two if store is one else one).get_session(sid)
                    assert record is not None
                    assert (record.last_seq, record.message_count) == (2 * turns, 2 * turns)


async def complete_turn_at(
    store: SqliteStore, sid: str, user_seq: int, agent_seq: int, *, fence: int = 0
) -> None:
    question = user_msg(sid, user_seq, f"question {user_seq}")
    await store.add_user_message(question, fence=fence)
    reply = f"a{agent_seq}-{sid[:8]}"
    await store.begin_turn(sid, reply, "rag", STAMP, reply_to=question.id, fence=fence)
    await store.finish_turn(agent_msg(sid, reply, agent_seq), fence=fence)


CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys, trio
    from archon_chat.store import open_store
    from tests.store.conftest import user_msg

    async def main():
        async with open_store(sys.argv[1], ttl_s=3600) as store:
            sid = (await store.create_session("rag", None)).session_id
            await store.add_user_message(user_msg(sid, 1, "tell me"), fence=0)
            await store.reserve_seq(sid, 16, fence=0)
            await store.begin_turn(
                sid, "reply", "rag", "2026-03-01T12:00:01.000000+00:00",
                reply_to=user_msg(sid, 1).id, fence=0,
            )
            await store.checkpoint_turn(sid, "reply", "so far so good", fence=0)
            print(sid, flush=True)
            os._exit(3)  # no close, no finally: a crash as far as the file can tell

    trio.run(main)
    """
)


async def test_a_killed_process_loses_nothing(db_path: str) -> None:
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-c", CRASHING_WRITER, db_path],
            cwd=ROOT,
            capture_stdout=True,
            check=False,
        )
        assert done.returncode == 3
        sid = done.stdout.decode().strip()
        async with open_store(db_path, ttl_s=TTL_S) as store:
            messages = await store.session_messages(sid)
            assert [(m.seq, m.content, m.status) for m in messages] == [
                (1, "tell me", MessageStatus.COMPLETE),
                (17, "so far so good", MessageStatus.FAILED),
            ]
            record = await store.get_session(sid)
            assert record is not None
            assert record.last_seq == 17


class Actor:
    """Emits seqs as the session actor does: reserve a block, then hand numbers out."""

    BLOCK = 3

    def __init__(self, store: SqliteStore, sid: str, last_seq: int, log: list[int]) -> None:
        self.store, self.sid, self.seq, self.hwm, self.log = store, sid, last_seq, last_seq, log

    async def emit(self) -> int:
        self.seq += 1
        if self.seq > self.hwm:
            self.hwm = self.seq + self.BLOCK - 1
            await self.store.reserve_seq(self.sid, self.hwm, fence=0)
        self.log.append(self.seq)
        return self.seq

    async def turn(self, n: int, crash_at: int | None) -> None:
        """A turn of 10 steps; stop (as a crash would) before step ``crash_at``."""
        steps = 0

        async def step() -> bool:
            nonlocal steps
            steps += 1
            return steps == crash_at

        if await step():
            return
        await self.store.add_user_message(
            user_msg(self.sid, await self.emit(), id=f"u{n}"), fence=0
        )
        if await step():
            return
        await self.emit()  # typing true
        await self.store.begin_turn(self.sid, f"a{n}", "rag", STAMP, reply_to=f"u{n}", fence=0)
        for _ in range(3):
            if await step():
                return
            await self.emit()  # a chunk
            await self.store.checkpoint_turn(self.sid, f"a{n}", "...", fence=0)
        if await step():
            return
        await self.store.finish_turn(agent_msg(self.sid, f"a{n}", await self.emit()), fence=0)
        for _ in range(2):  # stream_complete, typing false
            if await step():
                return
            await self.emit()
        if await step():
            return
        await self.store.save_last_seq(self.sid, self.seq, fence=0)  # passivation


@pytest.mark.parametrize("crash_at", [*range(1, 11), None])
async def test_seq_never_repeats_across_a_crash(db_path: str, crash_at: int | None) -> None:
    emitted: list[int] = []
    with trio.fail_after(CEILING_S):
        async with open_store(db_path, ttl_s=TTL_S) as store:
            sid = (await store.create_session("rag", None)).session_id
            await Actor(store, sid, 0, emitted).turn(1, None)
            record = await store.get_session(sid)
            assert record is not None
            await Actor(store, sid, record.last_seq, emitted).turn(2, crash_at)
        before = list(emitted)
        async with open_store(db_path, ttl_s=TTL_S) as store:
            record = await store.get_session(sid)
            assert record is not None
            assert record.last_seq >= max(before)
            recovered = {m.seq for m in await store.session_messages(sid)} - set(before)
            await Actor(store, sid, record.last_seq, emitted).turn(3, None)
            after = emitted[len(before) :]
            # the interrupted reply's seq was never emitted before, nor is it after
            assert len(recovered) == (crash_at is not None and 3 <= crash_at <= 6)
            timeline = before + sorted(recovered) + after
            assert timeline == sorted(set(timeline))
            stored = [m.seq for m in await store.session_messages(sid)]
            assert stored == sorted(set(stored))
            assert set(stored) <= set(timeline)


# -- expiry ---------------------------------------------------------------------------


async def test_a_session_expires_ttl_after_its_last_activity(
    store: SqliteStore, now: FakeNow
) -> None:
    with trio.fail_after(CEILING_S):
        sid = (await store.create_session("rag", None)).session_id
        now.advance(TTL_S * 0.75)
        await store.add_user_message(user_msg(sid, 1), fence=0)
        now.advance(TTL_S * 0.75)
        assert await store.get_session(sid) is not None
        now.advance(TTL_S * 0.25)
        assert await store.get_session(sid) is not None  # exactly TTL: not yet
        now.advance(0.001)
        assert await store.get_session(sid) is None


async def test_updated_at_moves_with_messages_and_turns(store: SqliteStore, now: FakeNow) -> None:
    with trio.fail_after(CEILING_S):
        created = await store.create_session("rag", None)
        sid = created.session_id
        stamps = [created.updated_at]
        for write in (
            store.add_user_message(user_msg(sid, 1), fence=0),
            store.begin_turn(sid, "r", "rag", STAMP, reply_to=user_msg(sid, 1).id, fence=0),
            store.finish_turn(agent_msg(sid, "r", 2), fence=0),
        ):
            now.advance(1)
            await write
            record = await store.get_session(sid)
            assert record is not None
            stamps.append(record.updated_at)
        assert stamps == sorted(set(stamps))
        assert stamps[-1] == now().isoformat(timespec="microseconds")
        now.advance(1)
        await store.reserve_seq(sid, 100, fence=0)
        await store.save_last_seq(sid, 4, fence=0)
        record = await store.get_session(sid)
        assert record is not None
        assert record.updated_at == stamps[-1]  # bookkeeping is not activity


async def test_delete_expired_removes_sessions_and_their_messages(
    store: SqliteStore, now: FakeNow
) -> None:
    with trio.fail_after(CEILING_S):
        old = (await store.create_session("rag", None)).session_id
        await complete_turn_at(store, old, 1, 2)
        now.advance(TTL_S / 2)
        fresh = (await store.create_session("rag", None)).session_id
        await complete_turn_at(store, fresh, 1, 2)
        assert await store.delete_expired() == 0
        now.advance(TTL_S / 2 + 1)
        assert await store.delete_expired() == 1
        assert await store.stats() == {"sessions": 1, "messages": 2}
        assert await store.session_messages(old) == []
        assert len(await store.session_messages(fresh)) == 2
        assert await store.delete_expired() == 0


async def test_a_reply_in_progress_keeps_its_session_alive(
    store: SqliteStore, now: FakeNow
) -> None:
    with trio.fail_after(CEILING_S):
        sid = (await store.create_session("rag", None)).session_id
        await store.add_user_message(user_msg(sid, 1), fence=0)
        await store.begin_turn(sid, "slow", "rag", STAMP, reply_to=user_msg(sid, 1).id, fence=0)
        now.advance(TTL_S * 2)
        assert await store.get_session(sid) is not None
        assert await store.delete_expired() == 0
        await store.finish_turn(agent_msg(sid, "slow", 2), fence=0)
        now.advance(TTL_S + 1)
        assert await store.get_session(sid) is None
        assert await store.delete_expired() == 1


async def test_delete_expired_works_through_many_sessions(store: SqliteStore, now: FakeNow) -> None:
    count = DELETE_CHUNK * 2 + 17
    with trio.fail_after(CEILING_S):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(store.create_session, "rag", None)
        now.advance(TTL_S + 1)
        assert await store.delete_expired() == count
        assert await store.stats() == {"sessions": 0, "messages": 0}


async def test_now_must_be_aware(db_path: str) -> None:
    from datetime import datetime

    with trio.fail_after(CEILING_S):
        async with open_store(db_path, ttl_s=TTL_S, now=lambda: datetime(2026, 1, 1)) as store:
            with pytest.raises(ValueError, match="aware"):
                await store.create_session("rag", None)


# -- cancellation and grouped writes --------------------------------------------------


def lock_the_file(db_path: str) -> sqlite3.Connection:
    """Another connection holding the write lock: the store's next write waits in its
    thread (busy timeout) until it commits."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


async def test_a_cancelled_write_still_lands(store: SqliteStore, db_path: str) -> None:
    sid = (await store.create_session("rag", None)).session_id
    seen: list[str] = []

    async def write(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await store.add_user_message(user_msg(sid, 1), fence=0)
            seen.append("returned")
        seen.append("cancelled" if scope.cancelled_caught else "not cancelled")

    blocker = lock_the_file(db_path)
    with trio.fail_after(CEILING_S):
        async with trio.open_nursery() as nursery:
            scope = await nursery.start(write)
            await trio.testing.wait_all_tasks_blocked()  # the write is in its thread
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert seen == []  # the caller waits for its write, cancelled or not
            blocker.execute("COMMIT")
        blocker.close()
        assert seen == ["cancelled"]
        assert await store.messages_after(sid, 0, 10) == [user_msg(sid, 1)]


async def test_a_write_called_in_a_cancelled_scope_lands_then_raises(store: SqliteStore) -> None:
    with trio.fail_after(CEILING_S):
        sid = (await store.create_session("rag", None)).session_id
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.add_user_message(user_msg(sid, 1), fence=0)
            pytest.fail("the cancellation was not delivered")
        assert scope.cancelled_caught
        assert len(await store.session_messages(sid)) == 1


async def test_a_read_waiting_behind_a_write_is_cancelled_at_once(
    store: SqliteStore, db_path: str
) -> None:
    sid = (await store.create_session("rag", None)).session_id
    seen: list[str] = []

    async def read(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await store.session_messages(sid)
            seen.append("returned")
        seen.append("cancelled" if scope.cancelled_caught else "not cancelled")

    blocker = lock_the_file(db_path)
    with trio.fail_after(CEILING_S):
        async with trio.open_nursery() as nursery:
            # holds the file
            nursery.start_soon(partial(store.add_user_message, user_msg(sid, 1), fence=0))
            await trio.testing.wait_all_tasks_blocked()
            scope = await nursery.start(read)
            await trio.testing.wait_all_tasks_blocked()
            assert seen == []
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert seen == ["cancelled"]  # while the write still waits for the lock
            blocker.execute("COMMIT")
        blocker.close()
        assert len(await store.session_messages(sid)) == 1


async def test_one_failing_write_does_not_fail_its_batch(store: SqliteStore, db_path: str) -> None:
    sessions = [(await store.create_session("rag", None)).session_id for _ in range(200)]
    await store.add_user_message(user_msg(sessions[0], 1, id="taken"), fence=0)
    outcomes: list[str] = []

    async def send(sid: str, message_id: str) -> None:
        try:
            await store.add_user_message(user_msg(sid, 2, id=message_id), fence=0)
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    blocker = lock_the_file(db_path)
    with trio.fail_after(CEILING_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, sessions[0], "first")  # waits on the lock in its thread
            await trio.testing.wait_all_tasks_blocked()
            for n, sid in enumerate(sessions[1:]):  # these queue up for one batch
                nursery.start_soon(send, sid, "taken" if n == 100 else f"m{n}")
            await trio.testing.wait_all_tasks_blocked()
            blocker.execute("COMMIT")
        blocker.close()
    assert sorted(outcomes) == ["conflict"] + ["ok"] * 199
    stats = await store.stats()
    assert stats == {"sessions": 200, "messages": 200}  # the conflict left no trace
    failed = await store.get_session(sessions[101])
    assert failed is not None
    assert (failed.last_seq, failed.message_count) == (0, 0)


async def test_a_file_locked_too_long_fails_the_write_not_the_store(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 50)
    with trio.fail_after(CEILING_S):
        async with open_store(db_path, ttl_s=TTL_S) as store:
            sid = (await store.create_session("rag", None)).session_id
            blocker = lock_the_file(db_path)
            with pytest.raises(StoreError, match="locked"):
                await store.add_user_message(user_msg(sid, 1), fence=0)
            blocker.execute("COMMIT")
            blocker.close()
            await store.add_user_message(user_msg(sid, 2), fence=0)
            assert [m.seq for m in await store.session_messages(sid)] == [2]


async def test_closing_finishes_writes_already_called(db_path: str) -> None:
    with trio.fail_after(CEILING_S):
        async with open_store(db_path, ttl_s=TTL_S) as store:
            sid = (await store.create_session("rag", None)).session_id
            blocker = lock_the_file(db_path)
            async with trio.open_nursery() as nursery:
                for n in range(1, 21):
                    nursery.start_soon(partial(store.add_user_message, user_msg(sid, n), fence=0))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(store.aclose)
                await trio.testing.wait_all_tasks_blocked()
                blocker.execute("COMMIT")
            blocker.close()
            with pytest.raises(StoreError, match="closed"):
                await store.get_session(sid)
        async with open_store(db_path, ttl_s=TTL_S) as store:
            assert len(await store.session_messages(sid)) == 20


# -- refusals -------------------------------------------------------------------------


async def test_arguments_outside_the_contract_are_value_errors(store: SqliteStore) -> None:
    with trio.fail_after(CEILING_S):
        sid = (await store.create_session("rag", None)).session_id
        with pytest.raises(ValueError, match="agent_type"):
            await store.create_session("poetry", None)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await store.add_user_message(agent_msg(sid, "x", 1), fence=0)
        with pytest.raises(ValueError):
            await store.finish_turn(user_msg(sid, 1), fence=0)
        with pytest.raises(ValueError):
            await store.finish_turn(agent_msg(sid, "x", 1, status=MessageStatus.STREAMING), fence=0)


async def test_last_seq_never_goes_down(store: SqliteStore) -> None:
    with trio.fail_after(CEILING_S):
        sid = (await store.create_session("rag", None)).session_id
        await store.save_last_seq(sid, 40, fence=0)
        await store.save_last_seq(sid, 30, fence=0)
        await store.add_user_message(user_msg(sid, 20), fence=0)
        record = await store.get_session(sid)
        assert record is not None
        assert record.last_seq == 40


async def test_stats_count_sessions_and_finished_messages(store: SqliteStore) -> None:
    with trio.fail_after(CEILING_S):
        sid = (await store.create_session("rag", None)).session_id
        await complete_turn_at(store, sid, 1, 2)
        await store.add_user_message(user_msg(sid, 3), fence=0)
        await store.begin_turn(
            sid, "streaming", "rag", STAMP, reply_to=user_msg(sid, 3).id, fence=0
        )
        await store.create_session("task", None)
        assert await store.stats() == {"sessions": 2, "messages": 3}


def test_closing_while_another_process_holds_the_file_locked_still_closes(
    tmp_path: Path,
) -> None:
    """Closing runs ``PRAGMA optimize``, a hint only: a file another writer holds locked
    (nodes sharing it in cluster mode) must not fail the shutdown."""
    path = tmp_path / "shared.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("INSERT INTO t VALUES (1)")
    closing = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    closing.execute("SELECT count(*) FROM t").fetchall()
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            closing.execute("PRAGMA optimize")  # what closing runs, here refused
        store_module._close(closing)
        with pytest.raises(sqlite3.ProgrammingError):
            closing.execute("SELECT 1")  # closed
    finally:
        holder.execute("ROLLBACK")
        holder.close()
