"""The session hub: the gateway's one door to the session actors.

:func:`open_session_hub` runs a ``simple_one_for_one`` supervisor of
:class:`~actors.chat.session.SessionActor` tasks (``TRANSIENT``; restart budget counted
per session, so a session that keeps crashing is given up alone and never takes its
siblings down). :meth:`SessionHub.deliver` routes a command to the session's actor,
starting it on demand; an actor idle for ``idle_passivate_s`` ends by itself and the
hub forgets it, so idle sessions cost no task.

Replies. Commands that carry a ``reply`` channel are answered on it, and the channel is
then closed. If the actor dies before answering (a crash, or a session given up past its
restart budget) the channel is closed unanswered: the requester's ``receive`` raises
:class:`trio.EndOfChannel`, which it should report as ``internal_error``.

Exceptions::

    HubError
    ├── SessionNotFound   the store has no such session (also a LookupError)
    ├── SessionBusy       the actor's mailbox is full (also a MailboxFull)
    └── HubClosed         the hub is shutting down
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio

from actors.chat.agents_client import AgentsClient
from actors.chat.messages import CancelReason, CancelTurn, Command, SessionEvent
from actors.chat.session import SessionActor, close_unanswered, send_reply
from actors.chat.settings import HubSettings
from actors.chat.store import ChatStore
from actors.runtime.mailbox import MailboxClosed, MailboxFull
from actors.runtime.supervisor import (
    ChildHandle,
    ChildTemplate,
    Restart,
    Supervisor,
    SupervisorClosed,
    open_supervisor,
)

logger = logging.getLogger(__name__)


class HubError(Exception):
    """Base of the hub's errors."""


class SessionNotFound(HubError, LookupError):
    """No such session (unknown or expired)."""


class SessionBusy(HubError, MailboxFull):
    """The session's mailbox is full; answer ``session_busy``."""


class HubClosed(HubError):
    """The hub is shutting down and takes no more commands."""


