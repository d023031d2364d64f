"""The session hub and actors against a scripted agents upstream (``httpx.MockTransport``):
turn order and seq, history, timeouts at their exact virtual times, cancellation,
queueing and refusals, turn state for rejoining clients, passivation, crashes, shutdown.

Pure trio on ``autojump_clock`` (no sockets, no threads); every test runs under
``trio.fail_after(1000)`` (virtual seconds).
"""

from __future__ import annotations

import dataclasses

import pytest
import trio

from actors.chat.hub import HubClosed, SessionBusy, SessionHub, SessionNotFound, open_session_hub
from actors.chat.memory_store import MemoryStore
from actors.chat.messages import (
    CancelReason,
    ChatMessage,
    ChunkStreamed,
    ErrorCode,
    GetTurnState,
    MessageEmitted,
    MessageStatus,
    SessionEvent,
    StreamCompleted,
    SubmitMessage,
    SubmitOutcome,
    TurnEnded,
    TurnFailed,
    TurnStarted,
    TurnState,
    TypingChanged,
)
from actors.chat.settings import HubSettings
from actors.chat.store import interrupted_text
from actors.runtime import MailboxFull
from archon_chat.gateway import wire

from ..derived import derived
from .fakes import (
    COMPLETE,
    PING,
    FaultyStore,
    Hang,
    Sleep,
    Step,
    Upstream,
    agents_over,
    assert_wire_order,
    chunk,
    event_name,
    open_harness,
    sse,
)

CEILING_S = 1000


def script(*steps: Step) -> Upstream:
    return Upstream(script=lambda body: steps)


def names(events: list[SessionEvent]) -> list[str]:
    return [event_name(e) for e in events]


async def test_one_turn_in_order_with_seq_and_store(autojump_clock: object) -> None:
    upstream = script(chunk("Hel"), Sleep(1), PING, chunk("lo"), COMPLETE)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream) as h:
            sid = (await h.store.create_session("task")).session_id
            reply = await h.submit(sid, "hi there")
            assert reply.outcome is SubmitOutcome.ACCEPTED
            (ended,) = await h.recorder.turns_ended(1)
            events = h.recorder.of(sid)
    assert names(events) == [
        "message", "_turn_started", "typing", "stream_chunk", "stream_chunk", "message",
        "stream_complete", "typing", "_turn_ended",
    ]  # fmt: skip
    assert [e.seq for e in events] == [1, 2, 2, 3, 4, 5, 6, 7, 7]
    assert_wire_order(events)
    user, started, typing_on, c1, c2, agent, complete, typing_off, _ = events
    assert isinstance(user, MessageEmitted)
    assert user.message.id == reply.message_id
    assert (user.message.sender, user.message.content, user.message.agent_type) == (
        "user", "hi there", "task",
    )  # fmt: skip
    assert isinstance(started, TurnStarted)
    assert typing_on == TypingChanged(sid, 2, True)
    assert isinstance(agent, MessageEmitted)
    message_id = agent.message.id
    assert started.message_id == message_id
    assert c1 == ChunkStreamed(sid, 3, message_id, "Hel")
    assert c2 == ChunkStreamed(sid, 4, message_id, "lo")
    assert (agent.message.content, agent.message.status, agent.message.sender) == (
        "Hello", MessageStatus.COMPLETE, "agent",
    )  # fmt: skip
    assert complete == StreamCompleted(sid, 6, message_id, MessageStatus.COMPLETE)
    assert typing_off == TypingChanged(sid, 7, False)
    assert ended == TurnEnded(sid, 7, message_id, MessageStatus.COMPLETE, None, 0.0)
    assert await h.store.session_messages(sid) == [user.message, agent.message]
    assert h.store.reserved(sid) >= 7


async def test_history_context_and_prompt_reach_the_agent(autojump_clock: object) -> None:
    upstream = Upstream(script=lambda body: [chunk(f"re: {body['prompt']}"), COMPLETE])
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, derived(HubSettings, history_turns=2)) as h:
            sid = (await h.store.create_session("document")).session_id
            for n, text in enumerate(["one", "two", "three", "four"], start=1):
                await h.submit(sid, text, context={"format": "markdown", "n": n})
                await h.recorder.turns_ended(n)
    first, _, _, last = upstream.requests
    assert first == {
        "agent_type": "document",
        "prompt": "one",
        "context": {"format": "markdown", "n": 1},
        "history": [],
        "session_id": sid,
    }
    # Capped at the last two complete turns, oldest first.
    assert last["history"] == [
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "re: two"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "re: three"},
    ]
    assert last["prompt"] == "four"
    # The actor kept the history itself: no store read for it in a session it saw whole.
    assert h.store.calls["history"] == 0


