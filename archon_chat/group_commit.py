"""Group commit: the write path both stores share.

A write joins a pending list; whichever writer finds no batch running becomes the leader
and runs every pending write (at most ``max_batch``) as one batch in a worker thread, then
wakes the others. Under load a thousand sessions' writes cost a handful of transactions
instead of a thousand thread round trips. A write, once called, lands: its caller waits
shielded until its batch is done, and only then receives a pending cancellation, so a
caller never leaves a half-done or unknown write behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import trio

__all__ = ["GroupCommit", "PendingWrite"]


class PendingWrite(Protocol):
    """A write waiting in a batch; the batch runner sets ``result`` or ``error``."""

    result: Any
    error: Exception | None
    done: bool


W = TypeVar("W", bound=PendingWrite)


class GroupCommit(Generic[W]):
    """Runs writes in batches with ``run_batch(batch)`` in worker threads bounded by
    ``limiter``; an exception escaping ``run_batch`` becomes ``mapped(exc)`` for every
    write of its batch that has no error of its own."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[W]], None],
        *,
        limiter: trio.CapacityLimiter,
        mapped: Callable[[Exception], Exception],
        max_batch: int,
    ) -> None:
        self._run_batch = run_batch
        self._limiter = limiter
        self._mapped = mapped
        self._max_batch = max_batch
        self._pending: list[W] = []
        self._batch_done: trio.Event | None = None

    async def write(self, write: W) -> Any:
        """Run ``write`` in a batch; its result, or raise its error. A checkpoint; a
        cancellation arriving meanwhile is delivered once the write has landed."""
        self._pending.append(write)
        with trio.CancelScope(shield=True):
            while not write.done:
                await self._next_batch()
        # The shielded wait swallowed any cancellation; deliver it now that the write is in.
        await trio.lowlevel.checkpoint_if_cancelled()
        if write.error is not None:
            raise write.error
        return write.result

    async def drain(self) -> None:
        """Finish every write already called (shielded: used when closing)."""
        with trio.CancelScope(shield=True):
            while self._pending or self._batch_done is not None:
                await self._next_batch()

    async def _next_batch(self) -> None:
        """Wait for the running batch, or run the pending writes as the next one."""
        if self._batch_done is not None:
            await self._batch_done.wait()
            return
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        done = self._batch_done = trio.Event()
        try:
            await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
        except Exception as exc:
            for w in batch:
                w.error = w.error or self._mapped(exc)
        finally:
            for w in batch:
                w.done = True
            self._batch_done = None
            done.set()
