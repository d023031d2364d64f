"""The session actor: one per live chat session, owner of its turns and agent streams.

Theory of operation. A :class:`SessionActor` holds what must outlive one run of its task
(its mailbox, the queue of accepted messages, the seq counter, the turn in flight);
:meth:`SessionActor.run` is the task the supervisor runs, restarts after a crash, and
lets end when the session has been idle for ``idle_passivate_s`` (passivation: the state
is in the store, the next command starts a fresh actor).

Inside a run, the *main loop* takes commands from the mailbox one at a time and a
*worker* task runs the queued turns one after another. Each turn streams the agent's
reply inside its own :class:`trio.CancelScope`, whose deadline is the earliest of the
whole-turn deadline and the first-event (then gap) deadline. ``CancelTurn`` cancels that
scope: the upstream response is closed at once, then the partial reply is stored with
status ``cancelled``. The end of a turn (storing the reply, emitting its end events) runs
outside the scope, so nothing of the turn is emitted after its end events, and never
inside a cancelled scope except shielded with ``save_timeout_s``.

Events and seq. Every event goes out on the shared ``events`` channel with the next
per-session ``seq``. Seqs are handed out and sent without a checkpoint in between, or
under ``_emit_lock`` when something must happen between the two (reserving seqs in the
store, storing the message an event carries), so events leave in seq order. The store is
kept ahead of the counter by reserving ``seq_block`` numbers at a time.

One turn, in order (messages.py, design.md section 3): ``TurnStarted`` and
``TypingChanged(True)`` (one seq), ``ChunkStreamed`` x N, [``TurnFailed``], the agent's
``MessageEmitted`` (status, the text streamed so far), ``StreamCompleted``,
``TypingChanged(False)`` and ``TurnEnded`` (one seq).

Ownership. The first run takes the session over (``acquire``: a fencing token that every
write carries). If the store refuses a write because another actor took the session
over since, this one stops at once, without writing or emitting anything more.

Taking over a reply in progress. If the previous owner left a reply streaming (its
process died, or in cluster mode its node lost the session), ``acquire`` stores it
``failed`` (``owner_lost`` in cluster mode, else ``internal_error``). Before serving any
command, the new actor tells the room how that turn ended: the failed agent
``MessageEmitted`` (the seq the store gave it), then with fresh seqs ``TurnFailed``,
``StreamCompleted``, ``TypingChanged(False)`` and ``TurnEnded`` (one seq). These events
go out once, even across a crash of the run that sends them.

Crashes. If a run raises, the turn in flight is ended as ``failed`` with
``internal_error`` (shielded, ``save_timeout_s``) before the exception reaches the
supervisor; if the run was cancelled from outside (forced shutdown) it is ended as
``cancelled``. If even that fails, the restarted run ends it first.
"""

from __future__ import annotations

import bisect
import logging
import math
import uuid
from array import array
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from actors.chat.agents_client import (
    AgentRequest,
    AgentsClient,
    AgentsError,
    ChunkReceived,
    HistoryEntry,
    StreamFinished,
)
from actors.chat.messages import (
    AGENT_TYPES,
    AgentType,
    CancelReason,
    CancelTurn,
    ChatMessage,
    ChunkStreamed,
    Command,
    ErrorCode,
    GetTurnState,
    MessageEmitted,
    MessageStatus,
    SessionEvent,
    SessionRecord,
    StreamCompleted,
    SubmitMessage,
    SubmitOutcome,
    SubmitReply,
    TurnEnded,
    TurnFailed,
    TurnStarted,
    TurnState,
    TypingChanged,
)
from actors.chat.settings import HubSettings
from actors.chat.store import ChatStore, FencedError, interrupted_text
from actors.runtime.mailbox import Mailbox, MailboxClosed

logger = logging.getLogger(__name__)

AGENT_TIMEOUT_TEXT = "Agent response timeout"
INTERNAL_ERROR_TEXT = "Internal error while answering: please try again"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _new_id() -> str:
    return str(uuid.uuid4())