async def test_history_is_read_once_after_reactivation(autojump_clock: object) -> None:
    upstream = Upstream(script=lambda body: [chunk(f"re: {body['prompt']}"), COMPLETE])
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, derived(HubSettings, idle_passivate_s=1)) as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "one")
            await h.recorder.turns_ended(1)
            await trio.sleep(2)
            assert not h.hub.is_live(sid)
            for n, text in enumerate(["two", "three"], start=2):
                await h.submit(sid, text)
                await h.recorder.turns_ended(n)
    assert h.store.calls["history"] == 1
    assert upstream.requests[-1]["history"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "re: one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "re: two"},
    ]


TIMEOUTS = derived(
    HubSettings, agent_first_event_timeout_s=7, agent_idle_timeout_s=3, agent_turn_timeout_s=50
)


@pytest.mark.parametrize(
    ("steps", "failed_at", "partial"),
    [
        pytest.param([Hang()], 7, "", id="first-event"),
        pytest.param([Sleep(6), PING, Hang()], 9, "", id="gap-after-heartbeat"),
        pytest.param([chunk("a"), Sleep(2), chunk("b"), Hang()], 5, "ab", id="gap-after-chunk"),
        pytest.param([chunk("a"), *[Sleep(2), PING] * 40], 50, "a", id="whole-turn"),
    ],
)
async def test_each_timeout_fails_the_turn_at_its_exact_time(
    autojump_clock: object, steps: list[Step], failed_at: float, partial: str
) -> None:
    upstream = script(*steps)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, TIMEOUTS) as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "hello?")
            (ended,) = await h.recorder.turns_ended(1)
    failed_time, failed = next((t, e) for t, e in h.recorder.timed if isinstance(e, TurnFailed))
    assert failed_time == failed_at
    assert (failed.code, failed.error) == (ErrorCode.AGENT_TIMEOUT, "Agent response timeout")
    assert failed.message_id == ended.message_id
    assert (ended.status, ended.code) == (MessageStatus.FAILED, ErrorCode.AGENT_TIMEOUT)
    assert names(h.recorder.of(sid))[-5:] == [
        "error", "message", "stream_complete", "typing", "_turn_ended",
    ]  # fmt: skip
    agent = (await h.store.session_messages(sid))[-1]
    assert (agent.status, agent.content, agent.error) == (
        MessageStatus.FAILED, partial, ("agent_timeout", "Agent response timeout"),
    )  # fmt: skip
    assert len(upstream.closed_early) == 1


@pytest.mark.parametrize(
    ("status", "steps", "code", "text", "partial"),
    [
        (503, [b"down"], ErrorCode.AGENT_UNAVAILABLE, "Agent service error: 503", ""),
        (
            200,
            [chunk("so far"), sse({"type": "error", "error": "Model overloaded"})],
            ErrorCode.AGENT_ERROR,
            "Model overloaded",
            "so far",
        ),
        (
            200,
            [chunk("x"), b"data: {oops\n\n"],
            ErrorCode.AGENT_PROTOCOL_ERROR,
            "Agent sent an event that is not JSON",
            "x",
        ),
        (
            200,
            [chunk("x")],
            ErrorCode.AGENT_PROTOCOL_ERROR,
            "Agent stream ended without stream_complete",
            "x",
        ),
    ],
)
async def test_agent_failures_end_the_turn_failed(
    autojump_clock: object,
    status: int,
    steps: list[Step],
    code: ErrorCode,
    text: str,
    partial: str,
) -> None:
    upstream = script(*steps)
    upstream.status = status
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream) as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "hi")
            await h.recorder.turns_ended(1)
    events = h.recorder.of(sid)
    failed = next(e for e in events if isinstance(e, TurnFailed))
    assert (failed.code, failed.error) == (code, text)
    assert wire.payload(failed) == {
        "type": "error",
        "session_id": sid,
        "seq": failed.seq,
        "message_id": failed.message_id,
        "error": text,
        "code": code.value,
    }
    agent = (await h.store.session_messages(sid))[-1]
    assert (agent.status, agent.content, agent.error) == (
        MessageStatus.FAILED, partial, (code.value, text),
    )  # fmt: skip
    assert_wire_order(events)


async def test_stop_cancels_at_once_saves_the_partial_reply_and_closes_upstream(
    autojump_clock: object,
) -> None:
    upstream = script(chunk("partial "), chunk("answer"), Sleep(5), chunk("never"), COMPLETE)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream) as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "long question")
            await h.recorder.wait_for(
                lambda events: sum(isinstance(e, ChunkStreamed) for e in events) == 2
            )
            await trio.sleep(1)
            assert await h.cancel(sid) is True
            (ended,) = await h.recorder.turns_ended(1)
            cancelled_at = trio.current_time()
            assert cancelled_at == 1
            assert await h.cancel(sid) is False  # nothing left to cancel
            await trio.sleep(10)
    events = h.recorder.of(sid)
    complete = next(i for i, e in enumerate(events) if isinstance(e, StreamCompleted))
    assert not any(isinstance(e, ChunkStreamed) for e in events[complete:])
    assert ended.status is MessageStatus.CANCELLED
    agent = (await h.store.session_messages(sid))[-1]
    assert (agent.status, agent.content, agent.error) == (
        MessageStatus.CANCELLED, "partial answer", None,
    )  # fmt: skip
    assert len(upstream.closed_early) == 1
    assert_wire_order(events)


