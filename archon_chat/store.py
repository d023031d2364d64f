"""Sessions and messages in one SQLite file: the gateway's :class:`ChatStore`.

Theory of operation
-------------------
One ``sqlite3`` connection, owned by the store, in WAL mode with ``synchronous=NORMAL``
(a commit is durable against a process crash; an OS crash may lose the last
transactions, never corrupt the file). Every call runs in a worker thread behind one
``trio.CapacityLimiter(1)``, so the connection is never used by two threads at once.

*Reads* are abandoned on cancellation (the thread finishes on its own and keeps the
limiter until then, so the connection stays single-threaded).

*Writes* are never abandoned, and are grouped: a write joins a pending list, and whichever
writer finds no batch running becomes the leader and runs every pending write in one
transaction (each in its own savepoint, so one failing write fails alone), then wakes the
others. Under load, a thousand sessions' writes cost a handful of commits instead of a
thousand thread round trips. A write, once called, lands: its caller waits shielded until
its batch committed, and only then receives a pending cancellation. A caller therefore
never leaves a half-done or unknown write behind.

Sequence numbers (see :mod:`actors.chat.store`). Each session row keeps ``last_seq``
(written by messages, turn ends and ``save_last_seq``) and ``hwm``, the highest seq an
actor may have emitted (``reserve_seq``, and every stored seq). Both only grow. When the
store opens as the file's only writer it cannot know whether the previous process stopped
each actor cleanly, so it assumes the worst: a reply still ``STREAMING`` becomes
``FAILED`` (``internal_error``) with seq ``hwm + 1``, and every session's ``last_seq``
moves up to its ``hwm``. Numbers may skip after a restart; they never repeat. When
several processes share the file (cluster mode, ``recover_at_open=False``), another one
may be streaming those replies: only ``acquire`` recovers them, one session at a time.

History pairs each agent reply with the user message its turn answered, which
``begin_turn`` names (``reply_to``). Files of schema version 1 inferred that link when the
turn began and stored it in the same column, so their rows read the same.

Fencing (see :mod:`actors.chat.store`). ``sessions.fence`` is the newest token handed
out by :meth:`SqliteStore.acquire`. Every write's first statement updates the session row
``WHERE id = ? AND fence <= ?``: a stale writer changes nothing and gets
:class:`FencedError`. The file may be shared by processes on one machine (SQLite locks
it), so the check is in the database, not in this object. Each process has its own
connection; a write waits up to :data:`BUSY_TIMEOUT_MS` for another process's
transaction (they are short: one group commit) before it fails.

Expiry. A session expires ``ttl_s`` after its last activity (``updated_at``: a message
stored, a turn begun or finished), unless a reply is streaming. Expired sessions read as
unknown; :meth:`SqliteStore.delete_expired` removes them with their messages, in small
transactions so the sweeper never holds the writer for long. Timestamps are ISO 8601 UTC
with microseconds and offset (fixed width, so text order is time order).

Errors: those of :mod:`actors.chat.store` (``StoreError`` and its subclasses
``SessionNotFoundError``, ``ConflictError``, ``FencedError``; sqlite3 errors are mapped to
them), plus ``SchemaError`` (a ``StoreError``): the file is not ours, or a newer version
wrote it.

Arguments that break the contract (an unknown agent type, a user message given to
``finish_turn``) raise ``ValueError``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, cast

import trio

from actors.chat.messages import (
    AgentType,
    ChatMessage,
    ErrorCode,
    MessageStatus,
    SessionRecord,
)
from actors.chat.store import (
    ConflictError,
    FencedError,
    Ownership,
    SessionNotFoundError,
    StoreError,
    interrupted_text,
)
from archon_chat.group_commit import GroupCommit
from archon_chat.store_rows import (
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    check_agent_type,
    message_from_row,
    new_session,
    session_from_row,
    utc_text,
)

__all__ = [
    "SCHEMA_VERSION",
    "ConflictError",
    "DamagedError",
    "FencedError",
    "SchemaError",
    "SessionNotFoundError",
    "SqliteStore",
    "StoreError",
    "open_store",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: "ArCh": marks the file as ours, so a foreign SQLite file is refused instead of altered.
APPLICATION_ID: Final = 0x41724368

#: Writes committed together at most: bounds one transaction's duration (and so the wait
#: of a read queued behind it) while still folding a burst into few commits.
MAX_BATCH: Final = 512

#: Expired sessions deleted per transaction by :meth:`SqliteStore.delete_expired`.
DELETE_CHUNK: Final = 256

#: How long a statement waits for a lock held by another process before failing.
BUSY_TIMEOUT_MS: Final = 5000


class SchemaError(StoreError):
    """The file is not an archon-chat database, or a newer version of it wrote the file."""


class DamagedError(StoreError):
    """The file is an SQLite database whose content is damaged (truncated, overwritten)."""


_SCHEMA_V1: Final = """
CREATE TABLE sessions (
    id               TEXT PRIMARY KEY,
    agent_type       TEXT NOT NULL,
    project_id       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    hwm              INTEGER NOT NULL DEFAULT 0,
    message_count    INTEGER NOT NULL DEFAULT 0,
    -- version 1 inferred which user message a turn answered from these
    answered_seq     INTEGER NOT NULL DEFAULT 0,
    last_turn_seq    INTEGER NOT NULL DEFAULT 0,
    last_turn_status TEXT
);
CREATE INDEX sessions_by_updated_at ON sessions (updated_at);

