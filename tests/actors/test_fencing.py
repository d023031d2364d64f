"""An actor whose session was taken over (another owner called ``acquire``) has its next
write refused and stops at once: it writes and emits nothing more, its upstream reply is
closed, and the session goes on under the new owner.

Pure trio on ``autojump_clock``; every test runs under ``trio.fail_after(1000)``
(virtual seconds).
"""

from __future__ import annotations

import pytest
import trio

from actors.chat.hub import SessionHub
from actors.chat.messages import MessageStatus, SubmitOutcome, TurnEnded
from actors.chat.settings import HubSettings

from ..derived import derived
from .fakes import COMPLETE, Sleep, Upstream, chunk, open_harness

CEILING_S = 1000


async def wait_until_gone(hub: SessionHub, session_id: str) -> None:
    while hub.is_live(session_id):
        await trio.sleep(0.1)


async def test_a_refused_checkpoint_stops_the_stale_actor(autojump_clock: object) -> None:
    replies = [
        [chunk("a"), Sleep(1), chunk("b"), Sleep(2), chunk("c"), Sleep(5), COMPLETE],
        [chunk("fresh"), COMPLETE],
    ]
    upstream = Upstream(script=lambda body: replies.pop(0))
    settings = derived(HubSettings, checkpoint_interval_s=2)
    with trio.fail_after(CEILING_S):
        async with open_harness(upstream, settings) as h:
            sid = (await h.store.create_session()).session_id
            assert (await h.submit(sid, "q")).outcome is SubmitOutcome.ACCEPTED
            await trio.sleep(1.5)
            taken = await h.store.acquire(sid)  # another process took the session over
            assert taken is not None
            rows_then = h.store.rows(sid)
            await wait_until_gone(h.hub, sid)  # refused at its checkpoint after "c"
            assert trio.current_time() == pytest.approx(3.1, abs=0.2)
            assert h.store.rows(sid) == rows_then
            user, reply = rows_then
            assert (user.content, reply.status, reply.content) == (
                "q",
                MessageStatus.FAILED,
                "",
            )
            assert not [e for e in h.recorder.of(sid) if isinstance(e, TurnEnded)]
            assert len(h.upstream.closed_early) == 1

            # The session works on: the next command starts an actor that owns it.
            assert (await h.submit(sid, "again")).outcome is SubmitOutcome.ACCEPTED
            (ended,) = await h.recorder.turns_ended(1, sid)
            assert ended.status is MessageStatus.COMPLETE
            contents = [m.content for m in await h.store.session_messages(sid)]
            assert contents == ["q", "", "again", "fresh"]


async def test_a_refused_message_stops_an_idle_stale_actor(autojump_clock: object) -> None:
    with trio.fail_after(CEILING_S):
        async with open_harness() as h:
            sid = (await h.store.create_session()).session_id
            await h.submit(sid, "first")
            await h.recorder.turns_ended(1, sid)
            assert h.hub.is_live(sid)
            assert await h.store.acquire(sid) is not None
            with pytest.raises(trio.EndOfChannel):  # no answer: the actor stopped
                await h.submit(sid, "to the stale owner")
            await wait_until_gone(h.hub, sid)
            assert [m.content for m in await h.store.session_messages(sid)] == ["first", "hi"]
            assert (await h.submit(sid, "to the new one")).outcome is SubmitOutcome.ACCEPTED