async def test_cancel_for_an_idle_session_starts_no_actor(autojump_clock: object) -> None:
    with trio.fail_after(CEILING_S):
        async with open_harness() as h:
            sid = (await h.store.create_session()).session_id
            assert await h.cancel(sid, CancelReason.LEFT) is False
            assert not h.hub.is_live(sid)
            assert h.hub.live_sessions() == 0


async def test_queued_turns_run_in_order_and_the_bound_refuses(autojump_clock: object) -> None:
    upstream = Upstream(script=lambda body: [Sleep(1), chunk(body["prompt"].upper()), COMPLETE])
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, derived(HubSettings, max_queued_turns=2)) as h:
            sid = (await h.store.create_session()).session_id
            outcomes = [(await h.submit(sid, text)).outcome for text in ["a", "b", "c", "d"]]
            ended = await h.recorder.turns_ended(3)
            assert trio.current_time() == 3
    assert outcomes == [SubmitOutcome.ACCEPTED] * 3 + [SubmitOutcome.SESSION_BUSY]
    assert [r["prompt"] for r in upstream.requests] == ["a", "b", "c"]
    agents = [m for m in await h.store.session_messages(sid) if m.sender == "agent"]
    assert [m.content for m in agents] == ["A", "B", "C"]
    assert [e.message_id for e in ended] == [m.id for m in agents]
    assert_wire_order(h.recorder.of(sid))


async def test_left_cancels_the_turn_and_drops_queued_ones(autojump_clock: object) -> None:
    upstream = script(chunk("x"), Hang())
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream) as h:
            sid = (await h.store.create_session()).session_id
            for text in ["a", "b", "c"]:
                await h.submit(sid, text)
            await h.recorder.wait_for(lambda ev: any(isinstance(e, ChunkStreamed) for e in ev))
            assert await h.cancel(sid, CancelReason.LEFT) is True
            await h.recorder.turns_ended(1)
            await trio.sleep(30)
            ended = await h.recorder.turns_ended(1)
    assert len(ended) == 1
    assert len(upstream.requests) == 1
    stored = await h.store.session_messages(sid)
    assert [(m.sender, m.content) for m in stored] == [
        ("user", "a"), ("user", "b"), ("user", "c"), ("agent", "x"),
    ]  # fmt: skip


async def test_session_full_and_duplicates(autojump_clock: object) -> None:
    with trio.fail_after(CEILING_S):
        async with open_harness(settings=derived(HubSettings, max_messages_per_session=4)) as h:
            sid = (await h.store.create_session()).session_id
            first = await h.submit(sid, "hi", client_message_id="c-1")
            await h.recorder.turns_ended(1)
            again = await h.submit(sid, "hi", client_message_id="c-1")
            second = await h.submit(sid, "next", client_message_id="c-2")
            await h.recorder.turns_ended(2)
            full = await h.submit(sid, "one more")
            # A retry of an accepted message is still recognised when full.
            retry = await h.submit(sid, "next", client_message_id="c-2")
    assert first.outcome is SubmitOutcome.ACCEPTED
    assert (again.outcome, again.message_id) == (SubmitOutcome.DUPLICATE, first.message_id)
    assert second.outcome is SubmitOutcome.ACCEPTED
    assert (full.outcome, full.message_id) == (SubmitOutcome.SESSION_FULL, None)
    assert (retry.outcome, retry.message_id) == (SubmitOutcome.DUPLICATE, second.message_id)
    assert len(h.upstream.requests) == 2
    record = await h.store.get_session(sid)
    assert record is not None
    assert record.message_count == 4


async def test_the_message_cap_counts_queued_turns_and_their_replies(
    autojump_clock: object,
) -> None:
    # Cap 5: the first message and its reply (2), the second and its reply (4); a third
    # would need 6 even though only 2 messages are stored when it arrives.
    upstream = script(Sleep(10), chunk("ok"), COMPLETE)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, derived(HubSettings, max_messages_per_session=5)) as h:
            sid = (await h.store.create_session()).session_id
            outcomes = [(await h.submit(sid, f"m{n}")).outcome for n in range(3)]
            await h.recorder.turns_ended(2)
            after = (await h.submit(sid, "still full")).outcome
    assert outcomes == [
        SubmitOutcome.ACCEPTED, SubmitOutcome.ACCEPTED, SubmitOutcome.SESSION_FULL,
    ]  # fmt: skip
    assert after is SubmitOutcome.SESSION_FULL
    stored = await h.store.session_messages(sid)
    assert len(stored) == 4 <= 5


