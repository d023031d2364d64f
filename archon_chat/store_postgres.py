"""Sessions and messages in PostgreSQL: the :class:`~archon_chat.store_api.GatewayStore`
that several gateway processes can share.

Theory of operation
-------------------
psycopg 3's synchronous :class:`psycopg_pool.ConnectionPool` (its async API is
asyncio-only), driven from worker threads through :func:`trio.to_thread.run_sync`, with
one :class:`trio.CapacityLimiter` as wide as the pool, so no thread ever waits inside the
pool for a connection another thread holds. Connections are in autocommit mode (a read is
one round trip); statements are prepared on the server. Checking a connection out costs
no round trip: an idle connection has nothing to read unless the server closed it (a
restart, a terminated backend), and only then is it tried with a query and replaced.

*Reads* are abandoned on cancellation (the thread finishes on its own and keeps its
limiter token until then).

*Writes* are never abandoned, and are grouped as in the SQLite store
(:mod:`archon_chat.store`): a write joins a pending list, and whichever writer finds no
batch running becomes the leader and sends every pending write in one transaction, in
pipeline mode: ``BEGIN``, the writes' statements and ``COMMIT`` leave together and cost
one round trip. A turn's checkpoints and end cost what they cost in SQLite, one statement
each, and under load a thousand sessions' writes share a handful of commits. A batch of
checkpoints alone commits without waiting for the disk (``synchronous_commit = off``):
a database crash may lose the last of them, as with the SQLite store's
``synchronous=NORMAL``; every other commit is durable.

Every write is a single statement (``acquire`` locks the session row first) built so that
a refused write changes nothing and does not raise: it reports what it found (the
session exists, the fence is current, the row it changes is there), and the store turns a
refusal into :class:`FencedError`, :class:`SessionNotFoundError` or
:class:`ConflictError` after the commit, so one refused write never undoes the others of
its batch. Should a statement fail anyway (a seq stored twice, a lost connection), the
batch is rolled back and its writes run again one by one, so only the faulty one fails.

Fencing (see :mod:`actors.chat.store`). ``sessions.fence`` is the newest token handed out
by :meth:`PostgresStore.acquire`. Each write starts by locking the session row ``WHERE id
= $1 AND fence <= $token FOR UPDATE`` in the statement that writes: a stale writer
changes nothing. Under READ COMMITTED the lock re-reads a row changed meanwhile, so a
write racing an ``acquire`` either commits before it or is refused.

Crash recovery. Several processes share the database, so none can fail every reply still
``STREAMING`` when it starts (another process may be streaming it). Each store holds,
for its lifetime, a session-level advisory lock on its *owner number* (from a sequence),
on a connection of its own; ``acquire`` records that number in the session row. A reply
is orphaned once its owner is fenced out or its owner's lock is gone (the process died,
and the server closed its connection). Whoever notices first stores it ``FAILED`` (the
SQLite store's text and code), in the statement that bumps the fence, after locking the
session row so that no write of the previous owner is in flight: the next owner in
:meth:`PostgresStore.acquire`, or any process in :meth:`PostgresStore.recover_orphans`,
which runs at open and before every sweep of expired sessions. A store whose lock
connection broke (the database restarted) takes its lock again before its next
``acquire``; its replies in flight meanwhile may have been recovered, and their writes
are then refused.

Schema migrations (:data:`MIGRATIONS`) are applied at open, in one transaction under a
transaction-level advisory lock, so processes starting together apply each one once.
Table ``archon_chat_schema`` records the version. Timestamps are stored as the same ISO
8601 text as in SQLite (fixed width: text order is time order).
"""

from __future__ import annotations

import logging
import math
import select
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, LiteralString, cast

import psycopg
import trio
from psycopg import conninfo, sql
from psycopg_pool import ConnectionPool

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
from archon_chat.store import SchemaError
from archon_chat.store_rows import (
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    check_agent_type,
    message_from_row,
    new_session,
    session_from_row,
    utc_text,
)

__all__ = ["MIGRATIONS", "PostgresStore", "open_postgres_store"]

log = logging.getLogger(__name__)

#: Writes sent in one transaction at most (as in the SQLite store).
MAX_BATCH: Final = 512

#: Expired sessions deleted per transaction by :meth:`PostgresStore.delete_expired`.
DELETE_CHUNK: Final = 256

#: Key of the advisory lock held while migrating ("ArCh"), and first key of the owner locks
#: (``pg_advisory_lock(OWNER_LOCKS, owner)``).
MIGRATION_LOCK: Final = 0x41724368
OWNER_LOCKS: Final = 0x41724368

#: First and longest pause between connection attempts at start-up, in seconds.
RETRY_FIRST_S: Final = 0.25
RETRY_MAX_S: Final = 5.0

