"""The store a session actor needs, as a :class:`typing.Protocol`.

The SQLite implementation lives in the gateway (``archon_chat.store``); tests of the
actors use :class:`actors.chat.memory_store.MemoryStore`, which implements the same
protocol. All methods are checkpoints. Writes must complete even if the caller is
cancelled mid-way only when the caller shields them (the actor shields its end-of-turn
save with its own deadline).

Sequence numbers. The actor allocates ``seq`` in memory and keeps the store ahead of it
with a *high-water mark*: before emitting seq ``n`` it makes sure ``reserve_seq`` has
recorded some ``hwm >= n`` (reserving blocks, e.g. 256 at a time, so this costs one
write per block). After a crash, the next actor starts from ``last_seq = hwm``: numbers
may skip, never repeat. ``SessionRecord.last_seq`` is the last seq written by a message
or a turn's end, or the reserved mark after a crash recovery.

Turn lifecycle in the store:

1. ``add_user_message(msg)`` when a message is accepted (status COMPLETE).
2. ``begin_turn(session_id, agent_message_id, agent_type, timestamp)``: a placeholder
   agent row with status STREAMING and empty content.
3. ``checkpoint_turn(...)`` from time to time with the partial text (optional).
4. ``finish_turn(msg)``: the final agent message (COMPLETE, CANCELLED or FAILED, its
   seq is the seq of its ``message`` event). Sets ``last_seq``.

A row still STREAMING when the store opens is turned into FAILED
(``agent_protocol_error``-free code ``internal_error``, text "Interrupted by a server
restart") with its checkpointed content, and the session's ``last_seq`` moves to its hwm
+ 1, which becomes that message's seq.
"""

from __future__ import annotations

from typing import Protocol

from actors.chat.messages import AgentType, ChatMessage, SessionRecord


class ChatStore(Protocol):
    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or ``None`` if unknown or expired."""
        ...

    async def history(self, session_id: str, max_turns: int) -> list[ChatMessage]:
        """The last ``max_turns`` complete turns (user message followed by a COMPLETE agent
        message), oldest first, flattened: [user, agent, user, agent, ...]."""
        ...

    async def messages_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[ChatMessage]:
        """Finished messages (not STREAMING) with ``seq > after_seq``, by seq, at most
        ``limit``."""
        ...

    async def find_by_client_message_id(
        self, session_id: str, client_message_id: str
    ) -> ChatMessage | None:
        """The user message sent earlier with this ``client_message_id``, if any."""
        ...

    async def add_user_message(self, message: ChatMessage) -> None:
        """Store an accepted user message; bumps ``last_seq``, ``updated_at`` and
        ``message_count``."""
        ...

    async def reserve_seq(self, session_id: str, hwm: int) -> None:
        """Record that seqs up to ``hwm`` may have been emitted."""
        ...

    async def begin_turn(
        self, session_id: str, agent_message_id: str, agent_type: AgentType, timestamp: str
    ) -> None:
        """Store the STREAMING placeholder of an agent reply."""
        ...

    async def checkpoint_turn(self, session_id: str, agent_message_id: str, content: str) -> None:
        """Save the partial text of the reply in progress (recovered after a crash)."""
        ...

    async def finish_turn(self, message: ChatMessage) -> None:
        """Replace the placeholder with the final agent message; bumps ``last_seq``,
        ``updated_at`` and ``message_count``."""
        ...

    async def save_last_seq(self, session_id: str, last_seq: int) -> None:
        """Persist the actor's last emitted seq (at passivation: events such as typing
        have seqs without a message row)."""
        ...