async def test_unknown_session_and_full_mailbox(autojump_clock: object) -> None:
    store = FaultyStore()
    with trio.fail_after(CEILING_S):
        async with open_harness(store=store, settings=derived(HubSettings, mailbox_size=1)) as h:
            with pytest.raises(SessionNotFound):
                await h.hub.deliver("no-such-session", SubmitMessage("hi"))
            assert h.hub.live_sessions() == 0
            sid = (await store.create_session()).session_id
            store.gates["add_user_message"] = gate = trio.Event()
            await h.hub.deliver(sid, SubmitMessage("blocks the actor"))
            await trio.sleep(1)
            await h.hub.deliver(sid, SubmitMessage("waits in the mailbox"))
            with pytest.raises(SessionBusy) as busy:
                await h.hub.deliver(sid, SubmitMessage("one too many"))
            assert isinstance(busy.value, MailboxFull)
            gate.set()
            await h.recorder.turns_ended(2)


async def test_turn_state_for_rejoining_clients(autojump_clock: object) -> None:
    upstream = script(chunk("a"), chunk("b"), chunk("c"), Sleep(10), COMPLETE)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream) as h:
            sid = (await h.store.create_session()).session_id
            idle = await h.turn_state(sid)
            assert (idle.last_seq, idle.typing, idle.turn, idle.events) == (0, False, None, ())
            await h.submit(sid, "q")
            await trio.sleep(5)
            whole = await h.turn_state(sid)
            since = await h.turn_state(sid, after_seq=3)
            await h.recorder.turns_ended(1)
            after = await h.turn_state(sid)
    # user message 1, typing 2, chunks 3..5
    assert whole.typing is True
    assert whole.last_seq == 5
    assert whole.turn is not None
    message_id, start_seq = whole.turn
    assert start_seq == 2
    # What a client missed comes as one chunk with the newest seq: exactly the text.
    assert [(e.seq, e.content) for e in whole.events if isinstance(e, ChunkStreamed)] == [
        (5, "abc")
    ]
    assert all(e.message_id == message_id for e in whole.events if isinstance(e, ChunkStreamed))
    assert [(e.seq, e.content) for e in since.events if isinstance(e, ChunkStreamed)] == [(5, "bc")]
    assert [e.seq for e in since.events] == [5]
    assert (after.typing, after.turn, after.events, after.last_seq) == (False, None, (), 8)


async def test_rejoin_gets_exactly_the_missed_text_as_one_chunk(
    autojump_clock: object,
) -> None:
    pieces = [f"{n} " for n in range(40)]
    upstream = script(*[chunk(p) for p in pieces], Hang())
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream) as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "count")
            await h.recorder.wait_for(
                lambda ev: sum(isinstance(e, ChunkStreamed) for e in ev) == len(pieces)
            )
            state = await h.turn_state(sid)
            recent = await h.turn_state(sid, after_seq=state.last_seq - 3)
            first_chunk_seq = state.last_seq - len(pieces) + 1
            inside = await h.turn_state(sid, after_seq=first_chunk_seq + 5)
            await h.cancel(sid)
    (whole,) = state.events
    assert isinstance(whole, ChunkStreamed)
    assert (whole.content, whole.seq) == ("".join(pieces), state.last_seq)

    def text(events: tuple[object, ...]) -> str:
        return "".join(e.content for e in events if isinstance(e, ChunkStreamed))

    assert len(recent.events) == len(inside.events) == 1
    assert text(recent.events) == "".join(pieces[-3:])
    assert text(inside.events) == "".join(pieces[6:])


async def test_passivation_and_reactivation_keep_seq(autojump_clock: object) -> None:
    settings = derived(HubSettings, idle_passivate_s=10)
    with trio.fail_after(CEILING_S):
        async with open_harness(settings=settings) as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "one")
            await h.recorder.turns_ended(1)
            assert trio.current_time() == 0
            await trio.sleep(9.999)
            assert h.hub.is_live(sid)
            await trio.sleep(0.002)  # passivated at 10
            assert not h.hub.is_live(sid)
            assert h.hub.live_sessions() == 0
            record = await h.store.get_session(sid)
            assert record is not None
            assert record.last_seq == 6  # typing off had seq 6
            await h.submit(sid, "two")
            assert h.hub.is_live(sid)
            await h.recorder.turns_ended(2)
    seqs = [e.seq for e in h.recorder.of(sid)]
    assert seqs == [1, 2, 2, 3, 4, 5, 6, 6, 7, 8, 8, 9, 10, 11, 12, 12]
    assert_wire_order(h.recorder.of(sid))