#: ``MIGRATIONS[n]`` brings the schema from version n to n + 1.
MIGRATIONS: Final[Sequence[LiteralString]] = (
    """
    CREATE TABLE sessions (
        id            text PRIMARY KEY,
        agent_type    text NOT NULL,
        project_id    text,
        created_at    text NOT NULL,
        updated_at    text NOT NULL,
        last_seq      bigint NOT NULL DEFAULT 0,
        hwm           bigint NOT NULL DEFAULT 0,
        message_count integer NOT NULL DEFAULT 0,
        fence         bigint NOT NULL DEFAULT 0,
        -- the owner number of the store that acquired the session last
        owner         integer
    );
    CREATE SEQUENCE owner_numbers AS integer CYCLE;
    CREATE INDEX sessions_by_updated_at ON sessions (updated_at);
    CREATE TABLE messages (
        id                text PRIMARY KEY,
        session_id        text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        seq               bigint,
        sender            text NOT NULL CHECK (sender IN ('user', 'agent')),
        agent_type        text NOT NULL,
        status            text NOT NULL
                          CHECK (status IN ('complete', 'cancelled', 'failed', 'streaming')),
        timestamp         text NOT NULL,
        content           text NOT NULL,
        error_code        text,
        error_text        text,
        client_message_id text,
        reply_to          text,
        CHECK ((status = 'streaming') = (seq IS NULL))
    );
    CREATE UNIQUE INDEX messages_by_seq ON messages (session_id, seq);
    CREATE UNIQUE INDEX messages_by_client_id ON messages (session_id, client_message_id)
        WHERE client_message_id IS NOT NULL;
    CREATE INDEX messages_streaming ON messages (session_id) WHERE status = 'streaming';
    """,
    # Sessions belong to the user who created them (NULL: made without user mode). Not
    # ``owner``: that column names the store process that acquired the session.
    """
    ALTER TABLE sessions ADD COLUMN user_id text;
    CREATE INDEX sessions_by_user ON sessions (user_id, updated_at, id)
        WHERE user_id IS NOT NULL;
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


# -- the writes' statements ---------------------------------------------------------------
# Each ends with SELECT <session exists>, <fence current>, <row written>.

_OWNER: Final = (
    "WITH owner AS (SELECT id FROM sessions WHERE id = %(sid)s AND fence <= %(fence)s FOR UPDATE)"
)
_VERDICT: Final = (
    " SELECT EXISTS (SELECT 1 FROM sessions WHERE id = %(sid)s),"
    " EXISTS (SELECT 1 FROM owner), EXISTS (SELECT 1 FROM done)"
)
_INSERT_COLS: Final = (
    "INSERT INTO messages (id, session_id, seq, sender, agent_type, status, timestamp,"
    " content, error_code, error_text, client_message_id, reply_to)"
)

ADD_USER_MESSAGE: Final = (
    _OWNER + ", ins AS (" + _INSERT_COLS + " SELECT %(id)s, owner.id, %(seq)s, 'user',"
    " %(agent_type)s, 'complete', %(timestamp)s, %(content)s, NULL, NULL,"
    " %(client_message_id)s, NULL FROM owner ON CONFLICT DO NOTHING RETURNING 1),"
    " done AS (UPDATE sessions SET updated_at = %(stamp)s,"
    " last_seq = greatest(last_seq, %(seq)s), hwm = greatest(hwm, %(seq)s),"
    " message_count = message_count + 1"
    " WHERE id = %(sid)s AND EXISTS (SELECT 1 FROM ins) RETURNING 1)" + _VERDICT
)

RESERVE_SEQ: Final = (
    _OWNER + ", done AS (UPDATE sessions s SET hwm = greatest(s.hwm, %(hwm)s)"
    " FROM owner WHERE s.id = owner.id RETURNING 1)" + _VERDICT
)

SAVE_LAST_SEQ: Final = (
    _OWNER + ", done AS (UPDATE sessions s SET last_seq = greatest(s.last_seq, %(seq)s),"
    " hwm = greatest(s.last_seq, %(seq)s) FROM owner WHERE s.id = owner.id RETURNING 1)" + _VERDICT
)

BEGIN_TURN: Final = (
    _OWNER + ", ins AS (" + _INSERT_COLS + " SELECT %(id)s, owner.id, NULL, 'agent',"
    " %(agent_type)s, 'streaming', %(timestamp)s, '', NULL, NULL, NULL, %(reply_to)s"
    " FROM owner ON CONFLICT DO NOTHING RETURNING 1),"
    " done AS (UPDATE sessions SET updated_at = %(stamp)s"
    " WHERE id = %(sid)s AND EXISTS (SELECT 1 FROM ins) RETURNING 1)" + _VERDICT
)

CHECKPOINT_TURN: Final = (
    _OWNER + ", done AS (UPDATE messages m"
    " SET content = left(m.content, %(offset)s) || %(content)s FROM owner"
    " WHERE m.id = %(id)s AND m.session_id = owner.id AND m.status = 'streaming'"
    " AND char_length(m.content) >= %(offset)s RETURNING 1)" + _VERDICT
)

FINISH_TURN: Final = (
    _OWNER + ", old AS (SELECT 1 FROM messages WHERE id = %(id)s),"
    " upd AS (UPDATE messages m SET seq = %(seq)s, content = %(content)s,"
    " agent_type = %(agent_type)s, status = %(status)s, timestamp = %(timestamp)s,"
    " error_code = %(error_code)s, error_text = %(error_text)s FROM owner"
    " WHERE m.id = %(id)s AND m.session_id = owner.id AND m.status = 'streaming'"
    " RETURNING 1),"
    " ins AS (" + _INSERT_COLS + " SELECT %(id)s, owner.id, %(seq)s, 'agent',"
    " %(agent_type)s, %(status)s, %(timestamp)s, %(content)s, %(error_code)s,"
    " %(error_text)s, NULL, NULL FROM owner WHERE NOT EXISTS (SELECT 1 FROM old)"
    " ON CONFLICT DO NOTHING RETURNING 1),"
    " done AS (UPDATE sessions SET updated_at = %(stamp)s,"
    " last_seq = greatest(last_seq, %(seq)s), hwm = greatest(hwm, %(seq)s),"
    " message_count = message_count + 1 WHERE id = %(sid)s"
    " AND (EXISTS (SELECT 1 FROM upd) OR EXISTS (SELECT 1 FROM ins)) RETURNING 1)" + _VERDICT
)

#: Locks the session row: every write of a previous owner has committed or will be refused.
LOCK_SESSION: Final = "SELECT 1 FROM sessions WHERE id = %(sid)s FOR UPDATE"

#: Bumps the fence and fails the orphaned replies, each with the next seq above the mark.
#: The columns of :data:`MESSAGE_COLUMNS`, of the rows an ``acquire`` failed.
_FAILED_COLUMNS: Final = (
    "m.id, m.session_id, m.seq, m.content, m.sender, m.timestamp, m.agent_type, m.status,"
    " m.error_code, m.error_text, m.client_message_id"
)

ACQUIRE: Final = (
    "WITH orphans AS (SELECT id, row_number() OVER (ORDER BY timestamp, id) AS n"
    " FROM messages WHERE session_id = %(sid)s AND status = 'streaming'),"
    " k AS (SELECT count(*) AS k FROM orphans),"
    " bump AS (UPDATE sessions SET fence = fence + 1, owner = %(owner)s, hwm = hwm + k.k,"
    " last_seq = greatest(last_seq, hwm + k.k), message_count = message_count + k.k"
    " FROM k WHERE id = %(sid)s AND (updated_at >= %(cutoff)s OR k.k > 0)"
    " AND (%(orphaned_by)s::integer IS NULL OR owner = %(orphaned_by)s)"
    " RETURNING " + SESSION_COLUMNS + ", fence, hwm - k.k AS mark),"
    " failed AS (UPDATE messages m SET status = 'failed', seq = bump.mark + o.n,"
    " error_code = %(code)s, error_text = %(text)s FROM orphans o, bump"
    " WHERE m.id = o.id RETURNING " + _FAILED_COLUMNS + ")"
    " SELECT "
    + SESSION_COLUMNS
    + ", fence, (SELECT json_agg(json_build_array("
    + MESSAGE_COLUMNS
    + ") ORDER BY seq) FROM failed) FROM bump"
)

#: Sessions with a reply streaming whose owner holds no lock: its process is gone.
ORPHANED: Final = (
    "SELECT s.id, s.owner FROM sessions s WHERE s.owner IS NOT NULL"
    " AND EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id"
    " AND m.status = 'streaming')"
    " AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory'"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.classid = %(space)s AND l.objid = s.owner AND l.objsubid = 2 AND l.granted)"
)

CREATE_SESSION: Final = (
    "INSERT INTO sessions (id, agent_type, project_id, created_at, updated_at, user_id)"
    " VALUES (%(sid)s, %(agent_type)s, %(project_id)s, %(stamp)s, %(stamp)s, %(owner)s)"
    " RETURNING 1"
)

DELETE_EXPIRED: Final = (
    "WITH gone AS (DELETE FROM sessions WHERE id IN (SELECT s.id FROM sessions s"
    " WHERE s.updated_at < %(cutoff)s AND NOT EXISTS (SELECT 1 FROM messages m"
    " WHERE m.session_id = s.id AND m.status = 'streaming')"
    " LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) FROM gone"
)


def _mapped(exc: Exception) -> Exception:
    """Our exception for one raised by a write or read (ours and ValueError pass)."""
    if isinstance(exc, (StoreError, ValueError)):
        return exc
    err: StoreError
    if isinstance(exc, psycopg.errors.IntegrityError):
        err = ConflictError(f"conflicts with a stored message: {exc}")
    elif isinstance(exc, psycopg.OperationalError):
        err = StoreError(f"database unavailable: {exc}")
    elif isinstance(exc, psycopg.Error):
        err = StoreError(f"database error: {exc}")
    else:
        err = StoreError(f"unexpected error in the store: {exc!r}")
    err.__cause__ = exc
    return err


@dataclass(slots=True)
class _Write:
    """One write: its statements (the last one's first row is its verdict) and what to
    make of that row."""

    statements: Sequence[tuple[LiteralString, dict[str, Any]]]
    outcome: Callable[[tuple[Any, ...] | None], Any]
    #: False for a checkpoint: losing the last ones to a database crash costs some
    #: partial text, so a batch of them does not wait for the disk
    durable: bool = True
    result: Any = None
    error: Exception | None = None
    done: bool = False
    cursor: psycopg.Cursor[tuple[Any, ...]] | None = None


def _run_batch(pool: ConnectionPool, batch: Sequence[_Write]) -> None:
    """Run ``batch`` in one pipelined transaction (worker thread); if a statement fails,
    run each write alone so that only the faulty one fails."""
    try:
        with pool.connection() as conn:
            try:
                # BEGIN and COMMIT as plain statements: psycopg's transaction() inside a
                # pipeline syncs on entry and exit, four round trips more.
                with conn.pipeline():
                    conn.execute("BEGIN")
                    if not any(w.durable for w in batch):
                        conn.execute("SET LOCAL synchronous_commit = off")
                    for w in batch:
                        for statement, params in w.statements:
                            w.cursor = conn.execute(statement, params, prepare=True)
                    conn.execute("COMMIT")
            except psycopg.Error as exc:
                failure: Exception = exc
                _roll_back(conn)
            else:  # committed: whatever happens now concerns one write only
                for w in batch:
                    try:
                        row = None if w.cursor is None else w.cursor.fetchone()
                        w.result = w.outcome(row)
                    except Exception as exc:
                        w.error = _mapped(exc)
                    w.cursor = None
                return
    except Exception as exc:  # no connection (pool timeout): nothing was written
        failure = exc
    if len(batch) > 1 and not isinstance(failure, psycopg.OperationalError):
        for w in batch:
            _run_batch(pool, [w])
        return
    for w in batch:
        w.cursor = None
        w.error = _mapped(failure)


def _roll_back(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """End the transaction a failed batch left open (its statements after the failure
    were skipped, ``COMMIT`` included), unless the connection itself is gone."""
    if conn.broken or conn.info.transaction_status is psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        log.debug("rollback of a failed batch failed", exc_info=True)


def _idle_and_sound(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Pool check without a round trip: an idle connection has nothing to read unless
    the server spoke first, which it does only to close it (a restart, an
    administrator's termination); only then is the connection tried with a query."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


def _count(row: tuple[Any, ...] | None) -> int:
    return 0 if row is None else int(row[0])


def _verdict(sid: str, fence: int, what: str) -> Callable[[tuple[Any, ...] | None], None]:
    """The outcome of a fenced write whose statement ends with ``_VERDICT``."""

    def outcome(row: tuple[Any, ...] | None) -> None:
        exists, owned, done = row or (False, False, False)
        if not exists:
            raise SessionNotFoundError(sid)
        if not owned:
            raise FencedError(f"session {sid} has a newer owner than fence {fence}")
        if not done:
            raise ConflictError(what)

    return outcome


class PostgresStore:
    """The PostgreSQL :class:`~archon_chat.store_api.GatewayStore`.

    Open it with :func:`open_postgres_store`. Every method is a checkpoint. Reads are
    cancellable; a write always lands (or fails), and a cancellation arriving meanwhile
    is delivered once it has.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        owner: _OwnerLock,
        *,
        ttl_s: float,
        pool_size: int,
        now: Callable[[], datetime],
        recover_orphans: bool = True,
    ) -> None:
        self._pool = pool
        self._owner = owner
        #: fail dead processes' replies in flight ourselves (not in cluster mode: there
        #: the node that reaps a dead one takes its sessions over, so the room hears of it)
        self._recovers_orphans = recover_orphans
        self._ttl = timedelta(seconds=ttl_s)
        self._now = now
        self._limiter = trio.CapacityLimiter(pool_size)
        self._commit: GroupCommit[_Write] = GroupCommit(
            partial(_run_batch, pool), limiter=self._limiter, mapped=_mapped, max_batch=MAX_BATCH
        )
        self._closed = False

    @property
    def ttl_s(self) -> float:
        return self._ttl.total_seconds()

    def _timestamp(self, delta: timedelta = timedelta(0)) -> str:
        return utc_text(self._now(), delta)

    # -- running calls ----------------------------------------------------------------

    async def _read(self, statement: LiteralString, params: dict[str, Any]) -> list[Any]:
        if self._closed:
            raise StoreError("the store is closed")

        def select() -> list[Any]:
            with self._pool.connection() as conn:
                return conn.execute(statement, params, prepare=True).fetchall()

        try:
            return await trio.to_thread.run_sync(
                select, limiter=self._limiter, abandon_on_cancel=True
            )
        except Exception as exc:
            raise _mapped(exc) from None

    async def _write(self, write: _Write) -> Any:
        if self._closed:
            raise StoreError("the store is closed")
        return await self._commit.write(write)

    async def aclose(self) -> None:
        """Finish the writes already called, then close the pool.

        Idempotent. Not cancellable (it runs shielded).
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        await self._commit.drain()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._pool.close)
            await trio.to_thread.run_sync(self._owner.close)

    # -- sessions -----------------------------------------------------------------------

    async def create_session(
        self, agent_type: AgentType, project_id: str | None, owner: str | None = None
    ) -> SessionRecord:
        """Store a new session with a fresh id of 128 random bits, belonging to ``owner``."""
        record = new_session(agent_type, project_id, owner, self._timestamp())
        params = {
            "sid": record.session_id,
            "agent_type": agent_type,
            "project_id": project_id,
            "stamp": record.created_at,
            "owner": owner,
        }
        return cast(
            SessionRecord, await self._write(_Write([(CREATE_SESSION, params)], lambda _: record))
        )

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or ``None`` if unknown or expired."""
        rows = await self._read(
            "SELECT " + SESSION_COLUMNS + " FROM sessions WHERE id = %(sid)s"
            " AND (updated_at >= %(cutoff)s OR EXISTS (SELECT 1 FROM messages"
            " WHERE session_id = %(sid)s AND status = 'streaming'))",
            {"sid": session_id, "cutoff": self._timestamp(self._ttl)},
        )
        return session_from_row(rows[0]) if rows else None

    async def list_sessions(
        self, owner: str, limit: int, before: tuple[str, str] | None = None
    ) -> list[SessionRecord]:
        """The unexpired sessions of ``owner``, most recently active first, at most
        ``limit``, after the page cursor ``before`` = ``(updated_at, session_id)``."""
        page = ""
        if before is not None:
            page = ' AND (updated_at COLLATE "C", id COLLATE "C") < (%(at)s, %(sid)s)'
        at, sid = before or ("", "")
        rows = await self._read(
            "SELECT " + SESSION_COLUMNS + " FROM sessions WHERE user_id = %(owner)s"
            " AND updated_at >= %(cutoff)s"
            + page
            + ' ORDER BY updated_at COLLATE "C" DESC, id COLLATE "C" DESC LIMIT %(limit)s',
            {
                "owner": owner,
                "cutoff": self._timestamp(self._ttl),
                "at": at,
                "sid": sid,
                "limit": max(limit, 0),
            },
        )
        return [session_from_row(r) for r in rows]

    async def count_sessions(self, owner: str) -> int:
        """How many unexpired sessions ``owner`` has."""
        rows = await self._read(
            "SELECT count(*) FROM sessions WHERE user_id = %(owner)s AND updated_at >= %(cutoff)s",
            {"owner": owner, "cutoff": self._timestamp(self._ttl)},
        )
        return int(rows[0][0])

    async def acquire(
        self, session_id: str, *, interrupted: ErrorCode = ErrorCode.INTERNAL_ERROR
    ) -> Ownership | None:
        """Take ownership of the session: bump its fencing token, store the replies left
        ``STREAMING`` by previous owners as ``FAILED`` with code ``interrupted`` (returned
        in ``recovered``), and lift ``last_seq`` to the reserved mark. ``None`` if the
        session is unknown or expired."""
        interrupted_text(interrupted)  # refuses a code before anything is written
        if self._closed:
            raise StoreError("the store is closed")
        try:
            owner = await trio.to_thread.run_sync(self._owner.ensure, limiter=self._limiter)
        except Exception as exc:
            raise _mapped(exc) from None
        return await self._take_over(session_id, owner, interrupted=interrupted)

    async def recover_orphans(self) -> int:
        """Store as ``FAILED`` the replies still ``STREAMING`` whose owner's process is
        gone (its advisory lock is released); the sessions are left without an owner.
        Returns how many sessions were recovered. Runs at open and before each sweep."""
        rows = await self._read(ORPHANED, {"space": OWNER_LOCKS})
        recovered = 0
        for session_id, dead in rows:
            # Unless a live store acquired the session meanwhile.
            recovered += await self._take_over(session_id, None, orphaned_by=dead) is not None
        return recovered

    async def _take_over(
        self,
        session_id: str,
        owner: int | None,
        *,
        orphaned_by: int | None = None,
        interrupted: ErrorCode = ErrorCode.INTERNAL_ERROR,
    ) -> Ownership | None:
        params = {
            "sid": session_id,
            "owner": owner,
            "orphaned_by": orphaned_by,
            "cutoff": self._timestamp(self._ttl),
            "code": interrupted.value,
            "text": interrupted_text(interrupted),
        }

        def outcome(row: tuple[Any, ...] | None) -> Ownership | None:
            if row is None:
                return None
            recovered = tuple(message_from_row(r) for r in row[9] or ())
            if recovered:
                log.warning(
                    "session %s: %d interrupted replies stored as failed", row[0], len(recovered)
                )
            return Ownership(
                fence=int(row[8]), session=session_from_row(row[:8]), recovered=recovered
            )

        write = _Write([(LOCK_SESSION, params), (ACQUIRE, params)], outcome)
        return cast(Ownership | None, await self._write(write))

    async def delete_expired(self) -> int:
        """Delete the sessions idle for longer than the TTL, and their messages.

        A session with a reply streaming is kept. Returns how many sessions went. Runs in
        transactions of at most ``DELETE_CHUNK`` sessions.
        """
        if self._recovers_orphans:
            await self.recover_orphans()
        params = {"cutoff": self._timestamp(self._ttl), "limit": DELETE_CHUNK}
        total = 0
        while True:
            write = _Write([(DELETE_EXPIRED, params)], _count)
            deleted = cast(int, await self._write(write))
            total += deleted
            if deleted < DELETE_CHUNK:
                return total

    async def stats(self) -> dict[str, int]:
        """``{"sessions": stored sessions, "messages": their finished messages}``."""
        rows = await self._read(
            "SELECT count(*), coalesce(sum(message_count), 0) FROM sessions", {}
        )
        sessions, messages = rows[0]
        return {"sessions": int(sessions), "messages": int(messages)}

    # -- messages, read -----------------------------------------------------------------

    async def session_messages(self, session_id: str) -> list[ChatMessage]:
        """Every finished message of the session (not ``STREAMING``), by seq."""
        rows = await self._read(
            "SELECT " + MESSAGE_COLUMNS + " FROM messages"
            " WHERE session_id = %(sid)s AND status != 'streaming' ORDER BY seq",
            {"sid": session_id},
        )
        return [message_from_row(r) for r in rows]

    async def history(self, session_id: str, max_turns: int) -> list[ChatMessage]:
        """The last ``max_turns`` complete turns (a user message and the ``COMPLETE``
        agent reply of its turn), oldest first, flattened: [user, agent, user, agent, ...]."""
        if max_turns <= 0:
            await trio.lowlevel.checkpoint()
            return []
        rows = await self._read(
            "SELECT u.id, u.session_id, u.seq, u.content, u.sender, u.timestamp,"
            " u.agent_type, u.status, u.error_code, u.error_text, u.client_message_id,"
            " a.id, a.session_id, a.seq, a.content, a.sender, a.timestamp,"
            " a.agent_type, a.status, a.error_code, a.error_text, a.client_message_id"
            " FROM messages a JOIN messages u ON u.id = a.reply_to AND u.session_id = a.session_id"
            " WHERE a.session_id = %(sid)s AND a.sender = 'agent' AND a.status = 'complete'"
            " ORDER BY a.seq DESC LIMIT %(n)s",
            {"sid": session_id, "n": max_turns},
        )
        out: list[ChatMessage] = []
        for row in reversed(rows):
            out.append(message_from_row(row[:11]))
            out.append(message_from_row(row[11:]))
        return out

    async def messages_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[ChatMessage]:
        """Finished messages (not ``STREAMING``) with ``seq > after_seq``, by seq, at most
        ``limit``."""
        rows = await self._read(
            "SELECT " + MESSAGE_COLUMNS + " FROM messages WHERE session_id = %(sid)s"
            " AND seq > %(after)s AND status != 'streaming' ORDER BY seq LIMIT %(n)s",
            {"sid": session_id, "after": after_seq, "n": max(limit, 0)},
        )
        return [message_from_row(r) for r in rows]

    async def find_by_client_message_id(
        self, session_id: str, client_message_id: str
    ) -> ChatMessage | None:
        """The user message sent earlier with this ``client_message_id``, if any."""
        rows = await self._read(
            "SELECT " + MESSAGE_COLUMNS + " FROM messages WHERE session_id = %(sid)s"
            " AND client_message_id = %(cid)s AND sender = 'user'",
            {"sid": session_id, "cid": client_message_id},
        )
        return message_from_row(rows[0]) if rows else None

    # -- messages, write ----------------------------------------------------------------

    async def add_user_message(self, message: ChatMessage, *, fence: int) -> None:
        """Store an accepted user message; bumps ``last_seq``, ``updated_at`` and
        ``message_count``."""
        if message.sender != "user" or message.status is not MessageStatus.COMPLETE:
            raise ValueError("add_user_message takes a COMPLETE user message")
        check_agent_type(message.agent_type)
        sid = message.session_id
        params = {
            "sid": sid,
            "fence": fence,
            "id": message.id,
            "seq": message.seq,
            "agent_type": message.agent_type,
            "timestamp": message.timestamp,
            "content": message.content,
            "client_message_id": message.client_message_id,
            "stamp": self._timestamp(),
        }
        what = f"message {message.id} conflicts with a stored message"
        await self._write(_Write([(ADD_USER_MESSAGE, params)], _verdict(sid, fence, what)))

    async def reserve_seq(self, session_id: str, hwm: int, *, fence: int) -> None:
        """Record that seqs up to ``hwm`` may have been emitted (the mark never goes down)."""
        params = {"sid": session_id, "fence": fence, "hwm": hwm}
        await self._write(_Write([(RESERVE_SEQ, params)], _verdict(session_id, fence, "")))

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
        params = {
            "sid": session_id,
            "fence": fence,
            "id": agent_message_id,
            "agent_type": agent_type,
            "timestamp": timestamp,
            "reply_to": reply_to,
            "stamp": self._timestamp(),
        }
        what = f"reply {agent_message_id} conflicts with a stored message"
        await self._write(_Write([(BEGIN_TURN, params)], _verdict(session_id, fence, what)))

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
        params = {
            "sid": session_id,
            "fence": fence,
            "id": agent_message_id,
            "content": content,
            "offset": offset,
        }
        what = f"no reply {agent_message_id} in progress in {session_id}"
        write = _Write([(CHECKPOINT_TURN, params)], _verdict(session_id, fence, what), False)
        await self._write(write)

    async def finish_turn(self, message: ChatMessage, *, fence: int) -> None:
        """Replace the placeholder with the final agent message (or store it, if no turn
        was begun); bumps ``last_seq``, ``updated_at`` and ``message_count``."""
        if message.sender != "agent" or message.status is MessageStatus.STREAMING:
            raise ValueError("finish_turn takes a finished agent message")
        check_agent_type(message.agent_type)
        code, text = message.error if message.error is not None else (None, None)
        sid = message.session_id
        params = {
            "sid": sid,
            "fence": fence,
            "id": message.id,
            "seq": message.seq,
            "content": message.content,
            "agent_type": message.agent_type,
            "status": message.status.value,
            "timestamp": message.timestamp,
            "error_code": code,
            "error_text": text,
            "stamp": self._timestamp(),
        }
        what = f"reply {message.id} is not in progress in this session"
        await self._write(_Write([(FINISH_TURN, params)], _verdict(sid, fence, what)))

    async def save_last_seq(self, session_id: str, last_seq: int, *, fence: int) -> None:
        """Persist the actor's last emitted seq (``last_seq`` never goes down) and release
        the seqs reserved beyond it: the mark becomes ``last_seq``."""
        params = {"sid": session_id, "fence": fence, "seq": last_seq}
        await self._write(_Write([(SAVE_LAST_SEQ, params)], _verdict(session_id, fence, "")))


# -- opening and closing --------------------------------------------------------------


class _OwnerLock:
    """This store's owner number and the connection holding its advisory lock (worker
    threads; a :class:`threading.Lock` keeps them to one at a time)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._url = url
        self._timeout = max(1, math.ceil(timeout_s))
        self._mutex = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.number = 0

    def ensure(self) -> int:
        """The owner number, its lock held (taken again if the connection broke)."""
        with self._mutex:
            if self._conn is not None:
                try:
                    _idle_and_sound(self._conn)
                    return self.number
                except psycopg.OperationalError:
                    self._conn.close()
                    self._conn = None
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout)
            try:
                if not self.number:
                    row = conn.execute("SELECT nextval('owner_numbers')").fetchone()
                    self.number = int(row[0]) if row is not None else 0
                conn.execute("SELECT pg_advisory_lock(%s, %s)", (OWNER_LOCKS, self.number))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return self.number

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def describe_url(url: str) -> str:
    """``host:port/dbname`` of a connection URL, without its password."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(invalid URL)"
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    return f"{host}:{port}/{parts.get('dbname') or parts.get('user') or ''}"


def _migrate(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` under the migration lock (worker
    thread). Returns the version found."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = conn.execute(
            "SELECT to_regclass('archon_chat_schema') IS NOT NULL,"
            " to_regclass('sessions') IS NOT NULL"
        ).fetchone()
        ours, sessions = found if found is not None else (False, False)
        if not ours and sessions:
            raise SchemaError("the database holds another application's tables")
        conn.execute("CREATE TABLE IF NOT EXISTS archon_chat_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM archon_chat_schema").fetchone()
        version = int(row[0]) if row is not None and row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"the database has schema version {version}, written by a newer archon-chat; "
                f"this one knows up to version {SCHEMA_VERSION}"
            )
        for step in range(version, SCHEMA_VERSION):
            conn.execute(sql.SQL(MIGRATIONS[step]))
            conn.execute("INSERT INTO archon_chat_schema (version) VALUES (%s)", (step + 1,))
    return version


def _connect_and_migrate(url: str, timeout_s: float) -> int:
    with psycopg.connect(
        url, autocommit=True, connect_timeout=max(1, math.ceil(timeout_s))
    ) as conn:
        return _migrate(conn)


#: Refusals by the server that pass (it is starting or stopping, or full).
_TRANSIENT: Final = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "too many clients",
    "remaining connection slots",
)


def _worth_retrying(exc: psycopg.OperationalError) -> bool:
    """Whether a failed connection may succeed later: the server was not reached, or it
    refused for a passing reason. A wrong password, database or option is final."""
    text = str(exc)
    return "FATAL:" not in text or any(reason in text for reason in _TRANSIENT)


async def _prepare_database(url: str, connect_timeout_s: float) -> None:
    """Connect (retrying with backoff for ``connect_timeout_s``) and migrate."""
    deadline = trio.current_time() + connect_timeout_s
    pause = RETRY_FIRST_S
    where = describe_url(url)
    while True:
        left = deadline - trio.current_time()
        try:
            version = await trio.to_thread.run_sync(_connect_and_migrate, url, min(left, 10.0))
        except psycopg.OperationalError as exc:
            left = deadline - trio.current_time()
            if not _worth_retrying(exc):
                raise StoreError(
                    f"PostgreSQL at {where} (ARCHON_CHAT_DATABASE_URL) refused the connection: "
                    f"{str(exc).strip()}"
                ) from exc
            if left <= 0:
                raise StoreError(
                    f"cannot reach PostgreSQL at {where} (ARCHON_CHAT_DATABASE_URL) within "
                    f"{connect_timeout_s:g} s: {str(exc).strip()}"
                ) from exc
            log.warning("PostgreSQL at %s unreachable, retrying in %.2g s: %s", where, pause, exc)
            await trio.sleep(min(pause, left))
            pause = min(pause * 2, RETRY_MAX_S)
            continue
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL at {where}: {exc}") from exc
        if version < SCHEMA_VERSION:
            log.info("PostgreSQL at %s: schema %d -> %d", where, version, SCHEMA_VERSION)
        return


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    ttl_s: float,
    pool_size: int,
    connect_timeout_s: float,
    timeout_s: float,
    now: Callable[[], datetime] | None = None,
    recover_orphans: bool = True,
) -> AsyncIterator[PostgresStore]:
    """Connect to the database at ``url`` (retrying for ``connect_timeout_s``), migrate
    its schema to :data:`SCHEMA_VERSION`, open a pool of ``pool_size`` connections and
    yield the store; on exit, finish the writes already called and close the pool. A call
    waits at most ``timeout_s`` for a working connection (then fails with
    :class:`StoreError`), and as long as its statements take.

    Raises :class:`StoreError` naming ``ARCHON_CHAT_DATABASE_URL`` when the database
    cannot be reached in time, :class:`SchemaError` for a foreign or newer schema,
    ``ValueError`` for a malformed URL or bad numbers.
    """
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    if pool_size <= 0:
        raise ValueError("pool_size must be positive")
    try:
        conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"ARCHON_CHAT_DATABASE_URL is not a valid PostgreSQL URL: {exc}") from None
    await _prepare_database(url, connect_timeout_s)
    pool = ConnectionPool(
        url,
        min_size=pool_size,
        max_size=pool_size,
        kwargs={"autocommit": True},
        check=_idle_and_sound,
        timeout=timeout_s,
        open=False,
        name="archon-chat",
    )
    try:
        await trio.to_thread.run_sync(lambda: pool.open(wait=True, timeout=connect_timeout_s))
    except Exception as exc:
        await trio.to_thread.run_sync(pool.close)
        raise StoreError(
            f"cannot open connections to PostgreSQL at {describe_url(url)}"
            f" (ARCHON_CHAT_DATABASE_URL): {exc}"
        ) from exc
    owner = _OwnerLock(url, connect_timeout_s)
    store = PostgresStore(
        pool,
        owner,
        ttl_s=ttl_s,
        pool_size=pool_size,
        now=now or (lambda: datetime.now(UTC)),
        recover_orphans=recover_orphans,
    )
    try:
        try:
            await trio.to_thread.run_sync(owner.ensure)
            recovered = await store.recover_orphans() if recover_orphans else 0
        except BaseException:
            await store.aclose()
            raise
        if recovered:
            log.warning("%d replies interrupted by a restart stored as failed", recovered)
        yield store
    finally:
        await store.aclose()