CREATE TABLE messages (
    id                TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq               INTEGER,
    sender            TEXT NOT NULL CHECK (sender IN ('user', 'agent')),
    agent_type        TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('complete', 'cancelled', 'failed', 'streaming')),
    timestamp         TEXT NOT NULL,
    content           TEXT NOT NULL,
    error_code        TEXT,
    error_text        TEXT,
    client_message_id TEXT,
    -- agent replies: the user message the turn answered
    reply_to          TEXT,
    CHECK ((status = 'streaming') = (seq IS NULL))
);
CREATE UNIQUE INDEX messages_by_seq ON messages (session_id, seq);
CREATE UNIQUE INDEX messages_by_client_id ON messages (session_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
CREATE INDEX messages_streaming ON messages (session_id) WHERE status = 'streaming';
"""

#: Version 2: ``begin_turn`` names the message a turn answers (the inference columns
#: go); sessions carry the fencing token of their newest owner.
_SCHEMA_V2: Final = """
ALTER TABLE sessions DROP COLUMN answered_seq;
ALTER TABLE sessions DROP COLUMN last_turn_seq;
ALTER TABLE sessions DROP COLUMN last_turn_status;
ALTER TABLE sessions ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
"""

#: Version 3: sessions belong to the user who created them (``NULL``: made without user
#: mode), listed per user by last activity.
_SCHEMA_V3: Final = """
ALTER TABLE sessions ADD COLUMN user_id TEXT;
CREATE INDEX sessions_by_user ON sessions (user_id, updated_at, id) WHERE user_id IS NOT NULL;
"""

#: ``_MIGRATIONS[n]`` brings a file from ``user_version`` n to n + 1.
_MIGRATIONS: Final[Sequence[str]] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_NOT_STREAMING: Final = "status != 'streaming'"


def _mapped(exc: Exception) -> Exception:
    """Our exception for one raised by a write or read (ours and ValueError pass)."""
    if isinstance(exc, (StoreError, ValueError)):
        return exc
    err: StoreError
    if isinstance(exc, sqlite3.IntegrityError):
        err = ConflictError(f"conflicts with a stored message: {exc}")
    elif isinstance(exc, sqlite3.Error):
        err = StoreError(f"database error: {exc}")
    else:
        err = StoreError(f"unexpected error in the store: {exc!r}")
    err.__cause__ = exc
    return err


class _Write(Generic[T]):
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], T]) -> None:
        self.fn = fn
        self.result: T | None = None
        self.error: Exception | None = None
        self.done = False


def _run_batch(conn: sqlite3.Connection, batch: Sequence[_Write[Any]]) -> None:
    """Run ``batch`` in one transaction, each write in a savepoint (worker thread).
    Whatever fails, the connection is left outside any transaction."""
    try:
        _run_in_transaction(conn, batch)
    except Exception as exc:  # BEGIN or a savepoint statement failed: nothing is kept
        for w in batch:
            w.error = _mapped(exc)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _run_in_transaction(conn: sqlite3.Connection, batch: Sequence[_Write[Any]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for w in batch:
        conn.execute("SAVEPOINT w")
        try:
            w.result = w.fn(conn)
        except Exception as exc:
            w.error = _mapped(exc)
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (disk full, I/O error): the
                # writes before this one are gone too.
                for other in batch:
                    other.error = other.error or w.error
                return
            conn.execute("ROLLBACK TO w")
        conn.execute("RELEASE w")
    conn.execute("COMMIT")


class SqliteStore:
    """The SQLite :class:`~actors.chat.store.ChatStore`, plus what the gateway needs.

    Open it with :func:`open_store`. Every method is a checkpoint. Reads are cancellable;
    a write always lands, and a cancellation arriving meanwhile is delivered once it has.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        ttl_s: float,
        now: Callable[[], datetime],
        recovered_turns: int,
    ) -> None:
        self._conn = conn
        self._ttl = timedelta(seconds=ttl_s)
        self._now = now
        self._limiter = trio.CapacityLimiter(1)
        self._commit: GroupCommit[_Write[Any]] = GroupCommit(
            partial(_run_batch, conn), limiter=self._limiter, mapped=_mapped, max_batch=MAX_BATCH
        )
        self._closed = False
        #: Replies found ``STREAMING`` at open and stored as ``FAILED``.
        self.recovered_turns = recovered_turns

    @property
    def ttl_s(self) -> float:
        return self._ttl.total_seconds()

    # -- time -------------------------------------------------------------------------

    def _timestamp(self, delta: timedelta = timedelta(0)) -> str:
        return utc_text(self._now(), delta)

    # -- running calls ----------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            return await trio.to_thread.run_sync(
                fn, self._conn, limiter=self._limiter, abandon_on_cancel=True
            )
        except Exception as exc:
            raise _mapped(exc) from None

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        return cast(T, await self._commit.write(_Write(fn)))

    async def aclose(self) -> None:
        """Finish the writes already called, then close the file.

        Idempotent. Not cancellable (it runs shielded): the file is always left closed.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        await self._commit.drain()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_close, self._conn, limiter=self._limiter)

    # -- sessions -----------------------------------------------------------------------

    async def create_session(
        self, agent_type: AgentType, project_id: str | None, owner: str | None = None
    ) -> SessionRecord:
        """Store a new session with a fresh id of 128 random bits, belonging to ``owner``."""
        record = new_session(agent_type, project_id, owner, self._timestamp())

        def insert(conn: sqlite3.Connection) -> SessionRecord:
            conn.execute(
                "INSERT INTO sessions (id, agent_type, project_id, created_at, updated_at, "
                "user_id) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.session_id,
                    agent_type,
                    project_id,
                    record.created_at,
                    record.created_at,
                    owner,
                ),
            )
            return record

        return await self._write(insert)

    async def list_sessions(
        self, owner: str, limit: int, before: tuple[str, str] | None = None
    ) -> list[SessionRecord]:
        """The unexpired sessions of ``owner``, most recently active first, at most
        ``limit``, after the page cursor ``before`` = ``(updated_at, session_id)``."""
        cutoff = self._timestamp(self._ttl)
        page = "" if before is None else " AND (updated_at, id) < (?, ?)"

        def select(conn: sqlite3.Connection) -> list[SessionRecord]:
            rows = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?"
                f" AND updated_at >= ?{page} ORDER BY updated_at DESC, id DESC LIMIT ?",
                (owner, cutoff, *(before or ()), max(limit, 0)),
            ).fetchall()
            return [session_from_row(r) for r in rows]

        return await self._read(select)

    async def count_sessions(self, owner: str) -> int:
        """How many unexpired sessions ``owner`` has."""
        cutoff = self._timestamp(self._ttl)

        def select(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute(
                "SELECT count(*) FROM sessions WHERE user_id = ? AND updated_at >= ?",
                (owner, cutoff),
            ).fetchone()
            return int(count)

        return await self._read(select)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or ``None`` if unknown or expired."""
        cutoff = self._timestamp(self._ttl)

        def select(conn: sqlite3.Connection) -> SessionRecord | None:
            row = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                return None
            record = session_from_row(row)
            if record.updated_at < cutoff and not _streaming(conn, session_id):
                return None
            return record

        return await self._read(select)

    async def acquire(
        self, session_id: str, *, interrupted: ErrorCode = ErrorCode.INTERNAL_ERROR
    ) -> Ownership | None:
        """Take ownership of the session: bump its fencing token, store a reply left
        ``STREAMING`` by the previous owner as ``FAILED`` with code ``interrupted``
        (returned in ``recovered``), and lift ``last_seq`` to the reserved mark (what the
        previous owner may have emitted). ``None`` if the session is unknown or expired."""
        interrupted_text(interrupted)  # refuses a code before anything is written
        cutoff = self._timestamp(self._ttl)

        def take(conn: sqlite3.Connection) -> Ownership | None:
            row = conn.execute(
                "UPDATE sessions SET fence = fence + 1 WHERE id = ?1 AND (updated_at >= ?2"
                " OR EXISTS (SELECT 1 FROM messages WHERE session_id = ?1"
                " AND status = 'streaming')) RETURNING fence",
                (session_id, cutoff),
            ).fetchone()
            if row is None:
                return None
            recovered = _fail_streaming(conn, session_id, interrupted)
            conn.execute(
                "UPDATE sessions SET last_seq = hwm WHERE id = ? AND hwm > last_seq",
                (session_id,),
            )
            record = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            return Ownership(
                fence=int(row[0]), session=session_from_row(record), recovered=recovered
            )

        return await self._write(take)

    async def delete_expired(self) -> int:
        """Delete the sessions idle for longer than the TTL, and their messages.

        A session with a reply streaming is kept. Returns how many sessions went. Runs in
        transactions of at most ``DELETE_CHUNK`` sessions, so other writes interleave.
        """
        cutoff = self._timestamp(self._ttl)

        def delete_some(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM sessions WHERE id IN ("
                " SELECT s.id FROM sessions s WHERE s.updated_at < ?"
                " AND NOT EXISTS (SELECT 1 FROM messages m"
                "  WHERE m.session_id = s.id AND m.status = 'streaming')"
                " LIMIT ?)",
                (cutoff, DELETE_CHUNK),
            ).rowcount

        total = 0
        while True:
            deleted = await self._write(delete_some)
            total += deleted
            if deleted < DELETE_CHUNK:
                return total

    async def stats(self) -> dict[str, int]:
        """``{"sessions": stored sessions, "messages": their finished messages}``."""

        def select(conn: sqlite3.Connection) -> dict[str, int]:
            sessions, messages = conn.execute(
                "SELECT count(*), coalesce(sum(message_count), 0) FROM sessions"
            ).fetchone()
            return {"sessions": int(sessions), "messages": int(messages)}

        return await self._read(select)

    # -- messages, read -----------------------------------------------------------------

    async def session_messages(self, session_id: str) -> list[ChatMessage]:
        """Every finished message of the session (not ``STREAMING``), by seq."""

        def select(conn: sqlite3.Connection) -> list[ChatMessage]:
            rows = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages"
                f" WHERE session_id = ? AND {_NOT_STREAMING} ORDER BY seq",
                (session_id,),
            )
            return [message_from_row(r) for r in rows]

        return await self._read(select)

    async def history(self, session_id: str, max_turns: int) -> list[ChatMessage]:
        """The last ``max_turns`` complete turns (a user message and the ``COMPLETE``
        agent reply of its turn), oldest first, flattened: [user, agent, user, agent, ...]."""
        if max_turns <= 0:
            await trio.lowlevel.checkpoint()
            return []
        user_cols = ", ".join(f"u.{c.strip()}" for c in MESSAGE_COLUMNS.split(","))
        agent_cols = ", ".join(f"a.{c.strip()}" for c in MESSAGE_COLUMNS.split(","))
        width = len(MESSAGE_COLUMNS.split(","))

        def select(conn: sqlite3.Connection) -> list[ChatMessage]:
            rows = conn.execute(
                f"SELECT {user_cols}, {agent_cols} FROM messages a"
                " JOIN messages u ON u.id = a.reply_to AND u.session_id = a.session_id"
                " WHERE a.session_id = ? AND a.sender = 'agent' AND a.status = 'complete'"
                " ORDER BY a.seq DESC LIMIT ?",
                (session_id, max_turns),
            ).fetchall()
            out: list[ChatMessage] = []
            for row in reversed(rows):
                out.append(message_from_row(row[:width]))
                out.append(message_from_row(row[width:]))
            return out

        return await self._read(select)

    async def messages_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[ChatMessage]:
        """Finished messages (not ``STREAMING``) with ``seq > after_seq``, by seq, at most
        ``limit``."""

        def select(conn: sqlite3.Connection) -> list[ChatMessage]:
            rows = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages"
                f" WHERE session_id = ? AND seq > ? AND {_NOT_STREAMING} ORDER BY seq LIMIT ?",
                (session_id, after_seq, max(limit, 0)),
            )
            return [message_from_row(r) for r in rows]

        return await self._read(select)

    async def find_by_client_message_id(
        self, session_id: str, client_message_id: str
    ) -> ChatMessage | None:
        """The user message sent earlier with this ``client_message_id``, if any."""

        def select(conn: sqlite3.Connection) -> ChatMessage | None:
            row = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages"
                " WHERE session_id = ? AND client_message_id = ? AND sender = 'user'",
                (session_id, client_message_id),
            ).fetchone()
            return None if row is None else message_from_row(row)

        return await self._read(select)

    # -- messages, write ----------------------------------------------------------------

    async def add_user_message(self, message: ChatMessage, *, fence: int) -> None:
        """Store an accepted user message; bumps ``last_seq``, ``updated_at`` and
        ``message_count``."""
        if message.sender != "user" or message.status is not MessageStatus.COMPLETE:
            raise ValueError("add_user_message takes a COMPLETE user message")
        check_agent_type(message.agent_type)
        stamp = self._timestamp()

        def insert(conn: sqlite3.Connection) -> None:
            _touch(conn, message.session_id, fence, stamp, message.seq, count=1)
            _insert_message(conn, message, reply_to=None)

        await self._write(insert)

    async def reserve_seq(self, session_id: str, hwm: int, *, fence: int) -> None:
        """Record that seqs up to ``hwm`` may have been emitted (the mark never goes down)."""

        def update(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE sessions SET hwm = max(hwm, ?) WHERE id = ? AND fence <= ?",
                (hwm, session_id, fence),
            )
            if cur.rowcount == 0:
                _refused(conn, session_id, fence)

        await self._write(update)

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
        """Store the ``STREAMING`` placeholder of an agent reply to the user message
        ``reply_to``; bumps ``updated_at``."""
        check_agent_type(agent_type)
        stamp = self._timestamp()

        def insert(conn: sqlite3.Connection) -> None:
            _touch(conn, session_id, fence, stamp, None, count=0)
            conn.execute(
                "INSERT INTO messages (id, session_id, seq, sender, agent_type, status,"
                " timestamp, content, reply_to) VALUES (?, ?, NULL, 'agent', ?, 'streaming',"
                " ?, '', ?)",
                (agent_message_id, session_id, agent_type, timestamp, reply_to),
            )

        await self._write(insert)

    async def checkpoint_turn(
        self,
        session_id: str,
        agent_message_id: str,
        content: str,
        *,
        fence: int,
        offset: int = 0,
    ) -> None:
        """Save the partial text of the reply in progress (recovered after a crash): the
        first ``offset`` characters saved before, then ``content``."""
        if offset < 0:
            raise ValueError("offset must not be negative")

        def update(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE messages SET content = substr(content, 1, ?5) || ?1"
                " WHERE id = ?2 AND session_id = ?3 AND status = 'streaming'"
                " AND length(content) >= ?5"
                " AND (SELECT fence FROM sessions WHERE id = ?3) <= ?4",
                (content, agent_message_id, session_id, fence, offset),
            )
            if cur.rowcount == 0:
                _refused(conn, session_id, fence)
                raise ConflictError(f"no reply {agent_message_id} in progress in {session_id}")

        await self._write(update)

    async def finish_turn(self, message: ChatMessage, *, fence: int) -> None:
        """Replace the placeholder with the final agent message (or store it, if no turn
        was begun); bumps ``last_seq``, ``updated_at`` and ``message_count``."""
        if message.sender != "agent" or message.status is MessageStatus.STREAMING:
            raise ValueError("finish_turn takes a finished agent message")
        check_agent_type(message.agent_type)
        stamp = self._timestamp()

        def upsert(conn: sqlite3.Connection) -> None:
            _touch(conn, message.session_id, fence, stamp, message.seq, count=1)
            row = conn.execute(
                "SELECT session_id, status FROM messages WHERE id = ?", (message.id,)
            ).fetchone()
            if row is None:
                _insert_message(conn, message, reply_to=None)
            elif row[0] != message.session_id or row[1] != "streaming":
                raise ConflictError(f"reply {message.id} is not in progress in this session")
            else:
                code, text = message.error if message.error is not None else (None, None)
                conn.execute(
                    "UPDATE messages SET seq = ?, content = ?, agent_type = ?, status = ?,"
                    " timestamp = ?, error_code = ?, error_text = ? WHERE id = ?",
                    (
                        message.seq,
                        message.content,
                        message.agent_type,
                        message.status.value,
                        message.timestamp,
                        code,
                        text,
                        message.id,
                    ),
                )

        await self._write(upsert)

    async def save_last_seq(self, session_id: str, last_seq: int, *, fence: int) -> None:
        """Persist the actor's last emitted seq (``last_seq`` never goes down) and release
        the seqs reserved beyond it: the mark becomes ``last_seq``."""

        def update(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE sessions SET last_seq = max(last_seq, ?1), hwm = max(last_seq, ?1)"
                " WHERE id = ?2 AND fence <= ?3",
                (last_seq, session_id, fence),
            )
            if cur.rowcount == 0:
                _refused(conn, session_id, fence)

        await self._write(update)