async def test_a_busy_session_is_not_passivated(autojump_clock: object) -> None:
    upstream = script(*[x for _ in range(30) for x in (Sleep(1), PING)], COMPLETE)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, derived(HubSettings, idle_passivate_s=5)) as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "slow one")
            await h.recorder.turns_ended(1)
            assert trio.current_time() == 30
            await trio.sleep(4.999)
            assert h.hub.is_live(sid)
            await trio.sleep(0.002)  # idle from the end of its turn: passivated at 35
            assert not h.hub.is_live(sid)


async def test_a_crash_fails_its_turn_restarts_and_spares_the_sibling(
    autojump_clock: object,
) -> None:
    store = FaultyStore()
    upstream = Upstream(
        script=lambda body: [x for n in range(5) for x in (chunk(f"{n}"), Sleep(1))] + [COMPLETE]
    )
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, store=store) as h:
            crashing = (await store.create_session()).session_id
            sibling = (await store.create_session()).session_id
            await h.submit(sibling, "keep going")
            await trio.sleep(2)
            store.crash_history.add(crashing)
            await h.submit(crashing, "this one crashes")
            (crashed,) = await h.recorder.turns_ended(1, crashing)
            assert trio.current_time() == 2
            assert h.hub.is_live(crashing)  # restarted
            (finished,) = await h.recorder.turns_ended(1, sibling)
            assert trio.current_time() == 5
            again = await h.submit(crashing, "and now?")
            assert again.outcome is SubmitOutcome.ACCEPTED
            ended = await h.recorder.turns_ended(2, crashing)
    assert (crashed.status, crashed.code) == (MessageStatus.FAILED, ErrorCode.INTERNAL_ERROR)
    failed = next(e for e in h.recorder.of(crashing) if isinstance(e, TurnFailed))
    assert failed.code is ErrorCode.INTERNAL_ERROR
    assert (finished.status, ended[1].status) == (MessageStatus.COMPLETE, MessageStatus.COMPLETE)
    sibling_text = "".join(
        e.content for e in h.recorder.of(sibling) if isinstance(e, ChunkStreamed)
    )
    assert sibling_text == "01234"
    assert_wire_order(h.recorder.events)
    stored = [m.status for m in await store.session_messages(crashing) if m.sender == "agent"]
    assert stored == [MessageStatus.FAILED, MessageStatus.COMPLETE]


async def test_a_session_that_keeps_crashing_is_given_up_alone(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyStore()
    upstream = script(chunk("a"), Sleep(1), chunk("b"), COMPLETE)
    settings = derived(HubSettings, restart_intensity=2, restart_period_s=10)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, settings, store=store) as h:
            bad = (await store.create_session()).session_id
            good = (await store.create_session()).session_id
            # The turn crashes the actor, and then every restart crashes loading it.
            store.crash_history.add(bad)
            store.break_on_crash.add(bad)
            await h.submit(good, "fine")
            await h.submit(bad, "boom")
            (crashed,) = await h.recorder.turns_ended(1, bad)
            await trio.sleep(0.5)
            assert not h.hub.is_live(bad)
            assert h.hub.is_live(good)
            (finished,) = await h.recorder.turns_ended(1, good)
            assert trio.current_time() == 1
            store.broken.discard(bad)  # repaired: the next use starts it afresh
            assert (await h.submit(bad, "again")).outcome is SubmitOutcome.ACCEPTED
            await h.recorder.turns_ended(2, bad)
    assert (crashed.status, crashed.code) == (MessageStatus.FAILED, ErrorCode.INTERNAL_ERROR)
    assert finished.status is MessageStatus.COMPLETE
    assert any("giving it up" in r.getMessage() for r in caplog.records)


async def test_shutdown_cancels_turns_and_stores_them_cancelled(autojump_clock: object) -> None:
    upstream = script(chunk("half"), Hang())
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream) as h:
            sids = [(await h.store.create_session()).session_id for _ in range(3)]
            for sid in sids:
                await h.submit(sid, "go")
            await h.recorder.wait_for(lambda ev: sum(isinstance(e, ChunkStreamed) for e in ev) == 3)
            await h.hub.shutdown()
            assert trio.current_time() == 0
            assert h.hub.live_sessions() == 0
            with pytest.raises(HubClosed):
                await h.hub.deliver(sids[0], SubmitMessage("late"))
            ended = await h.recorder.turns_ended(3)
    assert {e.status for e in ended} == {MessageStatus.CANCELLED}
    for sid in sids:
        agent = (await h.store.session_messages(sid))[-1]
        assert (agent.status, agent.content) == (MessageStatus.CANCELLED, "half")
        record = await h.store.get_session(sid)
        assert record is not None
        assert record.last_seq == 6  # user 1, typing 2, chunk 3, 4 5 6: the end events
    assert len(upstream.closed_early) == 3


