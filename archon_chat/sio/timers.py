"""One task wakes every session deadline (heartbeats, upgrade and grace timeouts).

A binary heap of ``(deadline, seq, owner)``. Each owner remembers the deadline of its one
live entry in ``timer_at``; an entry whose deadline is not its owner's ``timer_at`` is stale
and skipped when it surfaces, so moving a deadline later costs nothing and moving it
earlier costs one push. The loop sleeps in a cancel scope whose deadline is the heap's
head, lowered in place when an earlier entry arrives.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import trio

__all__ = ["TimerOwner", "TimerWheel"]


class TimerOwner(Protocol):
    timer_at: float | None

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> None: ...


class TimerWheel:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerOwner]] = []
        self._seq = itertools.count()
        self._sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, owner: TimerOwner) -> None:
        """(Re)schedule ``owner`` at its ``next_deadline()`` if that is earlier than before."""
        deadline = owner.next_deadline()
        if deadline is None:
            return
        if owner.timer_at is not None and owner.timer_at <= deadline:
            return
        owner.timer_at = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), owner))
        if self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline

    async def run(self) -> None:
        """Fire deadlines until cancelled."""
        heap = self._heap
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                deadline, _, owner = heapq.heappop(heap)
                if owner.timer_at != deadline:
                    continue
                owner.timer_at = None
                owner.on_timer(now)
                self.schedule(owner)
            await trio.lowlevel.checkpoint()
