"""Hypercorn's connection writes, with a deadline.

Hypercorn (0.18) writes every byte of a connection in a *shielded* ``send_all`` with no
timeout. A peer that stops reading (a laptop lid closed, a hostile client keeping its
receive window at zero) therefore blocks that connection's writer forever, through any
cancellation: the connection and its tasks are never freed, and a graceful shutdown waits
for it without end. :func:`install_write_deadline` makes hypercorn's trio worker give each
write ``seconds``: a write still stalled then aborts the connection (the peer is gone for
all we can tell), exactly as a broken connection would. Writes stay shielded from outside
cancellation up to that deadline, so a cancelled request never leaves half a frame.

It affects every connection hypercorn's trio worker accepts in this process from then on;
calling it again only changes the deadline.
"""

from __future__ import annotations

import logging

import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.tcp_server import TCPServer

__all__ = ["install_write_deadline"]

log = logging.getLogger(__name__)


class _DeadlineTCPServer(TCPServer):
    write_deadline_s: float = 10.0

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.write_deadline_s
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
                return
            if scope.cancelled_caught:
                log.info("write stalled for %.1f s: connection aborted", self.write_deadline_s)
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self.stream)
                    await self.protocol.handle(Closed())


def install_write_deadline(seconds: float) -> None:
    """Give every write of hypercorn's trio worker ``seconds`` before its connection is
    aborted (module docstring). Not a checkpoint."""
    if not seconds > 0:
        raise ValueError("the write deadline must be positive")
    _DeadlineTCPServer.write_deadline_s = seconds
    setattr(hypercorn_run, "TCPServer", _DeadlineTCPServer)  # noqa: B010 (no re-export)