@pytest.mark.parametrize(
    ("store_answers_at", "shutdown_done_at", "saved"),
    [
        pytest.param(2.5, 2.5, True, id="save-lands-after-the-grace"),
        pytest.param(None, 3, False, id="save-abandoned-at-its-deadline"),
    ],
)
async def test_forced_shutdown_bounds_the_shielded_save(
    autojump_clock: object, store_answers_at: float | None, shutdown_done_at: float, saved: bool
) -> None:
    store = FaultyStore()
    upstream = script(chunk("half"), Hang())
    settings = derived(HubSettings, shutdown_grace_s=2, save_timeout_s=3)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, settings, store=store) as h:
            sid = (await store.create_session()).session_id
            await h.submit(sid, "go")
            await h.recorder.wait_for(lambda ev: any(isinstance(e, ChunkStreamed) for e in ev))
            store.gates["finish_turn"] = gate = trio.Event()
            async with trio.open_nursery() as nursery:
                if store_answers_at is not None:
                    nursery.start_soon(sleep_then_set, store_answers_at, gate)
                # The grace (2 s) runs out while the save is stuck; the save itself is
                # shielded with its own 3 s deadline.
                await h.hub.shutdown()
                assert trio.current_time() == shutdown_done_at
            ended = await h.recorder.turns_ended(1)
    assert ended[0].status is MessageStatus.CANCELLED
    (row,) = [m for m in store.rows(sid) if m.sender == "agent"]
    if saved:
        assert (row.status, row.content) == (MessageStatus.CANCELLED, "half")
    else:
        assert row.status is MessageStatus.STREAMING  # failed at the next start
        assert store.recover() == 1


async def sleep_then_set(seconds: float, event: trio.Event) -> None:
    await trio.sleep(seconds)
    event.set()


async def test_a_message_sent_during_a_turn_keeps_seq_order(autojump_clock: object) -> None:
    upstream = Upstream(
        script=lambda body: [x for n in range(3) for x in (chunk(f"{n}"), Sleep(1))] + [COMPLETE]
    )
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream) as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "first")
            await trio.sleep(1.5)
            await h.submit(sid, "second")
            await h.recorder.turns_ended(2)
    events = h.recorder.of(sid)
    assert_wire_order(events)
    users = [e for e in events if isinstance(e, MessageEmitted) and e.message.sender == "user"]
    assert [u.message.content for u in users] == ["first", "second"]
    assert len({e.seq for e in events if not event_name(e).startswith("_")}) == len(
        [e for e in events if not event_name(e).startswith("_")]
    )


async def test_a_session_deleted_while_passive_is_not_found(autojump_clock: object) -> None:
    store = MemoryStore()
    with trio.fail_after(CEILING_S):
        async with open_harness(
            store=store, settings=derived(HubSettings, idle_passivate_s=1)
        ) as h:
            sid = (await store.create_session()).session_id
            await h.submit(sid, "hi")
            await h.recorder.turns_ended(1)
            await trio.sleep(2)
            await store.delete_session(sid)
            with pytest.raises(SessionNotFound):
                await h.hub.deliver(sid, SubmitMessage("anyone?"))


async def test_the_partial_reply_is_checkpointed_while_it_streams(autojump_clock: object) -> None:
    upstream = script(chunk("a"), Sleep(1), chunk("b"), Sleep(1.5), chunk("c"), Hang())
    settings = derived(HubSettings, checkpoint_interval_s=2)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, settings) as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "q")
            await trio.sleep(2)
            (placeholder,) = [m for m in h.store.rows(sid) if m.sender == "agent"]
            assert (placeholder.status, placeholder.content) == (MessageStatus.STREAMING, "")
            await trio.sleep(1)
            (placeholder,) = [m for m in h.store.rows(sid) if m.sender == "agent"]
            # Saved after the chunk at 2.5 s, the first event 2 s past the last save.
            assert placeholder.content == "abc"
            # A crash of the whole process now would keep that text.
            assert h.store.recover() == 1
            await h.cancel(sid)


