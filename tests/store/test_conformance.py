"""Behaviours every :class:`~archon_chat.store_api.GatewayStore` shares, run against
each implementation: the SQLite store (a real file in ``tmp_path``), the PostgreSQL store
(a real server, a schema of its own per test: see tests/pg.py) and the actors' in-memory
store. Expiry is driven by an injected ``now``; a restart is a reopen of the store
(``MemoryStore.recover()`` for the in-memory one), after which the next owner takes the
session over with ``acquire``.

Writes carry ``fence=0`` (the token of a session nobody acquired yet) unless a test is
about fencing. Real clock (the stores work in threads). Every test runs under
``trio.fail_after(5)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from actors.chat.memory_store import MemoryStore
from actors.chat.messages import AgentType, ChatMessage, ErrorCode, MessageStatus, SessionRecord
from actors.chat.store import (
    ChatStore,
    ConflictError,
    FencedError,
    SessionNotFoundError,
    interrupted_text,
)
from archon_chat.store import open_store
from archon_chat.store_api import GatewayStore
from archon_chat.store_postgres import open_postgres_store

from .conftest import TTL_S, FakeNow, agent_msg, user_msg

CEILING_S = 5
STAMP = "2026-03-01T12:00:01.000000+00:00"


@dataclass
class Harness:
    store: GatewayStore
    now: FakeNow
    #: what the store does when the process restarts (recovery of unfinished replies)
    restart: Callable[[], Awaitable[None]]

    async def new_session(self, agent_type: AgentType = "rag") -> str:
        return (await self.store.create_session(agent_type, None)).session_id


@pytest.fixture(params=["sqlite", "postgres", "memory"])
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, now: FakeNow
) -> AsyncIterator[Harness]:
    if request.param == "memory":
        memory = MemoryStore(ttl_s=TTL_S, now=now)

        async def recover() -> None:
            memory.recover()
            await trio.lowlevel.checkpoint()

        yield Harness(memory, now, recover)
        return

    def opener() -> AbstractAsyncContextManager[GatewayStore]:
        if request.param == "sqlite":
            return open_store(str(tmp_path / "chat.db"), ttl_s=TTL_S, now=now)
        return open_postgres_store(
            request.getfixturevalue("pg_url"),
            ttl_s=TTL_S,
            now=now,
            pool_size=4,
            connect_timeout_s=CEILING_S,
            timeout_s=CEILING_S,
        )

    async with AsyncExitStack() as stack:
        harness = Harness(await stack.enter_async_context(opener()), now, lambda: reopen())

        async def reopen() -> None:
            await stack.aclose()
            harness.store = await stack.enter_async_context(opener())

        yield harness


async def complete_turn(
    store: ChatStore,
    session_id: str,
    user_seq: int,
    agent_seq: int,
    *,
    status: MessageStatus = MessageStatus.COMPLETE,
    text: str | None = None,
    fence: int = 0,
) -> None:
    """One turn as the actor stores it: user message, placeholder, checkpoint, finish."""
    question = user_msg(session_id, user_seq, f"question {user_seq}")
    await store.add_user_message(question, fence=fence)
    agent_id = f"a{agent_seq}-{session_id[:8]}"
    await store.begin_turn(session_id, agent_id, "rag", STAMP, reply_to=question.id, fence=fence)
    reply = text if text is not None else f"answer {agent_seq}"
    await store.checkpoint_turn(session_id, agent_id, reply[:2], fence=fence)
    final = agent_msg(session_id, agent_id, agent_seq, reply, status=status)
    await store.finish_turn(final, fence=fence)


async def session(store: ChatStore, session_id: str) -> SessionRecord:
    record = await store.get_session(session_id)
    assert record is not None
    return record


async def test_unknown_session_is_none(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        assert await harness.store.get_session("0" * 32) is None


async def test_new_session_starts_empty(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        sid = await harness.new_session("document")
        record = await session(harness.store, sid)
        assert (record.session_id, record.agent_type, record.last_seq, record.message_count) == (
            sid,
            "document",
            0,
            0,
        )
        assert len(sid) >= 32
        assert await harness.store.messages_after(sid, 0, 100) == []
        assert await harness.store.history(sid, 10) == []


async def test_user_message_bumps_last_seq_and_count(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        sid = await harness.new_session()
        message = user_msg(sid, 1, "hi", client_message_id="c-1")
        await harness.store.add_user_message(message, fence=0)
        record = await session(harness.store, sid)
        assert (record.last_seq, record.message_count) == (1, 1)
        assert await harness.store.messages_after(sid, 0, 10) == [message]


async def test_reply_in_progress_is_hidden_until_finished(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await store.add_user_message(user_msg(sid, 1), fence=0)
        await store.reserve_seq(sid, 256, fence=0)
        await store.begin_turn(sid, "reply-1", "rag", STAMP, reply_to=user_msg(sid, 1).id, fence=0)
        await store.checkpoint_turn(sid, "reply-1", "partial", fence=0)
        assert [m.id for m in await store.messages_after(sid, 0, 10)] == [user_msg(sid, 1).id]
        assert [m.id for m in await store.session_messages(sid)] == [user_msg(sid, 1).id]
        assert await store.history(sid, 10) == []
        record = await session(store, sid)
        assert (record.last_seq, record.message_count) == (1, 1)

        final = agent_msg(sid, "reply-1", 9, "partial and the rest")
        await store.finish_turn(final, fence=0)
        assert await store.messages_after(sid, 1, 10) == [final]
        record = await session(store, sid)
        assert (record.last_seq, record.message_count) == (9, 2)


async def test_messages_after_filters_orders_and_limits(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        for n in range(3):
            await complete_turn(store, sid, 10 * n + 1, 10 * n + 5)
        seqs = [m.seq for m in await store.messages_after(sid, 0, 100)]
        assert seqs == [1, 5, 11, 15, 21, 25]
        assert [m.seq for m in await store.session_messages(sid)] == seqs
        assert [m.seq for m in await store.messages_after(sid, 5, 2)] == [11, 15]
        assert [m.seq for m in await store.messages_after(sid, 25, 10)] == []


async def test_messages_are_per_session(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        one = await harness.new_session()
        two = await harness.new_session()
        await complete_turn(harness.store, one, 1, 2)
        assert await harness.store.messages_after(two, 0, 10) == []
        assert await harness.store.history(two, 10) == []


async def test_finished_replies_keep_status_error_and_content(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session("task")
        await store.add_user_message(user_msg(sid, 1, agent_type="task"), fence=0)
        await store.begin_turn(sid, "r1", "task", STAMP, reply_to=user_msg(sid, 1).id, fence=0)
        failed = agent_msg(
            sid,
            "r1",
            7,
            "half",
            status=MessageStatus.FAILED,
            error=("agent_unavailable", "Agent service error: 503"),
            agent_type="task",
        )
        await store.finish_turn(failed, fence=0)
        (stored,) = await store.messages_after(sid, 1, 10)
        assert stored == failed
        assert stored.error == ("agent_unavailable", "Agent service error: 503")


async def test_history_keeps_complete_turns_oldest_first_capped(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await complete_turn(store, sid, 1, 2)
        await complete_turn(store, sid, 3, 4, status=MessageStatus.CANCELLED, text="cut")
        await complete_turn(store, sid, 5, 6)
        await complete_turn(store, sid, 7, 8, status=MessageStatus.FAILED, text="")
        await complete_turn(store, sid, 9, 10)

        everything = await store.history(sid, 10)
        assert [(m.sender, m.seq) for m in everything] == [
            ("user", 1),
            ("agent", 2),
            ("user", 5),
            ("agent", 6),
            ("user", 9),
            ("agent", 10),
        ]
        assert [m.content for m in everything[:2]] == ["question 1", "answer 2"]
        capped = await store.history(sid, 2)
        assert [m.seq for m in capped] == [5, 6, 9, 10]
        assert await store.history(sid, 0) == []


async def test_history_pairs_queued_messages_in_order(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await store.add_user_message(user_msg(sid, 1, "first"), fence=0)
        await store.begin_turn(sid, "a1", "rag", STAMP, reply_to=user_msg(sid, 1).id, fence=0)
        await store.add_user_message(user_msg(sid, 3, "second"), fence=0)  # sent during turn 1
        await store.finish_turn(agent_msg(sid, "a1", 5, "to first"), fence=0)
        await store.begin_turn(sid, "a2", "rag", STAMP, reply_to=user_msg(sid, 3).id, fence=0)
        await store.finish_turn(agent_msg(sid, "a2", 8, "to second"), fence=0)
        assert [m.content for m in await store.history(sid, 10)] == [
            "first",
            "to first",
            "second",
            "to second",
        ]


async def test_history_leaves_out_a_message_still_waiting(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await complete_turn(store, sid, 1, 2)
        await store.add_user_message(user_msg(sid, 3, "the prompt of the next turn"), fence=0)
        assert [m.seq for m in await store.history(sid, 10)] == [1, 2]


async def test_client_message_id_finds_the_earlier_send(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        other = await harness.new_session()
        sent = user_msg(sid, 1, "once", client_message_id="client-42")
        await store.add_user_message(sent, fence=0)
        await store.add_user_message(user_msg(sid, 2, "plain"), fence=0)
        assert await store.find_by_client_message_id(sid, "client-42") == sent
        assert await store.find_by_client_message_id(sid, "client-43") is None
        assert await store.find_by_client_message_id(other, "client-42") is None


async def test_save_last_seq_persists_seqs_without_rows(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await complete_turn(store, sid, 1, 5)
        await store.save_last_seq(
            sid, 7, fence=0
        )  # stream_complete and typing came after the reply
        record = await session(store, sid)
        assert (record.last_seq, record.message_count) == (7, 2)
        await store.save_last_seq(sid, 6, fence=0)
        assert (await session(store, sid)).last_seq == 7


async def test_reserving_does_not_move_last_seq(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await store.add_user_message(user_msg(sid, 1), fence=0)
        await store.reserve_seq(sid, 256, fence=0)
        assert (await session(store, sid)).last_seq == 1


async def test_writes_to_an_unknown_session_fail(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        with pytest.raises(LookupError):
            await harness.store.add_user_message(user_msg("e" * 32, 1), fence=0)
        with pytest.raises(LookupError):
            await harness.store.reserve_seq("e" * 32, 10, fence=0)


async def test_a_session_expires_ttl_after_its_last_message(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store, now = harness.store, harness.now
        sid = await harness.new_session()
        now.advance(TTL_S * 0.75)
        await store.add_user_message(user_msg(sid, 1), fence=0)
        now.advance(TTL_S * 0.75)
        await store.begin_turn(sid, "r", "rag", STAMP, reply_to=user_msg(sid, 1).id, fence=0)
        await store.finish_turn(agent_msg(sid, "r", 2), fence=0)
        now.advance(TTL_S * 0.75)
        assert await store.get_session(sid) is not None
        assert await store.delete_expired() == 0
        now.advance(TTL_S * 0.25 + 0.001)
        assert await store.get_session(sid) is None
        assert await store.delete_expired() == 1
        assert await store.session_messages(sid) == []
        assert await store.delete_expired() == 0


async def test_a_restart_fails_the_reply_in_progress_above_the_mark(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        sid = await harness.new_session()
        done = await harness.new_session()
        await complete_turn(harness.store, done, 1, 2)
        await harness.store.add_user_message(user_msg(sid, 1, "go on"), fence=0)
        await harness.store.reserve_seq(sid, 40, fence=0)
        await harness.store.begin_turn(
            sid, "cut-off", "rag", STAMP, reply_to=user_msg(sid, 1).id, fence=0
        )
        await harness.store.checkpoint_turn(sid, "cut-off", "as far as it got", fence=0)

        await harness.restart()

        store = harness.store
        owned = await store.acquire(sid)  # the next owner, whoever noticed first
        assert owned is not None
        assert (owned.session.last_seq, owned.session.message_count) == (41, 2)
        assert await store.messages_after(sid, 1, 10) == [
            ChatMessage(
                id="cut-off",
                session_id=sid,
                seq=41,
                content="as far as it got",
                sender="agent",
                timestamp=STAMP,
                agent_type="rag",
                status=MessageStatus.FAILED,
                error=("internal_error", "Interrupted by a server restart"),
            )
        ]
        record = await session(store, sid)
        assert (record.last_seq, record.message_count) == (41, 2)
        assert [m.seq for m in await store.session_messages(done)] == [1, 2]
        assert await store.history(sid, 10) == []


async def test_checkpoints_continue_the_saved_text_at_a_character_offset(
    harness: Harness,
) -> None:
    """A long reply's checkpoints send only its new text: counted in characters, not
    bytes; an offset past what was saved is refused and changes nothing."""
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        question = user_msg(sid, 1, "go on")
        await store.add_user_message(question, fence=0)
        await store.reserve_seq(sid, 40, fence=0)
        await store.begin_turn(sid, "r1", "rag", STAMP, reply_to=question.id, fence=0)
        await store.checkpoint_turn(sid, "r1", "héllo ", fence=0)
        await store.checkpoint_turn(sid, "r1", "wörld 🙂", fence=0, offset=6)
        late = store.checkpoint_turn(sid, "r1", "x", fence=0, offset=14)
        assert await outcome(late) == "conflict"
        await store.checkpoint_turn(sid, "r1", "🙂!!", fence=0, offset=12)

        await harness.restart()

        store = harness.store
        assert await store.acquire(sid) is not None
        (reply,) = await store.messages_after(sid, 1, 10)
        assert (reply.id, reply.content) == ("r1", "héllo wörld 🙂!!")


@pytest.mark.parametrize("code", [ErrorCode.INTERNAL_ERROR, ErrorCode.OWNER_LOST])
async def test_acquire_returns_the_replies_it_failed(harness: Harness, code: ErrorCode) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await complete_turn(store, sid, 1, 2)
        old = await store.acquire(sid)
        assert old is not None and old.recovered == ()
        question = user_msg(sid, 3, "go on")
        await store.add_user_message(question, fence=old.fence)
        await store.reserve_seq(sid, 30, fence=old.fence)
        await store.begin_turn(sid, "lost", "rag", STAMP, reply_to=question.id, fence=old.fence)
        await store.checkpoint_turn(sid, "lost", "half of it", fence=old.fence)

        new = await store.acquire(sid, interrupted=code)  # the old owner is gone
        assert new is not None
        failed = ChatMessage(
            id="lost",
            session_id=sid,
            seq=31,
            content="half of it",
            sender="agent",
            timestamp=STAMP,
            agent_type="rag",
            status=MessageStatus.FAILED,
            error=(code.value, interrupted_text(code)),
        )
        assert new.recovered == (failed,)
        assert (new.session.last_seq, new.session.message_count) == (31, 4)
        assert await store.messages_after(sid, 2, 10) == [question, failed]
        assert [m.content for m in await store.history(sid, 10)] == ["question 1", "answer 2"]
        # Nothing streams any more: the next owner recovers nothing.
        again = await store.acquire(sid, interrupted=code)
        assert again is not None and again.recovered == ()
        assert again.session.last_seq == 31


async def test_acquire_refuses_a_code_that_is_not_an_interruption(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        sid = await harness.new_session()
        with pytest.raises(ValueError, match="agent_timeout"):
            await harness.store.acquire(sid, interrupted=ErrorCode.AGENT_TIMEOUT)
        owned = await harness.store.acquire(sid)
        assert owned is not None and owned.fence == 1  # the refused call took no token


# -- history: the turn names the message it answers -------------------------------------


async def test_queued_messages_pair_with_their_own_replies(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        first, second = user_msg(sid, 1, "first"), user_msg(sid, 3, "second")
        third = user_msg(sid, 4, "third")
        await store.add_user_message(first, fence=0)
        await store.begin_turn(sid, "a1", "rag", STAMP, reply_to=first.id, fence=0)
        await store.add_user_message(second, fence=0)  # sent during turn 1
        await store.add_user_message(third, fence=0)
        await store.finish_turn(agent_msg(sid, "a1", 6, "to first"), fence=0)
        await store.begin_turn(sid, "a2", "rag", STAMP, reply_to=second.id, fence=0)
        await store.finish_turn(agent_msg(sid, "a2", 9, "to second"), fence=0)
        await store.begin_turn(sid, "a3", "rag", STAMP, reply_to=third.id, fence=0)
        await store.finish_turn(agent_msg(sid, "a3", 12, "to third"), fence=0)
        assert [m.content for m in await store.history(sid, 10)] == [
            "first",
            "to first",
            "second",
            "to second",
            "third",
            "to third",
        ]


async def test_a_dropped_queue_leaves_its_messages_out_of_history(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        first, later = user_msg(sid, 1, "first"), user_msg(sid, 8, "later")
        await store.add_user_message(first, fence=0)
        await store.begin_turn(sid, "a1", "rag", STAMP, reply_to=first.id, fence=0)
        await store.add_user_message(user_msg(sid, 3, "dropped"), fence=0)
        cut = agent_msg(sid, "a1", 5, "to fi", status=MessageStatus.CANCELLED)
        await store.finish_turn(cut, fence=0)
        # Everyone left: the queued "dropped" never gets a turn.
        await store.add_user_message(later, fence=0)
        await store.begin_turn(sid, "a2", "rag", STAMP, reply_to=later.id, fence=0)
        await store.finish_turn(agent_msg(sid, "a2", 10, "to later"), fence=0)
        await complete_turn(store, sid, 12, 14)
        assert [m.content for m in await store.history(sid, 10)] == [
            "later",
            "to later",
            "question 12",
            "answer 14",
        ]


async def test_a_queue_lost_in_a_restart_leaves_history_alone(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        sid = await harness.new_session()
        first = user_msg(sid, 1, "first")
        await harness.store.reserve_seq(sid, 10, fence=0)
        await harness.store.add_user_message(first, fence=0)
        await harness.store.begin_turn(sid, "a1", "rag", STAMP, reply_to=first.id, fence=0)
        await harness.store.add_user_message(user_msg(sid, 3, "lost"), fence=0)
        await harness.restart()
        store = harness.store
        owned = await store.acquire(sid)
        assert owned is not None
        after = user_msg(sid, 12, "after the restart")
        await store.add_user_message(after, fence=owned.fence)
        await store.begin_turn(sid, "a2", "rag", STAMP, reply_to=after.id, fence=owned.fence)
        await store.finish_turn(agent_msg(sid, "a2", 14, "answer"), fence=owned.fence)
        assert [m.content for m in await store.history(sid, 10)] == ["after the restart", "answer"]


async def test_finish_without_a_placeholder_stores_the_reply(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await store.add_user_message(user_msg(sid, 1, "q"), fence=0)
        await store.finish_turn(agent_msg(sid, "direct", 2, "a"), fence=0)
        assert [m.content for m in await store.session_messages(sid)] == ["q", "a"]
        assert (await session(store, sid)).message_count == 2


# -- refusals -------------------------------------------------------------------------


async def test_every_write_to_an_unknown_session_is_refused(harness: Harness) -> None:
    ghost = "f" * 32
    store = harness.store
    with trio.fail_after(CEILING_S):
        for write in (
            store.add_user_message(user_msg(ghost, 1), fence=0),
            store.reserve_seq(ghost, 10, fence=0),
            store.begin_turn(ghost, "r", "rag", STAMP, reply_to="u", fence=0),
            store.checkpoint_turn(ghost, "r", "text", fence=0),
            store.finish_turn(agent_msg(ghost, "r", 2), fence=0),
            store.save_last_seq(ghost, 3, fence=0),
        ):
            with pytest.raises(SessionNotFoundError):
                await write
        assert await store.acquire(ghost) is None
        assert await store.get_session(ghost) is None


async def outcome(write: Awaitable[None]) -> str:
    try:
        await write
    except ConflictError:
        return "conflict"
    except FencedError:
        return "fenced"
    return "accepted"


async def test_contradicting_writes_are_conflicts_and_change_nothing(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        other = await harness.new_session()
        first = user_msg(sid, 1, id="m1", client_message_id="c1")
        await store.add_user_message(first, fence=0)
        await store.begin_turn(sid, "r1", "rag", STAMP, reply_to="m1", fence=0)
        refused = {
            "same id": store.add_user_message(user_msg(sid, 2, id="m1"), fence=0),
            "same seq": store.add_user_message(user_msg(sid, 1, id="m2"), fence=0),
            "same client id": store.add_user_message(
                user_msg(sid, 2, client_message_id="c1"), fence=0
            ),
            "same turn twice": store.begin_turn(sid, "r1", "rag", STAMP, reply_to="m1", fence=0),
            "other session's turn": store.finish_turn(agent_msg(other, "r1", 2), fence=0),
            "unknown turn": store.checkpoint_turn(sid, "r9", "text", fence=0),
        }
        outcomes = {name: await outcome(write) for name, write in refused.items()}
        assert outcomes == dict.fromkeys(refused, "conflict")
        await store.finish_turn(agent_msg(sid, "r1", 3), fence=0)
        assert await outcome(store.finish_turn(agent_msg(sid, "r1", 4), fence=0)) == "conflict"
        assert await outcome(store.checkpoint_turn(sid, "r1", "late", fence=0)) == "conflict"
        record = await session(store, sid)
        assert (record.last_seq, record.message_count) == (3, 2)
        assert [m.content for m in await store.session_messages(sid)] == ["hello", "reply"]
        assert (await session(store, other)).message_count == 0


# -- ownership and fencing ------------------------------------------------------------


async def test_acquire_hands_out_growing_tokens(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        sid = await harness.new_session()
        tokens = []
        for _ in range(3):
            owned = await harness.store.acquire(sid)
            assert owned is not None
            assert owned.session.session_id == sid
            tokens.append(owned.fence)
        assert tokens[0] > 0
        assert tokens == sorted(set(tokens))


async def test_a_stale_token_is_refused_and_changes_nothing(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        old = await store.acquire(sid)
        assert old is not None
        first = user_msg(sid, 1, "mine")
        await store.add_user_message(first, fence=old.fence)
        await store.reserve_seq(sid, 10, fence=old.fence)
        await store.begin_turn(sid, "r1", "rag", STAMP, reply_to=first.id, fence=old.fence)
        await store.checkpoint_turn(sid, "r1", "so far", fence=old.fence)

        new = await store.acquire(sid)  # another process took the session over
        assert new is not None
        assert new.fence > old.fence
        before = await session(store, sid)
        stale = old.fence
        refused = {
            "message": store.add_user_message(user_msg(sid, 11, "late"), fence=stale),
            "reserve": store.reserve_seq(sid, 500, fence=stale),
            "begin": store.begin_turn(sid, "r2", "rag", STAMP, reply_to=first.id, fence=stale),
            "checkpoint": store.checkpoint_turn(sid, "r1", "overwritten", fence=stale),
            "finish": store.finish_turn(agent_msg(sid, "r1", 12, "stale end"), fence=stale),
            "save": store.save_last_seq(sid, 600, fence=stale),
        }
        outcomes = {name: await outcome(write) for name, write in refused.items()}
        assert outcomes == dict.fromkeys(refused, "fenced")
        assert await session(store, sid) == before
        # The new owner found the old owner's reply orphaned and stored it failed.
        messages = await store.session_messages(sid)
        assert [(m.id, m.seq, m.status, m.content) for m in messages] == [
            (first.id, 1, MessageStatus.COMPLETE, "mine"),
            ("r1", 11, MessageStatus.FAILED, "so far"),
        ]
        assert messages[1].error == ("internal_error", "Interrupted by a server restart")
        assert (new.session.last_seq, new.session.message_count) == (11, 2)
        # ... and writes on with its own token.
        await store.add_user_message(user_msg(sid, 12, "next"), fence=new.fence)
        assert (await session(store, sid)).last_seq == 12


async def test_a_clean_handover_keeps_seqs_without_a_gap(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        one = await store.acquire(sid)
        assert one is not None
        await store.reserve_seq(sid, 300, fence=one.fence)
        await complete_turn(store, sid, 1, 2, fence=one.fence)
        await store.save_last_seq(sid, 4, fence=one.fence)  # passivation
        two = await store.acquire(sid)
        assert two is not None
        assert two.session.last_seq == 4


async def test_a_crashed_owner_leaves_the_next_one_above_its_mark(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        one = await store.acquire(sid)
        assert one is not None
        await store.reserve_seq(sid, 300, fence=one.fence)
        await complete_turn(store, sid, 1, 2, fence=one.fence)  # then typing, ... and gone
        two = await store.acquire(sid)
        assert two is not None
        assert two.session.last_seq == 300
        assert [m.seq for m in await store.session_messages(sid)] == [1, 2]


async def test_acquire_refuses_an_expired_session(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        sid = await harness.new_session()
        harness.now.advance(TTL_S + 1)
        assert await harness.store.acquire(sid) is None


# -- owners -------------------------------------------------------------------------------


async def test_a_session_records_its_owner(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        mine = await store.create_session("rag", None, "alice")
        anonymous = await store.create_session("rag", None)
        assert mine.owner == "alice"
        assert anonymous.owner is None
        stored = await store.get_session(mine.session_id)
        assert stored is not None and stored.owner == "alice"
        owned = await store.acquire(mine.session_id)
        assert owned is not None and owned.session.owner == "alice"
        none = await store.get_session(anonymous.session_id)
        assert none is not None and none.owner is None


async def test_listing_gives_one_owners_sessions_newest_first_in_pages(
    harness: Harness,
) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        alices = []
        for _ in range(5):
            alices.append((await store.create_session("rag", None, "alice")).session_id)
            await store.create_session("task", None, "bob")
            harness.now.advance(1)
        # Activity moves a session to the front.
        await store.add_user_message(user_msg(alices[0], 1), fence=0)
        expected = [alices[0], *reversed(alices[1:])]
        assert await store.count_sessions("alice") == 5
        assert await store.count_sessions("carol") == 0
        first = await store.list_sessions("alice", 2)
        assert [r.session_id for r in first] == expected[:2]
        assert all(r.owner == "alice" for r in first)
        cursor = (first[-1].updated_at, first[-1].session_id)
        second = await store.list_sessions("alice", 2, cursor)
        assert [r.session_id for r in second] == expected[2:4]
        cursor = (second[-1].updated_at, second[-1].session_id)
        assert [r.session_id for r in await store.list_sessions("alice", 2, cursor)] == [
            expected[4]
        ]
        assert await store.list_sessions("carol", 10) == []
        assert await store.list_sessions("alice", 0) == []


async def test_listing_leaves_out_expired_sessions(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        old = (await store.create_session("rag", None, "alice")).session_id
        harness.now.advance(TTL_S * 0.75)
        new = (await store.create_session("rag", None, "alice")).session_id
        harness.now.advance(TTL_S * 0.5)
        assert [r.session_id for r in await store.list_sessions("alice", 10)] == [new]
        assert await store.count_sessions("alice") == 1
        assert old != new
