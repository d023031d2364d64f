"""Behaviours every :class:`~actors.chat.store.ChatStore` shares, run against both
implementations: the SQLite store (a real file in ``tmp_path``) and the actors' in-memory
store. Expiry is driven by an injected ``now``; a restart is a reopen of the file for
SQLite and ``MemoryStore.recover()`` for the in-memory store.

Real clock (the SQLite store works in threads). Every test runs under ``trio.fail_after(5)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
import trio

from actors.chat.memory_store import MemoryStore
from actors.chat.messages import AgentType, ChatMessage, MessageStatus, SessionRecord
from actors.chat.store import ChatStore
from archon_chat.store import open_store

from .conftest import TTL_S, FakeNow, agent_msg, user_msg

CEILING_S = 5
STAMP = "2026-03-01T12:00:01.000000+00:00"


class GatewayStore(ChatStore, Protocol):
    """The protocol plus the extras the gateway calls; both stores offer them."""

    async def create_session(
        self, agent_type: AgentType, project_id: str | None
    ) -> SessionRecord: ...

    async def session_messages(self, session_id: str) -> list[ChatMessage]: ...

    async def delete_expired(self) -> int: ...


@dataclass
class Harness:
    store: GatewayStore
    now: FakeNow
    #: what the store does when the process restarts (recovery of unfinished replies)
    restart: Callable[[], Awaitable[None]]

    async def new_session(self, agent_type: AgentType = "rag") -> str:
        return (await self.store.create_session(agent_type, None)).session_id


@pytest.fixture(params=["sqlite", "memory"])
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

    path = str(tmp_path / "chat.db")
    async with AsyncExitStack() as stack:
        harness = Harness(
            await stack.enter_async_context(open_store(path, ttl_s=TTL_S, now=now)),
            now,
            lambda: reopen(),
        )

        async def reopen() -> None:
            await stack.aclose()
            harness.store = await stack.enter_async_context(open_store(path, ttl_s=TTL_S, now=now))

        yield harness


async def complete_turn(
    store: ChatStore,
    session_id: str,
    user_seq: int,
    agent_seq: int,
    *,
    status: MessageStatus = MessageStatus.COMPLETE,
    text: str | None = None,
) -> None:
    """One turn as the actor stores it: user message, placeholder, checkpoint, finish."""
    await store.add_user_message(user_msg(session_id, user_seq, f"question {user_seq}"))
    agent_id = f"a{agent_seq}-{session_id[:8]}"
    await store.begin_turn(session_id, agent_id, "rag", STAMP)
    reply = text if text is not None else f"answer {agent_seq}"
    await store.checkpoint_turn(session_id, agent_id, reply[:2])
    await store.finish_turn(agent_msg(session_id, agent_id, agent_seq, reply, status=status))


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
        await harness.store.add_user_message(message)
        record = await session(harness.store, sid)
        assert (record.last_seq, record.message_count) == (1, 1)
        assert await harness.store.messages_after(sid, 0, 10) == [message]


async def test_reply_in_progress_is_hidden_until_finished(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await store.add_user_message(user_msg(sid, 1))
        await store.reserve_seq(sid, 256)
        await store.begin_turn(sid, "reply-1", "rag", STAMP)
        await store.checkpoint_turn(sid, "reply-1", "partial")
        assert [m.id for m in await store.messages_after(sid, 0, 10)] == [user_msg(sid, 1).id]
        assert [m.id for m in await store.session_messages(sid)] == [user_msg(sid, 1).id]
        assert await store.history(sid, 10) == []
        record = await session(store, sid)
        assert (record.last_seq, record.message_count) == (1, 1)

        final = agent_msg(sid, "reply-1", 9, "partial and the rest")
        await store.finish_turn(final)
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
        await store.add_user_message(user_msg(sid, 1, agent_type="task"))
        await store.begin_turn(sid, "r1", "task", STAMP)
        failed = agent_msg(
            sid,
            "r1",
            7,
            "half",
            status=MessageStatus.FAILED,
            error=("agent_unavailable", "Agent service error: 503"),
            agent_type="task",
        )
        await store.finish_turn(failed)
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
        await store.add_user_message(user_msg(sid, 1, "first"))
        await store.begin_turn(sid, "a1", "rag", STAMP)
        await store.add_user_message(user_msg(sid, 3, "second"))  # sent during turn 1
        await store.finish_turn(agent_msg(sid, "a1", 5, "to first"))
        await store.begin_turn(sid, "a2", "rag", STAMP)
        await store.finish_turn(agent_msg(sid, "a2", 8, "to second"))
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
        await store.add_user_message(user_msg(sid, 3, "the prompt of the next turn"))
        assert [m.seq for m in await store.history(sid, 10)] == [1, 2]


async def test_client_message_id_finds_the_earlier_send(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        other = await harness.new_session()
        sent = user_msg(sid, 1, "once", client_message_id="client-42")
        await store.add_user_message(sent)
        await store.add_user_message(user_msg(sid, 2, "plain"))
        assert await store.find_by_client_message_id(sid, "client-42") == sent
        assert await store.find_by_client_message_id(sid, "client-43") is None
        assert await store.find_by_client_message_id(other, "client-42") is None


async def test_save_last_seq_persists_seqs_without_rows(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await complete_turn(store, sid, 1, 5)
        await store.save_last_seq(sid, 7)  # stream_complete and typing came after the reply
        record = await session(store, sid)
        assert (record.last_seq, record.message_count) == (7, 2)
        await store.save_last_seq(sid, 6)
        assert (await session(store, sid)).last_seq == 7


async def test_reserving_does_not_move_last_seq(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session()
        await store.add_user_message(user_msg(sid, 1))
        await store.reserve_seq(sid, 256)
        assert (await session(store, sid)).last_seq == 1


async def test_writes_to_an_unknown_session_fail(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        with pytest.raises(LookupError):
            await harness.store.add_user_message(user_msg("e" * 32, 1))
        with pytest.raises(LookupError):
            await harness.store.reserve_seq("e" * 32, 10)


async def test_a_session_expires_ttl_after_its_last_message(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store, now = harness.store, harness.now
        sid = await harness.new_session()
        now.advance(TTL_S * 0.75)
        await store.add_user_message(user_msg(sid, 1))
        now.advance(TTL_S * 0.75)
        await store.begin_turn(sid, "r", "rag", STAMP)
        await store.finish_turn(agent_msg(sid, "r", 2))
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
        await harness.store.add_user_message(user_msg(sid, 1, "go on"))
        await harness.store.reserve_seq(sid, 40)
        await harness.store.begin_turn(sid, "cut-off", "rag", STAMP)
        await harness.store.checkpoint_turn(sid, "cut-off", "as far as it got")

        await harness.restart()

        store = harness.store
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