async def test_each_checkpoint_sends_only_the_text_since_the_last(autojump_clock: object) -> None:
    """Checkpoints append: the second one sends the new text at the right offset, also
    after a rejoin joined the pieces so far into one."""
    sent: list[tuple[str, int]] = []

    class Recording(MemoryStore):
        async def checkpoint_turn(
            self,
            session_id: str,
            agent_message_id: str,
            content: str,
            *,
            fence: int,
            offset: int = 0,
        ) -> None:
            sent.append((content, offset))
            await super().checkpoint_turn(
                session_id, agent_message_id, content, fence=fence, offset=offset
            )

    upstream = script(
        chunk("ab"), Sleep(2), chunk("cd"), Sleep(1), chunk("é"), Sleep(1), chunk("f"), Hang()
    )
    settings = derived(HubSettings, checkpoint_interval_s=2)
    store = Recording()
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, settings, store) as h:
            sid = (await store.create_session()).session_id
            await h.submit(sid, "q")
            await trio.sleep(3.5)
            state = await h.turn_state(sid, after_seq=0)  # joins "ab", "cd", "é" into one
            (missed,) = [e for e in state.events if isinstance(e, ChunkStreamed)]
            assert missed.content == "abcdé"
            await trio.sleep(1)
            assert sent == [("abcd", 0), ("éf", 4)]
            (reply,) = [m for m in store.rows(sid) if m.sender == "agent"]
            assert reply.content == "abcdéf"
            await h.cancel(sid)


async def test_a_slow_checkpoint_never_holds_the_reply_and_lands_before_the_final(
    autojump_clock: object,
) -> None:
    """A checkpoint stalled in the store (a long reply's text behind other writes): the
    chunks keep flowing, no second checkpoint starts meanwhile, the agent's silence
    deadline does not count the wait, and the final message is stored after it."""
    upstream = script(
        chunk("a"), Sleep(2), chunk("b"), Sleep(1), chunk("c"), Sleep(1), chunk("d"), COMPLETE
    )
    settings = derived(HubSettings, checkpoint_interval_s=2, agent_idle_timeout_s=3)
    store = FaultyStore()
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, settings, store) as h:
            store.gates["checkpoint_turn"] = gate = trio.Event()
            sid = (await store.create_session()).session_id
            await h.submit(sid, "q")
            await trio.sleep(60)  # the reply is over; its checkpoint is still stalled
            events = h.recorder.of(sid)
            assert [e.content for e in events if isinstance(e, ChunkStreamed)] == list("abcd")
            assert not any(isinstance(e, TurnEnded) for e in events)
            gate.set()
            (ended,) = await h.recorder.turns_ended(1)
            assert ended.status is MessageStatus.COMPLETE
            assert store.calls["checkpoint_turn"] == 1
            (reply,) = [m for m in store.rows(sid) if m.sender == "agent"]
            assert (reply.status, reply.content) == (MessageStatus.COMPLETE, "abcd")


async def test_a_slow_gateway_is_not_an_agent_timeout(autojump_clock: object) -> None:
    upstream = script(chunk("a"), chunk("b"), COMPLETE)
    settings = derived(HubSettings, agent_first_event_timeout_s=3, agent_idle_timeout_s=3)
    store = MemoryStore()
    send, receive = trio.open_memory_channel[SessionEvent](0)
    events: list[SessionEvent] = []
    with trio.fail_after(CEILING_S):
        async with (
            agents_over(upstream) as agents,
            open_session_hub(store, agents, send, settings) as hub,
        ):
            sid = (await store.create_session()).session_id
            await hub.deliver(sid, SubmitMessage("hi"))
            while not events or not isinstance(events[-1], TurnEnded):
                events.append(await receive.receive())
                if isinstance(events[-1], ChunkStreamed):
                    await trio.sleep(10)  # a gateway far behind
            assert trio.current_time() == 20
    assert isinstance(events[-1], TurnEnded)
    assert events[-1].status is MessageStatus.COMPLETE


async def test_turn_state_counts_events_whose_send_is_still_waiting(
    autojump_clock: object,
) -> None:
    # The gateway is behind (an unbuffered channel nobody reads for a while): the actor
    # has taken a seq for its next event but cannot hand it over yet. A rejoining client
    # told last_seq must find that event in the replay, or it would drop the live copy
    # (seq <= last_seq) and miss it.
    upstream = script(chunk("a"), chunk("b"), COMPLETE)
    store = MemoryStore()
    send, receive = trio.open_memory_channel[SessionEvent](0)

    async def state(hub: SessionHub, sid: str, after: int) -> TurnState:
        reply_send, reply_receive = trio.open_memory_channel[TurnState](1)
        await hub.deliver(sid, GetTurnState(after, reply_send))
        return await reply_receive.receive()

    with trio.fail_after(CEILING_S):
        async with (
            agents_over(upstream) as agents,
            open_session_hub(store, agents, send, derived(HubSettings)) as hub,
        ):
            sid = (await store.create_session()).session_id
            await hub.deliver(sid, SubmitMessage("hi"))
            while not isinstance(event := await receive.receive(), ChunkStreamed):
                pass
            assert event.content == "a"
            await trio.sleep(1)  # the actor now waits to send chunk "b"
            during = await state(hub, sid, event.seq)
            assert during.last_seq == event.seq + 1
            assert [(e.seq, e.content) for e in during.events if isinstance(e, ChunkStreamed)] == [
                (event.seq + 1, "b")
            ]
            assert during.typing is True
            assert (await receive.receive()).seq == event.seq + 1  # chunk "b"
            await trio.sleep(1)  # the end is decided; its first event waits to be sent
            ending = await state(hub, sid, event.seq + 1)
            assert ending.typing is False
            assert ending.turn is None
            assert ending.last_seq == event.seq + 4
            assert names(list(ending.events)) == ["message", "stream_complete", "typing"]
            async for late in receive:
                if isinstance(late, TurnEnded):
                    break


