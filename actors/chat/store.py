"""The store a session actor needs, as a :class:`typing.Protocol`.

The implementations live in the gateway (``archon_chat.store`` for SQLite,
``archon_chat.store_postgres`` for PostgreSQL); :class:`actors.chat.memory_store.MemoryStore`
keeps everything in memory (tests and benchmarks). One conformance suite runs on all
three. All methods are checkpoints. Writes must complete even if the caller is cancelled
mid-way only when the caller shields them (the actor shields its end-of-turn
save with its own deadline).

Sequence numbers. The actor allocates ``seq`` in memory and keeps the store ahead of it
with a *high-water mark*: before emitting seq ``n`` it makes sure ``reserve_seq`` has
recorded some ``hwm >= n`` (reserving blocks, e.g. 256 at a time, so this costs one
write per block). The next owner (``acquire``) starts from ``last_seq = hwm``: after a
clean passivation (``save_last_seq`` releases the block) they are equal; after a crash
numbers may skip, never repeat. ``SessionRecord.last_seq`` is the last seq written by a message
or a turn's end, or the reserved mark after a crash recovery.

Ownership and fencing. One actor at a time writes a session, but over a session's life
its actor may run in different processes (ownership moves when a process dies or a
session is passivated and woken elsewhere). An actor starts with ``acquire``, which hands
out the session's next *fencing token* (a number that only grows) and returns the session
as stored. Every write takes that token as ``fence=``, and the store refuses, in the same
statement that would write, a write whose token is older than the session's newest: it
raises :class:`FencedError` and changes nothing. A refused actor stops: someone else owns
the session now. A token of 0 is what a session has before anyone acquired it.

Turn lifecycle in the store:

1. ``add_user_message(msg)`` when a message is accepted (status COMPLETE).
2. ``begin_turn(session_id, agent_message_id, agent_type, timestamp, reply_to=user_id)``:
   a placeholder agent row with status STREAMING and empty content, answering the user
   message ``reply_to`` (history pairs them).
3. ``checkpoint_turn(...)`` from time to time with the partial text (optional; each one
   may send only the text since the previous one, with its ``offset``).
4. ``finish_turn(msg)``: the final agent message (COMPLETE, CANCELLED or FAILED, its
   seq is the seq of its ``message`` event). Sets ``last_seq``.

Crash recovery. A row still STREAMING whose writer is gone is turned into FAILED with its
checkpointed content, and the session's ``last_seq`` moves to its hwm + 1, which becomes
that message's seq. Its error is ``(code, interrupted_text(code))``: ``internal_error``
when the process itself restarted, ``owner_lost`` when another process took the session
over from a live cluster (the caller of ``acquire`` knows which, and says so with
``interrupted=``). Whoever notices first does it: ``acquire`` (the previous owner is fenced
out from then on, so its reply in progress is orphaned; the replies it failed come back in
:attr:`Ownership.recovered`, so the new owner can tell the room), and a store that knows
it is the only process writing (the SQLite file outside cluster mode) also does it for
every session when it opens.

Errors::

    StoreError                  the database failed, or refused the write
    ├── SessionNotFoundError    a write names a session that is not stored (also a
    │                           LookupError)
    ├── ConflictError           a write contradicts what is stored (same message id, seq
    │                           or client_message_id twice; a turn finished twice; a
    │                           checkpoint for a turn not in progress)
    └── FencedError             the write carries an older fencing token than the
                                session's newest: another actor owns the session
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from actors.chat.messages import AgentType, ChatMessage, ErrorCode, SessionRecord

__all__ = [
    "ChatStore",
    "ConflictError",
    "FencedError",
    "Ownership",
    "SessionNotFoundError",
    "StoreError",
    "interrupted_text",
]

_INTERRUPTED_TEXTS: dict[ErrorCode, str] = {
    ErrorCode.INTERNAL_ERROR: "Interrupted by a server restart",
    ErrorCode.OWNER_LOST: (
        "The server answering stopped before the reply was complete; please send your message again"
    ),
}


def interrupted_text(code: ErrorCode) -> str:
    """The error text stored with a reply that recovery failed with ``code``
    (``INTERNAL_ERROR`` or ``OWNER_LOST``). Raises ``ValueError`` for any other code.
    Not a checkpoint."""
    try:
        return _INTERRUPTED_TEXTS[code]
    except KeyError:
        raise ValueError(f"{code.value} is not a code for an interrupted reply") from None


class StoreError(Exception):
    """The store failed: the database, the disk, the connection, or a refused write."""


class SessionNotFoundError(StoreError, LookupError):
    """A write names a session that is not stored (never created, or swept)."""


class ConflictError(StoreError):
    """A write contradicts what is stored."""


class FencedError(StoreError):
    """The write's fencing token is older than the session's newest: another actor took
    the session over, and this one must stop writing it."""


@dataclass(frozen=True, slots=True)
class Ownership:
    """What :meth:`ChatStore.acquire` hands the session's new owner."""

    #: the token every write of this owner carries (``fence=``)
    fence: int
    #: the session as stored once ownership was taken (after any recovery)
    session: SessionRecord
    #: the replies this acquire found STREAMING and stored FAILED, by seq, as stored
    #: (checkpointed content, their new seq, the error given by ``interrupted=``)
    recovered: tuple[ChatMessage, ...] = ()


class ChatStore(Protocol):
    async def acquire(
        self, session_id: str, *, interrupted: ErrorCode = ErrorCode.INTERNAL_ERROR
    ) -> Ownership | None:
        """Take ownership of the session: its next fencing token, and the session once a
        reply left STREAMING by a previous owner is stored FAILED with the error
        ``(interrupted, interrupted_text(interrupted))``, in the same transaction (crash
        recovery; those replies come back in :attr:`Ownership.recovered`). ``None`` if
        the session is unknown or expired. Raises ``ValueError`` for an ``interrupted``
        code that :func:`interrupted_text` does not know."""
        ...

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

    async def add_user_message(self, message: ChatMessage, *, fence: int) -> None:
        """Store an accepted user message; bumps ``last_seq``, ``updated_at`` and
        ``message_count``."""
        ...

    async def reserve_seq(self, session_id: str, hwm: int, *, fence: int) -> None:
        """Record that seqs up to ``hwm`` may have been emitted."""
        ...

    async def begin_turn(
        self,
        session_id: str,
        agent_message_id: str,
        agent_type: AgentType,
        timestamp: str,
        *,
        reply_to: str,
        fence: int,
    ) -> None:
        """Store the STREAMING placeholder of an agent reply to user message ``reply_to``."""
        ...

    async def checkpoint_turn(
        self,
        session_id: str,
        agent_message_id: str,
        content: str,
        *,
        fence: int,
        offset: int = 0,
    ) -> None:
        """Save the partial text of the reply in progress (recovered after a crash):
        ``content`` is that text from character ``offset`` on, following the first
        ``offset`` characters saved before (0: the whole text), so a long reply's
        checkpoints cost its new text only. Raises :class:`ConflictError` if no such reply
        is in progress or less than ``offset`` characters of it were saved."""
        ...

    async def finish_turn(self, message: ChatMessage, *, fence: int) -> None:
        """Replace the placeholder with the final agent message; bumps ``last_seq``,
        ``updated_at`` and ``message_count``."""
        ...

    async def save_last_seq(self, session_id: str, last_seq: int, *, fence: int) -> None:
        """Persist the actor's last emitted seq (at passivation: events such as typing
        have seqs without a message row) and release the seqs reserved beyond it: the
        high-water mark becomes ``last_seq``, so the next owner continues without a gap.
        ``last_seq`` never goes down."""
        ...