def send_reply(channel: trio.MemorySendChannel[Any] | None, value: object) -> None:
    """Answer a command; a requester that went away is not our problem."""
    if channel is None:
        return
    try:
        channel.send_nowait(value)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        logger.debug("reply %r not delivered: requester gone or channel full", value)


def close_unanswered(commands: list[Command]) -> None:
    """Close the reply channels of commands that will never be handled, so their
    requesters wake up (with :class:`trio.EndOfChannel`). Not a checkpoint."""
    for command in commands:
        if command.reply is not None:
            command.reply.close()


@dataclass(slots=True)
class _Pending:
    """An accepted user message waiting for its turn."""

    message: ChatMessage
    context: dict[str, Any]


@dataclass(eq=False, slots=True)
class _Turn:
    """The turn in flight."""

    message_id: str
    user: ChatMessage
    context: dict[str, Any]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: the placeholder reply row exists in the store
    begun: bool = False
    #: seq of TurnStarted / TypingChanged(True); 0 until they were sent
    start_seq: int = 0
    #: the streaming part is over; CancelTurn no longer applies
    stream_over: bool = False
    cancel_reason: CancelReason | None = None
    text: list[str] = field(default_factory=list)
    #: seq of every chunk and the text length up to its end (16 bytes a chunk), so a
    #: rejoining client gets exactly the text it missed, as one chunk
    chunk_seqs: array[int] = field(default_factory=lambda: array("q"))
    chunk_ends: array[int] = field(default_factory=lambda: array("q"))
    text_len: int = 0
    started_at: float = 0.0
    first_chunk_latency_s: float | None = None
    last_saved_at: float = 0.0
    #: a checkpoint of the partial text is being written (at most one at a time)
    saving: bool = False
    #: characters of the text the store holds from the checkpoints so far
    saved_len: int = 0
    #: the end of the turn, once decided: the final message, its events, progress
    final: ChatMessage | None = None
    end_events: list[SessionEvent] = field(default_factory=list)
    stored: bool = False
    sent: int = 0

    def joined(self) -> str:
        """The text so far; the pieces are joined once and kept joined, so rejoins do not
        each rebuild the whole reply from its chunks."""
        if len(self.text) != 1:
            self.text[:] = ["".join(self.text)]
        return self.text[0] if self.text else ""

    def tail(self, start: int) -> str:
        """The text from character ``start`` on, built from the last pieces only."""
        need = self.text_len - start
        parts: list[str] = []
        for piece in reversed(self.text):
            if need <= 0:
                break
            if len(piece) > need:
                piece = piece[len(piece) - need :]
            parts.append(piece)
            need -= len(piece)
        parts.reverse()
        return "".join(parts)