async def test_stop_right_after_sending_cancels_the_reply_before_it_starts(
    autojump_clock: object,
) -> None:
    with trio.fail_after(CEILING_S):
        async with open_harness() as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "never mind")
            assert await h.cancel(sid) is True
            (ended,) = await h.recorder.turns_ended(1)
    assert ended.status is MessageStatus.CANCELLED
    assert h.upstream.requests == []
    assert names(h.recorder.of(sid)) == [
        "message", "_turn_started", "typing", "message", "stream_complete", "typing",
        "_turn_ended",
    ]  # fmt: skip
    agent = (await h.store.session_messages(sid))[-1]
    assert (agent.status, agent.content) == (MessageStatus.CANCELLED, "")


@pytest.mark.parametrize("cluster_mode", [True, False], ids=["cluster", "one-process"])
async def test_a_new_owner_ends_the_turn_its_predecessor_left_streaming(
    autojump_clock: object, cluster_mode: bool
) -> None:
    upstream = Upstream(script=lambda body: [chunk(f"re: {body['prompt']}"), COMPLETE])
    store = MemoryStore()
    settings = dataclasses.replace(derived(HubSettings), cluster_mode=cluster_mode)
    code = ErrorCode.OWNER_LOST if cluster_mode else ErrorCode.INTERNAL_ERROR
    with trio.fail_after(CEILING_S):
        sid = (await store.create_session()).session_id
        # A complete turn, then the owner dies while streaming the next one.
        old = await store.acquire(sid)
        assert old is not None
        done_q = user_message(sid, 1, "earlier")
        await store.add_user_message(done_q, fence=old.fence)
        await store.begin_turn(sid, "a-earlier", "rag", STAMP, reply_to=done_q.id, fence=old.fence)
        done_a = dataclasses.replace(
            done_q, id="a-earlier", seq=5, content="earlier answer", sender="agent"
        )
        await store.finish_turn(done_a, fence=old.fence)
        question = user_message(sid, 6, "cut off")
        await store.add_user_message(question, fence=old.fence)
        await store.reserve_seq(sid, 20, fence=old.fence)
        await store.begin_turn(sid, "lost", "rag", STAMP, reply_to=question.id, fence=old.fence)
        await store.checkpoint_turn(sid, "lost", "as far as", fence=old.fence)

        async with open_harness(upstream, settings, store) as h:
            await h.submit(sid, "again")  # a new actor takes the session over
            await h.recorder.turns_ended(2, sid)
            ended_at = trio.current_time()
    assert ended_at == 0  # nothing waited for a deadline
    text = interrupted_text(code)
    failed = ChatMessage(
        id="lost",
        session_id=sid,
        seq=21,
        content="as far as",
        sender="agent",
        timestamp=STAMP,
        agent_type="rag",
        status=MessageStatus.FAILED,
        error=(code.value, text),
    )
    events = h.recorder.of(sid)
    assert events[:5] == [
        MessageEmitted(sid, 21, failed),
        TurnFailed(sid, 22, "lost", code, text),
        StreamCompleted(sid, 23, "lost", MessageStatus.FAILED),
        TypingChanged(sid, 24, False),
        TurnEnded(sid, 24, "lost", MessageStatus.FAILED, code),
    ]
    assert_wire_order(events)
    # Then the new message is answered, with only the complete turn as history.
    assert [event_name(e) for e in events[5:]] == [
        "message",
        "_turn_started",
        "typing",
        "stream_chunk",
        "message",
        "stream_complete",
        "typing",
        "_turn_ended",
    ]
    user, reply = (e.message for e in events[5:] if isinstance(e, MessageEmitted))
    assert (user.seq, user.content) == (25, "again")
    assert (reply.status, reply.content) == (MessageStatus.COMPLETE, "re: again")
    (request,) = upstream.requests
    assert request["history"] == [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "earlier answer"},
    ]
    assert failed in store.rows(sid)


STAMP = "2026-03-01T12:00:01.000000+00:00"


def user_message(session_id: str, seq: int, content: str) -> ChatMessage:
    return ChatMessage(f"u{seq}", session_id, seq, content, "user", STAMP, "rag")
