"""Mailbox: bounded sends, the named full error, closing semantics.

Pure trio on ``autojump_clock``; every test runs under ``trio.fail_after(10)`` (virtual).
"""

from __future__ import annotations

import pytest
import trio

from actors.runtime import Mailbox, MailboxClosed, MailboxError, MailboxFull

CEILING_S = 10


async def test_send_nowait_past_capacity_raises_mailbox_full(autojump_clock: object) -> None:
    with trio.fail_after(CEILING_S):
        box: Mailbox[int] = Mailbox(2)
        box.send_nowait(1)
        box.send_nowait(2)
        with pytest.raises(MailboxFull):
            box.send_nowait(3)
        assert issubclass(MailboxFull, MailboxError)
        assert len(box) == 2
        assert box.capacity == 2
        assert await box.receive() == 1
        box.send_nowait(3)
        assert box.drain_nowait() == [2, 3]


async def test_close_refuses_sends_but_keeps_queued_items(autojump_clock: object) -> None:
    with trio.fail_after(CEILING_S):
        box: Mailbox[int] = Mailbox(4)
        box.send_nowait(1)
        box.send_nowait(2)
        box.close()
        box.close()  # idempotent
        assert box.closed
        with pytest.raises(MailboxClosed):
            box.send_nowait(3)
        assert await box.receive() == 1
        assert box.receive_nowait() == 2
        with pytest.raises(MailboxClosed):
            await box.receive()
        with pytest.raises(MailboxClosed):
            box.receive_nowait()


async def test_close_wakes_a_blocked_receiver(autojump_clock: object) -> None:
    with trio.fail_after(CEILING_S):
        empty: Mailbox[int] = Mailbox(1)
        woke_at: list[float] = []

        async def blocked_receive() -> None:
            with pytest.raises(MailboxClosed):
                await empty.receive()
            woke_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_receive)
            await trio.sleep(2)
            empty.close()
        assert woke_at == [2]


def test_receive_nowait_on_empty_open_mailbox_would_block() -> None:
    box: Mailbox[int] = Mailbox(1)
    with pytest.raises(trio.WouldBlock):
        box.receive_nowait()
    with pytest.raises(ValueError, match="at least one"):
        Mailbox[int](0)