class SessionHub:
    """Routes commands to session actors; build it with :func:`open_session_hub`."""

    def __init__(
        self,
        supervisor: Supervisor,
        store: ChatStore,
        agents: AgentsClient,
        events: trio.MemorySendChannel[SessionEvent],
        settings: HubSettings,
    ) -> None:
        self._supervisor = supervisor
        self._store = store
        self._agents = agents
        self._events = events
        self._settings = settings
        self._actors: dict[str, SessionActor] = {}
        self._closed = False
        self._exit_listener: Callable[[str], None] | None = None

    def on_actor_exit(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(session_id)`` whenever a session's actor ends for good
        (passivated, stopped, or given up). Not a checkpoint; it must not raise."""
        self._exit_listener = listener

    def live_sessions(self) -> int:
        """How many sessions have a running actor. Not a checkpoint."""
        return len(self._actors)

    def is_live(self, session_id: str) -> bool:
        """Whether the session has a running actor. Not a checkpoint."""
        return session_id in self._actors

    async def deliver(self, session_id: str, command: Command) -> None:
        """Put ``command`` in the session's mailbox, starting its actor if needed.

        Always a checkpoint. Returns once the command is queued (its answer, if any,
        comes on its ``reply`` channel). A :class:`CancelTurn` for a session without a
        running actor is answered ``False`` at once: nothing runs there. Raises
        :class:`SessionNotFound` if the store has no such session, :class:`SessionBusy`
        if the mailbox is full (the command was not queued), :class:`HubClosed` once
        shutdown began. If cancelled, the command was not queued (an actor may have been
        started).
        """
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise HubClosed("the session hub is shutting down")
        actor = self._actors.get(session_id)
        if actor is None:
            if isinstance(command, CancelTurn):
                send_reply(command.reply, False)
                if command.reply is not None:
                    command.reply.close()
                return
            actor = await self._activate(session_id)
        try:
            actor.mailbox.send_nowait(command)
        except MailboxFull:
            raise SessionBusy(f"session {session_id} has too many pending commands") from None
        except MailboxClosed:
            raise HubClosed("the session hub is shutting down") from None

    def cancel_nowait(self, session_id: str, reason: CancelReason) -> bool:
        """Cancel the session's turn in flight, if it has a live actor, without waiting.

        Not a checkpoint. The cancel goes through the mailbox, behind the commands already
        there; if the mailbox is full it is applied to the actor at once instead, so it is
        never lost. Returns whether a live actor was told (not whether a turn ran).
        """
        actor = self._actors.get(session_id)
        if actor is None or self._closed:
            return False
        try:
            actor.mailbox.send_nowait(CancelTurn(reason))
        except MailboxFull:
            actor.request_cancel(reason)
        except MailboxClosed:
            return False
        return True

    def stop_nowait(self, session_id: str) -> bool:
        """Stop the session's actor, if live (another process owns the session now): its
        turn is cancelled, queued ones dropped, the actor ends. Not a checkpoint."""
        actor = self._actors.get(session_id)
        if actor is None:
            return False
        actor.request_stop()
        return True

    async def _activate(self, session_id: str) -> SessionActor:
        if await self._store.get_session(session_id) is None:
            raise SessionNotFound(session_id)
        if self._closed:
            raise HubClosed("the session hub is shutting down")
        actor = self._actors.get(session_id)
        if actor is not None:  # started by another caller meanwhile
            return actor
        actor = SessionActor(
            session_id,
            store=self._store,
            agents=self._agents,
            events=self._events,
            settings=self._settings,
        )
        # Registered before the checkpoint, so concurrent callers share this actor.
        self._actors[session_id] = actor
        try:
            await self._supervisor.start_child(
                session_id,
                actor,
                stop=actor.request_stop,
                on_exit=partial(self._forget, actor),
            )
        except SupervisorClosed:
            self._drop(actor)
            raise HubClosed("the session hub is shutting down") from None
        except BaseException:
            self._drop(actor)
            raise
        return actor

    def _forget(self, actor: SessionActor, handle: ChildHandle) -> None:
        """The actor ended for good (passivated, stopped, or given up after crashes)."""
        self._drop(actor)

    def _drop(self, actor: SessionActor) -> None:
        if self._actors.get(actor.session_id) is actor:
            del self._actors[actor.session_id]
            if self._exit_listener is not None:
                self._exit_listener(actor.session_id)
        actor.mailbox.close()
        leftover = actor.mailbox.drain_nowait()
        if leftover:
            logger.warning(
                "session %s ended with %d commands unanswered", actor.session_id, len(leftover)
            )
            close_unanswered(leftover)

    async def shutdown(self) -> None:
        """Take no more commands, cancel every turn (each is stored ``cancelled``), let
        the actors finish within ``shutdown_grace_s``, then cancel what is left.

        A checkpoint, shielded from the caller's cancellation (like the supervisor's
        shutdown); returns once every actor has ended. Idempotent.
        """
        self._closed = True
        await self._supervisor.shutdown()


async def _run_actor(actor: SessionActor) -> None:
    await actor.run()


@asynccontextmanager
async def open_session_hub(
    store: ChatStore,
    agents: AgentsClient,
    events: trio.MemorySendChannel[SessionEvent],
    settings: HubSettings,
) -> AsyncIterator[SessionHub]:
    """Run a session hub for the body's duration; on exit, :meth:`SessionHub.shutdown`.

    ``events`` is the shared bounded channel every actor emits on (the gateway reads
    it); the hub does not close it. A checkpoint on entry and exit.
    """
    template = ChildTemplate(
        _run_actor, restart=Restart.TRANSIENT, shutdown_s=settings.shutdown_grace_s
    )
    async with open_supervisor(
        template=template,
        intensity=settings.restart_intensity,
        period=settings.restart_period_s,
        shutdown_s=settings.shutdown_grace_s,
        isolate_children=True,
        name="sessions",
    ) as supervisor:
        hub = SessionHub(supervisor, store, agents, events, settings)
        try:
            yield hub
        finally:
            hub._closed = True