# -- statements shared by several writes (worker thread) --------------------------------


def _streaming(conn: sqlite3.Connection, session_id: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM messages WHERE session_id = ? AND status = 'streaming' LIMIT 1",
            (session_id,),
        ).fetchone()
        is not None
    )


def _touch(
    conn: sqlite3.Connection,
    session_id: str,
    fence: int,
    stamp: str,
    seq: int | None,
    *,
    count: int,
) -> None:
    """Mark activity on the session, if ``fence`` is current; with ``seq``, a message with
    that seq is being stored."""
    if seq is None:
        cur = conn.execute(
            "UPDATE sessions SET updated_at = ? WHERE id = ? AND fence <= ?",
            (stamp, session_id, fence),
        )
    else:
        cur = conn.execute(
            "UPDATE sessions SET updated_at = ?1, last_seq = max(last_seq, ?2),"
            " hwm = max(hwm, ?2), message_count = message_count + ?3"
            " WHERE id = ?4 AND fence <= ?5",
            (stamp, seq, count, session_id, fence),
        )
    if cur.rowcount == 0:
        _refused(conn, session_id, fence)


def _refused(conn: sqlite3.Connection, session_id: str, fence: int) -> None:
    """A fenced write changed nothing: raise why, if the session or the token is the
    reason (in the write's transaction, so the answer is consistent with it)."""
    row = conn.execute("SELECT fence FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if row is None:
        raise SessionNotFoundError(session_id)
    if row[0] > fence:
        raise FencedError(f"session {session_id} has a newer owner (fence {row[0]} > {fence})")


def _insert_message(conn: sqlite3.Connection, m: ChatMessage, *, reply_to: str | None) -> None:
    code, text = m.error if m.error is not None else (None, None)
    conn.execute(
        "INSERT INTO messages (id, session_id, seq, sender, agent_type, status, timestamp,"
        " content, error_code, error_text, client_message_id, reply_to)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            m.id,
            m.session_id,
            m.seq,
            m.sender,
            m.agent_type,
            m.status.value,
            m.timestamp,
            m.content,
            code,
            text,
            m.client_message_id,
            reply_to,
        ),
    )


