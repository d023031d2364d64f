"""Behaviours every :class:`~actors.chat.store.ChatStore` shares, run against each
implementation (the SQLite store on a real file in ``tmp_path``).

Real clock: the SQLite store works in threads. Every test runs under ``trio.fail_after(5)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from actors.chat.messages import AgentType, MessageStatus
from actors.chat.store import ChatStore
from archon_chat.store import open_store

from .conftest import TTL_S, agent_msg, user_msg

CEILING_S = 5


@dataclass
class Harness:
    store: ChatStore
    new_session: Callable[[AgentType], Awaitable[str]]


@pytest.fixture(params=["sqlite"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_store(str(tmp_path / "chat.db"), ttl_s=TTL_S) as sqlite_store:

        async def new_session(agent_type: AgentType) -> str:
            return (await sqlite_store.create_session(agent_type, None)).session_id

        yield Harness(sqlite_store, new_session)


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
    await store.begin_turn(session_id, agent_id, "rag", "2026-03-01T12:00:01.000000+00:00")
    reply = text if text is not None else f"answer {agent_seq}"
    await store.checkpoint_turn(session_id, agent_id, reply[:2])
    await store.finish_turn(agent_msg(session_id, agent_id, agent_seq, reply, status=status))


async def test_unknown_session_is_none(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        assert await harness.store.get_session("0" * 32) is None


async def test_new_session_starts_empty(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        sid = await harness.new_session("document")
        record = await harness.store.get_session(sid)
        assert record is not None
        assert (record.session_id, record.agent_type, record.last_seq, record.message_count) == (
            sid,
            "document",
            0,
            0,
        )
        assert await harness.store.messages_after(sid, 0, 100) == []
        assert await harness.store.history(sid, 10) == []


async def test_user_message_bumps_last_seq_and_count(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        sid = await harness.new_session("rag")
        message = user_msg(sid, 1, "hi", client_message_id="c-1")
        await harness.store.add_user_message(message)
        record = await harness.store.get_session(sid)
        assert record is not None
        assert (record.last_seq, record.message_count) == (1, 1)
        assert await harness.store.messages_after(sid, 0, 10) == [message]


async def test_reply_in_progress_is_hidden_until_finished(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session("rag")
        await store.add_user_message(user_msg(sid, 1))
        await store.reserve_seq(sid, 256)
        await store.begin_turn(sid, "reply-1", "rag", "2026-03-01T12:00:01.000000+00:00")
        await store.checkpoint_turn(sid, "reply-1", "partial")
        assert [m.id for m in await store.messages_after(sid, 0, 10)] == [user_msg(sid, 1).id]
        assert await store.history(sid, 10) == []
        record = await store.get_session(sid)
        assert record is not None
        assert (record.last_seq, record.message_count) == (1, 1)

        final = agent_msg(sid, "reply-1", 9, "partial and the rest")
        await store.finish_turn(final)
        assert await store.messages_after(sid, 1, 10) == [final]
        record = await store.get_session(sid)
        assert record is not None
        assert (record.last_seq, record.message_count) == (9, 2)


async def test_messages_after_filters_orders_and_limits(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session("rag")
        for n in range(3):
            await complete_turn(store, sid, 10 * n + 1, 10 * n + 5)
        seqs = [m.seq for m in await store.messages_after(sid, 0, 100)]
        assert seqs == [1, 5, 11, 15, 21, 25]
        assert [m.seq for m in await store.messages_after(sid, 5, 2)] == [11, 15]
        assert [m.seq for m in await store.messages_after(sid, 25, 10)] == []


async def test_messages_after_is_per_session(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        one = await harness.new_session("rag")
        two = await harness.new_session("rag")
        await complete_turn(harness.store, one, 1, 2)
        assert await harness.store.messages_after(two, 0, 10) == []


async def test_finished_replies_keep_status_error_and_content(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session("task")
        await store.add_user_message(user_msg(sid, 1, agent_type="task"))
        await store.begin_turn(sid, "r1", "task", "2026-03-01T12:00:01.000000+00:00")
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
        assert stored.to_wire()["error"] == {
            "code": "agent_unavailable",
            "error": "Agent service error: 503",
        }


async def test_history_keeps_complete_turns_oldest_first_capped(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session("rag")
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


async def test_history_leaves_out_a_message_still_waiting(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session("rag")
        await complete_turn(store, sid, 1, 2)
        await store.add_user_message(user_msg(sid, 3, "the prompt of the next turn"))
        assert [m.seq for m in await store.history(sid, 10)] == [1, 2]


async def test_client_message_id_finds_the_earlier_send(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session("rag")
        other = await harness.new_session("rag")
        sent = user_msg(sid, 1, "once", client_message_id="client-42")
        await store.add_user_message(sent)
        await store.add_user_message(user_msg(sid, 2, "plain"))
        assert await store.find_by_client_message_id(sid, "client-42") == sent
        assert await store.find_by_client_message_id(sid, "client-43") is None
        assert await store.find_by_client_message_id(other, "client-42") is None


async def test_save_last_seq_persists_seqs_without_rows(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session("rag")
        await complete_turn(store, sid, 1, 5)
        await store.save_last_seq(sid, 7)  # stream_complete and typing came after the reply
        record = await store.get_session(sid)
        assert record is not None
        assert (record.last_seq, record.message_count) == (7, 2)


async def test_reserving_does_not_move_last_seq(harness: Harness) -> None:
    with trio.fail_after(CEILING_S):
        store = harness.store
        sid = await harness.new_session("rag")
        await store.add_user_message(user_msg(sid, 1))
        await store.reserve_seq(sid, 256)
        record = await store.get_session(sid)
        assert record is not None
        assert record.last_seq == 1
