"""An in-memory :class:`~actors.chat.store.ChatStore`: a test double, and the store of
the benchmarks that measure the actors without a database.

It follows the protocol's docstring (sequence high-water mark, turn lifecycle, fencing,
crash recovery) and adds what the gateway's stores offer around it: sessions with a TTL
counted from the last activity, ``session_messages``, ``delete_expired``, ``stats``.
Every method is a checkpoint, like a real store's. :meth:`MemoryStore.recover` does what
opening the SQLite store after a crash does: replies still STREAMING become FAILED. The
store conformance suite (tests/store) runs every case on it too. Nothing survives the
process: the gateway never uses it.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import trio

from actors.chat.messages import AgentType, ChatMessage, ErrorCode, MessageStatus, SessionRecord
from actors.chat.store import (
    ConflictError,
    FencedError,
    Ownership,
    SessionNotFoundError,
    interrupted_text,
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Session:
    session_id: str
    agent_type: AgentType
    project_id: str | None
    created_at: datetime
    updated_at: datetime
    last_seq: int = 0
    hwm: int = 0
    message_count: int = 0
    #: the user it belongs to (``None``: made without user mode)
    owner: str | None = None
    #: the newest fencing token handed out
    fence: int = 0
    #: every row in insertion order (placeholders included)
    rows: list[ChatMessage] = field(default_factory=list)
    #: agent message id -> index in rows
    index: dict[str, int] = field(default_factory=dict)
    #: seqs of the finished rows
    seqs: set[int] = field(default_factory=set)
    #: user message id -> agent message id, fixed when the turn began
    reply_of: dict[str, str] = field(default_factory=dict)

    def record(self) -> SessionRecord:
        return SessionRecord(
            session_id=self.session_id,
            agent_type=self.agent_type,
            project_id=self.project_id,
            created_at=self.created_at.isoformat(),
            updated_at=self.updated_at.isoformat(),
            last_seq=self.last_seq,
            message_count=self.message_count,
            owner=self.owner,
        )


class MemoryStore:
    """Sessions and messages in dictionaries. ``ttl_s`` ``None``: sessions never expire.
    ``now`` is the wall clock (injectable for expiry tests)."""

    def __init__(
        self, *, ttl_s: float | None = None, now: Callable[[], datetime] | None = None
    ) -> None:
        self._ttl = None if ttl_s is None else timedelta(seconds=ttl_s)
        self._now = now or utc_now
        self._sessions: dict[str, _Session] = {}
        #: message id -> its session (ids are unique across sessions, as in a database)
        self._session_of: dict[str, str] = {}
        #: how many times each method was called (tests count writes with it)
        self.calls: collections.Counter[str] = collections.Counter()

    # -- helpers beyond the protocol -----------------------------------------------------

    async def create_session(
        self,
        agent_type: AgentType = "rag",
        project_id: str | None = None,
        owner: str | None = None,
        *,
        session_id: str | None = None,
    ) -> SessionRecord:
        """A new empty session of ``owner`` (id: 128 random bits unless given). A
        checkpoint."""
        await trio.lowlevel.checkpoint()
        sid = session_id or secrets.token_hex(16)
        if sid in self._sessions:
            raise ValueError(f"session {sid!r} exists")
        now = self._now()
        session = _Session(sid, agent_type, project_id, now, now, owner=owner)
        self._sessions[sid] = session
        return session.record()

    async def list_sessions(
        self, owner: str, limit: int, before: tuple[str, str] | None = None
    ) -> list[SessionRecord]:
        """The unexpired sessions of ``owner``, most recently active first, at most
        ``limit``, after the page cursor ``before`` = ``(updated_at, session_id)``."""
        await trio.lowlevel.checkpoint()
        mine = sorted(
            (s for s in self._sessions.values() if s.owner == owner and not self._expired(s)),
            key=lambda s: (s.updated_at, s.session_id),
            reverse=True,
        )
        if before is not None:
            cursor = (datetime.fromisoformat(before[0]), before[1])
            mine = [s for s in mine if (s.updated_at, s.session_id) < cursor]
        records = [s.record() for s in mine]
        return records[: max(limit, 0)]

    async def count_sessions(self, owner: str) -> int:
        """How many unexpired sessions ``owner`` has."""
        await trio.lowlevel.checkpoint()
        return sum(1 for s in self._sessions.values() if s.owner == owner and not self._expired(s))

    async def session_messages(self, session_id: str) -> list[ChatMessage]:
        """Every finished message of the session by seq (no STREAMING row)."""
        await trio.lowlevel.checkpoint()
        session = self._live(session_id)
        if session is None:
            return []
        return sorted(
            (m for m in session.rows if m.status is not MessageStatus.STREAMING),
            key=lambda m: m.seq,
        )

    async def delete_expired(self) -> int:
        """Drop sessions idle past the TTL; returns how many."""
        await trio.lowlevel.checkpoint()
        expired = [
            sid for sid, s in self._sessions.items() if self._expired(s) and not _streaming(s)
        ]
        for sid in expired:
            for row in self._sessions.pop(sid).rows:
                del self._session_of[row.id]
        return len(expired)

    async def delete_session(self, session_id: str) -> None:
        await trio.lowlevel.checkpoint()
        session = self._sessions.pop(session_id, None)
        for row in session.rows if session is not None else ():
            del self._session_of[row.id]

    async def stats(self) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        return {
            "sessions": len(self._sessions),
            "messages": sum(len(s.rows) for s in self._sessions.values()),
        }

    def recover(self) -> int:
        """What opening the SQLite store after a crash does: every STREAMING reply becomes
        FAILED (``internal_error``, with :func:`~actors.chat.store.interrupted_text`) with
        its checkpointed text and the seq after the session's reserved mark, and every
        ``last_seq`` moves up to the mark. Returns how many replies. Not a checkpoint.
        """
        count = 0
        for session in self._sessions.values():
            count += len(_fail_streaming(session, ErrorCode.INTERNAL_ERROR))
            session.last_seq = max(session.last_seq, session.hwm)
        return count

    def reserved(self, session_id: str) -> int:
        """The session's seq high-water mark (tests)."""
        return self._sessions[session_id].hwm

    def rows(self, session_id: str) -> list[ChatMessage]:
        """Every row, STREAMING placeholders included, in insertion order (tests)."""
        return list(self._sessions[session_id].rows)

    # -- the ChatStore protocol ----------------------------------------------------------

    async def acquire(
        self, session_id: str, *, interrupted: ErrorCode = ErrorCode.INTERNAL_ERROR
    ) -> Ownership | None:
        self.calls["acquire"] += 1
        interrupted_text(interrupted)  # refuses a code before anything changes
        await trio.lowlevel.checkpoint()
        session = self._sessions.get(session_id)
        if session is None or (self._expired(session) and not _streaming(session)):
            return None
        session.fence += 1
        recovered = _fail_streaming(session, interrupted)
        session.last_seq = max(session.last_seq, session.hwm)
        return Ownership(session.fence, session.record(), recovered)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        self.calls["get_session"] += 1
        await trio.lowlevel.checkpoint()
        session = self._live(session_id)
        return None if session is None else session.record()

    async def history(self, session_id: str, max_turns: int) -> list[ChatMessage]:
        self.calls["history"] += 1
        await trio.lowlevel.checkpoint()
        session = self._live(session_id)
        if session is None or max_turns <= 0:
            return []
        by_id = {m.id: m for m in session.rows}
        turns: list[tuple[ChatMessage, ChatMessage]] = []
        for user_id, agent_id in session.reply_of.items():
            user, agent = by_id.get(user_id), by_id.get(agent_id)
            if user is None or agent is None or agent.status is not MessageStatus.COMPLETE:
                continue
            turns.append((user, agent))
        turns.sort(key=lambda pair: pair[0].seq)
        out: list[ChatMessage] = []
        for user, agent in turns[-max_turns:]:
            out += (user, agent)
        return out

    async def messages_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[ChatMessage]:
        self.calls["messages_after"] += 1
        await trio.lowlevel.checkpoint()
        session = self._live(session_id)
        if session is None:
            return []
        found = sorted(
            (
                m
                for m in session.rows
                if m.seq > after_seq and m.status is not MessageStatus.STREAMING
            ),
            key=lambda m: m.seq,
        )
        return found[:limit]

    async def find_by_client_message_id(
        self, session_id: str, client_message_id: str
    ) -> ChatMessage | None:
        self.calls["find_by_client_message_id"] += 1
        await trio.lowlevel.checkpoint()
        session = self._live(session_id)
        if session is None:
            return None
        for m in session.rows:
            if m.sender == "user" and m.client_message_id == client_message_id:
                return m
        return None

    async def add_user_message(self, message: ChatMessage, *, fence: int) -> None:
        self.calls["add_user_message"] += 1
        await trio.lowlevel.checkpoint()
        session = self._require(message.session_id, fence)
        cid = message.client_message_id
        if (
            message.id in self._session_of
            or _seq_taken(session, message.seq)
            or any(cid and m.client_message_id == cid for m in session.rows)
        ):
            raise ConflictError(f"message {message.id} conflicts with a stored message")
        self._session_of[message.id] = session.session_id
        session.seqs.add(message.seq)
        session.rows.append(message)
        session.last_seq = max(session.last_seq, message.seq)
        session.message_count += 1
        session.updated_at = self._now()

    async def reserve_seq(self, session_id: str, hwm: int, *, fence: int) -> None:
        self.calls["reserve_seq"] += 1
        await trio.lowlevel.checkpoint()
        session = self._require(session_id, fence)
        session.hwm = max(session.hwm, hwm)

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
        self.calls["begin_turn"] += 1
        await trio.lowlevel.checkpoint()
        session = self._require(session_id, fence)
        if agent_message_id in self._session_of:
            raise ConflictError(f"reply {agent_message_id} conflicts with a stored message")
        self._session_of[agent_message_id] = session_id
        placeholder = ChatMessage(
            id=agent_message_id,
            session_id=session_id,
            seq=0,
            content="",
            sender="agent",
            timestamp=timestamp,
            agent_type=agent_type,
            status=MessageStatus.STREAMING,
        )
        session.index[agent_message_id] = len(session.rows)
        session.rows.append(placeholder)
        session.reply_of[reply_to] = agent_message_id
        session.updated_at = self._now()

    async def checkpoint_turn(
        self,
        session_id: str,
        agent_message_id: str,
        content: str,
        *,
        fence: int,
        offset: int = 0,
    ) -> None:
        self.calls["checkpoint_turn"] += 1
        if offset < 0:
            raise ValueError("offset must not be negative")
        await trio.lowlevel.checkpoint()
        session = self._require(session_id, fence)
        i = session.index.get(agent_message_id)
        if (
            i is None
            or session.rows[i].status is not MessageStatus.STREAMING
            or len(session.rows[i].content) < offset
        ):
            raise ConflictError(f"no reply {agent_message_id} in progress in {session_id}")
        saved = session.rows[i].content[:offset]
        session.rows[i] = dataclasses.replace(session.rows[i], content=saved + content)

    async def finish_turn(self, message: ChatMessage, *, fence: int) -> None:
        self.calls["finish_turn"] += 1
        await trio.lowlevel.checkpoint()
        session = self._require(message.session_id, fence)
        i = session.index.get(message.id)
        if (
            self._session_of.get(message.id, session.session_id) != session.session_id
            or (i is not None and session.rows[i].status is not MessageStatus.STREAMING)
            or _seq_taken(session, message.seq)
        ):
            raise ConflictError(f"reply {message.id} is not in progress in this session")
        self._session_of[message.id] = session.session_id
        session.seqs.add(message.seq)
        if i is None:
            session.index[message.id] = len(session.rows)
            session.rows.append(message)
        else:
            session.rows[i] = message
        session.last_seq = max(session.last_seq, message.seq)
        session.hwm = max(session.hwm, message.seq)
        session.message_count += 1
        session.updated_at = self._now()

    async def save_last_seq(self, session_id: str, last_seq: int, *, fence: int) -> None:
        self.calls["save_last_seq"] += 1
        await trio.lowlevel.checkpoint()
        session = self._require(session_id, fence)
        session.last_seq = session.hwm = max(session.last_seq, last_seq)

    # -- internals -----------------------------------------------------------------------

    def _expired(self, session: _Session) -> bool:
        return self._ttl is not None and self._now() - session.updated_at > self._ttl

    def _live(self, session_id: str) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is None or (self._expired(session) and not _streaming(session)):
            return None
        return session

    def _require(self, session_id: str, fence: int) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFoundError(session_id)
        if session.fence > fence:
            raise FencedError(
                f"session {session_id} has a newer owner (fence {session.fence} > {fence})"
            )
        return session


def _seq_taken(session: _Session, seq: int) -> bool:
    return seq in session.seqs


def _streaming(session: _Session) -> bool:
    return any(m.status is MessageStatus.STREAMING for m in session.rows)


def _fail_streaming(session: _Session, code: ErrorCode) -> tuple[ChatMessage, ...]:
    """Store the session's STREAMING replies FAILED with ``code``, each with the seq after
    the reserved mark; returns them as stored, by seq."""
    failed: list[ChatMessage] = []
    for i, row in enumerate(session.rows):
        if row.status is not MessageStatus.STREAMING:
            continue
        seq = max(session.hwm, session.last_seq) + 1
        session.rows[i] = dataclasses.replace(
            row,
            seq=seq,
            status=MessageStatus.FAILED,
            error=(code.value, interrupted_text(code)),
        )
        session.last_seq = session.hwm = seq
        session.seqs.add(seq)
        session.message_count += 1
        failed.append(session.rows[i])
    return tuple(failed)
