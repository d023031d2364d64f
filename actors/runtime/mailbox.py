"""A bounded, typed mailbox over a trio memory channel.

A :class:`Mailbox` is the one way into an actor: many senders, one receiver (the actor).
Its capacity is fixed at creation; past it :meth:`Mailbox.send_nowait` raises
:class:`MailboxFull`, so the caller (the gateway answering a client) refuses the request
instead of waiting.

Closing. :meth:`Mailbox.close` stops new sends at once (they raise
:class:`MailboxClosed`); items already queued stay receivable, and once they are drained
:meth:`Mailbox.receive` raises :class:`MailboxClosed`. :meth:`Mailbox.drain_nowait`
empties the queue without waiting, so an actor that ends can answer what was left.

Exceptions::

    MailboxError
    ├── MailboxFull     send_nowait on a full mailbox
    └── MailboxClosed   send after close; receive after close once drained
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class MailboxError(Exception):
    """Base of the mailbox errors."""


class MailboxFull(MailboxError):
    """The mailbox holds as many items as its capacity: the item was not queued."""


class MailboxClosed(MailboxError):
    """The mailbox was closed (sending), or closed and drained (receiving)."""


class Mailbox(Generic[T]):
    """A bounded FIFO of ``T`` with one receiver.

    ``capacity`` must be at least 1: a mailbox of 0 would make every ``send_nowait``
    fail unless the receiver is already waiting, which no caller wants.
    """

    __slots__ = ("_capacity", "_receive", "_send")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a mailbox holds at least one item")
        self._capacity = capacity
        self._send, self._receive = trio.open_memory_channel[T](capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        """Items queued and not yet received."""
        return self._send.statistics().current_buffer_used

    @property
    def closed(self) -> bool:
        return self._send.statistics().open_send_channels == 0

    def send_nowait(self, item: T) -> None:
        """Queue ``item`` without waiting.

        Not a checkpoint. Raises :class:`MailboxFull` if the mailbox is at capacity,
        :class:`MailboxClosed` if it is closed.
        """
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            raise MailboxFull(f"mailbox is full ({self._capacity} items)") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise MailboxClosed("mailbox is closed") from None

    async def receive(self) -> T:
        """The oldest item, waiting for one if the mailbox is empty.

        A checkpoint. If cancelled, no item was taken. Raises :class:`MailboxClosed` once
        the mailbox is closed and drained.
        """
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MailboxClosed("mailbox is closed") from None

    def receive_nowait(self) -> T:
        """The oldest item without waiting.

        Not a checkpoint. Raises :class:`trio.WouldBlock` if the mailbox is empty and open,
        :class:`MailboxClosed` if it is closed and drained.
        """
        try:
            return self._receive.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MailboxClosed("mailbox is closed") from None

    def drain_nowait(self) -> list[T]:
        """Take every queued item, oldest first, without waiting. Not a checkpoint."""
        out: list[T] = []
        while True:
            try:
                out.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return out

    def close(self) -> None:
        """Refuse further sends; queued items stay receivable. Idempotent, not a checkpoint."""
        self._send.close()