class SessionActor:
    """The actor of one session. Built by the hub; :meth:`run` is its supervised task."""

    def __init__(
        self,
        session_id: str,
        *,
        store: ChatStore,
        agents: AgentsClient,
        events: trio.MemorySendChannel[SessionEvent],
        settings: HubSettings,
    ) -> None:
        self.session_id = session_id
        self.mailbox: Mailbox[Command] = Mailbox(settings.mailbox_size)
        self._store = store
        self._agents = agents
        self._events = events
        self._settings = settings
        #: this actor's fencing token, once its first run took the session over
        self._fence = 0
        self._agent_type: AgentType = "rag"
        self._seq = 0
        self._hwm = 0
        self._message_count = 0
        #: the complete turns the agent gets as history, kept here once known (this actor
        #: is its session's only writer), so a turn costs no store read for it
        self._history: deque[HistoryEntry] | None = None
        #: replies the first run's ``acquire`` stored failed, until their end events
        #: are built; then those events, until sent
        self._recovered: tuple[ChatMessage, ...] = ()
        self._recovery_events: deque[SessionEvent] = deque()
        self._queue: deque[_Pending] = deque()
        self._turn: _Turn | None = None
        self._worker_running = False
        self._emit_lock = trio.Lock()
        self._stopping = False
        self._idle_scope: trio.CancelScope | None = None
        self._last_activity = -math.inf
        self._nursery: trio.Nursery | None = None

    # -- what the hub calls (synchronously) -----------------------------------------------

    def request_stop(self) -> None:
        """Ask the actor to finish: cancel its turn (``SHUTDOWN``), drop queued turns,
        refuse new messages, close the mailbox. The run ends once the turn is saved.
        Not a checkpoint."""
        self._stopping = True
        self._cancel(CancelReason.SHUTDOWN)
        self.mailbox.close()

    def request_cancel(self, reason: CancelReason) -> None:
        """Cancel the turn in flight now, as :class:`CancelTurn` would (the hub's way for
        a cancel that found the mailbox full). Not a checkpoint."""
        self._cancel(reason)

    @property
    def busy(self) -> bool:
        """A turn runs or waits."""
        return self._turn is not None or bool(self._queue) or self._worker_running

    @property
    def last_seq(self) -> int:
        return self._seq

    # -- the supervised task ------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until it is idle past ``idle_passivate_s`` or asked to stop.

        Returns normally then (the supervisor does not restart it). Raises whatever
        crashed it, after ending the turn in flight as ``failed``/``internal_error``.
        Cancellation ends the turn in flight as ``cancelled`` (shielded) and propagates.
        """
        try:
            if not await self._load():
                return
            await self._announce_recovered()
            while True:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self._turn is not None:
                        # Left by a run that crashed and could not end it itself.
                        await self._end_turn(
                            self._turn,
                            MessageStatus.FAILED,
                            (ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_TEXT),
                        )
                    self._start_worker()
                    await self._serve()
                self._nursery = None
                await self._store.save_last_seq(self.session_id, self._seq, fence=self._fence)
                self._hwm = self._seq  # the save released the reserved seqs
                # No checkpoint from here to the return: a command delivered during the
                # save keeps the actor alive; once it returns, the hub has forgotten it
                # before anyone can deliver again.
                if self._stopping or (not len(self.mailbox) and not self.busy):
                    return
        except BaseException as exc:
            self._nursery = None
            if _fenced(exc):
                self._give_up_session()
                return
            await self._after_abnormal_exit(exc)
            raise

    def _give_up_session(self) -> None:
        """The store refused a write: another actor owns the session now. Stop without
        another write or event; the hub answers the commands left in the mailbox."""
        logger.warning("session %s was taken over elsewhere: its actor stops", self.session_id)
        self._stopping = True
        self._turn = None
        self._queue.clear()
        self.mailbox.close()

    async def _load(self) -> bool:
        record: SessionRecord | None
        if self._fence == 0:
            owned = await self._store.acquire(self.session_id, interrupted=self._interrupted)
            record = None if owned is None else owned.session
            self._fence = 0 if owned is None else owned.fence
            if owned is not None:
                self._recovered = tuple(sorted(owned.recovered, key=lambda m: m.seq))
        else:
            record = await self._store.get_session(self.session_id)
        if record is None:
            logger.info("session %s is gone: its actor ends", self.session_id)
            self.mailbox.close()
            for command in self.mailbox.drain_nowait():
                self._answer_gone(command)
            return False
        self._agent_type = record.agent_type if record.agent_type in AGENT_TYPES else "rag"
        if record.last_seq > self._seq:
            self._seq = record.last_seq
            self._hwm = self._seq  # unknown: reserve again before the next event
        self._message_count = record.message_count
        self._history = self._empty_history() if record.message_count == 0 else None
        self._last_activity = trio.current_time()
        return True

    @property
    def _interrupted(self) -> ErrorCode:
        """The code of a reply this actor finds left streaming by the previous owner."""
        return ErrorCode.OWNER_LOST if self._settings.cluster_mode else ErrorCode.INTERNAL_ERROR

    async def _announce_recovered(self) -> None:
        """Emit the end of the turns ``acquire`` failed (module docstring): all their
        agent messages by seq, then each one's end events with fresh seqs. Resumable: a
        restarted run sends only what is left. Cancellation leaves the rest for then."""
        if not self._recovered and not self._recovery_events:
            return
        async with self._emit_lock:
            if self._recovered:
                replies = self._recovered
                await self._reserve(3 * len(replies))
                events: list[SessionEvent] = [
                    MessageEmitted(self.session_id, m.seq, m) for m in replies
                ]
                code = self._interrupted
                for m in replies:
                    text = m.error[1] if m.error is not None else interrupted_text(code)
                    events.append(TurnFailed(self.session_id, self._next_seq(), m.id, code, text))
                    events.append(
                        StreamCompleted(self.session_id, self._next_seq(), m.id, m.status)
                    )
                    last = self._next_seq()
                    events.append(TypingChanged(self.session_id, last, False))
                    events.append(TurnEnded(self.session_id, last, m.id, m.status, code))
                self._recovered = ()
                self._recovery_events.extend(events)
            while self._recovery_events:
                await self._events.send(self._recovery_events[0])
                self._recovery_events.popleft()

    def _empty_history(self) -> deque[HistoryEntry]:
        return deque(maxlen=2 * self._settings.history_turns)

    @staticmethod
    def _answer_gone(command: Command) -> None:
        if isinstance(command, SubmitMessage):
            send_reply(command.reply, SubmitReply(SubmitOutcome.SESSION_NOT_FOUND))
        elif isinstance(command, CancelTurn):
            send_reply(command.reply, False)
        else:
            send_reply(command.reply, TurnState(0, False, None, ()))
        if command.reply is not None:
            command.reply.close()

    async def _serve(self) -> None:
        """The main loop; returns when idle past the passivation delay or stopped."""
        while True:
            try:
                command = await self._next_command()
            except MailboxClosed:
                return
            if command is not None:
                await self._handle(command)
                self._last_activity = trio.current_time()
            elif not self.busy and trio.current_time() >= self._idle_deadline():
                return

    async def _next_command(self) -> Command | None:
        """The next command, or ``None`` at the idle deadline (which the worker moves
        when it finishes). Raises :class:`MailboxClosed` once closed and drained."""
        try:
            # Queued commands first: past the idle deadline a wait would be cancelled
            # before it could take them.
            return self.mailbox.receive_nowait()
        except trio.WouldBlock:
            pass
        with trio.CancelScope() as idle_scope:
            self._idle_scope = idle_scope
            idle_scope.deadline = self._idle_deadline()
            try:
                return await self.mailbox.receive()
            finally:
                self._idle_scope = None
        return None

    def _idle_deadline(self) -> float:
        if self.busy:
            return math.inf
        return self._last_activity + self._settings.idle_passivate_s

    async def _after_abnormal_exit(self, exc: BaseException) -> None:
        turn = self._turn
        if turn is None:
            return
        if not turn.begun:
            # Nothing of it reached the store or the room: run it after the restart,
            # unless it was cancelled meanwhile.
            self._turn = None
            if turn.cancel_reason is None and not self._stopping:
                self._queue.appendleft(_Pending(turn.user, turn.context))
            return
        crashed = not _only_cancelled(exc)
        if crashed:
            status, failure = (
                MessageStatus.FAILED,
                (ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_TEXT),
            )
        else:
            status, failure = MessageStatus.CANCELLED, None
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self._settings.save_timeout_s
            try:
                await self._end_turn(turn, status, failure)
            except Exception:
                logger.exception("session %s: could not end its interrupted turn", self.session_id)
        if scope.cancelled_caught:
            logger.warning(
                "session %s: ending the interrupted turn took over %s s",
                self.session_id,
                self._settings.save_timeout_s,
            )

    # -- commands -----------------------------------------------------------------------

    async def _handle(self, command: Command) -> None:
        try:
            if isinstance(command, SubmitMessage):
                await self._submit(command)
            elif isinstance(command, CancelTurn):
                send_reply(command.reply, self._cancel(command.reason))
            elif isinstance(command, GetTurnState):
                send_reply(command.reply, self.turn_state(command.after_seq))
            else:
                raise TypeError(f"not a session command: {command!r}")
        finally:
            if command.reply is not None:
                command.reply.close()

    async def _submit(self, command: SubmitMessage) -> None:
        if self._stopping:
            send_reply(command.reply, SubmitReply(SubmitOutcome.SESSION_BUSY))
            return
        if command.client_message_id is not None:
            earlier = await self._store.find_by_client_message_id(
                self.session_id, command.client_message_id
            )
            if earlier is not None:
                send_reply(command.reply, SubmitReply(SubmitOutcome.DUPLICATE, earlier.id))
                return
        if len(self._queue) >= self._settings.max_queued_turns:
            send_reply(command.reply, SubmitReply(SubmitOutcome.SESSION_BUSY))
            return
        if self._message_count + self._pending_replies() + 2 > (
            self._settings.max_messages_per_session
        ):
            # Exact: this message and its reply, and the replies of the turns before it
            # (queued or running), all fit under the cap.
            send_reply(command.reply, SubmitReply(SubmitOutcome.SESSION_FULL))
            return
        async with self._emit_lock:
            await self._reserve(1)
            seq = self._next_seq()
            message = ChatMessage(
                id=_new_id(),
                session_id=self.session_id,
                seq=seq,
                content=command.content,
                sender="user",
                timestamp=_now_iso(),
                agent_type=self._agent_type,
                client_message_id=command.client_message_id,
            )
            await self._store.add_user_message(message, fence=self._fence)
            self._message_count += 1
            self._queue.append(_Pending(message, dict(command.context)))
            send_reply(command.reply, SubmitReply(SubmitOutcome.ACCEPTED, message.id))
            await self._events.send(MessageEmitted(self.session_id, seq, message))
        self._start_worker()

    def _pending_replies(self) -> int:
        """Agent replies not yet stored: one per queued turn, and the turn in flight's."""
        turn = self._turn
        return len(self._queue) + (1 if turn is not None and not turn.stored else 0)

    def _cancel(self, reason: CancelReason) -> bool:
        if reason is not CancelReason.STOP:
            self._queue.clear()
        turn = self._turn
        if turn is None or turn.stream_over:
            return False
        if turn.cancel_reason is None:
            turn.cancel_reason = reason
        turn.scope.cancel()
        return True

    def turn_state(self, after_seq: int | None) -> TurnState:
        """The state a (re)joining client needs: see :class:`TurnState`. Not a checkpoint."""
        turn = self._turn
        if turn is None or not turn.start_seq:
            return TurnState(self._seq, False, None, ())
        after = -1 if after_seq is None else after_seq
        if turn.final is not None:
            # The turn's end is decided and its events have their seqs, some perhaps not
            # yet sent: the client gets them here (typing off included, so it is no longer
            # typing), and the gateway drops its live copies (seq <= last_seq).
            ended = tuple(
                e for e in turn.end_events if e.seq > after and not isinstance(e, TurnEnded)
            )
            return TurnState(self._seq, False, None, self._missed(turn, after) + ended)
        return TurnState(
            self._seq, True, (turn.message_id, turn.start_seq), self._missed(turn, after)
        )

    def _missed(self, turn: _Turn, after: int) -> tuple[SessionEvent, ...]:
        """The text of the turn the client has not seen after seq ``after``, as one chunk
        (with the newest chunk's seq), or nothing."""
        # The text the client has seen ends where its last seen chunk ended.
        seen = bisect.bisect_right(turn.chunk_seqs, after)
        if seen == len(turn.chunk_seqs):
            return ()
        start = turn.chunk_ends[seen - 1] if seen else 0
        text = turn.joined()
        return (ChunkStreamed(self.session_id, turn.chunk_seqs[-1], turn.message_id, text[start:]),)

    # -- turns --------------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self._worker_running or self._nursery is None:
            return
        if self._turn is None:
            if not self._queue or self._stopping:
                return
            # The next turn exists from now on, so a CancelTurn handled before the
            # worker first runs still finds (and cancels) it.
            self._turn = self._next_turn()
        self._worker_running = True
        self._nursery.start_soon(self._work)

    def _next_turn(self) -> _Turn:
        pending = self._queue.popleft()
        return _Turn(_new_id(), pending.message, pending.context)

    async def _work(self) -> None:
        try:
            while True:
                turn = self._turn
                if turn is None:
                    if not self._queue or self._stopping:
                        return
                    turn = self._turn = self._next_turn()
                await self._run_turn(turn)
        finally:
            self._worker_running = False
            self._last_activity = trio.current_time()
            if self._idle_scope is not None:
                self._idle_scope.deadline = self._idle_deadline()

    async def _run_turn(self, turn: _Turn) -> None:
        await self._store.begin_turn(
            self.session_id,
            turn.message_id,
            self._agent_type,
            _now_iso(),
            reply_to=turn.user.id,
            fence=self._fence,
        )
        turn.begun = True
        await self._emit_turn_start(turn)
        failure: tuple[ErrorCode, str] | None = None
        with turn.scope:
            failure = await self._stream(turn)
        turn.stream_over = True
        if turn.cancel_reason is not None:
            # Asked to stop (and told so): cancelled, even if the stream ended meanwhile.
            status, failure = MessageStatus.CANCELLED, None
        elif turn.scope.cancelled_caught:
            # Only its deadlines cancel the scope besides CancelTurn.
            status, failure = MessageStatus.FAILED, (ErrorCode.AGENT_TIMEOUT, AGENT_TIMEOUT_TEXT)
        elif failure is not None:
            status = MessageStatus.FAILED
        else:
            status = MessageStatus.COMPLETE
        await self._end_turn(turn, status, failure)

    async def _stream(self, turn: _Turn) -> tuple[ErrorCode, str] | None:
        """Relay the agent's reply; ``None`` when it completed, else the failure.
        Runs inside the turn's scope, which carries every deadline."""
        settings = self._settings
        scope = turn.scope
        turn.started_at = now = trio.current_time()
        turn.last_saved_at = now
        turn_deadline = now + settings.agent_turn_timeout_s
        scope.deadline = min(turn_deadline, now + settings.agent_first_event_timeout_s)
        # A checkpoint before the request leaves, even with the history in memory: a stop
        # sent right after the message is handled before the agent hears of it.
        await trio.lowlevel.checkpoint()
        if self._history is None:
            stored = await self._store.history(self.session_id, settings.history_turns)
            self._history = self._empty_history()
            self._history.extend(
                HistoryEntry("user" if m.sender == "user" else "assistant", m.content)
                for m in stored
            )
        request = AgentRequest(
            agent_type=self._agent_type,
            prompt=turn.user.content,
            session_id=self.session_id,
            context=turn.context,
            history=tuple(self._history),
        )
        # Checkpoints are written beside the relay, never in its way: one rewriting a long
        # reply (the whole text so far) behind other sessions' writes took seconds, and
        # every chunk waited for it. Leaving this block waits for one still in flight, so
        # it lands before the final message replaces it.
        async with trio.open_nursery() as saves:
            try:
                async with self._agents.open_stream(request) as stream:
                    while True:
                        event = await stream.receive()
                        if isinstance(event, StreamFinished):
                            break
                        if isinstance(event, ChunkReceived):
                            # Waiting for the gateway is not the agent's silence: no gap
                            # deadline while the chunk is relayed.
                            scope.deadline = turn_deadline
                            await self._emit_chunk(turn, event.content)
                        now = trio.current_time()
                        scope.deadline = min(turn_deadline, now + settings.agent_idle_timeout_s)
                        if (
                            now - turn.last_saved_at >= settings.checkpoint_interval_s
                            and not turn.saving
                        ):
                            turn.last_saved_at = now
                            turn.saving = True
                            saves.start_soon(self._checkpoint, turn)
            except AgentsError as exc:
                failure: tuple[ErrorCode, str] | None = (exc.code, str(exc))
            else:
                failure = None
            # The agent is done: waiting for our own checkpoint is no agent timeout.
            scope.deadline = math.inf
        return failure

    async def _checkpoint(self, turn: _Turn) -> None:
        """Save the partial text of ``turn`` (recovered after a crash of the process): the
        text that came since the last checkpoint, appended to what that one saved."""
        start, end = turn.saved_len, turn.text_len
        try:
            await self._store.checkpoint_turn(
                self.session_id,
                turn.message_id,
                turn.tail(start),
                fence=self._fence,
                offset=start,
            )
            turn.saved_len = end
        finally:
            turn.saving = False

    async def _end_turn(
        self,
        turn: _Turn,
        status: MessageStatus,
        failure: tuple[ErrorCode, str] | None,
    ) -> None:
        """Store the reply and emit the turn's end events. Resumable: a second call
        (after a crash or a cancellation part-way) does only what is left."""
        turn.stream_over = True
        async with self._emit_lock:
            if turn.final is None:
                await self._reserve(4 if failure else 3)
                text = turn.joined()
                events: list[SessionEvent] = []
                if failure is not None:
                    code, error = failure
                    events.append(
                        TurnFailed(self.session_id, self._next_seq(), turn.message_id, code, error)
                    )
                final = ChatMessage(
                    id=turn.message_id,
                    session_id=self.session_id,
                    seq=self._next_seq(),
                    content=text,
                    sender="agent",
                    timestamp=_now_iso(),
                    agent_type=self._agent_type,
                    status=status,
                    error=None if failure is None else (failure[0].value, failure[1]),
                )
                events.append(MessageEmitted(self.session_id, final.seq, final))
                events.append(
                    StreamCompleted(self.session_id, self._next_seq(), turn.message_id, status)
                )
                last = self._next_seq()
                events.append(TypingChanged(self.session_id, last, False))
                events.append(
                    TurnEnded(
                        self.session_id,
                        last,
                        turn.message_id,
                        status,
                        None if failure is None else failure[0],
                        turn.first_chunk_latency_s,
                    )
                )
                turn.final, turn.end_events = final, events
            if not turn.stored:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self._settings.save_timeout_s
                    await self._store.finish_turn(turn.final, fence=self._fence)
                if scope.cancelled_caught:
                    logger.error(
                        "session %s: saving reply %s took over %s s: not saved",
                        self.session_id,
                        turn.message_id,
                        self._settings.save_timeout_s,
                    )
                turn.stored = True
                self._message_count += 1
                if status is MessageStatus.COMPLETE and self._history is not None:
                    self._history.append(HistoryEntry("user", turn.user.content))
                    self._history.append(HistoryEntry("assistant", turn.final.content))
            while turn.sent < len(turn.end_events):
                event = turn.end_events[turn.sent]
                await self._events.send(event)
                turn.sent += 1
        if self._turn is turn:
            self._turn = None

    # -- emitting -----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _reserve(self, count: int) -> None:
        """Make sure the store's high-water mark covers the next ``count`` seqs.
        Call with ``_emit_lock`` held."""
        if self._seq + count > self._hwm:
            hwm = self._seq + count + self._settings.seq_block
            await self._store.reserve_seq(self.session_id, hwm, fence=self._fence)
            self._hwm = hwm

    async def _emit_turn_start(self, turn: _Turn) -> None:
        async with self._emit_lock:
            await self._reserve(1)
            seq = self._next_seq()
            await self._events.send(TurnStarted(self.session_id, seq, turn.message_id))
            turn.start_seq = seq
            await self._events.send(TypingChanged(self.session_id, seq, True))

    async def _emit_chunk(self, turn: _Turn, content: str) -> None:
        if self._emit_lock.locked() or self._seq >= self._hwm:
            async with self._emit_lock:
                await self._reserve(1)
                event = self._record_chunk(turn, content)
                await self._events.send(event)
        else:
            # Fast path: nothing can take a seq between these two lines.
            event = self._record_chunk(turn, content)
            await self._events.send(event)
        if turn.first_chunk_latency_s is None:
            turn.first_chunk_latency_s = trio.current_time() - turn.started_at

    def _record_chunk(self, turn: _Turn, content: str) -> ChunkStreamed:
        """Take the chunk's seq and keep it for rejoining clients, in one step: whoever
        sees ``_seq`` count it (``turn_state``) also finds its text, even while its send
        to the gateway is still waiting."""
        event = ChunkStreamed(
            self.session_id, self._next_seq(), turn.message_id, content, trio.current_time()
        )
        turn.text.append(content)
        turn.text_len += len(content)
        turn.chunk_seqs.append(event.seq)
        turn.chunk_ends.append(turn.text_len)
        return event


def _fenced(exc: BaseException) -> bool:
    """A write was refused for a stale token (with, at most, cancellations beside it)."""
    if isinstance(exc, FencedError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        refused, rest = exc.split(FencedError)
        return refused is not None and (rest is None or _only_cancelled(rest))
    return False


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False
