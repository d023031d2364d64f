"""What the gateway needs from the session hub and, in cluster mode, from the cluster.

The gateway never imports the cluster (``archon_chat.cluster`` builds on the gateway): it
talks to it through :class:`ClusterPort`, and to the actors through :class:`HubPort`, which
the in-process :class:`~actors.chat.hub.SessionHub` and the cluster's routing hub both are.
"""

from __future__ import annotations

from typing import Protocol

from actors.chat.messages import CancelReason, Command, SessionEvent

__all__ = ["ClusterPort", "HubPort"]


class HubPort(Protocol):
    def live_sessions(self) -> int: ...

    def is_live(self, session_id: str) -> bool:
        """The session's actor runs in this process (and, in a cluster, this node owns it)."""
        ...

    async def deliver(self, session_id: str, command: Command) -> None:
        """Queue ``command`` for the session's actor, wherever it runs; its answer comes on
        the command's ``reply`` channel. Raises :class:`~actors.chat.hub.HubError`."""
        ...

    def cancel_nowait(self, session_id: str, reason: CancelReason) -> bool: ...


class ClusterPort(Protocol):
    """The node's side of cluster-wide facts: who owns a session, who watches it."""

    def may_emit(self, session_id: str) -> bool:
        """Whether events of this process's actor of the session may still reach anyone:
        false once this node lost the session's lease (another owner emits now)."""
        ...

    def publish(self, event: SessionEvent) -> None:
        """Send an event of a session this node owns to the other nodes watching it.
        Never blocks; past the publish queue's bound events are dropped (counted)."""
        ...

    async def watch(self, session_id: str) -> bool:
        """Record that this node has members in the session's room (before a join reads
        the session's state); whether a live actor owns the session somewhere."""
        ...

    async def owned_anywhere(self, session_id: str) -> bool:
        """Whether a live actor owns the session on some node."""
        ...

    async def left(self, session_id: str, *, members_remain: bool) -> bool:
        """This node has no connected member in the room any more (``members_remain``:
        some are in their disconnect grace). Whether no node has a connected member."""
        ...

    def vacated(self, session_id: str) -> None:
        """This node's last member of the room is gone for good; the cluster cancels the
        turn if no node has a member left. Not a checkpoint."""
        ...