# -- opening and closing --------------------------------------------------------------


def _connect(path: str) -> sqlite3.Connection:
    if path != ":memory:" and not path.startswith("file:"):
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path,
        check_same_thread=False,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        uri=path.startswith("file:"),
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
        _check_integrity(conn, path)
    except sqlite3.OperationalError as exc:  # locked, unreadable, disk I/O
        conn.close()
        raise StoreError(f"cannot open {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "malformed" in str(exc):
            raise _damaged(path, str(exc)) from exc
        # "file is not a database": garbage, encrypted, or not SQLite at all
        raise SchemaError(f"{path} is not an archon-chat database ({exc})") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _damaged(path: str, what: str) -> DamagedError:
    return DamagedError(
        f"{path} is damaged ({what}): restore it from a backup, or move it away to start "
        "with an empty database"
    )


def _check_integrity(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a truncated or overwritten file at start-up rather than fail turns later
    (``quick_check`` reads every page once, without cross-checking indexes)."""
    (result,) = conn.execute("PRAGMA quick_check(1)").fetchone()
    if result != "ok":
        raise _damaged(path, str(result)[:200])


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        if version == 0:
            (tables,) = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
            if tables or app_id not in (0, APPLICATION_ID):
                raise SchemaError(f"{path} holds another application's data")
        elif app_id != APPLICATION_ID:
            raise SchemaError(f"{path} holds another application's data")
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{path} has schema version {version}, written by a newer archon-chat; "
                f"this one knows up to version {SCHEMA_VERSION}"
            )
        for step in range(version, SCHEMA_VERSION):
            # executescript would commit the open transaction: run statement by statement.
            for statement in _MIGRATIONS[step].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _recover(conn: sqlite3.Connection) -> int:
    """Fail the replies a previous process left ``STREAMING``; lift ``last_seq`` to the
    reserved mark everywhere. Returns how many replies were recovered."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        sessions = conn.execute(
            "SELECT DISTINCT session_id FROM messages WHERE status = 'streaming'"
        ).fetchall()
        recovered = sum(
            len(_fail_streaming(conn, session_id, ErrorCode.INTERNAL_ERROR))
            for (session_id,) in sessions
        )
        conn.execute("UPDATE sessions SET last_seq = hwm WHERE hwm > last_seq")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return recovered


def _fail_streaming(
    conn: sqlite3.Connection, session_id: str, code: ErrorCode
) -> tuple[ChatMessage, ...]:
    """Store the session's replies still ``STREAMING`` as ``FAILED`` with ``code``, each
    with the seq after the reserved mark. Returns them as stored, by seq."""
    rows = conn.execute(
        "SELECT id FROM messages WHERE session_id = ? AND status = 'streaming' ORDER BY rowid",
        (session_id,),
    ).fetchall()
    failed: list[ChatMessage] = []
    for (message_id,) in rows:
        (seq,) = conn.execute(
            "UPDATE sessions SET hwm = hwm + 1, last_seq = hwm + 1,"
            " message_count = message_count + 1 WHERE id = ? RETURNING hwm",
            (session_id,),
        ).fetchone()
        row = conn.execute(
            "UPDATE messages SET status = 'failed', seq = ?, error_code = ?, error_text = ?"
            f" WHERE id = ? RETURNING {MESSAGE_COLUMNS}",
            (seq, code.value, interrupted_text(code), message_id),
        ).fetchone()
        failed.append(message_from_row(row))
    return tuple(failed)


def _open(path: str, recover: bool) -> tuple[sqlite3.Connection, int]:
    conn = _connect(path)
    try:
        return conn, _recover(conn) if recover else 0
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: recovery at open failed: {exc}") from exc
    except BaseException:
        conn.close()
        raise


def _close(conn: sqlite3.Connection) -> None:
    try:
        # Only a hint to the query planner: another process sharing the file (cluster
        # mode) may hold it locked past the busy timeout, and shutting down must not fail.
        conn.execute("PRAGMA optimize")
    except sqlite3.OperationalError as exc:
        log.info("closing the store: PRAGMA optimize skipped (%s)", exc)
    finally:
        conn.close()


@asynccontextmanager
async def open_store(
    path: str,
    *,
    ttl_s: float,
    now: Callable[[], datetime] | None = None,
    recover_at_open: bool = True,
) -> AsyncIterator[SqliteStore]:
    """Open (creating it and its folder if needed) the database at ``path``.

    Migrates the schema to :data:`SCHEMA_VERSION` and, with ``recover_at_open`` (this
    process is the file's only writer), recovers what a previous process left unfinished
    (module docstring), then yields the store; on exit, finishes the writes already called
    and closes the file, even if the block was cancelled. Without it, replies left
    ``STREAMING`` wait for the next ``acquire`` of their session: another process sharing
    the file may still be streaming them.
    ``now`` (an aware datetime; default the wall clock) drives ``updated_at`` and expiry.

    Raises :class:`SchemaError` for a foreign file or one written by a newer version,
    :class:`StoreError` if the file cannot be opened.
    """
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    try:
        conn, recovered = await trio.to_thread.run_sync(_open, path, recover_at_open)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    if recovered:
        log.warning("%d replies interrupted by a restart stored as failed", recovered)
    store = SqliteStore(
        conn, ttl_s=ttl_s, now=now or (lambda: datetime.now(UTC)), recovered_turns=recovered
    )
    try:
        yield store
    finally:
        await store.aclose()
